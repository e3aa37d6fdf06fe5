"""Cross-validating a recipe by source family, and a saved model on the families it never saw.

``artclf evaluate --data DIR --cv sources`` and ``bench/source_cv.py`` both run
:func:`evaluate_by_sources`:

1. **The reference recipe** under leave-one-source-family-out cross-validation
   (:mod:`artclf_core.lifecycle.source_cv`): frozen ImageNet EfficientNet-Lite1 (``variant``)
   features with texture statistics (:func:`artclf_core.model.texture.build_texture_backbone`),
   ``views - 1`` augmented copies of each training image (:data:`.ridge_head.VIEW_TRANSFORMS`),
   and a closed-form ridge classifier per fold (one-hot targets, L2 ``lam`` per example, sources
   balanced within a class by ``source_power``). A ridge head refits in well under a
   second, so 24 folds cost one feature pass. Pooled out-of-fold report, label precision@5
   of each held-out family against the fold's training images (standardised features),
   temperature scaling of the out-of-fold scores (:mod:`artclf_core.model.calibration`).
2. **A saved model** (the shipped default unless given) on the images of the families its
   metadata says it never trained on, and the recipe's out-of-fold predictions on exactly
   those images: the same held-out images for both.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from artclf_core import CLASSES
from artclf_core.lifecycle import ridge_head, source_cv
from artclf_core.lifecycle.metrics import classification_report
from artclf_core.lifecycle.ridge_stats import RidgeStats
from artclf_core.model import calibration

log = logging.getLogger("artclf.evaluate")


def features(
    samples, size: int, views: int, variant: str = "lite1", gram: bool = True
) -> np.ndarray:
    """The frozen features of the shipped recipe (``gram``: with the channel correlations of
    :data:`artclf_core.model.texture.GRAM_TAPS`, as ``efficientnet_lite1_gram``)."""
    from artclf_core.lifecycle.features import backbone_features
    from artclf_core.model.texture import GRAM_TAPS, build_texture_backbone

    net = build_texture_backbone(size, variant=variant, gram_taps=GRAM_TAPS if gram else ())
    pictures = backbone_features(samples, net, size)
    copies = [
        backbone_features(samples, net, size, view=v, pictures=pictures) for v in range(1, views)
    ]
    return np.stack([pictures, *copies]).astype(np.float32)


def cached_features(
    samples, size: int, views: int, variant: str, cache: str | None = None, gram: bool = True
) -> np.ndarray:
    """:func:`features`, kept in ``cache`` (an ``.npz``) for the same images and settings."""
    # augmented views seeded by file name (dataset.view_seed) since 2026-12-07, with the
    # recipe's transforms since the sixth session of 2026-12-07
    seeding = f"named/{'+'.join(ridge_head.VIEW_TRANSFORMS)}/" if views > 1 else ""
    key = f"{variant}/{size}/{views}/{seeding}{'gram/' if gram else ''}" + "|".join(
        str(s.path) for s in samples
    )
    digest = hashlib.sha256(key.encode()).hexdigest()
    if cache and Path(cache).exists():
        with np.load(cache) as z:
            if str(z["key"]) == digest:
                return z["features"]
    feats = features(samples, size, views, variant, gram)
    if cache:
        np.savez(cache, features=feats, key=digest)
    return feats


def cross_validate(
    feats: np.ndarray,
    labels: np.ndarray,
    sources: np.ndarray,
    groups: list[str],
    lam: float,
    power: float,
    k: int | None = None,
    boost: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Out-of-fold logits of :func:`artclf_core.lifecycle.ridge_head.fit` (``feats``: (views, N,
    D)) and
    the label precision@5 of the shipped embedding (:meth:`RidgeHead.embed`): each held-out
    family's images searched among the fold's training images. ``k``: grouped k-fold instead
    of leave-one-group-out (:func:`artclf_core.lifecycle.source_cv.plan`)."""
    y = np.array([CLASSES.index(c) for c in labels])
    scores = np.zeros((len(y), len(CLASSES)))
    hits = total = 0
    # every fold's head from the whole set's sums less its held-out group's (exact)
    stats = RidgeStats(feats, y, sources, n_classes=len(CLASSES), source_power=power, boost=boost)
    for _, train, test in source_cv.plan(groups, k):
        head = stats.head(test, lam=lam)
        scores[test] = head.logits(feats[0, test])
        h, n = source_cv.fold_precision_at_k(
            head.embed(feats[0, test]), labels[test], head.embed(feats[0, train]), labels[train]
        )
        hits, total = hits + h, total + n
    return scores, hits / total


