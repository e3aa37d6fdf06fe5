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
14, 2002). No label is read: only the collection's own predictions.

Self-training (:mod:`.self_training`) picks its pseudo-labels from these reweighted
probabilities, each collection with its own priors: an engraving that the plain head finds
equally likely a drawing is counted an engraving in a book of engravings. Measured on the
model card's grouped 5-fold plan, two rounds at 0.5 (``bench/self_training.py``): balanced
accuracy 0.712 -> 0.741 with each fold's mixed test set as one collection, 0.712 -> 0.767
with each source family its own collection. The reweighting itself is *not* applied to the
labels a model gives at ingestion: on mixed collections it moved 17 sources down by more
than 0.05 for no pooled gain (0.740 against 0.741); docs/model-card.md, "Self-training".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: EM stops when no prior moves by more than this (or after :data:`MAX_ITERATIONS`).
TOLERANCE = 1e-6
MAX_ITERATIONS = 200


def estimate_priors(probs: np.ndarray) -> np.ndarray:
    """The class priors (C,) of the images whose calibrated probabilities, under equal
    training priors, are ``probs`` ((n, C)); equal priors for no image."""
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    priors = np.full(n_classes, 1.0 / n_classes)
    if len(probs) == 0:
        return priors
    for _ in range(MAX_ITERATIONS):
        new = reweight(probs, priors).mean(0)
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
