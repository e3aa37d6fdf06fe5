"""Stage 2 of a batch, one object at a time on the I/O threads: GET, decode and validate,
SHA-256, perceptual fingerprints and the model input.

Takes a claimed :class:`Item`; fills its bytes, size, format, hashes and pixels. States: an
object that is not a usable image becomes ``quarantined`` (with the reason a user can act
on), a missing or unreachable one ``failed`` (retried) or ``phantom`` (already moved away);
otherwise the state stays "" for the next stages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from artclf_core import CLASSES
from artclf_core.config import TRAINING_PREFIX
from artclf_core.images import fingerprints
from artclf_core.images.decode import ImageRejected, decode_image
from artclf_core.images.model_input import to_model_input
from artclf_core.ingest.batch import Batch, Item, cpu_of
from artclf_core.lake import s3 as s3lib

if TYPE_CHECKING:
    from artclf_core.ingest.worker import Worker


def start(w: Worker, batch: Batch) -> None:
    """Submit the batch's downloads to the I/O threads (non-blocking), the model loaded first
    on this (the main) thread, so the I/O threads only ever read a loaded model."""
    if batch.items:
        w.model  # noqa: B018 - loads it on first use
    batch.futures = [w.pool.submit(fetch, w, it) for it in batch.items]


def fetch(w: Worker, item: Item) -> None:
    """Fetch, validate and hash one object (runs on the I/O thread pool)."""
    row = item.row
    if item.in_place and item.curated_label is None:
        # A labelled drop whose folder is not a class would train nothing and is almost always
        # a typo (training/paintings/, training/Sculpture/): say so, keep it there.
        folder = row.key[len(TRAINING_PREFIX) :].partition("/")
        item.quarantine(
            "unknown_label",
            f"labelled drops go under training/<label>/ with <label> one of "
            f"{', '.join(CLASSES)}; "
            + (f"{folder[0]!r} is not one" if folder[1] else "this one has no label folder")
            + " (move it to the right folder; it stays where it is until then)",
        )
        return
    try:
        with cpu_of(item.cpu, "get"):
            data, item.content_type = w.data_path.get(
                row.bucket, row.key, max_bytes=w.limits.max_bytes
            )
    except s3lib.ObjectTooLarge as exc:
        item.quarantine(
            "too_large_file",
            f"file is {exc.size} bytes, the limit is {w.limits.max_bytes} bytes",
        )
        return
    except s3lib.ObjectMissing:
        if row.generation > 0:
            item.state = "phantom"  # a stale listing of an object already moved away
        else:
            item.fail("object_missing", "the object was deleted before it was processed")
        return
    except (s3lib.S3Failure, OSError) as exc:
        item.fail("s3_error", f"S3 GET failed: {exc}")
        return
    item.data_size = len(data)
    try:
        with cpu_of(item.cpu, "decode"):
            decoded = decode_image(data, w.limits)
    except ImageRejected as exc:
        item.quarantine(exc.reason, exc.message)
        return
    except Exception as exc:  # noqa: BLE001 - an unexpected decoder crash is retryable
        item.fail("internal_error", f"decoding crashed: {type(exc).__name__}: {exc}")
        return
    with cpu_of(item.cpu, "sha256"):
        item.sha256 = fingerprints.sha256_hex(data)
    if not item.in_place:
        item.data = data  # written at its final key by the move
    with cpu_of(item.cpu, "model_input"):
        # One squeeze serves both: the fingerprints' square is the shipped model's input.
        square = to_model_input(decoded.image, fingerprints.FINGERPRINT_SIZE)
        size = w.model.image_size
        same = size == fingerprints.FINGERPRINT_SIZE
        item.pixels = square if same else to_model_input(decoded.image, size)
    with cpu_of(item.cpu, "fingerprints"):
        item.phash, item.dhash = fingerprints.square_hashes(square)
    item.width, item.height, item.format = decoded.width, decoded.height, decoded.format
