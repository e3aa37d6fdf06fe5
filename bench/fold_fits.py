"""The cross-validation's ridge fits: each fold's head from per-class sums
(``artclf_core/lifecycle/ridge_stats.py``, what ``cv_evaluate`` and ``kshot`` use) against
``ridge_head.fit`` on the fold's own rows (the baseline), in the same run.

    python bench/fold_fits.py --features-cache F.npz [--data ../shared/data/artworks]
        [--views 3] [--folds 6]

``F.npz``: the cache that ``bench/source_cv.py --views V --features-cache F.npz`` writes (the
backbone's features of every image and its tone copies). Times the first ``--folds``
leave-one-family-out folds both ways, with the embedding basis (the cross-validation's fits)
and without (the k-shot curve's), and prints the largest difference between the two heads'
logits. Results: docs/model-card.md, "Tone copies of the training images".
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
from artclf_core.lifecycle import cv_evaluate, ridge_head, source_cv  # noqa: E402
from artclf_core.lifecycle.dataset import scan_labelled_folder  # noqa: E402
from artclf_core.lifecycle.ridge_stats import RidgeStats  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    ap.add_argument("--features-cache", required=True)
    ap.add_argument("--views", type=int, default=ridge_head.DEFAULT_VIEWS)
    ap.add_argument("--folds", type=int, default=6)
    args = ap.parse_args()
    samples = scan_labelled_folder(args.data)
    feats = cv_evaluate.cached_features(samples, 160, args.views, "lite1", args.features_cache)
    feats = feats.astype(np.float64)
    y = np.array([CLASSES.index(s.label) for s in samples])
    sources = np.array([s.source for s in samples])
    _, groups = cv_evaluate.grouping(samples)
    started = time.perf_counter()
    stats = RidgeStats(feats, y, sources, n_classes=len(CLASSES))
    print(
        f"{len(samples)} images, {args.views} view(s); sums of all rows: "
        f"{time.perf_counter() - started:.1f} s"
    )
    print("held out  basis  from sums  fit (baseline)  largest logit difference")
    totals = {True: [0.0, 0.0], False: [0.0, 0.0]}
    for _, train, test in list(source_cv.plan(groups, None))[: args.folds]:
        for basis in (True, False):
            t0 = time.perf_counter()
            summed = stats.head(test, with_basis=basis)
            t1 = time.perf_counter()
            fitted = ridge_head.fit(
                feats[:, train],
                y[train],
                sources[train],
                n_classes=len(CLASSES),
                with_basis=basis,
            )
            t2 = time.perf_counter()
            diff = np.abs(summed.logits(feats[0, test]) - fitted.logits(feats[0, test])).max()
            totals[basis][0] += t1 - t0
            totals[basis][1] += t2 - t1
            print(
                f"{len(test):8d}  {'yes' if basis else 'no ':5s}  {t1 - t0:8.2f} s"
                f"  {t2 - t1:12.2f} s  {diff:.1e}",
                flush=True,
            )
    for basis, (a, b) in totals.items():
        print(
            f"total, basis {'yes' if basis else 'no'}: {a:.1f} s from sums against {b:.1f} s "
            f"fitted ({b / a:.1f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
