"""The k-shot curve: what a few curator labels from a new collection buy on the rest of it.

A curator who confirms or corrects labels on a collection the model never saw is asking "if
I label ten of each, how much better is the rest?". :func:`kshot_curve` answers it on the
labelled training images themselves: every held-out group (a source family, families that
share a copy merged: :mod:`artclf_core.lifecycle.source_cv`) plays the new collection in turn.

For a group ``g`` and each of its classes with at least ``max(ks) + MIN_REST`` images, the
images are shuffled by copy group (a near copy never sits on both sides) and the first
``max(ks)`` are the *shots*; ``k`` shots per class (nested: the 5 are among the 10) join every
image of the other groups in training, as their own source, each weighed ``boost`` times a
normal image of its source size (what :mod:`artclf_core.lifecycle.retrain` gives a curator
collection); the rest of ``g`` (the same images for every ``k``) is scored. ``k = 0`` is plain
leave-one-group-out. The result is averaged over ``draws`` shuffles and then over groups.

The head is the product's ridge head (:func:`artclf_core.lifecycle.ridge_head.fit`, logits
only), computed from the sums of :class:`artclf_core.lifecycle.ridge_stats.RidgeStats` (the
whole set's less the held-out group's, plus the shots'), so the whole curve costs one pass
over the features and a D x D solve per fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from artclf_core.lifecycle import ridge_head
from artclf_core.lifecycle.ridge_stats import RidgeStats

#: Ks of the model card's curve.
KS: tuple[int, ...] = (0, 5, 10, 20)
#: Fewest images of a class left to score after its shots are taken.
MIN_REST = 5
#: Default weight of a curator label against an image of an ordinary source of the same size.
DEFAULT_BOOST = 1.0


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y``."""
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def draw_shots(
    idx: np.ndarray, copy_keys: np.ndarray, n: int, rng: np.random.Generator
) -> list[int]:
    """Up to ``n`` images of ``idx`` in a random order of whole copy groups: the first ``k``
    of the list are the k shots, and a copy of a shot is a shot too (it is never scored)."""
    keys = sorted(set(copy_keys[idx]))
    order = [keys[int(i)] for i in rng.permutation(len(keys))]
    by_key: dict[str, list[int]] = {}
    for i in idx:
        by_key.setdefault(str(copy_keys[i]), []).append(int(i))
    shots: list[int] = []
    for key in order:
        if len(shots) >= n:
            break
        shots.extend(by_key[key])
    return shots


def kshot_curve(
    features: np.ndarray,
    y: np.ndarray,
    sources: Sequence[str],
    groups: Sequence[str],
    copy_keys: Sequence[str],
    *,
    n_classes: int,
    ks: Sequence[int] = KS,
    draws: int = 2,
    lam: float = ridge_head.DEFAULT_LAMBDA,
    source_power: float = ridge_head.DEFAULT_SOURCE_POWER,
    boost: float = DEFAULT_BOOST,
    seed: int = 0,
) -> dict[str, Any]:
    """Balanced accuracy on the rest of each held-out group after ``k`` labelled images per
    class from it joined training (module docstring). ``features``: (N, D), or (views, N, D)
    with augmented views as training rows (:func:`.ridge_head.as_views`).

    Returns ``{"ks", "groups": {group: {"n_rest", "classes", "balanced_accuracy": {k: mean
    over draws}}}, "mean": {k: mean over groups}, "gain": {k: mean of (k) - (0)},
    "n_groups", "draws", "boost"}``; a group none of whose classes has enough images is
    left out (``skipped``).
    """
    feats = ridge_head.as_views(features)
    y = np.asarray(y)
    src = np.asarray(sources).astype(object)
    grp = np.asarray(groups)
    keys = np.asarray(copy_keys)
    ks = sorted(set(int(k) for k in ks))
    most = max(ks)
    # each fit from the sums of all images less the held-out group's plus its shots (exact)
    stats = RidgeStats(feats, y, src.astype(str), n_classes=n_classes, source_power=source_power)
    out: dict[str, Any] = {}
    skipped = []
    for g in sorted(set(groups)):
        in_g = np.flatnonzero(grp == g)
        classes = [c for c in np.unique(y[in_g]) if (y[in_g] == c).sum() >= most + MIN_REST]
        if not classes:
            skipped.append(g)
            continue
        scores: dict[int, list[float]] = {k: [] for k in ks}
        n_rest = 0
        for d in range(draws if most else 1):
            rng = np.random.default_rng([seed, d, len(g), sum(map(ord, g))])
            shots = {c: draw_shots(in_g[y[in_g] == c], keys, most, rng) for c in classes}
            taken = {i for s in shots.values() for i in s}
            test = np.array([i for i in in_g if y[i] in classes and i not in taken])
            n_rest = len(test)
            for k in ks:
                if k == 0 and d > 0:
                    continue  # nothing drawn: the same fit every time
                added = np.array([i for c in classes for i in shots[c][:k]], dtype=int)
                head = stats.head(
                    in_g,
                    lam=lam,
                    with_basis=False,
                    # the shots as their own source
                    added=stats.images(added, np.full(len(added), "kshot:" + g), boost),
                )
                pred = head.logits(feats[0, test]).argmax(1)
                scores[k].append(_balanced_accuracy(y[test], pred))
        out[g] = {
            "n_rest": n_rest,
            "classes": [int(c) for c in classes],
            "balanced_accuracy": {k: float(np.mean(v)) for k, v in scores.items()},
        }
    mean = {k: float(np.mean([r["balanced_accuracy"][k] for r in out.values()])) for k in ks}
    return {
        "ks": ks,
        "groups": out,
        "mean": mean,
        "gain": {k: mean[k] - mean[ks[0]] for k in ks},
        "n_groups": len(out),
        "skipped": skipped,
        "draws": draws,
        "boost": boost,
    }