def grouping(samples) -> tuple[list[str], list[str]]:
    """``(copy keys, CV groups)`` of the samples: each one's group of exact/near copies
    (:func:`artclf_core.lifecycle.dataset.duplicate_groups`, one decode and hash of every image) and
    its source family, families sharing a copy merged."""
    from artclf_core.lifecycle.dataset import duplicate_groups

    copies = duplicate_groups(samples)
    keys = [copies[s] for s in samples]
    return keys, source_cv.cv_groups([s.source for s in samples], keys)


def calibrated_cv(
    feats: np.ndarray,
    samples,
    lam: float,
    power: float,
    k: int | None = None,
    groups: list[str] | None = None,
    boost: np.ndarray | None = None,
) -> tuple[dict[str, Any], np.ndarray] | None:
    """The recipe's source-family CV on ``samples`` (``feats``: (views, N, D)), calibrated:
    ``(pooled out-of-fold report with its "calibration", calibrated out-of-fold
    probabilities)``; None with fewer than two held-out groups (nothing to hold out).
    What ``artclf evaluate --cv sources`` reports and what training stores in a model.
    ``k``: grouped k-fold instead of leave-one-group-out; ``groups``: precomputed
    :func:`grouping`; ``boost``: per-image weight multipliers (curator labels)."""
    labels = np.array([s.label for s in samples])
    sources = np.array([s.source for s in samples])
    groups = groups if groups is not None else grouping(samples)[1]
    if len(set(groups)) < max(2, k or 2):
        return None
    scores, p5 = cross_validate(feats, labels, sources, groups, lam, power, k, boost)
    y = np.array([CLASSES.index(c) for c in labels])
    cal = calibration.calibration_summary(scores, y)
    probs = calibration.softmax(scores, cal["temperature"])
    report = source_cv.oof_report(
        list(labels), list(sources), groups, probs, CLASSES, precision_at_5=p5
    )
    report["calibration"] = cal
    if k is not None:
        report["folds"] = k
    return report, probs


def trained_families(model) -> set[str] | None:
    """Source families a saved model's recorded split trained on (None: not recorded)."""
    from artclf_core.lifecycle.dataset import trained_sources

    split = (model.metrics or {}).get("split") if isinstance(model.metrics, dict) else None
    trained = trained_sources(split)
    if trained is None:
        return None
    return {source_cv.source_family(src) for sources in trained.values() for src in sources}


