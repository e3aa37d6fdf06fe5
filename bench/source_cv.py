"""Leave-one-source-family-out cross-validation of the reference recipe, and the shipped model
on the families it never trained on (:mod:`artclf_core.lifecycle.cv_evaluate`; the same as
``artclf evaluate --data DIR --cv sources``).

    python bench/source_cv.py [--data ../shared/data/artworks] [--model PATH] [--size 160]
                              [--views 1] [--lam 10] [--source-power 0.5]
                              [--backbone lite1] [--no-gram] [--folds K] [--kshot] [--boost B]
                              [--features-cache F.npz] [--json OUT]

``--folds 5``: grouped 5-fold (the folds every variant of the model card is compared on)
instead of leave-one-family-out; ``--kshot``: the k-shot curve (k = 0, 5, 10, 20 labelled
images per class of each held-out family added to training, :mod:`artclf_core.lifecycle.kshot`).

The recipes tried with it and what each gave: docs/model-card.md, "Read this first".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from artclf_core.lifecycle import ridge_head  # noqa: E402
from artclf_core.lifecycle.cv_evaluate import evaluate_by_sources, format_by_sources  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "artworks"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--model", help="saved model to compare (default: the shipped one)")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--views", type=int, default=ridge_head.DEFAULT_VIEWS)
    ap.add_argument("--lam", type=float, default=ridge_head.DEFAULT_LAMBDA)
    ap.add_argument("--source-power", type=float, default=ridge_head.DEFAULT_SOURCE_POWER)
    ap.add_argument("--backbone", default="lite1", choices=["lite0", "lite1", "lite2"])
    ap.add_argument(
        "--no-gram", action="store_true", help="the recipe without the channel correlations"
    )
    ap.add_argument("--folds", type=int, help="grouped k-fold instead of leave-one-out")
    ap.add_argument("--kshot", action="store_true", help="also the k-shot curve")
    ap.add_argument("--boost", type=float, default=1.0, help="--kshot: weight of the shots")
    ap.add_argument("--features-cache", help=".npz keeping the backbone features between runs")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = evaluate_by_sources(
        args.data,
        args.model,
        size=args.size,
        views=args.views,
        lam=args.lam,
        source_power=args.source_power,
        variant=args.backbone,
        gram=not args.no_gram,
        k=args.folds,
        kshot=args.kshot,
        boost=args.boost,
        features_cache=args.features_cache,
    )
    print(format_by_sources(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
