"""How much of each class a collection holds, estimated from the model's own probabilities.

A collection is rarely a sample of every class in equal parts: a book of wood engravings is
nearly all engraving, a museum's department mostly painting. The ridge head is trained with
the classes weighed equally, so its calibrated probabilities assume equal priors. When a
collection's priors are not equal, the posterior for *that collection* is the model's
probability reweighted by ``prior_c / (1 / C)`` (Bayes' rule; the likelihoods ``p(x | c)``
are the model's). The priors are unknown, but they are the fixed point of

    prior_c = mean over the collection's images of posterior_c(x; prior)

which expectation-maximisation reaches from equal priors (Saerens, Latinne & Decaestecker,
"Adjusting the outputs of a classifier to new a priori probabilities", Neural Computation
14, 2002). No label is read: only the collection's own predictions. Each class also gets
:data:`PSEUDO_COUNT` imaginary images (the maximum a posteriori estimate under a Dirichlet
prior), so a small collection's priors stay near equal until its own images outweigh them:
without it a book of 26 wood engravings that the head reads as half drawings was pulled
wholly to drawings (0.50 -> 0.04 correct).

Self-training (:mod:`.self_training`) picks its pseudo-labels from these reweighted
probabilities, each collection with its own priors: an engraving that the plain head finds
equally likely a drawing is counted an engraving in a book of engravings. Measured on the
model card's grouped 5-fold plan, two rounds at 0.5 (``bench/self_training.py``), balanced
accuracy against self-training without priors (0.712; 3 sources down by more than 0.05):

=================  ===========================  ===================================
pseudo-count       each source family a         each fold's test set (eight
                   collection                   families mixed) one collection
=================  ===========================  ===================================
0 (plain EM)       0.765, 10 sources down       0.741, 6 down
5                  0.767, 9 down                0.739, 7 down
**20 (shipped)**   **0.756, 3 down**            **0.736, 4 down**
=================  ===========================  ===================================

The reweighting itself is *not* applied to the labels a model gives at ingestion: on mixed
collections it moved 17 sources down by more than 0.05 for no pooled gain; docs/model-card.md,
"Self-training on a collection's own images".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Imaginary images of each class added to every collection (Dirichlet MAP; table above).
PSEUDO_COUNT = 20.0
#: EM stops when no prior moves by more than this (or after :data:`MAX_ITERATIONS`).
TOLERANCE = 1e-6
MAX_ITERATIONS = 200


def estimate_priors(probs: np.ndarray, pseudo_count: float = PSEUDO_COUNT) -> np.ndarray:
    """The class priors (C,) of the images whose calibrated probabilities, under equal
    training priors, are ``probs`` ((n, C)), each class given ``pseudo_count`` imaginary
    images; equal priors for no image."""
    probs = np.asarray(probs, dtype=np.float64)
    n, n_classes = probs.shape
    priors = np.full(n_classes, 1.0 / n_classes)
    if n == 0:
        return priors
    for _ in range(MAX_ITERATIONS):
        new = (reweight(probs, priors).sum(0) + pseudo_count) / (n + n_classes * pseudo_count)
        done = np.abs(new - priors).max() < TOLERANCE
        priors = new
        if done:
            break
    return priors


def reweight(probs: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """``probs`` ((n, C), made under equal priors) as posteriors under ``priors``."""
    out = np.asarray(probs, dtype=np.float64) * np.asarray(priors, dtype=np.float64)
    total = out.sum(1, keepdims=True)
    return np.divide(out, total, out=np.zeros_like(out), where=total > 0)


def adjust(
    probs: np.ndarray, collections: Sequence[str] | np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each collection's rows of ``probs`` reweighted by its own estimated priors:
    ``(reweighted probabilities, {collection: priors})``."""
    probs = np.asarray(probs, dtype=np.float64)
    collections = np.asarray(collections)
    out = np.empty_like(probs)
    priors: dict[str, np.ndarray] = {}
    for coll in np.unique(collections):
        mine = collections == coll
        priors[str(coll)] = estimate_priors(probs[mine])
        out[mine] = reweight(probs[mine], priors[str(coll)])
    return out, priors