def evaluate_by_sources(
    data_dir,
    model_path=None,
    *,
    size: int = 160,
    views: int = ridge_head.DEFAULT_VIEWS,
    lam: float = ridge_head.DEFAULT_LAMBDA,
    source_power: float = ridge_head.DEFAULT_SOURCE_POWER,
    variant: str = "lite1",
    gram: bool = True,
    k: int | None = None,
    kshot: bool = False,
    boost: float = 1.0,
    features_cache: str | None = None,
) -> dict[str, Any]:
    """Both measurements of the module docstring; returns ``{"recipe": pooled out-of-fold
    report (with ``calibration``), "model": the saved model on its unseen families (None if
    it recorded no split or every family was trained on), "recipe_on_model_unseen": the
    recipe on the same images, "groups", "seconds"}``, and with ``kshot`` the recipe's
    k-shot curve (:mod:`artclf_core.lifecycle.kshot`, curator labels weighed ``boost``) under
    ``"kshot"``. ``k``: grouped k-fold instead of leave-one-group-out; ``features_cache``:
    an ``.npz`` that keeps the backbone's features between runs on the same images; ``gram``:
    the recipe with the channel correlations (the default's), or without (the one before)."""
    from artclf_core.lifecycle.dataset import scan_labelled_folder
    from artclf_core.lifecycle.evaluation import evaluate_samples
    from artclf_core.model.artmodel import ArtModel

    started = time.perf_counter()
    samples = scan_labelled_folder(data_dir)
    sources = np.array([s.source for s in samples])
    y = np.array([CLASSES.index(s.label) for s in samples])
    log.info("%d images, %d sources", len(samples), len(set(sources)))
    feats = cached_features(samples, size, views, variant, features_cache, gram)
    copy_keys, groups = grouping(samples)
    report, probs = calibrated_cv(feats, samples, lam, source_power, k, groups)
    report["recipe"] = {
        "backbone": variant,
        "gram": gram,
        "size": size,
        "views": views,
        "lam": lam,
        "source_power": source_power,
        "folds": k,
    }

    model = ArtModel.load(model_path)
    trained = trained_families(model)
    model_report = same = None
    n_unseen = 0
    if trained is not None:
        unseen = np.array([source_cv.source_family(s) not in trained for s in sources])
        n_unseen = int(unseen.sum())
        if unseen.any():
            model_report = evaluate_samples(
                [s for s, u in zip(samples, unseen, strict=True) if u], model
            )
            same = classification_report(y[unseen], probs[unseen].argmax(1), CLASSES)
    curve = None
    if kshot:
        from artclf_core.lifecycle import kshot as kshot_lib

        curve = kshot_lib.kshot_curve(
            feats[0],
            y,
            list(sources),
            groups,
            copy_keys,
            n_classes=len(CLASSES),
            lam=lam,
            source_power=source_power,
            boost=boost,
        )
    return {
        "kshot": curve,
        "recipe": report,
        "model": model_report,
        "model_version": model.version,
        "model_unseen_images": n_unseen,
        "recipe_on_model_unseen": same,
        "groups": report["folds"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def plan_name(k: int | None, groups: int) -> str:
    """How an evaluation held sources out, in words."""
    if k is None:
        return f"leave-one-source-family-out ({groups} groups)"
    return f"grouped {k}-fold by source family"


def format_by_sources(result: dict[str, Any]) -> str:
    """Human-readable text of :func:`evaluate_by_sources`."""
    from artclf_core.lifecycle.metrics import format_report

    rep = result["recipe"]
    cal = rep["calibration"]
    r = rep["recipe"]
    lines = [
        f"== {plan_name(r.get('folds'), result['groups'])}: frozen "
        f"{r.get('backbone', 'lite0')} "
        f"{r['size']}px + texture statistics, ridge lam {r['lam']}, {r['views']} view(s), "
        f"source power {r['source_power']}; out-of-fold ==",
        format_report(rep),
        f"calibration: T {cal['temperature']:.3f}, ECE {cal['ece_before']:.3f} -> "
        f"{cal['ece_after']:.3f}, review threshold {cal['review']['threshold']:.3f} "
        f"(precision {cal['review']['precision']:.3f} above it, coverage "
        f"{cal['review']['coverage']:.3f})",
        "",
    ]
    if result["model"] is None:
        lines.append(
            f"{result['model_version']}: no image of a family it did not train on "
            "(or no recorded split): no held-out figure for it here"
        )
    else:
        m, s = result["model"], result["recipe_on_model_unseen"]
        lines += [
            f"== the {result['model_unseen_images']} images of families "
            f"{result['model_version']} never trained on ==",
            f"{result['model_version']}: balanced accuracy {m['balanced_accuracy']:.3f}, "
            f"accuracy {m['accuracy']:.3f}",
            f"recipe, out-of-fold: balanced accuracy {s['balanced_accuracy']:.3f}, "
            f"accuracy {s['accuracy']:.3f}",
        ]
    if result.get("kshot"):
        ks = result["kshot"]
        lines += [
            "",
            f"== k-shot: k labelled images per class of each held-out family added to "
            f"training (weight x{ks['boost']:g}), balanced accuracy on the rest of it, "
            f"{ks['n_groups']} families, {ks['draws']} draws ==",
            "k:     " + "  ".join(f"{k:>6}" for k in ks["ks"]),
            "mean:  " + "  ".join(f"{ks['mean'][k]:6.3f}" for k in ks["ks"]),
            "gain:  " + "  ".join(f"{ks['gain'][k]:+6.3f}" for k in ks["ks"]),
        ]
    lines.append(f"({result['seconds']:.0f}s)")
    return "\n".join(lines)
