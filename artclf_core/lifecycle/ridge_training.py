"""Training the default architectures, ``efficientnet_lite{0,1}_texture``, in closed form.

The recipe that measured best on sources it never saw (docs/model-card.md): a frozen
ImageNet EfficientNet-Lite (Lite1 by default) with texture statistics
(:mod:`artclf_core.model.texture`), one forward pass over the training images, and a ridge head
(:mod:`.ridge_head`). Because the head refits in a fraction of a second, training
includes its own honest evaluation:

1. features of every image (train and validation) in one pass of the backbone; with
   ``views`` > 1 (the default, :data:`.ridge_head.DEFAULT_VIEWS`), also of ``views - 1``
   augmented copies of each training image (:data:`.ridge_head.VIEW_TRANSFORMS`: greyscale,
   sepia or a halftone screen), which add training rows with the image's label;
2. leave-one-source-family-out cross-validation on the *training* images
   (:mod:`.source_cv`): out-of-fold logits, from which the calibration temperature
   and the review threshold are fitted (:mod:`artclf_core.model.calibration`) and the per-source
   table of the model card is read;
3. the final head on all training images, with the temperature folded into the saved
   weights, so every consumer sees calibrated probabilities.

The model's metadata keeps the cross-validation report (``metrics["cross_validation"]``) and
the threshold (``metrics["review_threshold"]``, which ``artclf.review_queue()`` uses while the
model is active).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from artclf_core import CLASSES
from artclf_core.lifecycle import curator_labels, label_shift, ridge_head, self_training
from artclf_core.lifecycle.dataset import (
    Sample,
    ValMode,
    describe_split,
    scan_labelled_folder,
    scan_unlabelled_folder,
    split_by_source,
)
from artclf_core.lifecycle.evaluation import full_report
from artclf_core.lifecycle.features import backbone_features
from artclf_core.model import calibration

log = logging.getLogger("artclf.training")


def train(
    data_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    seed: int = 0,
    val: ValMode = "source",
    val_fraction: float,
    image_size: int | None = None,
    lam: float = ridge_head.DEFAULT_LAMBDA,
    source_power: float = ridge_head.DEFAULT_SOURCE_POWER,
    views: int = ridge_head.DEFAULT_VIEWS,
    kshot: bool = False,
    unlabelled: str | os.PathLike[str] | None = None,
    verbose: int = 2,
) -> dict[str, Any]:
    """Train, calibrate and save; the same return value as
    :func:`artclf_core.lifecycle.training.train`
    (``history`` is empty and ``best_epoch``/``epochs_run`` are 0: there are no epochs),
    plus ``collections`` and ``collection_oof`` (the curator labels' within-collection
    cross-validation, :mod:`artclf_core.lifecycle.curator_labels`; empty without curator labels).

    Curator-labelled images (the export's sidecar) stay in training whatever the split, are
    weighed :data:`artclf_core.lifecycle.curator_labels.BOOST` times, and are cross-validated within
    their collection. ``kshot``: also measure the k-shot curve (:mod:`artclf_core.lifecycle.kshot`,
    a few minutes more), stored as ``metrics["kshot"]``.

    ``unlabelled``: a folder of ``<collection>/`` sub-folders of images without labels
    (:func:`artclf_core.lifecycle.dataset.scan_unlabelled_folder`; the nightly retrain exports
    the catalogue's uncurated artworks there): the head self-trains on them and on the
    validation images' pictures, each validation source a collection of its own (their
    labels only score it, so the validation report and the gate measure a self-trained
    collection; :mod:`artclf_core.lifecycle.self_training`). ``metrics["self_training"]``
    records the pseudo-labels per collection and the self-trained cross-validation of the
    training images (each held-out family playing an unlabelled collection)."""
    from artclf_core.model.archs import DEFAULT_ARCH, DEFAULT_IMAGE_SIZES, TEXTURE_ARCHS
    from artclf_core.model.artmodel import (
        build_model,
        make_version,
        save_model,
    )

    arch = arch or DEFAULT_ARCH
    if views < 1:
        raise ValueError(f"views must be at least 1 (the pictures themselves), got {views}")
    if arch not in TEXTURE_ARCHS:
        raise ValueError(f"{arch!r} is not a closed-form architecture: {list(TEXTURE_ARCHS)}")
    started = time.perf_counter()
    size = int(image_size or DEFAULT_IMAGE_SIZES[arch])
    samples = scan_labelled_folder(data_dir)
    unl = scan_unlabelled_folder(unlabelled) if unlabelled is not None else []
    curated = curator_labels.read(data_dir)
    curator_sources = {s.source for s in samples if curator_labels.relative(s) in curated}
    if val == "none":
        tr, va = list(samples), []
    else:
        tr, va = split_by_source(samples, val_fraction, seed, mode=val, keep=curator_sources)
    log.info("%d training and %d validation images at %dpx", len(tr), len(va), size)
    base = build_model(len(CLASSES), arch=arch, image_size=size)
    backbone = base.get_layer("backbone")
    feats = backbone_features(list(tr) + list(va) + unl, backbone, size, verbose=verbose)
    # (views, N, D): the training images as ingestion sees them, then their augmented views
    f_tr = np.stack(
        [feats[: len(tr)]]
        + [
            backbone_features(
                tr, backbone, size, view=v, pictures=feats[: len(tr)], verbose=verbose
            )
            for v in range(1, views)
        ]
    )
    f_va = feats[len(tr) : len(tr) + len(va)]
    f_un = feats[len(tr) + len(va) :]
    feature_seconds = time.perf_counter() - started

    from artclf_core.lifecycle.cv_evaluate import calibrated_cv, grouping

    copy_keys, groups = grouping(tr)
    boost = curator_labels.boosts(tr, curated)
    found = calibrated_cv(f_tr, tr, lam, source_power, groups=groups, boost=boost)
    cv = found[0] if found else None
    temperature = cv["calibration"]["temperature"] if cv else 1.0
    threshold = cv["calibration"]["review"]["threshold"] if cv else None
    if cv:
        cal = cv["calibration"]
        log.info(
            "source-family CV on the training images (%d folds): balanced accuracy %.3f, "
            "precision@5 %.3f; temperature %.3f, ECE %.3f -> %.3f; review threshold %s",
            cv["folds"],
            cv["balanced_accuracy"],
            cv["label_precision_at_5"],
            temperature,
            cal["ece_before"],
            cal["ece_after"],
            threshold,
        )
    y_tr = np.array([CLASSES.index(s.label) for s in tr])
    src_tr = np.array([s.source for s in tr])
    head = ridge_head.fit(
        f_tr, y_tr, src_tr, n_classes=len(CLASSES), lam=lam, source_power=source_power, boost=boost
    )
    adapted = None
    if unl:
        # The validation families are collections whose labels the head never sees: it learns
        # their look from their pictures as it does an uncurated collection's, so the gate
        # (which scores the candidate on them) measures what self-training gives a collection.
        held = [Sample(s.path, "", self_training.VALIDATION_COLLECTION + s.source) for s in va]
        head, adapted = _self_train(
            f_tr,
            y_tr,
            src_tr,
            boost,
            np.concatenate([f_va, f_un]) if va else f_un,
            held + unl,
            head,
            groups,
            temperature,
            lam,
            source_power,
        )
    is_curated = np.array([curator_labels.relative(s) in curated for s in tr], dtype=bool)
    collections, oof = curator_labels.collection_cv(
        f_tr,
        y_tr,
        src_tr,
        is_curated,
        copy_keys,
        classes=CLASSES,
        temperature=temperature,
        lam=lam,
        source_power=source_power,
        boost=boost,
    )
    for coll, rep in collections.items():
        if "balanced_accuracy" in rep:
            log.info(
                "curator labels of %s: %d, balanced accuracy %.3f out of fold (%d folds)",
                coll,
                rep["n"],
                rep["balanced_accuracy"],
                rep["folds"],
            )
    curve = None
    if kshot and len(set(groups)) > 1:
        from artclf_core.lifecycle import kshot as kshot_lib

        curve = kshot_lib.kshot_curve(
            f_tr,
            y_tr,
            list(src_tr),
            groups,
            copy_keys,
            n_classes=len(CLASSES),
            lam=lam,
            source_power=source_power,
            boost=curator_labels.BOOST,
        )
        log.info(
            "k-shot curve (%d families): %s",
            curve["n_groups"],
            ", ".join(f"k={k} {v:.3f}" for k, v in curve["mean"].items()),
        )
    w_e, b_e, w_p, b_p = ridge_head.layer_weights(head, temperature)
    base.get_layer("embedding").set_weights([w_e, b_e])
    base.get_layer("probabilities").set_weights([w_p, b_p])

    split = {"mode": val, "val_fraction": val_fraction, "seed": seed, **describe_split(tr, va)}
    report = None
    if va:
        probs = calibration.softmax(head.logits(f_va), temperature)
        report = full_report(va, probs, head.embed(f_va), CLASSES, split=split)
    train_seconds = time.perf_counter() - started
    version = make_version(arch, base)
    info = {
        "recipe": "frozen backbone + texture statistics, ridge head (closed form)",
        "image_size": size,
        "lam": lam,
        "source_power": source_power,
        "views": views,
        "unlabelled": len(unl),
        "view_transforms": list(ridge_head.VIEW_TRANSFORMS),
        "temperature": temperature,
        "seed": seed,
        "feature_seconds": round(feature_seconds, 1),
        "train_seconds": round(train_seconds, 1),
    }
    metrics = {
        "validation": report,
        "split": split,
        "training": info,
        "history": {},
        "cross_validation": cv,
        "review_threshold": threshold,
        "collections": collections,
        "kshot": curve,
        "curator_boost": curator_labels.BOOST,
        "self_training": adapted,
    }
    path = save_model(base, out_path, version=version, classes=CLASSES, arch=arch, metrics=metrics)
    log.info("saved %s (%s) after %.0f s", path, version, train_seconds)
    return {
        "version": version,
        "model_path": str(path),
        "report": report,
        "history": {},
        "best_epoch": 0,
        "epochs_run": 0,
        "train_seconds": train_seconds,
        "split": split,
        "cross_validation": cv,
        "review_threshold": threshold,
        "collections": collections,
        "collection_oof": {str(tr[i].path): p for i, p in oof.items()},
        "self_training": adapted,
    }


def _self_train(
    f_tr: np.ndarray,
    y_tr: np.ndarray,
    src_tr: np.ndarray,
    boost: np.ndarray,
    f_un: np.ndarray,
    unl: list[Sample],
    head: ridge_head.RidgeHead,
    groups: list[str],
    temperature: float,
    lam: float,
    source_power: float,
) -> tuple[ridge_head.RidgeHead, dict[str, Any]]:
    """The final head self-trained on the unlabelled images (:mod:`.self_training`), and
    what to record of it: pseudo-labels per collection, and the self-trained
    cross-validation of the training images (each held-out family playing a collection)."""
    from artclf_core.lifecycle.ridge_stats import RidgeStats

    def fit(added: Any) -> ridge_head.RidgeHead:
        return ridge_head.fit(
            np.concatenate([f_tr, added.rows], axis=1),
            np.concatenate([y_tr, added.y]),
            np.concatenate([src_tr, added.sources]),
            n_classes=len(CLASSES),
            lam=lam,
            source_power=source_power,
            boost=np.concatenate([boost, np.ones(len(added.y))]),
        )

    collections = np.array([s.source for s in unl])
    adapted, scores, used = self_training.adapt(
        fit,
        f_un,
        head.logits(f_un),
        views=f_tr.shape[0],
        temperature=temperature,
        collections=collections,
    )
    kept, labels = self_training.pseudo_labels(scores, temperature, collections=collections)
    _, priors = label_shift.adjust(calibration.softmax(scores, temperature), collections)
    per_collection: dict[str, Any] = {}
    for coll in sorted(set(collections)):
        mine = collections == coll
        per_collection[coll] = {
            "images": int(mine.sum()),
            "pseudo_labelled": int((kept & mine).sum()),
            "per_class": {c: int(np.sum(labels[mine[kept]] == i)) for i, c in enumerate(CLASSES)},
            "priors": {c: round(float(p), 4) for c, p in zip(CLASSES, priors[coll], strict=True)},
        }
    cv = None
    if len(set(groups)) > 1:
        stats = RidgeStats(
            f_tr, y_tr, src_tr, n_classes=len(CLASSES), source_power=source_power, boost=boost
        )
        pred = self_training.cross_validate(
            stats, groups, temperature, lam=lam, collections=groups
        ).argmax(1)
        recall = {c: float(np.mean(pred[y_tr == i] == i)) for i, c in enumerate(CLASSES)}
        cv = {
            "folds": len(set(groups)),
            "balanced_accuracy": float(np.mean(list(recall.values()))),
            "recall": recall,
        }
        log.info(
            "self-trained source-family CV (each held-out family an unlabelled collection): "
            "balanced accuracy %.3f",
            cv["balanced_accuracy"],
        )
    log.info(
        "self-training on %d unlabelled image(s) of %d collection(s): %s pseudo-labels per round",
        len(unl),
        len(per_collection),
        used,
    )
    info = {
        "rounds": self_training.ROUNDS,
        "threshold": self_training.THRESHOLD,
        "label_shift": True,
        "pseudo_labels_per_round": used,
        "collections": per_collection,
        "cross_validation": cv,
    }
    return adapted or head, info
