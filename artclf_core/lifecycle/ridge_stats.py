"""The ridge head refitted on many subsets of one set of images, from per-class sums.

:func:`.ridge_head.fit` solves ``(Z'WZ + lam n I) coef = Z'WT`` on standardised rows ``Z``.
Every quantity in it is a sum over the training rows: per class ``c``, the weighted Gram
matrix ``G_c = sum u_i x_i x_i'``, the weighted sums ``b_c = sum u_i x_i`` and the weight
``U_c = sum u_i`` (``u_i``: an image's weight before its class is rescaled, ``1 / n_source **
power`` times its boost), and the plain sums of ``x`` and ``x ** 2`` for the standardisation.
A cross-validation fold trains on every image but a held-out group, and a k-shot fit adds a
few shots of that group back, so their sums are the whole set's minus the held-out rows' (plus
the shots'): one pass over all rows, then a pass over each held-out group and a D x D solve
per fit, instead of a pass over every training row per fit (with augmented views, three rows
per image, that pass was most of the cross-validation's time).

The result is :func:`.ridge_head.fit`'s head, to rounding, as long as a held-out set takes
whole sources (a source's weight depends on its number of training images): source-family
folds always do, and :meth:`RidgeStats.head` refuses any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from artclf_core.lifecycle import ridge_head


@dataclass
class _Sums:
    """Sums over a set of images and their views (see the module docstring)."""

    gram: np.ndarray  # (C, D, D): sum over class c's rows of u x x'
    weighted: np.ndarray  # (C, D): sum over class c's rows of u x
    weight: np.ndarray  # (C,): sum over class c's images of u
    images: np.ndarray  # (C,): class c's images
    s1: np.ndarray  # (D,): sum of x over all rows
    s2: np.ndarray  # (D,): sum of x ** 2 over all rows

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray, u: np.ndarray, n_classes: int) -> _Sums:
        views, _, d = x.shape
        out = cls(
            np.zeros((n_classes, d, d)),
            np.zeros((n_classes, d)),
            np.zeros(n_classes),
            np.zeros(n_classes),
            np.zeros(d),
            np.zeros(d),
        )
        for c in np.unique(y):
            rows = x[:, y == c].reshape(-1, d)
            w = np.tile(u[y == c], views)
            out.gram[c] = (rows * w[:, None]).T @ rows
            out.weighted[c] = w @ rows
            out.weight[c] = u[y == c].sum()
            out.images[c] = (y == c).sum()
            out.s1 += rows.sum(0)
            out.s2 += np.einsum("ij,ij->j", rows, rows)
        return out

    def plus(self, other: _Sums, sign: float = 1.0) -> _Sums:
        """These sums with ``other``'s added (``sign`` -1: taken away)."""
        return _Sums(
            self.gram + sign * other.gram,
            self.weighted + sign * other.weighted,
            self.weight + sign * other.weight,
            self.images + sign * other.images,
            self.s1 + sign * other.s1,
            self.s2 + sign * other.s2,
        )


