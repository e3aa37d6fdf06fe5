"""Learning a collection's look from its own unlabelled images (self-training).

A collection the model never saw is read by the look of the sources it trained on; its own
images say how *this* collection looks. The ridge head learns it in closed form:

1. fit the head on the labelled images (as always);
2. score the collection's unlabelled images, reweight their calibrated probabilities by
   the collection's own class priors (estimated from them: :mod:`.label_shift`); every image
   whose reweighted top probability reaches :data:`THRESHOLD` lends its class as a
   *pseudo-label*;
3. refit with those images added as training rows, all of them one source per class
   (:data:`SOURCE`), so the usual ``1 / n ** power`` source weighting keeps them from swamping
   a class; repeat from 2 with the new head, :data:`ROUNDS` times in all.

One source for every collection, not one per collection: with the five test sets of the
grouped folds cut into their source families (what a lake's drop folders would be), one
source per (family, class) gave 0.643 on average over the folds against 0.666 for one source
(plain: 0.609): a small family taken wholly for the wrong class weighs more on its own.

Only the pictures themselves are added (no augmented copies): measured as good (0.694 against
0.690 with tone copies, one round), and training pays one forward pass per unlabelled image,
none for copies.

Measured under the model card's grouped 5-fold plan, each fold's test images (about 750, eight
source families of every class) playing one unlabelled collection: balanced accuracy
0.645 -> 0.712 with two rounds at 0.5 without the priors (0.694 with one; 0.657 at the review
threshold 0.889, which keeps too few), 19 sources gaining more than 0.05 and 3 losing more
(Reynolds' plates 0.71 -> 0.57, WikiArt Cubism 0.32 -> 0.25: a collection the model reads
wrongly with confidence is read more wrongly); **0.736** with the test set's class priors
(4 sources down), and **0.756** when each source family is a collection with priors of its
own (what a lake's drop folders are; 3 down). ``bench/self_training.py`` prints it;
docs/model-card.md, "Self-training on a collection's own images".

The product does this in the nightly retrain (:mod:`.retrain` exports each collection's
uncurated artworks beside the labelled ones), so a dropped collection is read by the active
model at ingestion and by a model that has learnt its look after the next promotion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from artclf_core.lifecycle import label_shift, ridge_head, source_cv
from artclf_core.lifecycle.ridge_stats import Added, RidgeStats
from artclf_core.model import calibration

#: Calibrated top probability from which an unlabelled image lends its predicted class
#: (grouped 5-fold, two rounds: 0.5 gives 0.712, 0.7 0.682 after one round against 0.694 at
#: 0.5, the review threshold 0.889 0.657).
THRESHOLD = 0.5
#: Fits on pseudo-labels, each from the previous one's predictions (1: 0.694, 2: 0.712).
ROUNDS = 2
#: The source of every pseudo-labelled image (never a real source's name: ``:``).
SOURCE = "self-training:"
#: Collection name prefix of the validation sources when a candidate self-trains (their
#: pictures join the unlabelled images; their labels only score the result).
VALIDATION_COLLECTION = "validation:"
#: Collections listed by name in :func:`report_rows` (the largest).
REPORT_COLLECTIONS = 15


def pseudo_labels(
    logits: np.ndarray,
    temperature: float,
    threshold: float = THRESHOLD,
    collections: Sequence[str] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, labels)``: which images lend a pseudo-label and their classes. The calibrated
    probabilities are reweighted by each collection's estimated class priors
    (:func:`.label_shift.adjust`; ``collections``: one name per image, None for no
    reweighting); an image is kept when its top probability is at least ``threshold``."""
    probs = calibration.softmax(np.asarray(logits, dtype=np.float64), temperature)
    if collections is not None:
        probs, _ = label_shift.adjust(probs, collections)
    kept = probs.max(1) >= threshold
    return kept, probs.argmax(1)[kept]


