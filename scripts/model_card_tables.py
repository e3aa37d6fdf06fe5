"""Print the model card's tables from a saved model's own metadata (Markdown).

    python scripts/model_card_tables.py [MODEL.keras]   # default: the shipped model

Training stores its source-family cross-validation in the model
(``metrics["cross_validation"]``); this renders the figures, the confusion matrix and the
per-source table of docs/model-card.md from it, so the card is regenerated, not retyped.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from artclf_core import CLASSES  # noqa: E402
from artclf_core.model.files import default_model_path, read_metadata  # noqa: E402


def tables(meta: dict) -> str:
    m = meta["metrics"]
    cv = m["cross_validation"]
    cal = cv["calibration"]
    review = cal["review"]
    pc = cv["per_class"]
    sources = cv["by_source"]["sources"].values()
    below = sum(r["accuracy"] < 0.5 for r in sources)
    out = [
        f"Version `{meta['version']}`, {cv['n']} images, {cv['folds']} held-out groups, "
        f"trained in {m['training']['train_seconds']:.0f} s.",
        "",
        "| figure (out of fold) | value |",
        "|---|---:|",
        f"| balanced accuracy | **{cv['balanced_accuracy']:.3f}** "
        f"(accuracy {cv['accuracy']:.3f}) |",
        "| recall "
        + " / ".join(CLASSES)
        + " | "
        + " / ".join(f"{pc[c]['recall']:.2f}" for c in CLASSES)
        + " |",
        "| precision "
        + " / ".join(CLASSES)
        + " | "
        + " / ".join(f"{pc[c]['precision']:.2f}" for c in CLASSES)
        + " |",
        f"| label precision@5 | {cv['label_precision_at_5']:.3f} |",
        f"| ECE before / after temperature scaling (T {cal['temperature']:.3f}) | "
        f"{cal['ece_before']:.3f} / {cal['ece_after']:.3f} |",
        f"| review threshold (lowest top probability at 90 % precision) | "
        f"{review['threshold']:.3f}: precision {review['precision']:.3f} above it, "
        f"{review['coverage']:.1%} of images accepted, {1 - review['coverage']:.1%} to review |",
        f"| sources below 0.50 accuracy | {below} of {len(sources)} |",
        "",
        "| | " + " | ".join(CLASSES) + " |",
        "|---|" + "---:|" * len(CLASSES),
    ]
    for c, row in zip(CLASSES, cv["confusion"], strict=True):
        out.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
    out += [
        "",
        "| source (class) | held-out group | images | accuracy | predicted as |",
        "|---|---|---:|---:|---|",
    ]
    for r in sorted(sources, key=lambda r: (r["accuracy"], r["source"])):
        pred = ", ".join(
            f"{c} {n}" for c, n in sorted(r["predicted"].items(), key=lambda kv: -kv[1])
        )
        out.append(
            f"| `{r['source']}` ({r['label']}) | {r['group']} | {r['n']} | "
            f"{r['accuracy']:.2f} | {pred} |"
        )
    return "\n".join(out)


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else str(default_model_path())
    print(tables(read_metadata(path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
