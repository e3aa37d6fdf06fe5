"""Honest confidence: temperature scaling fitted on out-of-fold predictions.

A classifier's top probability is what sends an artwork to the curators' review queue
(``artclf.review_queue()``, below the ``review_threshold`` setting), so it must mean what it
says: of the artworks predicted with probability 0.9, about 90 % should be right *on sources
the model never saw*. Heads trained with cross-entropy on separable features are
over-confident there. Temperature scaling (Guo et al., 2017) divides the logits by one scalar
``T`` fitted to minimise the log-loss of the out-of-fold predictions of the source-grouped
cross-validation (``lifecycle.source_cv``); it never changes which class wins, only how
sure the model says it is. ``T`` is then built into the saved model, so every consumer (the
pipeline, ``artclf classify``, SQL) sees calibrated probabilities without knowing about it.

The review threshold is read off the same out-of-fold predictions (:func:`choose_threshold`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Bins of the expected calibration error (equal width over the top probability).
ECE_BINS = 15
#: Precision the predictions above the review threshold must have on unseen sources.
TARGET_PRECISION = 0.9


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes."""
    p = softmax(logits, temperature)
    y = np.asarray(labels, dtype=np.int64)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The ``T`` in [0.05, 20] minimising :func:`nll` (golden-section search on log T; the
    log-loss is unimodal in T)."""
    lo, hi = np.log(0.05), np.log(20.0)
    g = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, labels, np.exp(a)), nll(logits, labels, np.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(logits, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, labels, np.exp(b))
    return float(np.exp((lo + hi) / 2.0))


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Σ_bins (n_bin / n) · |accuracy_bin − mean confidence_bin| over the top probability."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if not len(y):
        return 0.0
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def choose_threshold(
    probabilities: np.ndarray, labels: np.ndarray, target_precision: float = TARGET_PRECISION
) -> dict[str, float]:
    """The lowest top-probability threshold whose accepted predictions reach
    ``target_precision``; below it an artwork goes to review.

    Returns ``{"threshold", "precision" (of predictions at or above it), "coverage" (their
    share), "target_precision"}``. If no threshold reaches the target, the one with the best
    precision is returned (and ``precision`` says so).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    order = np.argsort(-conf, kind="stable")
    cum_prec = np.cumsum(correct[order]) / np.arange(1, len(y) + 1)
    ok = np.flatnonzero(cum_prec >= target_precision)
    # Only cut where the confidence changes, so the threshold is an attainable value.
    if ok.size:
        i = int(ok.max())
    else:
        i = int(np.argmax(cum_prec))
    threshold = float(conf[order][i])
    accepted = conf >= threshold
    return {
        "threshold": round(threshold, 4),
        "precision": float(correct[accepted].mean()) if accepted.any() else 0.0,
        "coverage": float(accepted.mean()),
        "target_precision": float(target_precision),
    }


def precision_coverage(
    probabilities: np.ndarray, labels: np.ndarray, points: int = 41
) -> list[dict[str, float]]:
    """Precision of the accepted predictions against their share (coverage) when everything
    at or above a threshold of the top probability is accepted, at ``points`` thresholds
    from the lowest to the highest top probability seen (the review plot of the Models
    page): ``[{"threshold", "coverage", "precision"}]``, coverage falling."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if not len(y):
        return []
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    out = []
    for t in np.quantile(conf, np.linspace(0.0, 1.0, points)):
        accepted = conf >= t
        out.append(
            {
                "threshold": round(float(t), 4),
                "coverage": round(float(accepted.mean()), 4),
                "precision": round(float(correct[accepted].mean()), 4),
            }
        )
    return out


def calibration_summary(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Fit ``T`` and report what it changes: ECE and log-loss before and after, the review
    threshold on the calibrated probabilities."""
    t = fit_temperature(logits, labels)
    before = softmax(logits)
    after = softmax(logits, t)
    return {
        "temperature": round(t, 4),
        "ece_before": expected_calibration_error(before, labels),
        "ece_after": expected_calibration_error(after, labels),
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, t),
        "review": {
            **choose_threshold(after, labels),
            "curve": precision_coverage(after, labels),
        },
    }