def adapt(
    fit: Callable[[Added], ridge_head.RidgeHead],
    pictures: np.ndarray,
    logits: np.ndarray,
    *,
    views: int,
    temperature: float,
    rounds: int = ROUNDS,
    threshold: float = THRESHOLD,
    collections: Sequence[str] | np.ndarray | None = None,
) -> tuple[ridge_head.RidgeHead | None, np.ndarray, list[int]]:
    """Self-train on unlabelled ``pictures`` ((n, D) features), starting
    from the labelled head's ``logits`` on them. ``fit(added)`` returns the head on the
    labelled images plus ``added``; ``views``: the labelled features' views (a pseudo-labelled
    picture fills each, as an image without copies); ``collections``: each picture's
    collection, whose priors reweight its probabilities (:func:`pseudo_labels`).

    Returns ``(the last head, or None if no image reached the threshold; its logits on
    the pictures; pseudo-labels per round)``."""
    pictures = np.asarray(pictures, dtype=np.float64)
    head, scores, used = None, np.asarray(logits, dtype=np.float64), []
    for _ in range(rounds):
        kept, labels = pseudo_labels(scores, temperature, threshold, collections)
        used.append(int(kept.sum()))
        if not kept.any():
            break
        rows = np.repeat(pictures[None, kept], views, axis=0)
        head = fit(Added(rows, labels, np.full(len(labels), SOURCE)))
        scores = head.logits(pictures)
    return head, scores, used


def cross_validate(
    stats: RidgeStats,
    groups: Sequence[str],
    temperature: float,
    *,
    k: int | None = None,
    lam: float = ridge_head.DEFAULT_LAMBDA,
    rounds: int = ROUNDS,
    threshold: float = THRESHOLD,
    collections: Sequence[str] | np.ndarray | None,
) -> np.ndarray:
    """Out-of-fold logits after self-training: each held-out set (a source family, or with
    ``k`` a grouped k-fold's test set) is learnt from as unlabelled images, its labels never
    used. ``temperature``: the plain cross-validation's (what picks the pseudo-labels);
    ``collections``: each image's collection, whose priors reweight its probabilities
    (``groups``: each held-out family a collection of its own), or None for no priors."""
    views = stats.x.shape[0]
    names = None if collections is None else np.asarray(collections)
    out = np.zeros((stats.x.shape[1], stats.n_classes))
    for _, _, test in source_cv.plan(list(groups), k):
        pictures = stats.x[0, test]
        start = stats.head(test, lam=lam, with_basis=False).logits(pictures)

        def fit(added: Added, test: np.ndarray = test) -> ridge_head.RidgeHead:
            return stats.head(test, lam=lam, with_basis=False, added=added)

        _, out[test], _ = adapt(
            fit,
            pictures,
            start,
            views=views,
            temperature=temperature,
            rounds=rounds,
            threshold=threshold,
            collections=None if names is None else names[test],
        )
    return out


def report_rows(info: dict[str, Any], classes: Sequence[str]) -> list[str]:
    """Markdown table of the uncurated collections a model self-trained on (``info``: its
    ``metrics.self_training``), largest first: images, pseudo-labels, and the collection's
    make-up as the model reads it (its estimated priors, classes of at least 5 %). The
    validation families a candidate also learns from are left out: they are not the lake's."""
    mine = {
        name: c
        for name, c in (info.get("collections") or {}).items()
        if not name.startswith(VALIDATION_COLLECTION)
    }
    rows = [
        "| collection | images | pseudo-labelled | make-up as the model reads it |",
        "|---|---:|---:|---|",
    ]
    ranked = sorted(mine.items(), key=lambda kv: (-kv[1]["images"], kv[0]))
    for name, c in ranked[:REPORT_COLLECTIONS]:
        priors = c.get("priors") or {}
        makeup = ", ".join(
            f"{k} {priors[k]:.0%}"
            for k in sorted(priors, key=lambda k: (-priors[k], classes.index(k)))
            if priors[k] >= 0.05
        )
        rows.append(f"| {name} | {c['images']} | {c['pseudo_labelled']} | {makeup or '-'} |")
    if len(ranked) > REPORT_COLLECTIONS:
        rest = ranked[REPORT_COLLECTIONS:]
        rows.append(f"| {len(rest)} more | {sum(c['images'] for _, c in rest)} | | |")
    return rows
