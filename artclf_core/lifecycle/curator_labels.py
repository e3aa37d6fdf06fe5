"""Curator labels in training: which exported images a curator labelled, and what they bring.

A curator who confirms or corrects labels (the review page, ``artclf.confirm_label``,
``artclf label DIR``) is teaching the model *their collection*. Two things follow:

* **Grouping and weight.** The export names every labelled artwork ``<collection>__<name>``
  (:func:`artclf_core.lifecycle.lake_dataset.export_name`), so a collection is one *source*:
  held out whole by the validation split and the cross-validation, weighed as one source by
  the ridge head. Its curator-labelled images are weighed :data:`BOOST` times an ordinary
  image of a source that size: a few dozen labels of a museum otherwise vanish under 4,000
  others (the k-shot curve of the model card measures the choice).
* **Evidence for the gate.** :func:`collection_cv` cross-validates *within* each collection:
  every curator-labelled image is predicted by a head trained on everything except its fold
  of that collection (the other folds included: what the next night's model would have
  known). The gate compares these out-of-fold predictions with the active model's on the
  labels the active model never saw (:func:`artclf_core.lifecycle.promotion.decide`), so a candidate
  cannot win on images it trained on.

The export writes :data:`FILE` beside the class folders; :func:`read` gives it back to
training (absent for a plain training folder: no curator labels).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from artclf_core.lifecycle import ridge_head
from artclf_core.lifecycle.metrics import classification_report
from artclf_core.model import calibration

#: The sidecar file in an exported training folder.
FILE = "curator-labels.json"
#: Weight of a curator-labelled image against an ordinary image of a source of its size,
#: chosen with the k-shot curve (docs/model-card.md, "Learning a collection").
BOOST = 4.0
#: Folds of the within-collection cross-validation (fewer when a collection is smaller).
FOLDS = 5


@dataclass(frozen=True)
class Label:
    """One curator-labelled image of an export: its path under the export folder
    (``<class>/<file>``), collection, curator, and whether the active model could not have
    seen the label (labelled after it was trained)."""

    path: str
    collection: str | None
    curator: str
    new: bool


def write(folder: str | Path, labels: Sequence[Label]) -> Path:
    path = Path(folder) / FILE
    path.write_text(json.dumps([asdict(lab) for lab in labels], indent=1))
    return path


def read(folder: str | Path) -> dict[str, Label]:
    """``{relative path: Label}``; empty when the folder has no sidecar."""
    path = Path(folder) / FILE
    if not path.exists():
        return {}
    return {d["path"]: Label(**d) for d in json.loads(path.read_text())}


def relative(sample: Any) -> str:
    """A sample's key in the sidecar: ``<class>/<file name>``."""
    return f"{sample.label}/{Path(sample.path).name}"


def boosts(samples: Sequence[Any], labels: dict[str, Label], boost: float = BOOST) -> np.ndarray:
    """Per-sample weight multipliers: ``boost`` for curator-labelled images, else 1."""
    return np.array([boost if relative(s) in labels else 1.0 for s in samples])


def _folds(idx: np.ndarray, copy_keys: Sequence[str], k: int) -> list[np.ndarray]:
    """``idx`` in ``k`` folds of whole copy groups, dealt round-robin in key order."""
    by_key: dict[str, list[int]] = defaultdict(list)
    for i in idx:
        by_key[copy_keys[i]].append(int(i))
    parts: list[list[int]] = [[] for _ in range(k)]
    for n, key in enumerate(sorted(by_key)):
        parts[n % k].extend(by_key[key])
    return [np.array(p, dtype=int) for p in parts if p]


def collection_cv(
    features: np.ndarray,
    y: np.ndarray,
    sources: Sequence[str],
    curated: np.ndarray,
    copy_keys: Sequence[str],
    *,
    classes: Sequence[str],
    temperature: float = 1.0,
    lam: float = ridge_head.DEFAULT_LAMBDA,
    source_power: float = ridge_head.DEFAULT_SOURCE_POWER,
    boost: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """Within-collection cross-validation of the curator labels (module docstring).
    ``features``: (N, D), or (views, N, D) with augmented views as training rows
    (:func:`.ridge_head.as_views`).

    ``curated`` marks the curator-labelled images; each of their sources (collections) with
    at least two copy groups is split in ``min(FOLDS, groups)`` folds. Returns ``(report,
    out-of-fold probabilities by image index)``; the report has, per collection, ``n``,
    ``balanced_accuracy``, ``accuracy`` and ``folds``.
    """
    feats = ridge_head.as_views(features)
    src = np.asarray(sources)
    curated = np.asarray(curated, dtype=bool)
    report: dict[str, Any] = {}
    oof: dict[int, np.ndarray] = {}
    for coll in sorted(set(src[curated])):
        idx = np.flatnonzero(curated & (src == coll))
        k = min(FOLDS, len({copy_keys[i] for i in idx}))
        if k < 2:
            report[coll] = {"n": int(len(idx)), "skipped": "fewer than two distinct images"}
            continue
        for test in _folds(idx, copy_keys, k):
            train = np.setdiff1d(np.arange(len(y)), test)
            head = ridge_head.fit(
                feats[:, train],
                y[train],
                src[train],
                n_classes=len(classes),
                lam=lam,
                source_power=source_power,
                boost=None if boost is None else boost[train],
                with_basis=False,
            )
            probs = calibration.softmax(head.logits(feats[0, test]), temperature)
            for i, p in zip(test, probs, strict=True):
                oof[int(i)] = p
        pred = np.array([oof[int(i)].argmax() for i in idx])
        rep = classification_report(y[idx], pred, classes)
        report[coll] = {
            "n": int(len(idx)),
            "folds": k,
            "balanced_accuracy": rep["balanced_accuracy"],
            "accuracy": rep["accuracy"],
        }
    return report, oof
