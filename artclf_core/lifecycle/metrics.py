"""The evaluation report: scikit-learn's classification metrics, and label precision@k.

The classes are imbalanced (63 icons vs ~500 paintings), so balanced accuracy and per-class
F1 matter more than accuracy. The counts come from scikit-learn (``confusion_matrix``,
``precision_recall_fscore_support``, ``balanced_accuracy_score``), the definitions an ML
owner reading the model card expects; label precision@k (the similarity search's figure)
has no scikit-learn equivalent and is written here. No TensorFlow: the report can be
produced (and tested) anywhere.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)


def _to_indices(values: Sequence[Any] | np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """Accept labels either as class names or as integer indices into ``classes``."""
    arr = np.asarray(values)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() >= len(classes):
            raise ValueError(f"label index out of range 0..{len(classes) - 1}")
        return arr.astype(np.int64).ravel()
    index = {c: i for i, c in enumerate(classes)}
    try:
        return np.array([index[str(v)] for v in arr.ravel()], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"label {exc.args[0]!r} is not one of {classes}") from None


def classification_report(
    y_true: Sequence[Any] | np.ndarray,
    y_pred: Sequence[Any] | np.ndarray,
    classes: Sequence[str],
) -> dict[str, Any]:
    """Return accuracy, balanced accuracy, per-class precision/recall/F1 and the confusion matrix.

    ``y_true``/``y_pred`` are class names or indices into ``classes``. Conventions (the same as
    scikit-learn's with ``zero_division=0``): a precision, recall or F1 whose denominator is
    zero is 0.0; balanced accuracy is the mean recall over the classes that have at least one
    true sample, so a class missing from an evaluation folder does not drag it to zero.
    All values are plain Python types so the dict can be dumped as JSON as it is.
    """
    classes = tuple(classes)
    t = _to_indices(y_true, classes)
    p = _to_indices(y_pred, classes)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    k = len(classes)
    n = int(t.size)
    if n:
        labels = list(range(k))
        cm = confusion_matrix(t, p, labels=labels).astype(np.int64)
        precision, recall, f1, support = precision_recall_fscore_support(
            t, p, labels=labels, zero_division=0
        )
        with warnings.catch_warnings():  # a predicted class absent from y_true is expected
            warnings.simplefilter("ignore", UserWarning)
            balanced = float(balanced_accuracy_score(t, p))
    else:  # scikit-learn refuses empty input; an empty evaluation scores 0
        cm = np.zeros((k, k), dtype=np.int64)
        precision = recall = f1 = np.zeros(k)
        support = np.zeros(k, dtype=np.int64)
        balanced = 0.0
    tp = np.diag(cm)
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "balanced_accuracy": balanced,
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion": cm.tolist(),
        "n": n,
        "classes": list(classes),
    }


def format_report(report: dict[str, Any]) -> str:
    """Render a report from :func:`classification_report` as a fixed-width text table.

    Macro F1 (over classes with support) is shown as well, computed here from ``per_class`` so
    the report dict itself keeps exactly its documented keys. The optional keys added by
    :mod:`artclf_core.lifecycle.training` (``label_precision_at_5``, ``by_source``) are shown when
    present.
    """
    classes = list(report["classes"])
    per = report["per_class"]
    width = max([len(c) for c in classes] + [len("macro F1")])
    supported = [per[c]["f1"] for c in classes if per[c]["support"] > 0]
    macro_f1 = sum(supported) / len(supported) if supported else 0.0
    lines = [
        f"images:            {report['n']}",
        f"accuracy:          {report['accuracy']:.3f}",
        f"balanced accuracy: {report['balanced_accuracy']:.3f}",
        f"macro F1:          {macro_f1:.3f}",
        "",
        f"{'class':<{width}}  precision  recall     f1  support",
    ]
    for c in classes:
        m = per[c]
        lines.append(
            f"{c:<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}"
            f"  {m['support']:7d}"
        )
    cell = max(6, *(len(c[:10]) for c in classes)) + 1
    lines += ["", "confusion matrix (rows = true, columns = predicted):"]
    lines.append(" " * (width + 2) + "".join(f"{c[:10]:>{cell}}" for c in classes))
    for c, row in zip(classes, report["confusion"], strict=True):
        lines.append(f"{c:<{width}}  " + "".join(f"{v:>{cell}d}" for v in row))
    if "label_precision_at_5" in report:
        lines.insert(4, f"label precision@5: {report['label_precision_at_5']:.3f}")
    by_source = report.get("by_source")
    if by_source and by_source.get("sources"):
        rows = list(by_source["sources"].values())
        sw = max(len(f"{r['label']}/{r['source']}") for r in rows)
        lines += ["", f"{'class/source':<{sw}}      n  accuracy  trained on"]
        for r in rows:
            seen = {True: "yes", False: "no", None: "?"}[r.get("trained_on")]
            name = f"{r['label']}/{r['source']}"
            lines.append(f"{name:<{sw}}  {r['n']:5d}  {r['accuracy']:8.3f}  {seen}")
    return "\n".join(lines)


def label_precision_at_k(
    embeddings: np.ndarray, labels: Sequence[Any] | np.ndarray, k: int = 5
) -> float:
    """Mean share of each item's ``k`` nearest neighbours (cosine) that carry its label.

    This is what a user of similarity search sees: ask for the artworks most like one and count
    how many are of the same medium. The item itself is excluded from its neighbours (so an
    exact duplicate elsewhere in the set does count). Ties in similarity are broken by index,
    so the result is deterministic. When the set has ``k`` or fewer other items, every other
    item is a neighbour. Rows of zeros have cosine 0 to everything. Returns 0.0 for fewer
    than two items.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    lab = np.asarray(labels).ravel()
    if emb.ndim != 2 or emb.shape[0] != lab.size:
        raise ValueError(f"need embeddings (N, D) and N labels, got {emb.shape} and {lab.size}")
    if k < 1:
        raise ValueError("k must be at least 1")
    n = emb.shape[0]
    if n < 2:
        return 0.0
    k = min(k, n - 1)
    unit = _unit_rows(emb)
    return _neighbour_hits(unit, lab, unit, lab, k, exclude_self=True) / (n * k)


def _unit_rows(a: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (rows of zeros stay zero: cosine 0 to everything)."""
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return np.divide(a, norms, out=np.zeros_like(a), where=norms > 0)


def _neighbour_hits(
    queries: np.ndarray,
    query_labels: np.ndarray,
    reference: np.ndarray,
    reference_labels: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
) -> int:
    """How many of each query's ``k`` nearest reference rows (unit rows, cosine) share its
    label, summed. ``exclude_self``: queries are the reference, a row is not its own
    neighbour. Blocks of rows keep the similarity matrix small; ties go to the lower index."""
    hits = 0
    for start in range(0, len(queries), 1024):
        sim = queries[start : start + 1024] @ reference.T
        if exclude_self:
            rows = np.arange(sim.shape[0])
            sim[rows, start + rows] = -np.inf
        nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        hits += int(
            (reference_labels[nearest] == query_labels[start : start + len(sim), None]).sum()
        )
    return hits


def label_precision_against(
    queries: np.ndarray,
    query_labels: Sequence[Any] | np.ndarray,
    reference: np.ndarray,
    reference_labels: Sequence[Any] | np.ndarray,
    k: int = 5,
) -> float:
    """Mean share of each query's ``k`` nearest ``reference`` items (cosine) with its label.

    The cross-validation's retrieval figure: the queries are a held-out source, the
    reference is what the fold's model was trained on (the catalogue a new collection is
    searched against). Returns 0.0 without queries or references.
    """
    q = np.asarray(queries, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    ql = np.asarray(query_labels).ravel()
    rl = np.asarray(reference_labels).ravel()
    if q.ndim != 2 or r.ndim != 2 or q.shape[0] != ql.size or r.shape[0] != rl.size:
        raise ValueError("need queries (N, D), references (M, D) and one label per row")
    if k < 1:
        raise ValueError("k must be at least 1")
    if not len(q) or not len(r):
        return 0.0
    k = min(k, len(r))
    return _neighbour_hits(_unit_rows(q), ql, _unit_rows(r), rl, k) / (len(q) * k)
