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


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
