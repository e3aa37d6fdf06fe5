"""The grouped cross-validation of a feature variant, shared by the benches that compare
variants of the frozen features (``feature_transforms.py``, ``texture_descriptors.py``).

Both run the recipe's own ``cv_evaluate.cross_validate`` (ridge head, sources balanced by
1/sqrt(n)) on the model card's folds (source families and near-copy groups never split) and
print the same figures: pooled balanced accuracy, label precision@5, per-class recall.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from artclf_core import CLASSES
from artclf_core.lifecycle import cv_evaluate


@dataclass(frozen=True)
class Folds:
    """The labelled images' arrays and CV groups, computed once per bench run."""

    labels: np.ndarray
    sources: np.ndarray
    y: np.ndarray
    groups: list[str]

    @classmethod
    def of(cls, samples) -> Folds:
        labels = np.array([s.label for s in samples])
        _, groups = cv_evaluate.grouping(samples)
        return cls(
            labels,
            np.array([s.source for s in samples]),
            np.array([CLASSES.index(c) for c in labels]),
            groups,
        )


@dataclass(frozen=True)
class Scored:
    scores: np.ndarray  # out-of-fold logits, (N, classes)
    balanced_accuracy: float
    precision_at_5: float
    recall: str  # per class, "0.43 / 0.30 / ..."


def figures(scores: np.ndarray, folds: Folds) -> tuple[float, str]:
    """Pooled balanced accuracy and per-class recall ("0.43 / 0.30 / ...") of out-of-fold
    ``scores`` (N, classes)."""
    from sklearn.metrics import balanced_accuracy_score, recall_score

    pred = scores.argmax(1)
    recall = " / ".join(f"{r:.2f}" for r in recall_score(folds.y, pred, average=None))
    return float(balanced_accuracy_score(folds.y, pred)), recall


def score(feats: np.ndarray, folds: Folds, *, lam: float = 10.0, k: int | None = 5) -> Scored:
    """Out-of-fold figures of ``feats`` ((N, D), or (V, N, D) for views); ``k`` None: leave
    one family out."""
    feats = np.asarray(feats, dtype=np.float64)
    scores, p5 = cv_evaluate.cross_validate(
        feats if feats.ndim == 3 else feats[None],
        folds.labels,
        folds.sources,
        folds.groups,
        lam=lam,
        power=0.5,
        k=k,
    )
    balanced_accuracy, recall = figures(scores, folds)
    return Scored(scores, balanced_accuracy, p5, recall)
