"""Self-training on each held-out collection, against the plain recipe, on the same folds.

    python bench/self_training.py [--data ../shared/data/artworks] [--folds 5]
        [--features-cache F3.npz] [--rounds 1,2] [--thresholds 0.5,0.7,0.889]

Each held-out set of the model card's grouped 5-fold plan (``--folds 0``: each source family,
leave one out) plays one unlabelled collection: the recipe's head scores it, its confident
images lend their predicted class, the head refits (:mod:`artclf_core.lifecycle.self_training`).
Its labels are never used but to score. Prints the pooled balanced accuracy and recall per
class of the plain recipe and of each variant beside it (same run, same folds), and the
sources that move most. ``F3.npz``: the three-view cache of ``bench/source_cv.py
--features-cache`` (the recipe's features). Results: docs/model-card.md, "Self-training on a
collection's own images".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from artclf_core import CLASSES  # noqa: E402
from artclf_core.lifecycle import cv_evaluate, ridge_head, self_training, source_cv  # noqa: E402
from artclf_core.lifecycle.dataset import scan_labelled_folder  # noqa: E402
from artclf_core.lifecycle.ridge_stats import RidgeStats  # noqa: E402
from artclf_core.model import calibration  # noqa: E402


def _recalls(y: np.ndarray, pred: np.ndarray) -> list[float]:
    return [float(np.mean(pred[y == c] == c)) for c in range(len(CLASSES))]


def _per_source(keys: np.ndarray, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {k: float(np.mean(pred[keys == k] == y[keys == k])) for k in sorted(set(keys))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    ap.add_argument("--folds", type=int, default=5, help="0: leave one family out")
    ap.add_argument("--features-cache", help=".npz keeping the recipe's features between runs")
    ap.add_argument("--rounds", default="1,2")
    ap.add_argument("--thresholds", default="0.5,0.7,0.889")
    ap.add_argument(
        "--collections",
        choices=["family", "fold"],
        default="family",
        help="what a collection (whose class priors reweight its pseudo-labels) is: each source "
        "family, or (with --folds k) each fold's whole test set, eight families mixed",
    )
    ap.add_argument(
        "--precision",
        action="store_true",
        help="also the label precision@5 of each fold's final head (held-out images searched "
        "among its training images) and the ECE at the plain temperature (slower: a basis per fit)",
    )
    args = ap.parse_args()
    samples = scan_labelled_folder(args.data)
    views = ridge_head.DEFAULT_VIEWS
    feats = cv_evaluate.cached_features(samples, 160, views, "lite1", args.features_cache)
    _, groups = cv_evaluate.grouping(samples)
    y = np.array([CLASSES.index(s.label) for s in samples])
    sources = np.array([s.source for s in samples])
    keys = ridge_head.source_keys(y, sources)
    k = args.folds or None
    stats = RidgeStats(feats, y, sources, n_classes=len(CLASSES))
    started = time.perf_counter()
    plain = np.zeros((len(y), len(CLASSES)))
    for _, _, test in source_cv.plan(groups, k):
        plain[test] = stats.head(test, with_basis=False).logits(feats[0, test])
    temperature = calibration.calibration_summary(plain, y)["temperature"]
    base = plain.argmax(1)
    plan = cv_evaluate.plan_name(k, len(set(groups)))
    print(f"{plan}; temperature of the plain out-of-fold logits {temperature:.3f}")
    print("variant | balanced accuracy | recall " + " / ".join(CLASSES) + " | s")
    recalls = _recalls(y, base)
    print(
        f"plain recipe | {np.mean(recalls):.4f} | "
        + " / ".join(f"{r:.2f}" for r in recalls)
        + f" | {time.perf_counter() - started:.0f}"
    )
    before = _per_source(keys, y, base)
    collections = list(groups)
    if args.collections == "fold" and k:
        for i, (_, _, test) in enumerate(source_cv.plan(groups, k)):
            for j in test:
                collections[j] = f"fold{i}"
    variants = [
        (rounds, threshold, priors)
        for rounds in [int(r) for r in args.rounds.split(",")]
        for threshold in [float(t) for t in args.thresholds.split(",")]
        for priors in (False, True)
    ]
    for rounds, threshold, priors in variants:
        started = time.perf_counter()
        pred = self_training.cross_validate(
            stats,
            groups,
            temperature,
            k=k,
            rounds=rounds,
            threshold=threshold,
            collections=collections if priors else None,
        ).argmax(1)
        recalls = _recalls(y, pred)
        after = _per_source(keys, y, pred)
        moved = sorted((after[s] - before[s], s) for s in before)
        name = f"priors per {args.collections}" if priors else "no priors"
        print(
            f"{rounds} round(s) at {threshold}, {name} | {np.mean(recalls):.4f} | "
            + " / ".join(f"{r:.2f}" for r in recalls)
            + f" | {time.perf_counter() - started:.0f}"
        )
        print(
            f"  mean per-source accuracy {np.mean(list(before.values())):.3f} -> "
            f"{np.mean(list(after.values())):.3f}; sources up / down by more than 0.05: "
            f"{sum(d > 0.05 for d, _ in moved)} / {sum(d < -0.05 for d, _ in moved)}"
        )
        for _, s in moved[:4] + moved[-4:]:
            print(f"    {s}: {before[s]:.2f} -> {after[s]:.2f}")
    if args.precision:
        labels = np.array([s.label for s in samples])
        for priors in (None, False, True):
            print(_precision(stats, feats, labels, y, groups, k, temperature, priors, collections))
    return 0


def _precision(stats, feats, labels, y, groups, k, temperature, priors, collections) -> str:
    """Label precision@5 and ECE of the plain heads (``priors`` None) or the self-trained ones
    (without or with each collection's priors), as :func:`cv_evaluate.cross_validate` measures
    the shipped embedding: each held-out image's 5 nearest training images."""
    hits = total = 0
    scores = np.zeros((len(y), len(CLASSES)))
    for _, train, test in source_cv.plan(groups, k):
        pictures = feats[0, test]
        head = stats.head(test)
        if priors is not None:
            adapted, _, _ = self_training.adapt(
                lambda added, test=test: stats.head(test, added=added),
                pictures,
                head.logits(pictures),
                views=feats.shape[0],
                temperature=temperature,
                collections=np.asarray(collections)[test] if priors else None,
            )
            head = adapted or head
        scores[test] = head.logits(pictures)
        h, n = source_cv.fold_precision_at_k(
            head.embed(pictures), labels[test], head.embed(feats[0, train]), labels[train]
        )
        hits, total = hits + h, total + n
    probs = calibration.softmax(scores, temperature)
    ece = calibration.expected_calibration_error(probs, y)
    name = {None: "plain", False: "self-trained, no priors", True: "self-trained, priors"}
    return f"{name[priors]}: label precision@5 {hits / total:.3f}, ECE {ece:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
