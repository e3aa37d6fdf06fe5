"""Stage 3 of a batch: ONE forward pass of the shared model for the whole batch.

Takes the valid items (pixels set); sets each one's class probabilities, label and 128-d
embedding, and frees its pixels. Changes no state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from artclf_core.ingest.batch import Item

if TYPE_CHECKING:
    from artclf_core.model.artmodel import ArtModel


def classify(model: ArtModel, items: list[Item]) -> None:
    """Probabilities and embeddings of ``items`` from one forward pass."""
    size = model.image_size
    # A model switch between download and classification can change the input size.
    batch = np.stack([_resized(it.pixels, size) for it in items])
    probs, embeddings = model.predict(batch)
    classes = list(model.classes)
    for it, p, e in zip(items, probs, embeddings, strict=True):
        it.probabilities, it.embedding = p, e
        it.label = classes[int(np.argmax(p))]
        it.pixels = None  # free the pixels early; the batch only keeps vectors now


def _resized(pixels: np.ndarray, size: int) -> np.ndarray:
    if pixels.shape[0] == size:
        return pixels
    from PIL import Image

    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))
