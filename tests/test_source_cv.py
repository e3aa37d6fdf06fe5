"""Source-grouped cross-validation and calibration (plain numpy, no model, no ../shared)."""

from __future__ import annotations

import numpy as np
import pytest

from artclf_core.lifecycle import source_cv
from artclf_core.lifecycle.metrics import label_precision_against
from artclf_core.model import calibration


@pytest.mark.parametrize(
    ("source", "family"),
    [
        ("orthodoxsaints_theophany", "orthodoxsaints"),
        ("orthodoxsaints_legacy", "orthodoxsaints"),
        ("wikiart-Pop_Art", "wikiart"),
        ("gitenberg8710_dore_bible", "gitenberg8710"),
        ("rijks", "rijks"),
        ("orthodoxshop", "orthodoxshop"),
    ],
)
def test_source_family(source: str, family: str) -> None:
    assert source_cv.source_family(source) == family


def _made_up(seed: int) -> tuple[list[str], list[str]]:
    """Random sources named ``<collection>_<part>`` or ``<collection>-<part>`` and copy keys
    where some copies cross collections."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 120))
    fams = [f"fam{i}" for i in range(int(rng.integers(2, 9)))]
    sources = [
        f"{rng.choice(fams)}{rng.choice(['_', '-'])}{int(rng.integers(0, 3))}" for _ in range(n)
    ]
    keys = [f"k{i}" for i in range(n)]
    for _ in range(int(rng.integers(0, 6))):  # copies, possibly across families
        a, b = (int(v) for v in rng.integers(0, n, 2))
        keys[b] = keys[a]
    return sources, keys


@pytest.mark.parametrize("seed", range(40))
def test_no_family_or_copy_on_both_sides(seed: int) -> None:
    sources, keys = _made_up(seed)
    groups = source_cv.cv_groups(sources, keys)
    assert_a_partition_by_group(sources, keys, groups, source_cv.folds(groups))


def assert_a_partition_by_group(sources, keys, groups, plan) -> None:
    """No family or copy on both sides of a fold; every image held out exactly once."""
    held = np.zeros(len(sources), dtype=int)
    fam = np.array([source_cv.source_family(s) for s in sources])
    for _, train, test in plan:
        source_cv.check_disjoint(groups, keys, train, test)
        assert not set(fam[train]) & set(fam[test])
        assert len(train) + len(test) == len(sources)
        held[test] += 1
    assert (held == 1).all(), "every image is held out exactly once"


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("k", [2, 5])
def test_group_kfold_never_splits_a_family_or_a_copy(seed: int, k: int) -> None:
    sources, keys = _made_up(seed)
    groups = source_cv.cv_groups(sources, keys)
    if len(set(groups)) < k:
        with pytest.raises(ValueError):
            source_cv.group_kfold(groups, k)
        return
    plan = source_cv.group_kfold(groups, k)
    assert len(plan) == k
    assert_a_partition_by_group(sources, keys, groups, plan)
    # The same groups give the same folds, whatever their order: every variant compared
    # under the plan sees the same test sets.
    perm = np.random.default_rng(seed).permutation(len(groups))
    again = source_cv.group_kfold([groups[i] for i in perm], k)
    assert sorted(name for name, _, _ in again) == sorted(name for name, _, _ in plan)


def test_check_disjoint_catches_a_split_copy() -> None:
    groups = ["a", "a", "b"]
    keys = ["x", "y", "x"]
    with pytest.raises(AssertionError):
        source_cv.check_disjoint(groups, keys, np.array([0, 1]), np.array([2]))


def test_copies_merge_families() -> None:
    groups = source_cv.cv_groups(["a_1", "b_1", "c_1"], ["k", "k", "z"])
    assert groups[0] == groups[1] == "a+b"
    assert groups[2] == "c"


def test_oof_report_per_source_and_worst() -> None:
    labels = ["painting", "painting", "sculpture", "sculpture"]
    sources = ["p_1", "p_1", "s_1", "s_2"]
    probs = np.array([[0, 0, 0, 1, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 0]], float)
    classes = ("drawings", "engraving", "iconography", "painting", "sculpture")
    rep = source_cv.oof_report(
        labels, sources, ["p", "p", "s", "s"], probs, classes, precision_at_5=0.5
    )
    assert rep["by_source"]["sources"]["sculpture/s_2"]["accuracy"] == 0.0
    assert rep["worst_source"]["source"] == "s_2"
    assert rep["folds"] == 2 and rep["label_precision_at_5"] == 0.5
    assert rep["balanced_accuracy"] == pytest.approx(0.75)


def test_label_precision_against() -> None:
    ref = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    q = np.array([[1.0, 0.05]])
    assert label_precision_against(q, ["a"], ref, ["a", "a", "b"], k=2) == 1.0
    assert label_precision_against(q, ["b"], ref, ["a", "a", "b"], k=2) == 0.0


def _overconfident_toy(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits that pick the right class 70 % of the time but at ~99 % confidence."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    pred = np.where(rng.random(n) < 0.7, y, rng.integers(0, 5, n))
    logits = rng.normal(0, 0.5, (n, 5))
    logits[np.arange(n), pred] += 8.0
    return logits, y


def test_temperature_scaling_lowers_the_calibration_error() -> None:
    logits, y = _overconfident_toy()
    summary = calibration.calibration_summary(logits, y)
    assert summary["temperature"] > 1.5
    assert summary["ece_before"] > 0.2
    assert summary["ece_after"] < 0.05
    assert summary["nll_after"] < summary["nll_before"]
    # Never changes the winning class.
    t = summary["temperature"]
    assert (calibration.softmax(logits, t).argmax(1) == logits.argmax(1)).all()


def test_review_threshold_reaches_the_target_precision() -> None:
    logits, y = _overconfident_toy(seed=1)
    probs = calibration.softmax(logits, calibration.fit_temperature(logits, y))
    chosen = calibration.choose_threshold(probs, y, target_precision=0.9)
    accepted = probs.max(1) >= chosen["threshold"]
    assert (probs.argmax(1)[accepted] == y[accepted]).mean() >= 0.9
    assert chosen["precision"] >= 0.9 and 0 < chosen["coverage"] < 1


def test_ece_of_a_perfectly_calibrated_set_is_small() -> None:
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.2, 1.0, 20000)
    y = np.zeros(20000, dtype=int)
    right = rng.random(20000) < conf
    probs = np.zeros((20000, 5))
    probs[:, 0] = np.where(right, conf, (1 - conf) / 4)
    probs[:, 1] = np.where(right, (1 - conf) / 4, conf)
    probs[:, 2:] = ((1 - conf) / 4)[:, None]
    assert calibration.expected_calibration_error(probs, y) < 0.02


def test_gate_refuses_a_candidate_that_only_wins_on_a_source_the_active_model_trained_on():
    """The active model trained on ``alpha_*``; the candidate's validation split holds out
    ``alpha_part2`` (unseen by the candidate, seen by the active model's family) and
    ``beta``. On the whole split the candidate looks better; on the images unseen by both
    (``beta``) it is not, and that is what the gate judges."""
    from dataclasses import dataclass

    from artclf_core.lifecycle import promotion
    from artclf_core.lifecycle.metrics import classification_report

    @dataclass(frozen=True)
    class S:
        label: str
        source: str

    classes = ("drawings", "engraving", "iconography", "painting", "sculpture")
    val = [S(c, "alpha_part2") for c in classes for _ in range(10)]
    val += [S(c, "beta") for c in classes for _ in range(10)]
    truth = [s.label for s in val]
    # Candidate: right on alpha, 60 % on beta. Active: 50 % on alpha, 70 % on beta.
    cand = [
        s.label if (s.source != "beta" or i % 10 < 6) else "painting" for i, s in enumerate(val)
    ]
    act = [
        s.label if i % 10 < (5 if s.source != "beta" else 7) else "painting"
        for i, s in enumerate(val)
    ]
    whole = promotion.decide(
        classification_report(truth, cand, classes), classification_report(truth, act, classes)
    )
    assert whole.promote, "on a split where a source sits on both sides it would win"

    fair = promotion.unseen_by(val, {"alpha_part1"})
    assert {s.source for s in fair} == {"beta"}
    idx = [i for i, s in enumerate(val) if s in fair]
    verdict = promotion.decide(
        classification_report([truth[i] for i in idx], [cand[i] for i in idx], classes),
        classification_report([truth[i] for i in idx], [act[i] for i in idx], classes),
    )
    assert not verdict.promote

    nothing = promotion.unseen_by(val, {"alpha_x", "beta"})
    assert nothing == []
    refused = promotion.no_evidence(
        classification_report(truth, cand, classes), "v1", promotion.GatePolicy()
    )
    assert not refused.promote and "no held-out comparison" in refused.reasons[0]
