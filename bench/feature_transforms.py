"""Transforms of the frozen features before the ridge head, under the grouped cross-validation.

    python bench/feature_transforms.py --features-cache F.npz [--data ../shared/data/artworks]
        [--folds 5] [--variants none,ssqrt,pow0.3,l2blocks,ssqrt+l2blocks,slog1p]

The features are the shipped recipe's (Lite1 pooled 1280 + texture statistics 896, 160 px),
read from the cache ``bench/source_cv.py --features-cache`` writes (computed and written
first if it is missing); the folds are the model card's (source families and near-copy
groups never split). Each variant transforms every feature, then runs the same
``cv_evaluate.cross_validate`` as the recipe; printed: pooled balanced accuracy, label
precision@5 and per-class recall. Results: docs/model-card.md.
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

from _feature_cv import Folds, score  # noqa: E402

from artclf_core import CLASSES  # noqa: E402
from artclf_core.lifecycle import cv_evaluate  # noqa: E402
from artclf_core.lifecycle.dataset import scan_labelled_folder  # noqa: E402

POOLED = 1280  # the backbone's pooled features come first, the texture statistics after


def _l2(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-9)


def _blocks_l2(f: np.ndarray) -> np.ndarray:
    return np.concatenate([_l2(f[..., :POOLED]), _l2(f[..., POOLED:])], axis=-1)


def _ssqrt(f: np.ndarray) -> np.ndarray:
    return np.sign(f) * np.sqrt(np.abs(f))


VARIANTS = {
    "none": lambda f: f,
    "ssqrt": _ssqrt,
    "pow0.3": lambda f: np.sign(f) * np.abs(f) ** 0.3,
    "l2blocks": _blocks_l2,
    "ssqrt+l2blocks": lambda f: _blocks_l2(_ssqrt(f)),
    "slog1p": lambda f: np.sign(f) * np.log1p(np.abs(f)),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    ap.add_argument("--features-cache", required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    samples = scan_labelled_folder(args.data)
    feats = cv_evaluate.cached_features(samples, 160, 1, "lite1", args.features_cache, gram=False)
    feats = np.asarray(feats, dtype=np.float64)
    folds = Folds.of(samples)
    print(f"{len(samples)} images, {len(set(folds.groups))} groups, grouped {args.folds}-fold")
    print(f"{'variant':16s} {'bal. acc.':>9s} {'p@5':>6s}  recall {' / '.join(CLASSES)}")
    for name in args.variants.split(","):
        started = time.perf_counter()
        got = score(VARIANTS[name](feats), folds, k=args.folds)
        print(
            f"{name:16s} {got.balanced_accuracy:9.3f} {got.precision_at_5:6.3f}  {got.recall}"
            f"  ({time.perf_counter() - started:.0f} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
