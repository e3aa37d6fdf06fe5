"""Retraining from the lake, the promotion gate, and publishing the candidate.

One call, :func:`retrain`, is what the nightly DAG runs (and ``artclf retrain``):

1. **Dataset from the lake** (:mod:`artclf_core.lifecycle.lake_dataset`): every catalogued
   artwork whose label is known, i.e. ``curated_label`` set by a ``training/<label>/`` drop or
   a curator's ``artclf.confirm_label``. The catalogue holds one row per distinct artwork
   (exact and near copies were turned away at ingestion), and the split again groups copies
   by SHA-256 and pHash/dHash (:func:`artclf_core.lifecycle.dataset.duplicate_groups`) and
   holds out whole sources (an artwork's collection; without one, its name's prefix before
   ``__``), so the same artwork never sits on both sides. For the closed-form recipe, also
   each collection's uncurated artworks.
2. **Training** with :func:`artclf_core.lifecycle.training.train` (the closed-form recipe
   self-trains on the uncurated artworks: :mod:`artclf_core.lifecycle.self_training`; the
   others by epochs, with augmentation, class weights and early stopping).
3. **The gate** (:mod:`artclf_core.lifecycle.promotion`): the active model is scored on the *same*
   validation images as the candidate, and the candidate is promoted only if it is better.
4. **Publishing**: the ``.keras`` file, ``report.json`` (both reports, the decision, the
   split, the data fingerprint) and PNG plots go to ``s3://<bucket>/models/<version>/``; the
   version is registered with status ``promoted`` or ``rejected`` and the decision's reasons.
   A promoted version is not active yet: re-embedding the catalogue and the switch
   (:mod:`artclf_core.lifecycle.reembed`) make it so.

If the labelled data has not changed since the active model was trained (same fingerprint),
nothing is trained: a nightly run on an unchanged lake costs a query, not 20 minutes of CPU.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from artclf_core import CLASSES
from artclf_core.catalogue import db, registry
from artclf_core.config import TRAINING_PREFIX, Settings
from artclf_core.lake import s3 as s3lib
from artclf_core.lifecycle import curator_labels, lake_dataset, promotion, retrain_report
from artclf_core.model import plots

log = logging.getLogger("artclf.retrain")

#: Fewest labelled images per class to train at all (a class needs some to validate on).
MIN_PER_CLASS = 4
MODELS_PREFIX = "models/"


def _waiting_labelled(conn) -> int:
    """Objects under ``training/`` queued but not catalogued yet (pending, being processed or
    failed with attempts left): labelled images this run cannot see yet."""
    (n,) = conn.execute(
        "SELECT count(*) FROM artclf.ingest_log WHERE key ^@ %s"
        " AND state IN ('pending', 'processing', 'failed')",
        (TRAINING_PREFIX,),
    ).fetchone()
    return int(n)


def _active(conn) -> dict[str, Any] | None:
    rows = db.fetch_dicts(
        conn,
        "SELECT version, arch, artifact, data_fingerprint, created_at"
        " FROM artclf.model_versions WHERE is_active",
    )
    return rows[0] if rows else None


def retrain(
    settings: Settings,
    *,
    work_dir: str | os.PathLike[str],
    arch: str | None = None,
    epochs: int | None = None,
    patience: int | None = None,
    seed: int = 0,
    policy: promotion.GatePolicy | None = None,
    force: bool = False,
    verbose: int = 0,
    run_by: str | None = None,
) -> dict[str, Any]:
    """Build the dataset, train, gate, publish and register; return the run's summary.

    ``arch`` defaults to the active model's architecture (the shipped default's when none
    is active): a nightly run retrains the model the lake uses, and ``ARTCLF_TRAIN_ARCH`` or
    the DAG's param switch architectures deliberately.

    ``summary["status"]`` is ``"skipped"`` (with ``reason``), ``"promoted"`` or
    ``"rejected"``; the last two carry ``version``, ``decision`` and ``artifact``. Every
    summary carries ``dataset`` (``lake_dataset.describe_training_set``), ``report_md`` (the
    same as Markdown) and is recorded in ``artclf.retrain_runs`` under ``run_by`` (default
    ``cli:<user>@<host>``). Progress (download, features or epochs, evaluation, the gate) is
    logged at INFO on the ``artclf.*`` loggers.
    """
    from artclf_core.lifecycle import evaluation, training
    from artclf_core.lifecycle.cv_evaluate import trained_families
    from artclf_core.lifecycle.dataset import scan_labelled_folder, split_by_source

    # Without a caller's or an active model's architecture: model.DEFAULT_ARCH (the shipped one).
    from artclf_core.model.archs import ARCHS, DEFAULT_ARCH, TEXTURE_ARCHS
    from artclf_core.model.artmodel import ArtModel

    policy = policy or promotion.GatePolicy.from_env()
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    run_by = run_by or f"cli:{getpass.getuser()}@{socket.gethostname()}"
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    with db.connect(settings.db_url) as conn:
        active = _active(conn)
        waiting = _waiting_labelled(conn)
    dataset = lake_dataset.export_training_set(settings, work / "dataset", active)
    if arch is None:
        arch = os.environ.get("ARTCLF_TRAIN_ARCH") or (
            active["arch"] if active and active["arch"] in ARCHS else DEFAULT_ARCH
        )
    unlabelled = None
    if arch in TEXTURE_ARCHS:
        # the closed-form recipe also learns each collection's look from its own images
        unlabelled = lake_dataset.export_unlabelled(settings, work / "unlabelled")
        dataset["unlabelled"] = {k: unlabelled[k] for k in ("n", "per_collection")}
        if unlabelled["n"]:  # new uncurated artworks are new data for it
            dataset["fingerprint"] = lake_dataset.data_fingerprint(
                [(dataset["fingerprint"], "labelled")]
                + [(sha, "unlabelled") for sha in unlabelled["sha256"]]
            )
    summary: dict[str, Any] = {
        "dataset": {k: v for k, v in dataset.items() if k != "dir"},
        "waiting_under_training": waiting,
        "compared_with": active and active["version"],
    }
    short = [c for c in CLASSES if dataset["per_class"].get(c, 0) < MIN_PER_CLASS]
    reason = None
    if short:
        reason = f"fewer than {MIN_PER_CLASS} labelled images of {', '.join(short)}"
    elif not force and active and active["data_fingerprint"] == dataset["fingerprint"]:
        reason = f"labelled data unchanged since {active['version']} was trained"
    if reason:
        log.info("nothing trained: %s", reason)
        return _record(
            settings,
            {**summary, "status": "skipped", "reason": reason},
            started,
            started_at,
            run_by,
        )
    log.info(
        "training %s on %d labelled image(s) (%d new since the active model)",
        arch,
        dataset["n"],
        dataset["new_since_active"]["n"],
    )

    kwargs: dict[str, Any] = {"seed": seed, "arch": arch, "verbose": verbose}
    if epochs is not None:
        kwargs["epochs"] = epochs
    if patience is not None:
        kwargs["patience"] = patience
    if unlabelled and unlabelled["n"]:
        kwargs["unlabelled"] = unlabelled["dir"]
    result = training.train(dataset["dir"], work / "candidate.keras", **kwargs)
    version = result["version"]
    log.info(
        "trained %s in %.0f s; scoring it and the active model", version, result["train_seconds"]
    )
    # The active model on exactly the candidate's validation images.
    samples = scan_labelled_folder(dataset["dir"])
    split = result["split"]
    _, val = split_by_source(samples, split["val_fraction"], split["seed"], mode=split["mode"])
    active_report = None
    candidate_report = result["report"]
    candidate_model = ArtModel.load(result["model_path"])
    if active is not None:
        path = registry.fetch_artifact(settings, active["version"], active["artifact"])
        active_model = ArtModel.load(path)
        # Only the families neither model trained on (promotion.unseen_by): the candidate's
        # split may hold out part of a family it trained on (a class with one source).
        seen = (trained_families(active_model) or set()) | (
            trained_families(candidate_model) or set()
        )
        fair = promotion.unseen_by(val, seen)
        held = None
        if fair:
            active_report = evaluation.evaluate_samples(fair, active_model)
            if len(fair) != len(val):
                candidate_report = evaluation.evaluate_samples(fair, candidate_model)
            held = promotion.decide(candidate_report, active_report, policy)
        evidence = _collection_evidence(samples, dataset["dir"], result, active_model)
        if evidence is not None:
            decision = promotion.with_collections(held, evidence, policy)
        elif held is not None:
            decision = held
        else:
            decision = promotion.no_evidence(result["report"], active["version"], policy)
    else:
        decision = promotion.decide(candidate_report, None, policy)
    log.info(
        "gate for %s against %s: %s", version, active and active["version"], decision.summary()
    )

    # Publish next to each other in the lake: model, report, plots.
    prefix = f"{MODELS_PREFIX}{version}/"
    client = s3lib.client(settings)
    report = {
        "version": version,
        "arch": arch,
        "compared_with": active and active["version"],
        "decision": decision.as_dict(),
        "candidate": result["report"],
        "candidate_on_gate_images": candidate_report,
        "collections": result.get("collections"),
        "self_training": result.get("self_training"),
        "active": active_report,
        "split": split,
        "dataset": summary["dataset"],
        "history": result["history"],
        "best_epoch": result["best_epoch"],
        "train_seconds": round(result["train_seconds"], 1),
    }
    objects = {
        "model.keras": Path(result["model_path"]).read_bytes(),
        "report.json": json.dumps(report, indent=2).encode(),
        "confusion.png": plots.confusion_png(result["report"], title=f"{version} (validation)"),
    }
    if result["history"]:  # the closed-form recipe has no epochs to plot
        objects["training_curves.png"] = plots.training_curves_png(
            result["history"], title=f"{version}", best_epoch=result["best_epoch"]
        )
    if active_report is not None:
        objects["confusion_active.png"] = plots.confusion_png(
            active_report, title=f"{active['version']} (same validation images)"
        )
    for name, body in objects.items():
        client.put_object(Bucket=settings.bucket, Key=prefix + name, Body=body)
    artifact = f"s3://{settings.bucket}/{prefix}model.keras"
    status = "promoted" if decision.promote else "rejected"
    with db.connect(settings.db_url) as conn:
        registry.register_model(
            conn,
            version=version,
            arch=arch,
            classes=CLASSES,
            artifact=artifact,
            metrics={
                "validation": result["report"],
                "split": split,
                "cross_validation": result.get("cross_validation"),
                "review_threshold": result.get("review_threshold"),
                "collections": result.get("collections"),
                "self_training": result.get("self_training"),
            },
            status=status,
        )
        registry.update_model(
            conn,
            version,
            status=status,
            decision=decision.as_dict(),
            plots={n: f"s3://{settings.bucket}/{prefix}{n}" for n in objects if n.endswith(".png")},
            data_fingerprint=dataset["fingerprint"],
            params={k: v for k, v in kwargs.items() if k not in ("verbose", "unlabelled")},
        )
        conn.commit()
    outcome = {
        **summary,
        "status": status,
        "version": version,
        "decision": decision.as_dict(),
        "reasons": decision.reasons,
        "artifact": artifact,
        "report": f"s3://{settings.bucket}/{prefix}report.json",
        "self_training": result.get("self_training"),
    }
    return _record(settings, outcome, started, started_at, run_by)


def _collection_evidence(
    samples: Sequence[Any], folder: str, result: dict[str, Any], active_model: Any
) -> dict[str, Any] | None:
    """The gate's curator side: the labels the active model never saw (labelled after it was
    trained), the candidate's within-collection out-of-fold predictions on them against the
    active model's; None when there are none (or the recipe kept no out-of-fold predictions)."""
    from artclf_core.lifecycle.dataset import load_images

    oof = result.get("collection_oof") or {}
    labels = curator_labels.read(folder)
    chosen = [
        s
        for s in samples
        if str(s.path) in oof
        and (label := labels.get(curator_labels.relative(s))) is not None
        and label.new
    ]
    if not chosen:
        return None
    probs, _ = active_model.predict(load_images(chosen, size=active_model.image_size))
    return promotion.collection_evidence(
        [CLASSES.index(s.label) for s in chosen],
        [int(oof[str(s.path)].argmax()) for s in chosen],
        [int(p.argmax()) for p in probs],
        [s.source for s in chosen],
        CLASSES,
    )


def _record(
    settings: Settings,
    summary: dict[str, Any],
    started: float,
    started_at: datetime,
    run_by: str,
) -> dict[str, Any]:
    """Add ``seconds`` and ``report_md`` to the summary and record the run in
    ``artclf.retrain_runs`` (skipped runs too: "why was nothing trained?" is a question)."""
    summary = {**summary, "seconds": round(time.perf_counter() - started, 1)}
    summary["report_md"] = retrain_report.report_markdown(summary)
    with db.connect(settings.db_url) as conn:
        conn.execute(
            "INSERT INTO artclf.retrain_runs (started_at, run_by, status, reason, version,"
            " compared_with, dataset, report_md, seconds)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                started_at,
                run_by,
                summary["status"],
                summary.get("reason"),
                summary.get("version"),
                summary.get("compared_with"),
                json.dumps(summary["dataset"]),
                summary["report_md"],
                summary["seconds"],
            ),
        )
        conn.commit()
    return summary
