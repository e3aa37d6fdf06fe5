"""Self-training on a collection's own unlabelled images (artclf_core.lifecycle.self_training):
made-up features in which a new collection is shifted away from the training sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from artclf_core.lifecycle import ridge_head, self_training
from artclf_core.lifecycle.dataset import scan_unlabelled_folder
from artclf_core.lifecycle.ridge_stats import Added, RidgeStats

C, D = 5, 24


def _world(seed: int = 0):
    """Three sources per class around each class mean, and a new collection of 40 images per
    class moved as a whole (its scans, its paper) by a shift no training source had."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(C, D))

    def draw(label: int, n: int, offset: np.ndarray) -> np.ndarray:
        return means[label] + offset + rng.normal(size=(n, D)) * 1.2

    xs, ys, ss = [], [], []
    for c in range(C):
        for s in range(3):
            xs.append(draw(c, 30, rng.normal(size=D) * 0.5))
            ys += [c] * 30
            ss += [f"s{c}{s}"] * 30
    shift = rng.normal(size=D)
    new_y = np.repeat(np.arange(C), 40)
    new_x = np.concatenate([draw(c, 40, shift) for c in range(C)])
    return np.concatenate(xs), np.array(ys), np.array(ss), new_x, new_y


def test_self_training_learns_a_shifted_collection_without_its_labels() -> None:
    x, y, src, new_x, new_y = _world()
    head = ridge_head.fit(x, y, src, n_classes=C, lam=1.0, with_basis=False)

    def fit(added: Added) -> ridge_head.RidgeHead:
        return ridge_head.fit(
            np.concatenate([x[None], added.rows], axis=1),
            np.concatenate([y, added.y]),
            np.concatenate([src, added.sources]),
            n_classes=C,
            lam=1.0,
            with_basis=False,
        )

    start = head.logits(new_x)
    adapted, scores, used = self_training.adapt(fit, new_x, start, views=1, temperature=0.2)
    before = np.mean(start.argmax(1) == new_y)
    after = np.mean(scores.argmax(1) == new_y)
    assert adapted is not None and len(used) == self_training.ROUNDS and 0 < used[0] < len(new_x)
    assert after > before + 0.05, (before, after)  # 0.785 -> 0.915 on this draw
    np.testing.assert_allclose(adapted.logits(new_x), scores)

    # Nothing confident enough: nothing is added and the logits are the labelled head's.
    none, same, used = self_training.adapt(
        fit, new_x, start, views=1, temperature=0.2, threshold=1.1
    )
    assert none is None and used == [0] and np.array_equal(same, start)


def test_pseudo_labelled_rows_from_sums_are_the_fitted_head() -> None:
    """RidgeStats with Added rows under other labels than the set's own (pseudo-labels),
    three views each, is ridge_head.fit on the same rows: the cross-validation's self-trained
    fold heads are the training's."""
    rng = np.random.default_rng(5)
    views, n = 3, 200
    feats = rng.normal(size=(views, n, D)) * rng.uniform(0.2, 3.0, size=D) + 5.0
    y = rng.integers(0, C, n)
    sources = rng.integers(0, 6, n).astype(str)
    held = np.flatnonzero(sources == "4")
    rest = np.flatnonzero(sources != "4")
    pseudo = rng.integers(0, C, len(held))
    rows = np.repeat(feats[:1, held], views, axis=0)  # the pictures alone, in every view
    added = Added(rows, pseudo, np.full(len(held), "self:fold0"))
    summed = RidgeStats(feats, y, sources, n_classes=C).head(held, dim=16, added=added)
    fitted = ridge_head.fit(
        np.concatenate([feats[:, rest], rows], axis=1),
        np.concatenate([y[rest], pseudo]),
        np.concatenate([sources[rest], added.sources]),
        n_classes=C,
        dim=16,
    )
    np.testing.assert_allclose(summed.coef, fitted.coef, rtol=1e-7, atol=1e-9)
    a, b = fitted.embed(feats[0, held]), summed.embed(feats[0, held])
    np.testing.assert_allclose(a @ a.T, b @ b.T, rtol=1e-6, atol=1e-6)


def test_cross_validation_self_trains_each_held_out_set_as_a_collection() -> None:
    """Each held-out source plays an unlabelled collection; its labels are never used (the
    same logits whatever they are)."""
    x, y, src, new_x, new_y = _world(4)
    feats = np.concatenate([x, new_x])
    labels = np.concatenate([y, new_y])
    sources = np.concatenate([src, np.full(len(new_y), "museum")])
    groups = [str(s) for s in sources]
    stats = RidgeStats(feats, labels, sources, n_classes=C)
    out = self_training.cross_validate(stats, groups, 0.2, lam=1.0, collections=groups)
    museum = sources == "museum"
    plain = stats.head(np.flatnonzero(museum), lam=1.0, with_basis=False).logits(new_x)
    assert np.mean(out[museum].argmax(1) == new_y) > np.mean(plain.argmax(1) == new_y)

    scrambled = labels.copy()
    scrambled[museum] = np.roll(new_y, 7)  # other labels on the held-out collection only
    again = self_training.cross_validate(
        RidgeStats(feats, scrambled, sources, n_classes=C), groups, 0.2, lam=1.0, collections=groups
    )
    np.testing.assert_allclose(again[museum], out[museum], rtol=1e-6, atol=1e-6)


def test_scan_unlabelled_folder_reads_collections(tmp_path: Path) -> None:
    root = tmp_path / "unlabelled"
    for rel in ("museumx/a.jpg", "museumx/sub/b.png", "booky/c.jpg", "loose.jpg"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), "white").save(path)
    (root / "museumx" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(root / ".hidden" / "d.jpg")
    found = {
        (p.path.relative_to(root).as_posix(), p.source, p.label)
        for p in scan_unlabelled_folder(root)
    }
    assert found == {
        ("booky/c.jpg", "booky", ""),
        ("loose.jpg", "unlabelled", ""),
        ("museumx/a.jpg", "museumx", ""),
        ("museumx/sub/b.png", "museumx", ""),
    }
