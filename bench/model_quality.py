"""Measure a model on the images it never saw: the source-disjoint validation split.

    python bench/model_quality.py [--data ../shared/data/artworks] [--model PATH] [--json]

The split is rebuilt with the parameters stored in the model's own metadata (mode,
validation fraction, seed), so the figure printed here is for exactly the sources that were
held out when that model was trained. Scoring the whole folder instead (``artclf evaluate``)
mixes in training images and overstates quality.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from artclf_core.metrics import format_report  # noqa: E402
from artclf_core.model import ArtModel, default_model_path  # noqa: E402
from artclf_core.training import (  # noqa: E402
    VAL_FRACTION,
    describe_split,
    evaluate_samples,
    scan_labelled_folder,
    split_by_source,
)

DEFAULT_DATA = REPO.parent / "shared" / "data" / "artworks"


def main(argv: list[str] | None = None) -> int:
    """Rebuild the held-out split, score the model on it and print the report."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labelled folder")
    ap.add_argument("--model", type=Path, default=None, help="model (default: shipped one)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)

    if not args.data.is_dir():
        print(f"data folder {args.data} not found (pass --data)", file=sys.stderr)
        return 2
    model_path = args.model or default_model_path()
    model = ArtModel.load(model_path)
    split = (model.metrics or {}).get("split") or {}
    mode = split.get("mode", "source")
    if mode == "none":
        print(
            "this model was trained without a validation split: every image was seen",
            file=sys.stderr,
        )
        return 2
    fraction = float(split.get("val_fraction", VAL_FRACTION))
    seed = int(split.get("seed", 0))

    samples = scan_labelled_folder(args.data)
    train, val = split_by_source(samples, fraction, seed, mode=mode)
    started = time.perf_counter()
    report = evaluate_samples(val, model)
    seconds = time.perf_counter() - started
    if args.json:
        print(
            json.dumps(
                {
                    "model": str(model_path),
                    "version": model.version,
                    "split_mode": mode,
                    "report": report,
                },
                indent=2,
            )
        )
        return 0
    summary = describe_split(train, val)
    recorded = split.get("classes")
    if recorded is not None and recorded != summary["classes"]:
        print(
            "WARNING: the folder differs from the one the model was trained on; the split "
            "below is not the training-time one",
            file=sys.stderr,
        )
    print(f"model:   {model_path} ({model.version})")
    print(
        f"split:   {mode}, val_fraction={fraction}, seed={seed}: "
        f"{len(train)} train / {len(val)} held-out images"
    )
    for label, info in summary["classes"].items():
        print(f"  {label:<12} held out: {', '.join(info['val_groups']) or '-'}")
    print(f"scored in {seconds:.1f}s\n")
    print(format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
