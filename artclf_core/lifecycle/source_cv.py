"""Source-grouped cross-validation: the only model figure that predicts a new collection.

The product is used on museums, books and photographers it never saw, and most sources of the
training images have a look of their own. A random split, or even a single split that holds
out some sources of a class while others share the look, flatters a model that learnt the
look. Here every *source family* is held out exactly once (leave-one-group-out), the model of
that fold is trained on all the other families, and the held-out predictions of all folds are
pooled into one report.

* **Source family** (:func:`source_family`): the file prefix before ``__`` up to its first
  ``_`` or ``-``: ``orthodoxsaints_theophany`` and ``orthodoxsaints_legacy`` (two workshops on
  one web site) are ``orthodoxsaints``; the four ``wikiart-<style>`` folders are ``wikiart``;
  every Gutenberg book (``gitenberg8710_dore_bible``) is its own family, and ``rijks`` is one
  family across its drawings and paintings. Name a new source ``<collection>_<part>`` and it
  is held out with its siblings.
* **Near copies** never straddle a fold: families that share an exact or near copy (the
  pipeline's own pHash + dHash rule, :func:`artclf_core.lifecycle.dataset.duplicate_groups`) are
  merged into one group first.

Which images go where (scikit-learn's grouped splitters over the families), and the pooled
report.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold, LeaveOneGroupOut

from artclf_core.lifecycle.metrics import classification_report, label_precision_against

_FAMILY = re.compile(r"^[^_-]+")


def source_family(source: str) -> str:
    """The family a source is held out with: its name up to the first ``_`` or ``-``."""
    m = _FAMILY.match(source)
    return m.group(0) if m else source


def cv_groups(sources: Sequence[str], copy_keys: Sequence[str] | None = None) -> list[str]:
    """One group name per image: its source family, families that share a copy merged.

    ``copy_keys[i]`` identifies image ``i``'s group of exact/near copies (equal keys = copies);
    with None no merging is done. A merged group is named after its families joined by ``+``.
    """
    fams = [source_family(s) for s in sources]
    parent = {f: f for f in fams}

    def find(f: str) -> str:
        while parent[f] != f:
            parent[f] = parent[parent[f]]
            f = parent[f]
        return f

    if copy_keys is not None:
        if len(copy_keys) != len(fams):
            raise ValueError("copy_keys must have one entry per image")
        first: dict[str, str] = {}
        for fam, key in zip(fams, copy_keys, strict=True):
            other = first.setdefault(key, fam)
            a, b = find(fam), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    members: dict[str, set[str]] = defaultdict(set)
    for f in fams:
        members[find(f)].add(f)
    names = {root: "+".join(sorted(m)) for root, m in members.items()}
    return [names[find(f)] for f in fams]


def folds(groups: Sequence[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Leave-one-group-out (scikit-learn's ``LeaveOneGroupOut``): ``[(group, train indices,
    test indices)]``, sorted by group."""
    arr = np.asarray(groups)
    names = np.unique(arr)
    if len(names) < 2:  # LeaveOneGroupOut refuses; the one fold has nothing to train on
        return [(str(g), np.zeros(0, dtype=np.int64), np.arange(len(arr))) for g in names]
    return [
        (str(names[i]), train, test)
        for i, (train, test) in enumerate(LeaveOneGroupOut().split(arr, groups=arr))
    ]


def group_kfold(groups: Sequence[str], k: int = 5) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Grouped k-fold (scikit-learn's ``GroupKFold``, not shuffled): ``[(fold name, train
    indices, test indices)]`` with every group in exactly one test fold.

    The assignment is deterministic and depends only on the groups and their sizes, so every
    variant compared under it sees the same folds: groups are taken largest first and each
    goes to the fold with the fewest images so far (ties: the lowest fold). Groups of equal
    size are taken in name order: ``GroupKFold`` takes them in the reverse order of their
    labels, so each group is labelled by its rank from the end of the sorted names. A fold's
    name lists its groups.
    """
    arr = np.asarray(groups)
    names = sorted(set(groups))
    if k < 2 or k > len(names):
        raise ValueError(f"k must be between 2 and the number of groups ({len(names)}), got {k}")
    rank = {g: len(names) - i for i, g in enumerate(names)}
    labels = np.array([rank[g] for g in groups])
    out = []
    for train, test in GroupKFold(n_splits=k).split(arr, groups=labels):
        out.append(("+".join(sorted(set(arr[test].tolist()))), train, test))
    return out


def plan(groups: Sequence[str], k: int | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The folds of an evaluation: leave-one-group-out (``k`` None) or grouped ``k``-fold."""
    return folds(groups) if k is None else group_kfold(groups, k)


def check_disjoint(
    groups: Sequence[str], copy_keys: Sequence[str], train: np.ndarray, test: np.ndarray
) -> None:
    """Raise if a group or a copy sits on both sides of one fold (the property under test)."""
    g = np.asarray(groups)
    k = np.asarray(copy_keys)
    if set(g[train]) & set(g[test]):
        raise AssertionError(f"groups on both sides: {sorted(set(g[train]) & set(g[test]))}")
    if set(k[train]) & set(k[test]):
        raise AssertionError("a copy sits on both sides of a fold")


def oof_report(
    labels: Sequence[str],
    sources: Sequence[str],
    groups: Sequence[str],
    probabilities: np.ndarray,
    classes: Sequence[str],
    *,
    precision_at_5: float | None = None,
) -> dict[str, Any]:
    """The pooled report of out-of-fold predictions.

    :func:`artclf_core.lifecycle.metrics.classification_report` over every image (each predicted by
    the
    model of the fold that held its group out), plus ``by_source`` (accuracy and predicted
    classes per ``class/source``, all of them unseen by construction), ``worst_source``,
    ``label_precision_at_5`` (when given) and ``folds`` (the number of groups).
    """
    classes = tuple(classes)
    y_pred = np.argmax(np.asarray(probabilities), axis=1)
    report = classification_report(list(labels), y_pred, classes)
    by: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, (lab, src) in enumerate(zip(labels, sources, strict=True)):
        by[(lab, src)].append(i)
    rows: dict[str, Any] = {}
    for (lab, src), idx in sorted(by.items()):
        pred = Counter(classes[int(p)] for p in y_pred[idx])
        rows[f"{lab}/{src}"] = {
            "label": lab,
            "source": src,
            "group": groups[idx[0]],
            "n": len(idx),
            "accuracy": pred.get(lab, 0) / len(idx),
            "predicted": {c: pred[c] for c in classes if pred.get(c)},
            "trained_on": False,
        }
    worst = min(rows.values(), key=lambda r: (r["accuracy"], r["source"]))
    report["by_source"] = {"sources": rows}
    report["worst_source"] = {k: worst[k] for k in ("label", "source", "n", "accuracy")}
    report["folds"] = len(set(groups))
    if precision_at_5 is not None:
        report["label_precision_at_5"] = float(precision_at_5)
    return report


def fold_precision_at_k(
    test_emb: np.ndarray,
    test_labels: Sequence[str],
    ref_emb: np.ndarray,
    ref_labels: Sequence[str],
    k: int = 5,
) -> tuple[int, int]:
    """(hits, queries x k) of one fold: each held-out image's ``k`` nearest *training* images
    under that fold's embedding, i.e. a new collection searched against the catalogue."""
    p = label_precision_against(test_emb, test_labels, ref_emb, ref_labels, k=k)
    n = len(test_labels) * min(k, len(ref_labels))
    return int(round(p * n)), n
