"""The landing zone as a queue: list what waits under a prefix and register it in the ingest
log, so that a notification, a sweep and an ``artclf ingest`` all hand out the same rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from artclf_core.catalogue import db, ingest_log
from artclf_core.config import INCOMING_PREFIX, TRAINING_PREFIX
from artclf_core.ingest.batch import CLAIMABLE
from artclf_core.lake import s3 as s3lib


def check_prefix(prefix: str) -> str:
    """Only the landing zone and the training area are input; the rest is output."""
    if prefix in (INCOMING_PREFIX.rstrip("/"), TRAINING_PREFIX.rstrip("/")):
        prefix += "/"
    if not prefix.startswith((INCOMING_PREFIX, TRAINING_PREFIX)):
        raise ValueError(
            f"cannot ingest from {prefix!r}: input lives under {INCOMING_PREFIX!r} "
            f"(new drops) or {TRAINING_PREFIX!r} (labelled images, catalogued in place)"
        )
    return prefix


def timed_pages(
    s3, conn, bucket: str, prefix: str, page_size: int
) -> Iterator[tuple[datetime, list[s3lib.ObjectRef]]]:
    """Listing pages, each with the database clock read just before its LIST request, so that
    :func:`ingest_log.register_objects` can tell a stale listing from a re-upload."""
    pages = iter(s3lib.iter_pages(s3, bucket, prefix, page_size=page_size))
    while True:
        listed_at = db.clock(conn)
        refs = next(pages, None)
        if refs is None:
            return
        yield listed_at, refs


def registered_pages(
    s3, conn, bucket: str, prefix: str, page_size: int
) -> Iterator[list[ingest_log.LogRow]]:
    """The listing of ``prefix``, page by page, each page registered in the ingest log (and
    committed) before it is handed on: what waits there, as rows to claim."""
    for listed_at, refs in timed_pages(s3, conn, bucket, prefix, page_size):
        rows = ingest_log.register_objects(conn, refs, listed_at=listed_at)
        conn.commit()
        yield rows


def sweep(s3, conn, bucket: str, prefix: str = INCOMING_PREFIX, page_size: int = 1000) -> int:
    """Landing-zone sweep: queue every object under ``prefix`` not queued yet.

    For S3 stores without notifications (SeaweedFS, plain AWS S3 without an event bus), and to
    repair lost notifications. Processed objects leave ``incoming/``, so a sweep costs what is
    pending, not the size of the lake. Returns how many rows are waiting to be processed.
    """
    prefix = check_prefix(prefix)
    pages = registered_pages(s3, conn, bucket, prefix, page_size)
    return sum(1 for rows in pages for r in rows if r.state in CLAIMABLE)
