"""Which models the catalogue knows, without loading TensorFlow.

A saved model carries its metadata (version, classes, architecture, metrics) as the zip member
``artclf.json`` of its ``.keras`` file, so registering one in ``artclf.model_versions`` needs
only ``zipfile``: ``artclf stack up`` and the compose init service do it at start, before any
worker has loaded the model.
"""

from __future__ import annotations

import json
import os
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
