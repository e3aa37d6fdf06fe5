"""Measure models on images they never saw: the source-disjoint validation split.

The headline figure is no longer this split but the leave-one-source-family-out
cross-validation (``--cv sources``, the same as ``artclf evaluate --cv sources`` and
``bench/source_cv.py``): the split below lets a source sit on both sides for classes whose
sources are few, and overstates quality (docs/model-card.md, "Read this first").

    python bench/model_quality.py [--data ../shared/data/artworks] [--model PATH ...] [--json]

With one ``--model`` (default: the shipped one) the split is rebuilt with the parameters stored
in that model's own metadata (mode, validation fraction, seed), so the figure printed is for
exactly the sources that were held out when it was trained. With several ``--model``\\ s
(e.g. the cnn and the backbone) every model is scored on the *same* split, the one of the
first model (or ``--mode/--val-fraction/--seed``), side by side: accuracy, balanced accuracy,
per-class F1, label precision@5 of the embedding among the held-out images, and accuracy per
held-out source. A model whose own training split differs from that one is flagged: it may
have trained on some of the images it is scored on. Scoring the whole folder instead
(``artclf evaluate``) mixes in training images and overstates quality.
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

from artclf_core.lifecycle.dataset import (  # noqa: E402
    VAL_FRACTION,
    describe_split,
    scan_labelled_folder,
    split_by_source,
)
from artclf_core.lifecycle.evaluation import evaluate_samples  # noqa: E402
from artclf_core.lifecycle.metrics import format_report  # noqa: E402
from artclf_core.model.artmodel import ArtModel, default_model_path  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "artworks"


def _macro_f1(report: dict) -> float:
    f1 = [v["f1"] for v in report["per_class"].values() if v["support"] > 0]
    return sum(f1) / len(f1) if f1 else 0.0


def comparison_table(results: list[dict]) -> str:
    """Side-by-side text table of several models' reports on one split."""
    names = [f"{r['arch']} {r['image_size']}px" for r in results]
    width = max(14, *(len(n) for n in names)) + 2
    classes = results[0]["report"]["classes"]
    rows: list[tuple[str, list[str]]] = [
        ("version", [r["version"] for r in results]),
        ("accuracy", [f"{r['report']['accuracy']:.3f}" for r in results]),
        ("balanced acc.", [f"{r['report']['balanced_accuracy']:.3f}" for r in results]),
        ("macro F1", [f"{_macro_f1(r['report']):.3f}" for r in results]),
        ("precision@5", [f"{r['report']['label_precision_at_5']:.3f}" for r in results]),
    ]
    rows += [
        (f"F1 {c}", [f"{r['report']['per_class'][c]['f1']:.3f}" for r in results]) for c in classes
    ]
    sources = results[0]["report"]["by_source"]["sources"]
    for key, info in sources.items():
        rows.append(
            (
                f"acc {key} (n={info['n']})",
                [f"{r['report']['by_source']['sources'][key]['accuracy']:.3f}" for r in results],
            )
        )
    label_w = max(len(label) for label, _ in rows) + 2
    version_w = max(width, *(len(r["version"]) + 2 for r in results))
    lines = [f"{'':<{label_w}}" + "".join(f"{n:>{version_w}}" for n in names)]
    for label, cells in rows:
        lines.append(f"{label:<{label_w}}" + "".join(f"{c:>{version_w}}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Rebuild the held-out split, score the model(s) on it and print the report(s)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labelled folder")
    ap.add_argument(
        "--model",
        type=Path,
        action="append",
        default=None,
        help="a model; repeat to compare several on one split (default: the shipped one)",
    )
    ap.add_argument("--mode", choices=["source", "random"], help="split mode (default: stored)")
    ap.add_argument("--val-fraction", type=float, help="(default: stored in the first model)")
    ap.add_argument("--seed", type=int, help="split seed (default: stored in the first model)")
    ap.add_argument("--json", action="store_true", help="print the report(s) as JSON")
    ap.add_argument(
        "--cv", choices=["sources"], help="sources: the leave-one-family-out headline instead"
    )
    args = ap.parse_args(argv)
    if args.cv == "sources":
        from artclf_core.lifecycle.cv_evaluate import evaluate_by_sources, format_by_sources

        first = args.model[0] if args.model else None
        result = evaluate_by_sources(args.data, first)
        print(json.dumps(result) if args.json else format_by_sources(result))
        return 0

    if not args.data.is_dir():
        print(f"data folder {args.data} not found (pass --data)", file=sys.stderr)
        return 2
    paths = args.model or [default_model_path()]
    models = [ArtModel.load(p) for p in paths]
    split = (models[0].metrics or {}).get("split") or {}
    mode = args.mode or split.get("mode", "source")
    if mode == "none":
        print(
            "this model was trained without a validation split: every image was seen; "
            "pass --mode source",
            file=sys.stderr,
        )
        return 2
    fraction = args.val_fraction or float(split.get("val_fraction", VAL_FRACTION))
    seed = args.seed if args.seed is not None else int(split.get("seed", 0))

    samples = scan_labelled_folder(args.data)
    train, val = split_by_source(samples, fraction, seed, mode=mode)
    summary = describe_split(train, val)
    results = []
    warnings = []
    for path, model in zip(paths, models, strict=True):
        own = (model.metrics or {}).get("split") or {}
        same = (
            own.get("mode") == mode
            and own.get("classes") == summary["classes"]
            and float(own.get("val_fraction", -1)) == fraction
        )
        if not same:
            warnings.append(
                f"WARNING: {path} was not trained with this split (other parameters, or the "
                "folder changed): it may have seen some of the images it is scored on"
            )
        started = time.perf_counter()
        report = evaluate_samples(val, model)
        results.append(
            {
                "model": str(path),
                "version": model.version,
                "arch": model.arch,
                "image_size": model.image_size,
                "trained_on_this_split": same,
                "seconds": round(time.perf_counter() - started, 1),
                "report": report,
            }
        )
    for w in warnings:
        print(w, file=sys.stderr)
    if args.json:
        out = {
            "split": {"mode": mode, "val_fraction": fraction, "seed": seed, **summary},
            "models": results,
        }
        if len(results) == 1:  # the single-model layout of earlier versions, kept
            out.update(
                model=results[0]["model"],
                version=results[0]["version"],
                split_mode=mode,
                report=results[0]["report"],
            )
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"split:   {mode}, val_fraction={fraction}, seed={seed}: "
        f"{len(train)} train / {len(val)} held-out images"
    )
    for label, info in summary["classes"].items():
        print(f"  {label:<12} held out: {', '.join(info['val_groups']) or '-'}")
    for r in results:
        print(
            f"\nmodel:   {r['model']} ({r['version']}, {r['arch']}, {r['image_size']}px), "
            f"scored in {r['seconds']:.1f}s\n"
        )
        print(format_report(r["report"]))
    if len(results) > 1:
        print("\nside by side (same held-out images):\n")
        print(comparison_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
