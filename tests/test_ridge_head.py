"""The default recipe's closed-form head and its training (no ../shared: images made here)."""

from __future__ import annotations

import numpy as np
import pytest
from test_model import _draw

from artclf_core import CLASSES
from artclf_core.lifecycle import ridge_head
from artclf_core.model import calibration


def _toy(n: int = 120, d: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 5
    centres = rng.normal(0, 3, (5, d))
    x = centres[y] + rng.normal(0, 1, (n, d)) + 40.0  # far from zero: standardising matters
    sources = np.array([f"s{c}_{i % 2}" for i, c in enumerate(y)])
    return x, y, sources


def test_layer_weights_compute_the_embedding_and_calibrated_probabilities() -> None:
    x, y, sources = _toy()
    head = ridge_head.fit(x, y, sources, n_classes=5, dim=32)
    w_e, b_e, w_p, b_p = ridge_head.layer_weights(head, temperature=0.4)
    emb = x @ w_e + b_e
    np.testing.assert_allclose(emb, head.embed(x), rtol=1e-3, atol=1e-3)
    z = emb @ w_p + b_p
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, calibration.softmax(head.logits(x), 0.4), atol=1e-4)
    # The class part leads the embedding and carries about as much norm as the rest.
    first = np.linalg.norm(emb[:, :5], axis=1).mean()
    rest = np.linalg.norm(emb[:, 5:], axis=1).mean()
    assert 0.5 < first / rest < 2.0


def test_ridge_head_separates_classes_and_refuses_bad_shapes() -> None:
    x, y, sources = _toy()
    head = ridge_head.fit(x, y, sources, n_classes=5, lam=0.1, dim=16)
    assert (head.logits(x).argmax(1) == y).mean() > 0.95
    views = np.stack([x, x + 0.1])  # two views of the same images
    assert ridge_head.fit(views, y, sources, n_classes=5, dim=16).embed(x).shape == (len(x), 16)
    with pytest.raises(ValueError, match="labels"):
        ridge_head.fit(x, y[:-1], sources, n_classes=5)
    with pytest.raises(ValueError, match="embedding dim"):
        ridge_head.fit(x, y, sources, n_classes=5, dim=5)


