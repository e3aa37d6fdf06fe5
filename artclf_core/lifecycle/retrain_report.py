"""The Markdown report of a retraining run: the verdict and its reasons, then what the
candidate learnt from (classes, sources, uncurated collections). Shown on the Models page
and in the DAG's log, and stored with the run (``artclf.retrain_runs.report_md``)."""

from __future__ import annotations

from typing import Any

from artclf_core import CLASSES
from artclf_core.lifecycle import self_training

#: Sources listed by name in the markdown report (the rest are added up in one line).
REPORT_SOURCES = 15


def report_markdown(summary: dict[str, Any]) -> str:
    """The run's summary as Markdown: verdict and reasons, then what it trained on."""
    ds = summary["dataset"]
    status = summary["status"]
    if status == "skipped":
        lines = [f"**Nothing trained**: {summary['reason']}."]
    else:
        lines = [
            f"**{status.upper()}**: candidate `{summary['version']}` against "
            f"`{summary.get('compared_with') or 'no active model'}`."
        ]
        lines += [f"- {r}" for r in summary.get("reasons") or []]
        lines.append(f"\nReport, model and plots: `{summary['report'].rsplit('/', 1)[0]}/`")
    new = ds["new_since_active"]
    lines += [
        "",
        f"**Labelled images in the lake**: {ds['n']} "
        f"({new['n']} new since the active model"
        + (f", {_counts(new['per_class'])}" if new["n"] else "")
        + ")",
        "",
        *(
            [
                f"{summary['waiting_under_training']} object(s) under `training/` are still "
                "waiting to be catalogued; the next run will see them.",
                "",
            ]
            if summary.get("waiting_under_training")
            else []
        ),
        "| class | images |",
        "|---|---:|",
        *(f"| {c} | {ds['per_class'].get(c, 0)} |" for c in CLASSES),
        "",
        f"**Sources**: {len(ds['per_source'])}",
        "",
        "| source | images |",
        "|---|---:|",
    ]
    top = sorted(ds["per_source"].items(), key=lambda kv: (-kv[1], kv[0]))
    lines += [f"| {name} | {n} |" for name, n in top[:REPORT_SOURCES]]
    if len(top) > REPORT_SOURCES:
        rest = top[REPORT_SOURCES:]
        lines.append(f"| {len(rest)} more | {sum(n for _, n in rest)} |")
    if (unl := ds.get("unlabelled")) and unl["n"]:
        lines.append(
            f"\n**Uncurated artworks self-trained on**: {unl['n']} of "
            f"{len(unl['per_collection'])} collection(s) (no labels: the model learns each "
            "collection's look from its confident predictions)"
        )
        if summary.get("self_training"):
            lines += ["", *self_training.report_rows(summary["self_training"], CLASSES)]
    lines.append(f"\nTook {summary['seconds']:.0f} s.")
    return "\n".join(lines)


def _counts(per_class: dict[str, int]) -> str:
    return ", ".join(f"{c} {per_class[c]}" for c in CLASSES if per_class.get(c))
