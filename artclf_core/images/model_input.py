"""Turning a decoded picture into the model's input.

Training (``artclf train``) and ingestion share these two functions, so a model never sees
pixels prepared differently from the ones it was trained on.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from artclf_core import IMAGE_SIZE

#: Smallest size libjpeg's draft mode may scale a JPEG down to while decoding (by 1/2, 1/4 or
#: 1/8): the largest model input we ship (the backbone's 160 px), so the final resize never
#: enlarges. Ingestion (:func:`artclf_core.images.decode.decode_image`) and training
#: (:func:`open_rgb`) both use it, so a model sees the pixels it was trained on. Decoding a
#: 640 x 480 JPEG at 1/2 scale and hashing the 320 x 240 result costs 1.6 ms of CPU instead
#: of 3.0 ms at full scale (``docs/benchmarks.md``, "Decoding at draft scale").
DRAFT_SIZE: tuple[int, int] = (160, 160)


def normalize_mode(img: Image.Image) -> Image.Image:
    """Return an 8-bit RGB image whatever the source mode.

    Transparent images are composited on white (how a curator sees a cut-out sculpture on a
    web page), 16-bit and float greyscale are scaled down to 8 bits instead of clipped, CMYK
    and palette images go through Pillow's converters.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / hi if hi > 255 else 1.0
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def open_rgb(
    path: str, *, draft: bool = True, draft_size: tuple[int, int] = DRAFT_SIZE
) -> Image.Image:
    """Open a local image file as upright 8-bit RGB (used for training folders).

    ``draft`` lets the JPEG decoder scale down by 2/4/8 while decoding (to no less than
    ``draft_size``), exactly as ingestion decodes uploads.
    """
    with Image.open(path) as img:
        if draft and img.format == "JPEG":
            img.draft("RGB", draft_size)
        img = ImageOps.exif_transpose(img)
        return normalize_mode(img)


def to_model_input(img: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize an RGB image to the model's square input: ``uint8`` array (size, size, 3).

    The whole picture is squeezed to a square (no crop), as the prototype did: cropping would
    cut away the frame and margins that tell an engraving plate from a painting.
    The model rescales to [0, 1] itself, so callers pass raw 0-255 pixels.
    """
    if img.mode != "RGB":
        img = normalize_mode(img)
    small = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(small, dtype=np.uint8)
