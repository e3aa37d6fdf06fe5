"""The model registry (artclf.model_versions): which versions the catalogue knows, which one
is active, where each one's ``.keras`` file is, and loading it for inference.

Registering needs no TensorFlow (the metadata is read with ``zipfile``,
:mod:`artclf_core.model.files`); only :func:`load_for_inference` loads the model. Activation
itself is SQL (``artclf.activate_model``: refuses while artworks lack an embedding of the
version), so the CLI, the retrain DAG and a DBA all switch models the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from artclf_core.catalogue import db
from artclf_core.lake import s3 as s3lib
from artclf_core.model.files import (
    cache_dir,
    default_model_path,
    keep_copy,
    kept_copy,
    read_metadata,
    temporary_name,
)

if TYPE_CHECKING:
    from artclf_core.model.artmodel import ArtModel


def register_model(
    conn: psycopg.Connection,
    *,
    version: str,
    arch: str,
    classes: Sequence[str],
    artifact: str | None,
    metrics: dict | None = None,
    activate: bool | None = False,
    status: str = "registered",
) -> None:
    """Record a model version (idempotent) and give it an embedding partition.

    With ``activate`` True it becomes the active version through ``artclf.activate_model``
    (which refuses while the catalogue has artworks it has not embedded); with None only when
    no model is active yet (first start), and then quietly not if it cannot be.
    """
    conn.execute(
        "INSERT INTO artclf.model_versions (version, arch, classes, artifact, metrics, status)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (version) DO NOTHING",
        (version, arch, list(classes), artifact, json.dumps(metrics) if metrics else None, status),
    )
    if status == "registered":
        # A model registered to ingest with gets its partition indexed now (rows arrive one
        # batch at a time); a trained candidate's partition is filled by re-embedding first
        # and indexed once, at the switch (reembed.switch), which is much faster.
        conn.execute("SELECT artclf.build_embedding_index(%s)", (version,))
    if activate is None:
        if active_version(conn) is not None:
            return
        try:
            with conn.transaction():  # a savepoint: a refusal leaves the rest intact
                conn.execute("SELECT artclf.activate_model(%s, 'first model')", (version,))
        except psycopg.errors.ObjectNotInPrerequisiteState:
            pass
    elif activate:
        conn.execute("SELECT artclf.activate_model(%s, 'registered as active')", (version,))


_MODEL_FIELDS = {"status", "decision", "plots", "data_fingerprint", "params", "metrics"}


def update_model(conn: psycopg.Connection, version: str, **fields: Any) -> None:
    """Set registry fields of one version (dicts are stored as jsonb)."""
    unknown = set(fields) - _MODEL_FIELDS
    if unknown:
        raise ValueError(f"unknown model_versions fields: {sorted(unknown)}")
    names = sorted(fields)
    values = [db.json_text(fields[n]) if isinstance(fields[n], dict) else fields[n] for n in names]
    assignments = ", ".join(f"{n} = %s" for n in names)
    conn.execute(
        f"UPDATE artclf.model_versions SET {assignments} WHERE version = %s", (*values, version)
    )


def active_version(conn: psycopg.Connection) -> str | None:
    """The model version that serves similarity search and embeds new images."""
    return conn.execute("SELECT artclf.active_version()").fetchone()[0]


def register(db_url: str, path: str | os.PathLike[str] | None = None) -> str:
    """Record a model (default: ``ARTCLF_MODEL`` or the shipped one) in the catalogue and
    make it the active one if none is; return its version. Idempotent."""
    path = Path(path or os.environ.get("ARTCLF_MODEL") or default_model_path())
    meta = read_metadata(path)
    keep_copy(path, str(meta["version"]))
    with db.connect(db_url) as conn:
        register_model(
            conn,
            version=str(meta["version"]),
            arch=str(meta.get("arch", "cnn")),
            classes=meta["classes"],
            artifact=str(path),
            metrics=meta.get("metrics"),
            activate=None,
        )
        conn.commit()
    return str(meta["version"])


def fetch_artifact(settings: Any, version: str, artifact: str | None) -> Path:
    """A local path for a registered model's ``.keras`` file.

    Artifacts of retrained models live in the lake (``s3://<bucket>/models/<version>/...``)
    so every worker can load them; they are downloaded once into :func:`cache_dir` (the
    version names the weights, so a cached file never goes stale). A local model (the shipped
    default) is registered with its path, which may not exist on another machine or may hold
    another version after an upgrade: then the copy :func:`keep_copy` made at registration,
    else the installed package's copy when its version matches.
    """
    if artifact and artifact.startswith("s3://"):
        target = cache_dir() / f"{version}.keras"
        if not target.exists():
            bucket, _, key = artifact[len("s3://") :].partition("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = temporary_name(target)
            s3lib.client(settings).download_file(bucket, key, str(tmp))
            os.replace(tmp, target)
        return target
    for candidate in (Path(artifact) if artifact else None, kept_copy(version)):
        # A local file is used only while it still holds this version (see keep_copy).
        if candidate and candidate.exists() and read_metadata(candidate).get("version") == version:
            return candidate
    shipped = default_model_path()
    if read_metadata(shipped).get("version") == version:
        return shipped
    raise FileNotFoundError(
        f"model {version}: artifact {artifact!r} is not reachable from here and no copy is kept"
        f" in {kept_copy(version)} (was the shipped default {version} replaced by an upgrade?"
        f" Register and activate the new default: artclf models register && artclf models"
        f" activate {read_metadata(shipped).get('version')})"
    )


def model_path(settings: Any, version: str | None = None) -> Path:
    """The local ``.keras`` file of a registered version; without ``version``, of the
    catalogue's active model (the shipped one if none is active)."""
    where, args = ("is_active", ()) if version is None else ("version = %s", (version,))
    with db.connect(settings.db_url) as conn:
        row = conn.execute(
            f"SELECT version, artifact FROM artclf.model_versions WHERE {where}", args
        ).fetchone()
    if row is None and version is None:
        return default_model_path()
    if row is None:
        raise LookupError(f"model version {version} is not registered")
    return fetch_artifact(settings, row[0], row[1])


def load_for_inference(settings: Any, version: str | None = None) -> ArtModel:
    """The model an ingest worker runs, ready for its first batch (converted for TFLite now,
    at start-up, not inside that batch): ``version`` if given, else ``ARTCLF_MODEL``
    (``settings.model_path``), else the catalogue's active model. ``artclf models warm``
    calls it too, so it warms exactly what the workers will load."""
    from artclf_core.model.artmodel import ArtModel

    if version is not None:
        path = model_path(settings, version)
    else:
        path = settings.model_path or model_path(settings)
    model = ArtModel.load(path)
    model.runner  # noqa: B018 - builds (or reads from the cache) the converted model
    return model
