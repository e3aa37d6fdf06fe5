"""Which models the catalogue knows, without loading TensorFlow.

A saved model carries its metadata (version, classes, architecture, metrics) as the zip member
``artclf.json`` of its ``.keras`` file, so registering one in ``artclf.model_versions`` needs
only ``zipfile``: ``artclf stack up`` and the compose init service do it at start, before any
worker has loaded the model.
"""

from __future__ import annotations

import json
import os
import uuid
import zipfile
from pathlib import Path
from typing import Any

#: Zip member of the ``.keras`` file that carries artclf's metadata.
METADATA_MEMBER = "artclf.json"


def default_model_path() -> Path:
    """Where the shipped default model lives inside the installed package."""
    return Path(__file__).resolve().parent / "models" / "default.keras"


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``artclf.json`` from a saved model without loading TensorFlow weights."""
    with zipfile.ZipFile(path) as zf:
        try:
            raw = zf.read(METADATA_MEMBER)
        except KeyError:
            raise ValueError(
                f"{path} is a Keras file without artclf metadata ({METADATA_MEMBER}); "
                "save it with artclf_core.model.save_model"
            ) from None
    return json.loads(raw)


def register(db_url: str, path: str | os.PathLike[str] | None = None) -> str:
    """Record a model (default: ``ARTCLF_MODEL`` or the shipped one) in the catalogue and
    make it the active one if none is; return its version. Idempotent."""
    from artclf_core import db

    path = Path(path or os.environ.get("ARTCLF_MODEL") or default_model_path())
    meta = read_metadata(path)
    keep_copy(path, str(meta["version"]))
    with db.connect(db_url) as conn:
        db.register_model(
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


def cache_dir() -> Path:
    """Where models fetched from the lake and their TFLite copies are kept:
    ``ARTCLF_CACHE_DIR``, else ``$ARTCLF_HOME/model-cache``.

    Containers set ``ARTCLF_CACHE_DIR`` to a volume (docker-compose: ``artclf-model-cache``),
    so a model is downloaded and converted once per host, not once per container start.
    Sharing it between processes and containers is safe: files are written under a unique
    temporary name and renamed into place.
    """
    configured = os.environ.get("ARTCLF_CACHE_DIR")
    if configured:
        return Path(configured)
    from artclf_core.config import default_home

    return default_home() / "model-cache"


def temporary_name(target: Path) -> Path:
    """A sibling of ``target`` no other writer uses, even in another container of a shared
    volume (process ids repeat across containers)."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")


def kept_copy(version: str) -> Path:
    """Where :func:`keep_copy` keeps a registered local model: ``cache_dir()/<version>.keras``
    (the same place a model fetched from the lake is cached)."""
    return cache_dir() / f"{version}.keras"


def keep_copy(path: str | os.PathLike[str], version: str) -> Path:
    """Copy a local model file that is being registered into :func:`kept_copy`, once.

    A local artifact can change under the catalogue: upgrading artclf replaces the shipped
    ``default.keras`` with a new version while the old one is still active (and its rows
    must still be served, and rolled back to). The version names the weights, so the copy
    never goes stale; it is written under a temporary name and renamed into place.
    """
    import shutil

    target = kept_copy(version)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(target)
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)
    return target


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
            from artclf_core import s3 as s3lib

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
    from artclf_core import db

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
