"""Fine-tuning against the frozen recipe, on the same grouped 5-fold plan (issue 29, item 2).

    python bench/finetune_cv.py [--data ../shared/data/artworks] [--folds 0 1 2 3 4]
        [--head-epochs 4] [--epochs 6] [--stages 2] [--label-smoothing 0.1]
        [--features-cache F.npz] [--out results.jsonl]

Folds: :func:`artclf_core.lifecycle.source_cv.group_kfold` (k = 5) over the source families of
``--data`` with near-copy families merged, the plan every variant of the model card is
compared on. For each fold asked for:

* **frozen** (the shipped recipe): frozen EfficientNet-Lite1 + texture statistics, ridge head
  fitted on the fold's training families (features from ``--features-cache`` when given);
* **fine-tuned**: ``artclf train --arch efficientnet_lite0`` on the fold's training families
  only (a folder of links), source-balanced sample weights, label smoothing, the tf.data
  augmentations of :func:`artclf_core.lifecycle.training.augment_image`, early stopping and weight
  choice on its own held-out-family validation split of those training families (never the
  fold's test families); then scored on the test families;
* **fine-tuned + ridge**: the same fine-tuned backbone's pooled features under the shipped
  closed-form ridge head (fitted on the fold's training families): what a hybrid recipe
  that keeps the ridge head's calibration and curator cross-validation would score.

Each fold's line (JSON) is appended to ``--out`` as soon as it is done, so a long run can be
read, and stopped, fold by fold.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from artclf_core import CLASSES  # noqa: E402
from artclf_core.lifecycle import ridge_head, source_cv  # noqa: E402
from artclf_core.lifecycle.cv_evaluate import cached_features, grouping  # noqa: E402
from artclf_core.lifecycle.metrics import classification_report  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "artworks"
log = logging.getLogger("bench.finetune_cv")


def link_folder(samples, root: Path) -> None:
    """``root/<label>/<file name>`` links to ``samples`` (what ``artclf train`` reads)."""
    for s in samples:
        d = root / s.label
        d.mkdir(parents=True, exist_ok=True)
        (d / s.path.name).symlink_to(s.path.resolve())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--folds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--head-epochs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--features-cache")
    ap.add_argument("--out", default="finetune_cv.jsonl")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from artclf_core.lifecycle.dataset import scan_labelled_folder
    from artclf_core.lifecycle.evaluation import evaluate_samples
    from artclf_core.lifecycle.training import train
    from artclf_core.model.artmodel import ArtModel

    samples = scan_labelled_folder(args.data)
    _, groups = grouping(samples)
    plan = source_cv.group_kfold(groups, args.k)
    y = np.array([CLASSES.index(s.label) for s in samples])
    sources = np.array([s.source for s in samples])
    feats = cached_features(samples, 160, 1, "lite1", args.features_cache)[0]
    for f in args.folds:
        name, tr, te = plan[f]
        log.info("fold %d: %d train, %d test images (%s)", f, len(tr), len(te), name)
        head = ridge_head.fit(
            feats[tr], y[tr], sources[tr], n_classes=len(CLASSES), with_basis=False
        )
        frozen = classification_report(y[te], head.logits(feats[te]).argmax(1), CLASSES)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            link_folder([samples[i] for i in tr], Path(tmp) / "data")
            result = train(
                Path(tmp) / "data",
                Path(tmp) / "model.keras",
                arch="efficientnet_lite0",
                val="source",
                head_epochs=args.head_epochs,
                epochs=args.epochs,
                fine_tune_stages=args.stages,
                label_smoothing=args.label_smoothing,
                source_balanced=True,
                verbose=2,
            )
            model = ArtModel.load(result["model_path"], runtime="keras")
            tuned = evaluate_samples([samples[i] for i in te], model)
            from artclf_core.lifecycle.features import backbone_features

            tuned_feats = backbone_features(
                samples, model.model.get_layer("backbone"), model.image_size
            )
            hybrid_head = ridge_head.fit(
                tuned_feats[tr], y[tr], sources[tr], n_classes=len(CLASSES), with_basis=False
            )
            hybrid = classification_report(
                y[te], hybrid_head.logits(tuned_feats[te]).argmax(1), CLASSES
            )
        row = {
            "fold": f,
            "test_groups": name,
            "n_train": int(len(tr)),
            "n_test": int(len(te)),
            "frozen": {
                "balanced_accuracy": frozen["balanced_accuracy"],
                "recall": {c: v["recall"] for c, v in frozen["per_class"].items()},
            },
            "fine_tuned": {
                "balanced_accuracy": tuned["balanced_accuracy"],
                "recall": {c: v["recall"] for c, v in tuned["per_class"].items()},
                "best_epoch": result["best_epoch"],
                "epochs_run": result["epochs_run"],
                "seconds": round(time.perf_counter() - started, 1),
            },
            "fine_tuned_ridge": {
                "balanced_accuracy": hybrid["balanced_accuracy"],
                "recall": {c: v["recall"] for c, v in hybrid["per_class"].items()},
            },
            "settings": vars(args),
        }
        with open(args.out, "a") as out:
            out.write(json.dumps(row) + "\n")
        log.info(
            "fold %d: frozen %.3f, fine-tuned %.3f, fine-tuned + ridge %.3f (%.0f s)",
            f,
            frozen["balanced_accuracy"],
            tuned["balanced_accuracy"],
            hybrid["balanced_accuracy"],
            row["fine_tuned"]["seconds"],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
