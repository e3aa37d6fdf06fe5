"""Evaluating a model on labelled samples: the classification report, label precision@k of
the embeddings, and the per-source table (each source marked seen or unseen in training).
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from artclf_core.lifecycle.dataset import Sample, load_images, scan_labelled_folder, trained_sources
from artclf_core.lifecycle.metrics import classification_report, label_precision_at_k
from artclf_core.model.artmodel import ArtModel


def by_source_report(
    samples: Sequence[Sample],
    y_pred: np.ndarray,
    classes: Sequence[str],
    *,
    split: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Accuracy grouped by (class, source), and per class over its sources.

    ``sources`` maps ``"<class>/<source>"`` to ``{"label", "source", "n", "accuracy",
    "predicted" (counts by predicted class), "trained_on"}``; ``trained_on`` says whether the
    model had training images of that source (from the model's stored ``split``; None when
    unknown), so a high figure on a source the model learnt from is not read as
    generalisation. ``per_class`` gives, for each class, the leave-one-source-out style view:
    the accuracy of each of its sources weighted equally (``mean_source_accuracy``), the worst
    source, and the same mean over the sources the model was *not* trained on
    (``unseen_source_accuracy``, None when there are none or it is unknown).
    """
    classes = tuple(classes)
    trained = trained_sources(split)
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[(s.label, s.source)].append(i)
    index = {c: i for i, c in enumerate(classes)}
    sources: dict[str, Any] = {}
    for (label, source), rows in sorted(groups.items()):
        pred = Counter(classes[int(p)] for p in np.asarray(y_pred)[rows])
        sources[f"{label}/{source}"] = {
            "label": label,
            "source": source,
            "n": len(rows),
            "accuracy": pred.get(label, 0) / len(rows),
            "predicted": {c: pred[c] for c in classes if pred.get(c)},
            "trained_on": None if trained is None else source in trained.get(label, set()),
        }
    per_class: dict[str, Any] = {}
    for label in sorted({s.label for s in samples}, key=lambda c: index.get(c, len(index))):
        mine = [v for v in sources.values() if v["label"] == label]
        worst = min(mine, key=lambda v: (v["accuracy"], v["source"]))
        unseen = [v["accuracy"] for v in mine if v["trained_on"] is False]
        per_class[label] = {
            "sources": len(mine),
            "n": sum(v["n"] for v in mine),
            "mean_source_accuracy": float(np.mean([v["accuracy"] for v in mine])),
            "worst_source": worst["source"],
            "worst_accuracy": worst["accuracy"],
            "unseen_sources": len(unseen) if trained is not None else None,
            "unseen_source_accuracy": float(np.mean(unseen)) if unseen else None,
        }
    return {"sources": sources, "per_class": per_class}


def full_report(
    samples: Sequence[Sample],
    probs: np.ndarray,
    embs: np.ndarray,
    classes: Sequence[str],
    *,
    split: dict[str, Any] | None = None,
) -> dict[str, Any]:
    index = {c: i for i, c in enumerate(classes)}
    y_true = np.array([index[s.label] for s in samples], dtype=np.int64)
    y_pred = np.argmax(probs, axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    report = classification_report(y_true, y_pred, classes)
    report["label_precision_at_5"] = label_precision_at_k(embs, y_true, k=5)
    report["by_source"] = by_source_report(samples, y_pred, classes, split=split)
    return report


def evaluate_samples(samples: Sequence[Sample], model: ArtModel) -> dict[str, Any]:
    """Report of ``model`` over ``samples`` (labels must be model classes).

    The keys of :func:`artclf_core.lifecycle.metrics.classification_report`, plus
    ``label_precision_at_5`` (the embedding's retrieval quality within ``samples``, see
    :func:`artclf_core.lifecycle.metrics.label_precision_at_k`) and ``by_source``
    (:func:`by_source_report`, using the split stored in the model's metadata).
    """
    unknown = {s.label for s in samples} - set(model.classes)
    if unknown:
        raise ValueError(f"labels {sorted(unknown)} are not classes of model {model.version}")
    probs = np.zeros((0, len(model.classes)), np.float32)
    embs = np.zeros((0, model.embedding_dim), np.float32)
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    # Decode in chunks so evaluating a large folder does not hold every image in memory.
    for chunk in _chunks(samples, 256):
        parts.append(model.predict(load_images(chunk, size=model.image_size)))
    if parts:
        probs = np.concatenate([p for p, _ in parts])
        embs = np.concatenate([e for _, e in parts])
    split = (model.metrics or {}).get("split") if isinstance(model.metrics, dict) else None
    return full_report(samples, probs, embs, model.classes, split=split)


def _chunks(items: Sequence[Sample], size: int) -> Iterable[Sequence[Sample]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def evaluate(
    data_dir: str | os.PathLike[str], model_path: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Report of a saved model (the shipped default when ``model_path`` is None) on a folder.

    Every image of the folder is scored, so on the training folder this overstates quality;
    ``by_source`` marks which sources the model was trained on, and ``bench/model_quality.py``
    gives the held-out figure.
    """
    model = ArtModel.load(model_path)
    return evaluate_samples(scan_labelled_folder(data_dir), model)
