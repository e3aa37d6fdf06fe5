"""Which augmentations carry the gain of the augmented views, under the grouped
cross-validation.

    python bench/augment_ablation.py --features-cache F.npz --cache-dir DIR
        [--data ../shared/data/artworks] [--folds 5] [--views 3] [--kshot]
        [--variants geometry+tone+surface,tone,geometry+surface,...]

The shipped recipe fits its ridge head on each training picture and ``views - 1`` augmented
copies of it (``artclf_core.lifecycle.augment``, seeded as training seeds them). The
transforms come in three groups: geometry (crops, perspective, mats, mirror, colour jitter),
tone (greyscale, sepia, halftone screen) and surface (paper tint, resampling, JPEG). Each
variant keeps only the groups named, computes the copies' features once (cached in
``--cache-dir``) and runs the recipe's cross-validation on the model card's folds (held-out
images scored on the pictures themselves; ``--folds 0``: leave one family out; ``--kshot``:
also the k-shot curve at the shipped curator weight). ``F.npz`` is the one-view cache that
``bench/source_cv.py --views 1 --features-cache`` writes. Results: docs/model-card.md.
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
from artclf_core.lifecycle import curator_labels, cv_evaluate, kshot  # noqa: E402
from artclf_core.lifecycle.dataset import scan_labelled_folder  # noqa: E402
from artclf_core.lifecycle.features import backbone_features  # noqa: E402
from artclf_core.model.texture import GRAM_TAPS, build_texture_backbone  # noqa: E402

SIZE = 160


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    ap.add_argument("--features-cache", required=True)
    ap.add_argument("--cache-dir", type=Path, required=True)
    ap.add_argument("--folds", type=int, default=5, help="0: leave one family out")
    ap.add_argument("--views", type=int, default=3)
    ap.add_argument("--kshot", action="store_true", help="also the k-shot curve (minutes)")
    ap.add_argument(
        "--variants", default="none,geometry+tone+surface,tone,geometry+surface,geometry,surface"
    )
    args = ap.parse_args()
    samples = scan_labelled_folder(args.data)
    base = cv_evaluate.cached_features(samples, SIZE, 1, "lite1", args.features_cache)[0]
    folds = Folds.of(samples)
    net = build_texture_backbone(SIZE, variant="lite1", gram_taps=GRAM_TAPS)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    print(f"{len(samples)} images, grouped {args.folds}-fold, {args.views} views")
    for name in args.variants.split(","):
        started = time.perf_counter()
        views = [base]
        if name != "none":
            groups = tuple(name.split("+"))
            for v in range(1, args.views):
                path = args.cache_dir / f"{name}-view{v}.npy"
                if not path.exists():
                    np.save(
                        path,
                        backbone_features(samples, net, SIZE, view=v, pictures=base, groups=groups),
                    )
                views.append(np.load(path))
        got = score(np.stack(views), folds, k=args.folds or None)
        print(
            f"{name:24s} {got.balanced_accuracy:.3f}  p@5 {got.precision_at_5:.3f}  {got.recall}"
            f"  ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        if args.kshot:
            keys, groups = cv_evaluate.grouping(samples)
            curve = kshot.kshot_curve(
                np.stack(views),
                folds.y,
                list(folds.sources),
                groups,
                keys,
                n_classes=len(CLASSES),
                boost=curator_labels.BOOST,
            )
            print(f"  k-shot {curve['mean']} (gain at k=10 {curve['gain'][10]:+.3f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
