"""A collection's class priors from the model's own probabilities
(artclf_core.lifecycle.label_shift), on made-up collections whose posteriors are exact."""

from __future__ import annotations

import numpy as np

from artclf_core.lifecycle import label_shift, self_training

C = 5


def _collection(priors: list[float], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(posteriors under equal priors, true classes)`` of ``n`` images drawn with ``priors``
    from five overlapping 2-d Gaussians: the exact Bayes posteriors, as a calibrated model's."""
    rng = np.random.default_rng(seed)
    means = np.array([[0, 0], [1.2, 0], [0, 1.2], [1.2, 1.2], [0.6, 2.0]])
    y = rng.choice(C, size=n, p=priors)
    x = means[y] + rng.normal(size=(n, 2))
    log_lik = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1)
    probs = np.exp(log_lik - log_lik.max(1, keepdims=True))
    return probs / probs.sum(1, keepdims=True), y


def test_em_recovers_a_skewed_collections_priors_and_its_labels_gain() -> None:
    true = [0.7, 0.15, 0.05, 0.05, 0.05]
    probs, y = _collection(true, 4000, seed=1)
    priors = label_shift.estimate_priors(probs, pseudo_count=0)
    assert np.abs(priors - true).max() < 0.05, priors
    # the pseudo-counts pull towards equal priors, the less the more images there are
    shrunk = label_shift.estimate_priors(probs)
    assert 0.2 < shrunk[0] < priors[0]
    few = label_shift.estimate_priors(probs[:40])
    assert abs(few[0] - 0.2) < abs(shrunk[0] - 0.2)
    assert abs(priors.sum() - 1) < 1e-9
    before = np.mean(probs.argmax(1) == y)
    after = np.mean(label_shift.reweight(probs, priors).argmax(1) == y)
    assert after > before + 0.05, (before, after)


def test_a_balanced_collection_keeps_about_equal_priors_and_empty_is_equal() -> None:
    probs, _ = _collection([0.2] * C, 4000, seed=2)
    assert np.abs(label_shift.estimate_priors(probs) - 0.2).max() < 0.05
    np.testing.assert_array_equal(label_shift.estimate_priors(np.zeros((0, C))), [0.2] * C)


def test_adjust_estimates_each_collection_on_its_own_rows() -> None:
    a, _ = _collection([0.8, 0.05, 0.05, 0.05, 0.05], 1500, seed=3)
    b, _ = _collection([0.05, 0.05, 0.05, 0.05, 0.8], 1500, seed=4)
    probs = np.concatenate([a, b])
    names = np.array(["book"] * len(a) + ["museum"] * len(b))
    out, priors = label_shift.adjust(probs, names)
    assert priors["book"].argmax() == 0 and priors["museum"].argmax() == 4
    np.testing.assert_allclose(out[: len(a)], label_shift.reweight(a, priors["book"]))
    np.testing.assert_allclose(out.sum(1), 1.0)


def test_pseudo_labels_follow_the_collections_priors() -> None:
    """An image the head finds as likely a drawing as an engraving is an engraving in a book of
    engravings, and lends that label; without collections it lends none at 0.5."""
    sure = np.log(np.array([[0.02, 0.9, 0.02, 0.03, 0.03]] * 30))
    torn = np.log(np.array([[0.45, 0.45, 0.04, 0.03, 0.03]]))
    logits = np.concatenate([sure, torn])
    kept, labels = self_training.pseudo_labels(logits, 1.0, 0.5)
    assert kept.sum() == 30 and not kept[-1]
    kept, labels = self_training.pseudo_labels(logits, 1.0, 0.5, collections=["book"] * 31)
    assert kept.all() and set(labels) == {1}
