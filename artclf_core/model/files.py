"""The saved model file, without TensorFlow: its metadata member, the shipped default, and
the local cache where models fetched from the lake and their TFLite copies are kept.

A saved model carries its metadata (version, classes, architecture, metrics) as the zip member
``artclf.json`` of its ``.keras`` file, so registering one needs only ``zipfile``: ``artclf
stack up`` and the compose init service do it at start, before any worker has loaded TF.
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
    return Path(__file__).resolve().parent / "default.keras"


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``artclf.json`` from a saved model without loading TensorFlow weights."""
    with zipfile.ZipFile(path) as zf:
        try:
            raw = zf.read(METADATA_MEMBER)
        except KeyError:
            raise ValueError(
                f"{path} is a Keras file without artclf metadata ({METADATA_MEMBER}); "
                "save it with artclf_core.model.artmodel.save_model"
            ) from None
    return json.loads(raw)


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
