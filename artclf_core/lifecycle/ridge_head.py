"""The closed-form head of the default model: ridge logits and a 128-d embedding.

Measured under leave-one-source-family-out cross-validation (docs/model-card.md), a heavily
regularised ridge classifier on frozen ImageNet features with texture statistics generalises
to new collections better than any head trained by gradient descent here (0.655 balanced
accuracy against 0.525-0.558 for Keras heads on the same features): the L2 penalty shrinks
the low-variance directions in which one source differs from another, and the fit is exact
and reproducible (no epochs, no seed, under a second per fold), so a cross-validation of 24
folds costs one pass of the backbone.

The product needs two things from one forward pass: probabilities and a 128-d embedding whose
cosine neighbours share the medium (``similar_artworks``). :func:`fit` therefore returns, for
standardised features ``z``:

* ``logits = z @ coef``: one-hot targets centred on 1/C, each image weighted by
  :func:`source_weights` (classes equal, big sources damped);
* ``embedding = [alpha * logits, z @ basis]``: the C class scores, scaled by ``alpha`` so they
  carry as much norm as the rest, followed by the top ``dim - C`` (weighted) principal
  directions of ``z``. The class part makes neighbours share the medium (label precision@5
  0.42 -> 0.52 out of fold against the principal directions alone); the principal part keeps
  what else the images share (subject, composition) to rank among them.

:func:`layer_weights` folds the standardisation, the two projections and the calibration
temperature into the weights of two ordinary Dense layers (``embedding`` and
``probabilities``), so the saved model is a plain Keras graph: the embedding is still the
penultimate layer and ``softmax(embedding @ W)`` is the calibrated probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg

#: L2 penalty per (weighted) training image, chosen under source-grouped CV (model card).
DEFAULT_LAMBDA = 10.0
#: Within a class, an image of a source with n images weighs ``1 / n ** power``.
DEFAULT_SOURCE_POWER = 0.5
#: Views of each training image the head is fitted on: the picture itself, and with more
#: than 1 augmented copies of it (:mod:`artclf_core.lifecycle.augment`) drawn from
#: :data:`VIEW_TRANSFORMS`. Measured under source-family CV (model card, "Tone copies of the
#: training images"): 3 views with tone copies, 0.630 -> 0.645 leave-one-family-out.
DEFAULT_VIEWS = 3
#: The groups of :mod:`artclf_core.lifecycle.augment` the copies draw from. Tone alone
#: (greyscale, sepia, halftone screen; half the draws leave the picture as it is): a
#: greyscale plate of a painting is still a painting. All three groups measured no better
#: on the grouped folds and worse leave-one-family-out (0.639), one source carrying it.
VIEW_TRANSFORMS: tuple[str, ...] = ("tone",)


def as_views(features: np.ndarray) -> np.ndarray:
    """``features`` as (views, N, D): an (N, D) array is one view. View 0 is each picture as
    ingestion sees it, what a held-out image is scored on; the others only add training rows."""
    feats = np.asarray(features)
    return feats[None] if feats.ndim == 2 else feats


def source_keys(labels: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """``"<label>/<source>"`` per image: what a source weight counts images by."""
    return np.char.add(
        np.char.add(np.asarray(labels).astype(str), "/"), np.asarray(sources).astype(str)
    )


def source_weights(labels: np.ndarray, sources: np.ndarray, power: float) -> np.ndarray:
    """Per-image weights: ``1 / n_source ** power`` within a class, classes equal, mean 1."""
    labels, sources = np.asarray(labels), np.asarray(sources)
    keys = source_keys(labels, sources)
    _, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inv].astype(np.float64) ** power
    for c in np.unique(labels):
        m = labels == c
        w[m] /= w[m].sum()
    return w * len(w) / w.sum()


@dataclass(frozen=True)
class RidgeHead:
    """A fitted head (all float64): ``z = (features - mean) / std``; see the module doc."""

    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)
    coef: np.ndarray  # (D, C)
    basis: np.ndarray  # (D, dim - C)
    alpha: float

    def standardise(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float64) - self.mean) / self.std

    def logits(self, features: np.ndarray) -> np.ndarray:
        return self.standardise(features) @ self.coef

    def embed(self, features: np.ndarray) -> np.ndarray:
        z = self.standardise(features)
        return np.hstack([self.alpha * (z @ self.coef), z @ self.basis])


def fit(
    features: np.ndarray,
    y: np.ndarray,
    sources: np.ndarray,
    *,
    n_classes: int,
    lam: float = DEFAULT_LAMBDA,
    source_power: float = DEFAULT_SOURCE_POWER,
    dim: int = 128,
    boost: np.ndarray | None = None,
    with_basis: bool = True,
) -> RidgeHead:
    """Fit on ``features`` of shape (N, D), or (V, N, D) for V views of the same N images
    (augmented views add rows with the image's label and weight; the mean and std come from
    all rows). ``y`` holds class indices, ``sources`` the source of each image.

    ``boost`` multiplies each image's source weight before the classes are re-balanced (a
    curator collection's few labels count as much as a large source's: :mod:`.kshot`
    measures how much); ``with_basis=False`` skips the embedding's principal directions (an
    evaluation that only needs logits saves the eigen-decomposition)."""
    feats = as_views(features).astype(np.float64)
    views, n, d = feats.shape
    y = np.asarray(y, dtype=np.int64)
    if len(y) != n or len(sources) != n:
        raise ValueError(f"{n} images but {len(y)} labels and {len(sources)} sources")
    if with_basis and (dim <= n_classes or dim - n_classes > d):
        raise ValueError(f"embedding dim {dim} must exceed {n_classes} and fit {d} features")
    x = feats.reshape(-1, d)
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    w = source_weights(y, np.asarray(sources), source_power)
    if boost is not None:
        boosted = w * np.asarray(boost, dtype=np.float64)
        for c in np.unique(y):  # each class keeps its total weight: classes stay equal
            m = y == c
            boosted[m] *= w[m].sum() / boosted[m].sum()
        w = boosted
    w = np.tile(w, views)
    target = np.eye(n_classes)[np.tile(y, views)] - 1.0 / n_classes
    # No intercept: the logits are 0 at the plain mean of the training images. Centring on
    # the weighted mean with a fitted intercept instead measured 0.588 against 0.655 out of
    # fold (a new collection's images lie nearer the plain mean).
    # The closed form (X'WX + lam n I) coef = X'W target, each image's weight its sample
    # weight and the penalty scaled by the number of rows, so lam means the same whatever the
    # size of the training set (what scikit-learn's Ridge(solver="cholesky") solves; the
    # weighted Gram matrix X'WX is computed once, for the solve and the principal directions).
    xw = x * w[:, None]
    gram, rhs = xw.T @ x, xw.T @ target
    del xw
    return head_from_gram(
        gram, rhs, mean, std, lam * len(x), n_classes, dim, with_basis, x, standardised=True
    )


def head_from_gram(
    gram: np.ndarray,
    rhs: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    alpha: float,
    n_classes: int,
    dim: int,
    with_basis: bool,
    rows: np.ndarray | None,
    *,
    standardised: bool = False,
) -> RidgeHead:
    """The head from the standardised weighted Gram matrix ``gram`` (Z'WZ), ``rhs`` (Z'WT) and
    the penalty ``alpha``: :func:`fit`'s solve, shared with
    :mod:`artclf_core.lifecycle.ridge_stats` (its per-fold sums give the same two matrices).
    ``rows``: the training rows (raw, or ``Z`` if ``standardised``), for the scale of the
    class part of the embedding (None without the basis)."""
    d = gram.shape[0]
    coef = linalg.solve(gram + alpha * np.eye(d), rhs, assume_a="pos")
    if not with_basis:
        return RidgeHead(mean, std, coef, np.zeros((d, 0)), 1.0)
    # Principal directions of the weighted features: the top eigenvectors of Z'WZ (only those
    # are computed: a third of the time of the full decomposition at 3,352 features).
    if rows is None:
        raise ValueError("the embedding basis needs the training rows")
    top = dim - n_classes
    _, vecs = linalg.eigh(gram, subset_by_index=[d - top, d - 1], driver="evr")
    basis = vecs[:, ::-1]
    proj = np.hstack([coef, basis])
    if standardised:
        out = rows @ proj
    else:  # Z @ proj without materialising Z
        out = rows @ (proj / std[:, None]) - (mean / std) @ proj
    scores, spread = out[:, :n_classes], np.linalg.norm(out[:, n_classes:], axis=1).mean()
    alpha_e = float(spread / (np.linalg.norm(scores, axis=1).mean() + 1e-12))
    return RidgeHead(mean, std, coef, basis, alpha_e)


def layer_weights(
    head: RidgeHead, temperature: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(W_e, b_e, W_p, b_p)`` of the ``embedding`` Dense (D -> dim, linear) and the
    ``probabilities`` Dense (dim -> C, softmax) computing :meth:`RidgeHead.embed` and
    ``softmax(logits / temperature)`` on raw features."""
    proj = np.hstack([head.alpha * head.coef, head.basis])
    w_e = proj / head.std[:, None]
    b_e = -(head.mean / head.std) @ proj
    c = head.coef.shape[1]
    w_p = np.zeros((proj.shape[1], c))
    w_p[:c] = np.eye(c) / (head.alpha * float(temperature))
    return (
        w_e.astype(np.float32),
        b_e.astype(np.float32),
        w_p.astype(np.float32),
        np.zeros(c, np.float32),
    )