class RidgeStats:
    """Per-class sums of ``features`` ((views, N, D), or (N, D)) with labels ``y`` and
    ``sources``, from which :meth:`head` fits the ridge head of any subset (see the module
    docstring). ``boost``: per-image weight multipliers, as :func:`.ridge_head.fit` takes."""

    def __init__(
        self,
        features: np.ndarray,
        y: np.ndarray,
        sources: np.ndarray,
        *,
        n_classes: int,
        source_power: float = ridge_head.DEFAULT_SOURCE_POWER,
        boost: np.ndarray | None = None,
    ) -> None:
        self.x = ridge_head.as_views(features).astype(np.float64)
        self.y = np.asarray(y, dtype=np.int64)
        self.n_classes = n_classes
        self.power = source_power
        keys = ridge_head.source_keys(self.y, sources)
        _, self.key_id, counts = np.unique(keys, return_inverse=True, return_counts=True)
        self.key_count = counts
        self.u = 1.0 / counts[self.key_id].astype(np.float64) ** source_power
        if boost is not None:
            self.u = self.u * np.asarray(boost, dtype=np.float64)
        self.total = _Sums.of(self.x, self.y, self.u, n_classes)
        self._rest: tuple[np.ndarray, _Sums] | None = None

    def head(
        self,
        exclude: np.ndarray,
        *,
        lam: float = ridge_head.DEFAULT_LAMBDA,
        dim: int = 128,
        with_basis: bool = True,
        added: Added | None = None,
    ) -> ridge_head.RidgeHead:
        """The head :func:`.ridge_head.fit` gives on every image but ``exclude`` (indices that
        take whole sources), plus the ``added`` images (a held-out group's k-shot shots, or
        pseudo-labelled images of a collection: :mod:`.self_training`)."""
        exclude = np.asarray(exclude, dtype=np.int64)
        partial = np.bincount(self.key_id[exclude], minlength=len(self.key_count))
        if np.any((partial > 0) & (partial < self.key_count)):
            raise ValueError("a held-out set must take whole sources (their weights depend on it)")
        if self._rest is None or not np.array_equal(self._rest[0], exclude):
            # kept for the next call: the k-shot curve fits several times without one group
            held = _Sums.of(self.x[:, exclude], self.y[exclude], self.u[exclude], self.n_classes)
            self._rest = (exclude, self.total.plus(held, -1.0))
        sums = self._rest[1]
        train = np.setdiff1d(np.arange(self.x.shape[1]), exclude)
        # the rows themselves only set the embedding's scale: copied only when it is wanted
        rows = self.x[:, train] if with_basis else None
        if added is not None and len(added.y):
            sums = sums.plus(added.sums(self.power, self.n_classes))
            if rows is not None:
                rows = np.concatenate([rows, added.rows.astype(np.float64)], axis=1)
        return _solve(sums, self.x.shape[0], rows, self.n_classes, lam, dim, with_basis)

    def images(self, idx: np.ndarray, sources: np.ndarray, boost: float = 1.0) -> Added:
        """Some of this set's images (all their views), with their own labels, to add back
        to a fit under ``sources`` (the k-shot curve's shots)."""
        idx = np.asarray(idx, dtype=np.int64)
        return Added(self.x[:, idx], self.y[idx], np.asarray(sources), np.full(len(idx), boost))


@dataclass
class Added:
    """Images added to a fit under their own sources: ``rows`` (views, n, D) as the set's
    features, ``y`` their labels (true, or pseudo-labels), ``boost`` their weight
    multipliers (``1 / n_source ** power`` is applied as to every image)."""

    rows: np.ndarray
    y: np.ndarray
    sources: np.ndarray
    boost: np.ndarray | None = None

    def sums(self, power: float, n_classes: int) -> _Sums:
        keys = ridge_head.source_keys(self.y, self.sources)
        _, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
        u = 1.0 / counts[inv].astype(np.float64) ** power
        if self.boost is not None:
            u = u * np.asarray(self.boost, dtype=np.float64)
        return _Sums.of(np.asarray(self.rows, dtype=np.float64), np.asarray(self.y), u, n_classes)


def _solve(
    s: _Sums,
    views: int,
    x: np.ndarray | None,
    n_classes: int,
    lam: float,
    dim: int,
    with_basis: bool,
) -> ridge_head.RidgeHead:
    """The head from the sums ``s`` of the training images' ``views`` rows each: the same
    algebra as :func:`.ridge_head.fit`, with ``Z = (X - mean) / std`` expanded. ``x``: those
    rows (views, n, D), needed only ``with_basis``."""
    d = s.s1.shape[0]
    rows = views * int(round(s.images.sum()))
    mean = s.s1 / rows
    std = np.sqrt(np.maximum(s.s2 / rows - mean**2, 0.0)) + 1e-6
    present = s.images > 0.5
    a = np.zeros(n_classes)  # each class's rescaling: classes equal, mean image weight 1
    a[present] = s.images.sum() / (present.sum() * s.weight[present])
    gram = np.einsum("c,cij->ij", a, s.gram)
    weighted = a @ s.weighted
    total = views * float(a @ s.weight)
    zwz = (
        gram - np.outer(mean, weighted) - np.outer(weighted, mean) + total * np.outer(mean, mean)
    ) / np.outer(std, std)
    per_class = a[:, None] * (s.weighted - views * s.weight[:, None] * mean) / std  # (C, D)
    zwt = per_class.T @ (np.eye(n_classes) - 1.0 / n_classes)
    return ridge_head.head_from_gram(
        zwz,
        zwt,
        mean,
        std,
        lam * rows,
        n_classes,
        dim,
        with_basis,
        None if x is None else x.reshape(-1, d),
    )
