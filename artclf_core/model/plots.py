"""PNG plots written with every trained model: training curves and the confusion matrix.

An ML owner deciding whether to trust a promotion wants to see *how* the model trained (did
validation loss turn up, when did early stopping fire) and *where* it errs (drawings vs
engraving is the classic confusion). Matplotlib's Agg backend renders without a display.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def training_curves_png(
    history: dict[str, list[float]], *, title: str, best_epoch: int | None = None
) -> bytes:
    """Loss and accuracy per epoch, training vs validation, best epoch marked."""
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if history.get(key):
                epochs = np.arange(1, len(history[key]) + 1)
                ax.plot(epochs, history[key], style, label=key)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linewidth=0.8, label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(plt, fig)


def confusion_png(report: dict[str, Any], *, title: str) -> bytes:
    """The confusion matrix of a classification report (rows true, columns predicted)."""
    plt = _figure()
    cm = np.asarray(report["confusion"], dtype=np.int64)
    classes = list(report["classes"])
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    row = cm.sum(axis=1, keepdims=True).clip(min=1)
    ax.imshow(cm / row, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            colour = "white" if cm[i, j] / row[i, 0] > 0.6 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=colour, fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        f"{title}\nbalanced accuracy {report['balanced_accuracy']:.3f}, n={report['n']}",
        fontsize=9,
    )
    fig.tight_layout()
    return _png(plt, fig)


def review_png(review: dict[str, Any], *, title: str) -> bytes:
    """Precision of the accepted predictions against their coverage as the threshold on the
    calibrated top probability moves (out of fold, ``calibration.precision_coverage``), the
    model's review threshold marked: what a curator trades between work and errors."""
    plt = _figure()
    curve = review["curve"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot([c["coverage"] for c in curve], [c["precision"] for c in curve], "-o", markersize=3)
    ax.axhline(review["target_precision"], color="grey", linewidth=0.8, linestyle="--")
    ax.plot(
        [review["coverage"]],
        [review["precision"]],
        "s",
        color="C3",
        label=f"threshold {review['threshold']:.3f}: {review['coverage']:.0%} accepted, "
        f"{1 - review['coverage']:.0%} to review",
    )
    ax.set_xlim(0, 1.02)
    return _finish(
        plt,
        fig,
        ax,
        x="coverage (share of images accepted without review)",
        y="precision of accepted labels",
        title=f"{title}\nout of fold, source families held out",
        legend="lower left",
    )


def kshot_png(curve: dict[str, Any], *, title: str) -> bytes:
    """Balanced accuracy on the rest of a held-out family against the labelled images per
    class of it added to training (``lifecycle.kshot``): each family thin, the mean bold."""
    plt = _figure()
    ks = [int(k) for k in curve["ks"]]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for row in curve["groups"].values():
        vals = [_at(row["balanced_accuracy"], k) for k in ks]
        ax.plot(ks, vals, color="grey", alpha=0.25, linewidth=0.8)
    mean = [_at(curve["mean"], k) for k in ks]
    ax.plot(ks, mean, "-o", color="C0", linewidth=2.2, label="mean over held-out families")
    for k, m in zip(ks, mean, strict=True):
        ax.annotate(f"{m:.2f}", (k, m), textcoords="offset points", xytext=(0, 6), fontsize=8)
    ax.set_xticks(ks)
    return _finish(
        plt,
        fig,
        ax,
        x="curator-labelled images per class from the family",
        y="balanced accuracy on the rest of it",
        title=f"{title}\n{curve['n_groups']} held-out families",
        legend="lower right",
    )


def _finish(plt, fig, ax, *, x: str, y: str, title: str, legend: str) -> bytes:
    """Labels, a 0-1 y axis, grid, legend and title; the figure as PNG bytes."""
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc=legend)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _png(plt, fig)


def _at(by_k: dict[Any, float], k: int) -> float:
    """``by_k[k]`` whether the keys are ints (fresh) or strings (after a JSON round trip)."""
    return by_k[k] if k in by_k else by_k[str(k)]


#: Plots drawn on request from a version's recorded metrics (no file in the lake needed):
#: name -> (path into ``metrics``, renderer).
DERIVED = {
    "review.png": (("cross_validation", "calibration", "review"), review_png),
    "kshot.png": (("kshot",), kshot_png),
}


def derived(metrics: dict[str, Any] | None, name: str, *, title: str) -> bytes | None:
    """The derived plot ``name`` of a version's metrics, or None when they lack its data."""
    if name not in derived_names(metrics):
        return None
    path, render = DERIVED[name]
    return render(_dig(metrics, path), title=title)


def _dig(metrics: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        metrics = metrics.get(key) if isinstance(metrics, dict) else None
    return metrics


def derived_names(metrics: dict[str, Any] | None) -> list[str]:
    """Which :data:`DERIVED` plots a version's metrics can draw (the review plot needs the
    precision/coverage curve, recorded by models trained since 2026-12-06)."""
    out = []
    for name, (path, _) in DERIVED.items():
        data = _dig(metrics, path)
        if data and (name != "review.png" or data.get("curve")):
            out.append(name)
    return out


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