def test_source_weights_equalise_classes_and_damp_big_sources() -> None:
    labels = np.array(["a"] * 9 + ["b"] * 3)
    sources = np.array(["big"] * 8 + ["small"] + ["c"] * 3)
    w = ridge_head.source_weights(labels, sources, 0.5)
    assert w[labels == "a"].sum() == pytest.approx(w[labels == "b"].sum())
    assert w[8] > w[0]  # the small source's image weighs more than one of the big one's
    assert w.mean() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def texture_model(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The default architecture trained on made-up images: 3 sources per class, each image
    and one augmented copy of it."""
    from artclf_core.lifecycle.training import train

    root = tmp_path_factory.mktemp("labelled")
    for label in CLASSES:
        (root / label).mkdir()
        for i in range(9):
            _draw(label, i).save(root / label / f"{label}{i % 3}__{i:03d}.png")
    out = tmp_path_factory.mktemp("model") / "texture.keras"
    # two views: the augmented copies' path through features, CV and the final fit
    result = train(root, out, arch="efficientnet_lite1_gram", image_size=64, views=2, verbose=0)
    return result


def test_default_architecture_trains_in_closed_form_with_its_calibration(
    texture_model: dict,
) -> None:
    from artclf_core.model.artmodel import ArtModel

    model = ArtModel.load(texture_model["model_path"])
    assert model.arch == "efficientnet_lite1_gram" and model.image_size == 64
    assert model.version.startswith("efficientnet_lite1_gram-")
    cv = model.metrics["cross_validation"]
    assert cv["folds"] >= 2 and cv["n"] == texture_model["split"]["n_train"]
    assert set(cv["calibration"]) >= {"temperature", "ece_before", "ece_after", "review"}
    assert model.metrics["review_threshold"] == cv["calibration"]["review"]["threshold"]
    assert model.metrics["training"]["views"] == 2
    assert model.metrics["training"]["view_transforms"] == list(ridge_head.VIEW_TRANSFORMS)
    assert texture_model["report"]["n"] == texture_model["split"]["n_val"] > 0
    assert texture_model["history"] == {} and texture_model["epochs_run"] == 0
    # One forward pass, both outputs; the TFLite runtime agrees with the Keras graph.
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    lite_p, lite_e = model.predict(batch)
    keras_p, keras_e = ArtModel.load(texture_model["model_path"], runtime="keras").predict(batch)
    np.testing.assert_allclose(lite_p, keras_p, atol=1e-4)
    np.testing.assert_allclose(lite_e, keras_e, rtol=1e-3, atol=1e-3)
    assert lite_e.shape == (6, 128) and np.allclose(lite_p.sum(1), 1.0, atol=1e-5)


def test_boost_moves_weight_within_a_class_and_keeps_classes_equal():
    """A boost of ones changes nothing; a boost shifts weight to the boosted images of a
    class without changing what each class weighs in total."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 8))
    y = np.repeat([0, 1, 2], [10, 20, 30])
    sources = np.array([f"s{i % 4}" for i in range(60)])
    plain = ridge_head.fit(x, y, sources, n_classes=3, with_basis=False)
    ones = ridge_head.fit(x, y, sources, n_classes=3, with_basis=False, boost=np.ones(60))
    np.testing.assert_allclose(plain.coef, ones.coef, atol=1e-12)
    w = ridge_head.source_weights(y, sources, ridge_head.DEFAULT_SOURCE_POWER)
    boost = np.where(np.arange(60) % 7 == 0, 4.0, 1.0)
    boosted = ridge_head.fit(x, y, sources, n_classes=3, with_basis=False, boost=boost)
    assert not np.allclose(plain.coef, boosted.coef)
    for c in range(3):  # classes equal before and after (source_weights' promise)
        assert np.isclose(w[y == c].sum(), len(y) / 3)


def test_the_fit_is_the_closed_form() -> None:
    """The fit gives the normal equations' solution ``(X'WX + lam n I)^-1 X'W T`` that the
    head was first written as, within 1e-6, views and curator boosts included (the oracle of
    issue 31, when the fit was scikit-learn's ``Ridge``; the default's own training: model
    card)."""
    rng = np.random.default_rng(7)
    views, n, d, c = 2, 300, 160, len(CLASSES)
    feats = rng.normal(size=(views, n, d)) * rng.uniform(0.1, 5.0, size=d)
    y = rng.integers(0, c, n)
    sources = rng.integers(0, 9, n).astype(str)
    boost = np.where(rng.random(n) < 0.1, 4.0, 1.0)
    head = ridge_head.fit(feats, y, sources, n_classes=c, lam=3.0, boost=boost)

    x = (feats.reshape(-1, d) - head.mean) / head.std
    w = ridge_head.source_weights(y, sources, ridge_head.DEFAULT_SOURCE_POWER) * boost
    for k in range(c):  # classes keep their total weight, as fit() re-balances them
        m = y == k
        w[m] *= (
            ridge_head.source_weights(y, sources, ridge_head.DEFAULT_SOURCE_POWER)[m].sum()
            / w[m].sum()
        )
    w = np.tile(w, views)
    target = np.eye(c)[np.tile(y, views)] - 1.0 / c
    gram = (x * w[:, None]).T @ x
    expected = np.linalg.solve(gram + 3.0 * len(x) * np.eye(d), (x * w[:, None]).T @ target)
    assert np.abs(head.coef - expected).max() < 1e-6


def test_fold_heads_from_sums_are_the_fitted_heads() -> None:
    """RidgeStats (the cross-validation's and the k-shot curve's fits: the whole set's sums
    less a held-out group's, plus shots) gives ridge_head.fit's head on the same rows, views
    and boosts included, and refuses a held-out set that splits a source."""
    from artclf_core.lifecycle.ridge_stats import RidgeStats

    rng = np.random.default_rng(3)
    views, n, d, c = 2, 240, 60, len(CLASSES)
    feats = rng.normal(size=(views, n, d)) * rng.uniform(0.1, 5.0, size=d) + 20.0
    y = rng.integers(0, c, n)
    sources = rng.integers(0, 8, n).astype(str)
    boost = np.where(rng.random(n) < 0.1, 4.0, 1.0)
    stats = RidgeStats(feats, y, sources, n_classes=c, boost=boost)
    held = np.flatnonzero(sources == "2")
    rest = np.flatnonzero(sources != "2")
    fitted = ridge_head.fit(
        feats[:, rest], y[rest], sources[rest], n_classes=c, dim=16, boost=boost[rest]
    )
    summed = stats.head(held, dim=16)
    np.testing.assert_allclose(summed.coef, fitted.coef, rtol=1e-7, atol=1e-9)
    emb_a, emb_b = fitted.embed(feats[0, held]), summed.embed(feats[0, held])
    np.testing.assert_allclose(emb_a @ emb_a.T, emb_b @ emb_b.T, rtol=1e-6, atol=1e-6)

    shots = held[:6]  # a k-shot fit: six of the held-out images back, as their own source
    train = np.concatenate([rest, shots])
    shot_sources = np.concatenate([sources[rest], np.full(6, "kshot:2")])
    shot_boost = np.concatenate([boost[rest], np.full(6, 4.0)])
    fitted = ridge_head.fit(
        feats[:, train], y[train], shot_sources, n_classes=c, boost=shot_boost, with_basis=False
    )
    summed = stats.head(
        held,
        with_basis=False,
        added=stats.images(shots, np.full(6, "kshot:2"), boost=4.0),
    )
    np.testing.assert_allclose(summed.coef, fitted.coef, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="whole sources"):
        stats.head(held[:3])
