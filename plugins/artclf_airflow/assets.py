"""The asset the ingest DAG is scheduled on: new objects under ``s3://<bucket>/incoming/``
(drops) and ``training/`` (labelled drops, which the nightly retraining learns from).

``schedule=[incoming_asset()]`` makes a DAG event-driven: the asset's watcher runs
:class:`~artclf_airflow.triggers.IncomingObjectsTrigger` in the triggerer, and each event
it fires is an asset event that queues a run. Calling ``incoming_asset()`` from several DAG
files gives equal assets and one shared trigger (same name and kwargs).
"""

from __future__ import annotations

import os

from airflow.sdk import Asset, AssetWatcher

from artclf_airflow.connections import DEFAULT_BUCKET
from artclf_airflow.triggers import IncomingObjectsTrigger
from artclf_core.config import INCOMING_PREFIX

ASSET_NAME = "artclf_incoming"


def incoming_bucket() -> str:
    """The bucket the asset's URI names: ``ARTCLF_BUCKET``, else ``"artclf"``.

    Read from the environment at parse time, not from the aws connection, so that parsing a
    DAG never asks a secrets backend.
    """
    return os.environ.get("ARTCLF_BUCKET") or DEFAULT_BUCKET


def sweep_interval() -> float:
    """Seconds between landing-zone sweeps: ``ARTCLF_SWEEP_INTERVAL``, default 1.

    A sweep lists only what is still pending under ``incoming/``, so a short interval is
    cheap and is most of the latency on stores without notifications (SeaweedFS, plain S3).
    With MinIO notifications the sweep only repairs lost events: 300 is plenty there.
    """
    return float(os.environ.get("ARTCLF_SWEEP_INTERVAL") or 1.0)


def training_sweep_interval() -> float:
    """Seconds between sweeps of the training area: ``ARTCLF_TRAINING_SWEEP_INTERVAL``,
    default 30 (<= 0: never; labelled drops then need MinIO notifications or a manual
    ``artclf ingest --prefix training/``).

    ``training/`` keeps its objects (they are catalogued in place), so a sweep lists the whole
    area: 0.27 CPU-seconds (client, S3 server and PostgreSQL) per sweep of 3,000 known
    objects on the embedded store (``bench/training_sweep.py``), 27 % of a core if swept every
    second, 0.9 % every 30 s.
    """
    return float(os.environ.get("ARTCLF_TRAINING_SWEEP_INTERVAL") or 30.0)


def incoming_asset() -> Asset:
    """``Asset("artclf_incoming", uri="s3://<bucket>/incoming/")`` with its watcher.

    The trigger gets no bucket: in the triggerer it resolves it exactly as the DAG's tasks
    do, with ``settings_from_connections()`` (the aws connection's extra ``bucket``, else
    ``ARTCLF_BUCKET``, else ``"artclf"``), so the watched bucket and the processed one
    cannot differ, and the trigger's identity does not depend on the parsing environment.
    Keep the connection's ``bucket`` equal to ``ARTCLF_BUCKET`` (the embedded stack does)
    and the URI names the right bucket too.
    """
    return Asset(
        name=ASSET_NAME,
        uri=f"s3://{incoming_bucket()}/{INCOMING_PREFIX}",
        watchers=[
            AssetWatcher(
                name=f"{ASSET_NAME}_watcher",
                trigger=IncomingObjectsTrigger(
                    name=ASSET_NAME,
                    sweep_interval=sweep_interval(),
                    training_sweep_interval=training_sweep_interval(),
                ),
            )
        ],
    )


MODELS_ASSET_NAME = "artclf_models"


def models_asset() -> Asset:
    """``Asset("artclf_models", uri="s3://<bucket>/models/")``: updated when the retraining
    DAG promotes a model (the event's ``extra`` names the ``version``); the re-embedding DAG
    is scheduled on it."""
    return Asset(name=MODELS_ASSET_NAME, uri=f"s3://{incoming_bucket()}/models/")
