"""The k-shot curve on a made-up set of sources (numpy features, no model, no ../shared)."""

from __future__ import annotations

import numpy as np
import pytest

from artclf_core.lifecycle import kshot, source_cv


def _made_up_collections(seed: int = 0):
    """Five classes, eight families; each family has a look of its own (a shift of the
    features) that the others do not share, so a family held out is harder than one seen,
    and a few of its own labelled images help."""
    rng = np.random.default_rng(seed)
    d, n_classes = 40, 5
    centres = rng.normal(0, 1.0, (n_classes, d))
    feats, y, sources = [], [], []
    for f in range(8):
        look = rng.normal(0, 2.0, d)
        for c in range(n_classes):
            if (f + c) % 2:  # each family holds some of the classes
                continue
            n = 40
            feats.append(centres[c] + look + rng.normal(0, 1.5, (n, d)))
            y += [c] * n
            sources += [f"fam{f}_part{c % 2}"] * n
    return np.vstack(feats), np.array(y), sources


def test_kshot_curve_runs_in_seconds_and_labels_help() -> None:
    feats, y, sources = _made_up_collections()
    keys = [f"k{i}" for i in range(len(y))]
    keys[1] = keys[0]  # a near copy: both are shots or neither
    groups = source_cv.cv_groups(sources, keys)
    curve = kshot.kshot_curve(
        feats, y, sources, groups, keys, n_classes=5, lam=0.1, boost=4.0, draws=2
    )  # a fraction of a second: numpy features, ridge fits
    assert curve["ks"] == [0, 5, 10, 20]
    assert curve["n_groups"] == 8
    assert curve["gain"][0] == 0.0
    assert curve["mean"][20] > curve["mean"][0], curve["mean"]
    for row in curve["groups"].values():
        assert row["n_rest"] >= kshot.MIN_REST


def test_shots_take_whole_copy_groups() -> None:
    keys = np.array(["a", "a", "b", "c", "c", "d"])
    shots = kshot.draw_shots(np.arange(6), keys, 3, np.random.default_rng(1))
    chosen = set(keys[shots])
    for k in chosen:  # a copy group is taken whole
        assert set(np.flatnonzero(keys == k)) <= set(shots)


def test_identical_views_change_nothing_and_only_view_0_is_scored() -> None:
    """(views, N, D) features: extra views only add training rows. Two identical views weigh
    every row twice and double the penalty with them, so the curve is the one-view curve;
    noisy extra views change the fit but never the images scored."""
    feats, y, sources = _made_up_collections()
    keys = [f"k{i}" for i in range(len(y))]
    groups = source_cv.cv_groups(sources, keys)
    args = dict(n_classes=5, lam=0.1, boost=4.0, draws=1, ks=(0, 5))
    one = kshot.kshot_curve(feats, y, sources, groups, keys, **args)
    two = kshot.kshot_curve(np.stack([feats, feats]), y, sources, groups, keys, **args)
    assert two["mean"] == pytest.approx(one["mean"])
    noisy = np.stack([feats, feats + np.random.default_rng(1).normal(0, 3.0, feats.shape)])
    other = kshot.kshot_curve(noisy, y, sources, groups, keys, **args)
    assert {g: r["n_rest"] for g, r in other["groups"].items()} == {
        g: r["n_rest"] for g, r in one["groups"].items()
    }
