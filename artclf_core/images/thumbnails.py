"""Small WebP pictures of catalogued artworks: their key and how they are drawn. They are made
once and kept in the lake (:func:`artclf_core.catalogue.browse.thumbnail`).

A grid of 60 artworks must not download 60 full-size scans (often megabytes each) on every
page view. The first request for an artwork's thumbnail reads its lake object, decodes it
with the ingest decoder (same limits: a decompression bomb cannot hide here either), shrinks
it to fit ``SIZE`` x ``SIZE`` and stores the WebP under ``thumbnails/`` in the same bucket;
later requests read that small object. The key carries the artwork's SHA-256, so a thumbnail
can never show stale pixels, and HTTP clients may cache it for good (see ``ETAG``).

``thumbnails/`` is derived data: deleting the prefix loses nothing, the next view rebuilds.
"""

from __future__ import annotations

import io

from PIL import Image

from artclf_core.images.decode import decode_image

PREFIX = "thumbnails/"
SIZE = 256
QUALITY = 80


def thumbnail_key(artwork_id: int, sha256: str) -> str:
    return f"{PREFIX}{artwork_id}-{sha256[:16]}-{SIZE}.webp"


def etag(sha256: str) -> str:
    """A strong HTTP validator: the pixels depend only on the bytes and ``SIZE``."""
    return f'"{sha256[:32]}-{SIZE}"'


def render(data: bytes, size: int = SIZE) -> bytes:
    """The WebP thumbnail of an image file's bytes (aspect ratio kept)."""
    image = decode_image(data).image
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="WEBP", quality=QUALITY, method=4)
    return out.getvalue()
