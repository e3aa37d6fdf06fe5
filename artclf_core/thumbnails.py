"""Small WebP pictures of catalogued artworks, made once and kept in the lake.

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
from typing import Any

from botocore.exceptions import ClientError
from PIL import Image

from artclf_core import s3 as s3lib
from artclf_core.images import decode_image

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


def thumbnail(s3: Any, obj: dict[str, Any]) -> bytes:
    """The thumbnail of one catalogued artwork (``bucket``, ``key``, ``sha256``, ``id`` as
    :func:`artclf_core.browse.artwork_object` returns them), made on first request."""
    key = thumbnail_key(obj["id"], obj["sha256"])
    try:
        return s3lib.get_bytes(s3, obj["bucket"], key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
            raise
    webp = render(s3lib.get_bytes(s3, obj["bucket"], obj["key"]))
    s3.put_object(
        Bucket=obj["bucket"],
        Key=key,
        Body=webp,
        ContentType="image/webp",
        Metadata={"artclf-artwork-id": str(obj["id"]), "artclf-source": obj["key"]},
    )
    return webp
