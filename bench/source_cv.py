"""Leave-one-source-family-out cross-validation of candidate recipes, and the shipped model on
the families it never trained on.

    python bench/source_cv.py [--data ../shared/data/artworks] [--size 160] [--views 1]
                              [--lam 10] [--source-power 0.5] [--json OUT]

What it measures (issue 12, "Evaluation that cannot flatter"):

1. **Frozen EfficientNet-Lite0 + texture statistics + ridge head** (the recipe search of
   docs/model-card.md, "Source-grouped cross-validation"): features of every image from
   :func:`artclf_core.texture.build_texture_backbone` (pooled head and the channel mean/std of
   stages 2-6), view 0 as ingestion prepares it and ``--views - 1`` views through
   :func:`artclf_core.augment.augment`; every source family
   (:func:`artclf_core.source_cv.source_family`, near copies merged) held out once; a
   closed-form ridge classifier (one-hot targets, L2 ``--lam`` per example, sources balanced
   within a class by ``--source-power``) per fold. Printed: the pooled out-of-fold report
   (balanced accuracy, per-class precision/recall/F1, confusion, per-source accuracy), label
   precision@5 of each held-out family against the fold's training images in the standardised
   feature space, and temperature scaling of the out-of-fold scores (ECE before/after, the
   review threshold for 90 % precision).
2. **The shipped model** on the images of the families its own metadata says it did not train
   on, and the recipe's out-of-fold predictions on exactly those images: the same held-out
   images for both, which is the comparison the retraining gate must make.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from artclf_core import CLASSES, augment, calibration, source_cv  # noqa: E402
from artclf_core.metrics import classification_report, format_report  # noqa: E402
from artclf_core.preprocess import open_rgb, to_model_input  # noqa: E402
from artclf_core.training import duplicate_groups, scan_labelled_folder  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "artworks"


def source_weights(labels: np.ndarray, sources: np.ndarray, power: float) -> np.ndarray:
    """Per-image weights: ``1 / n_source ** power`` within a class, classes equal, mean 1."""
    keys = np.char.add(np.char.add(labels.astype(str), "/"), sources.astype(str))
    _, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inv].astype(np.float64) ** power
    for c in np.unique(labels):
        m = labels == c
        w[m] /= w[m].sum()
    return w * len(w) / w.sum()


def features(samples, size: int, views: int) -> np.ndarray:
    from artclf_core.texture import build_texture_backbone

    net = build_texture_backbone(size)
    with ThreadPoolExecutor(max_workers=2) as pool:
        pictures = list(pool.map(lambda s: open_rgb(str(s.path)), samples))
    out = []
    for v in range(views):

        def prep(i: int, v: int = v) -> np.ndarray:
            img = pictures[i]
            if v:
                img = augment.augment(img, np.random.default_rng([v, i]))
            return to_model_input(img, size)

        with ThreadPoolExecutor(max_workers=2) as pool:
            x = np.stack(list(pool.map(prep, range(len(samples)))))
        out.append(net.predict(x.astype(np.float32), batch_size=64, verbose=0))
    return np.stack(out).astype(np.float32)


def cross_validate(feats, labels, sources, groups, lam: float, power: float):
    y = np.array([CLASSES.index(c) for c in labels])
    views = feats.shape[0]
    scores = np.zeros((len(y), len(CLASSES)))
    hits = total = 0
    for _, train, test in source_cv.folds(groups):
        x = feats[:, train].reshape(-1, feats.shape[2])
        mu, sd = x.mean(0), x.std(0) + 1e-6
        x = (x - mu) / sd
        w = np.tile(source_weights(labels[train], sources[train], power), views)
        t = np.eye(len(CLASSES))[np.tile(y[train], views)] - 1.0 / len(CLASSES)
        a = (x * w[:, None]).T @ x + lam * len(x) * np.eye(x.shape[1])
        coef = np.linalg.solve(a, (x * w[:, None]).T @ t)
        q = (feats[0, test] - mu) / sd
        scores[test] = q @ coef
        ref = (feats[0, train] - mu) / sd
        h, n = source_cv.fold_precision_at_k(q, labels[test], ref, labels[train])
        hits, total = hits + h, total + n
    return scores, hits / total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--views", type=int, default=1)
    ap.add_argument("--lam", type=float, default=10.0)
    ap.add_argument("--source-power", type=float, default=0.5)
    ap.add_argument("--json", help="write both reports here")
    args = ap.parse_args()

    started = time.perf_counter()
    samples = scan_labelled_folder(args.data)
    labels = np.array([s.label for s in samples])
    sources = np.array([s.source for s in samples])
    copies = duplicate_groups(samples)
    keys = [copies[s] for s in samples]
    groups = source_cv.cv_groups(list(sources), keys)
    print(
        f"{len(samples)} images, {len(set(sources))} sources, {len(set(groups))} held-out "
        f"groups (families, near copies merged)",
        flush=True,
    )
    feats = features(samples, args.size, args.views)
    print(f"features {feats.shape} in {time.perf_counter() - started:.0f}s", flush=True)
    scores, p5 = cross_validate(feats, labels, sources, groups, args.lam, args.source_power)
    y = np.array([CLASSES.index(c) for c in labels])
    cal = calibration.calibration_summary(scores, y)
    probs = calibration.softmax(scores, cal["temperature"])
    report = source_cv.oof_report(
        list(labels), list(sources), groups, probs, CLASSES, precision_at_5=p5
    )
    report["calibration"] = cal
    print(
        f"\n== recipe: frozen lite0 {args.size}px + texture stats, ridge lam {args.lam}, "
        f"{args.views} view(s), source power {args.source_power}: out-of-fold =="
    )
    print(format_report(report))
    print(
        f"calibration: T {cal['temperature']:.3f}, ECE {cal['ece_before']:.3f} -> "
        f"{cal['ece_after']:.3f}, review threshold {cal['review']['threshold']:.3f} "
        f"(precision {cal['review']['precision']:.3f} above it, coverage "
        f"{cal['review']['coverage']:.3f})"
    )

    from artclf_core.model import ArtModel
    from artclf_core.training import evaluate_samples

    shipped = ArtModel.load()
    trained = {
        source_cv.source_family(src)
        for info in shipped.metrics["split"]["classes"].values()
        for src in info["train"]
    }
    unseen = np.array([source_cv.source_family(s) not in trained for s in sources])
    ship_rep = evaluate_samples([s for s, u in zip(samples, unseen, strict=True) if u], shipped)
    same = classification_report(y[unseen], probs[unseen].argmax(1), CLASSES)
    print(
        f"\n== the same {int(unseen.sum())} images of families {shipped.version} never "
        f"trained on =="
    )
    print(
        f"shipped {shipped.version}: balanced accuracy {ship_rep['balanced_accuracy']:.3f}, "
        f"accuracy {ship_rep['accuracy']:.3f}"
    )
    print(
        f"recipe, out-of-fold:  balanced accuracy {same['balanced_accuracy']:.3f}, "
        f"accuracy {same['accuracy']:.3f}"
    )
    print(f"\ntotal {time.perf_counter() - started:.0f}s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"recipe": report, "shipped_unseen": ship_rep, "recipe_unseen": same}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
