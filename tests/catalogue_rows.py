"""Catalogue rows (``db.ArtworkRow``) made in code, for tests that write or check the catalogue
without running images through the pipeline."""

from __future__ import annotations

from typing import Any

import numpy as np

from artclf_core import CLASSES
from artclf_core.catalogue.artworks import ArtworkRow


def artwork_row(
    i: int,
    *,
    label: str,
    embedding: np.ndarray,
    probabilities: dict[str, float] | None = None,
    **fields: Any,
) -> ArtworkRow:
    """Row number ``i`` (unique key, SHA-256 and source key); any column can be overridden.

    Without ``probabilities`` the row is 0.9 sure of ``label``; ``probability`` is always the
    largest of them.
    """
    if probabilities is None:
        probabilities = {c: (0.9 if c == label else 0.025) for c in CLASSES}
    values: dict[str, Any] = {
        "bucket": "lake",
        "key": f"catalog/{label}/{i:06d}.jpg",
        "model_version": "test-model",
        "sha256": f"{i:064x}",
        "phash": i,
        "phash_bands": [i],
        "dhash": 0,
        "width": 400,
        "height": 300,
        "format": "JPEG",
        "byte_size": 40_000,
        "source_key": f"incoming/{i}.jpg",
        "source_etag": None,
    }
    values.update(fields)
    return ArtworkRow(
        label=label,
        probability=max(probabilities.values()),
        probabilities=probabilities,
        embedding=np.asarray(embedding, dtype=np.float32),
        **values,
    )
