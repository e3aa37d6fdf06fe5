"""Bringing every artwork's fingerprints to the current scheme (``artclf rehash``).

Ingestion computes pHash and dHash with scheme
:data:`~artclf_core.images.fingerprints.FINGERPRINT_VERSION`; rows catalogued under an older
scheme keep theirs (``artclf.artworks.fingerprint_version``) until this recomputes them from
the picture in the lake. The schemes differ by a few bits at most, so near-copy detection
works across them meanwhile; after a rehash every comparison is exact again.

Safe to run at any time, beside ingestion, and again: it reads rows still at an older scheme
in id order, a batch at a time, downloads and decodes their pictures on a thread pool as the
re-embedding does, and updates each batch in one statement that only touches rows still at an
older scheme (so two runs, or a run killed midway and started again, compute each row once).
A picture that cannot be read (missing from the lake, no longer decodable) keeps its old
fingerprints and is reported; nothing else changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg

from artclf_core.catalogue import db
from artclf_core.config import Settings
from artclf_core.images import fingerprints
from artclf_core.images.decode import decode_image
from artclf_core.lake import s3 as s3lib

log = logging.getLogger("artclf.rehash")

#: Artworks read and updated per statement.
BATCH_SIZE = 500


@dataclass
class RehashSummary:
    """What one :func:`rehash` did."""

    rehashed: int = 0
    #: ``s3://bucket/key: why`` of each picture that could not be read or decoded.
    unreadable: list[str] = field(default_factory=list)
    #: Artworks still at an older scheme afterwards (the unreadable ones, unless another
    #: writer is at work).
    left: int = 0

    def line(self) -> str:
        text = f"rehashed {self.rehashed} artwork(s) to fingerprint scheme "
        text += f"{fingerprints.FINGERPRINT_VERSION}"
        if self.unreadable:
            text += f"; {len(self.unreadable)} unreadable, kept as they were"
        return text + f"; {self.left} left at an older scheme"


def pending(conn: psycopg.Connection) -> int:
    """How many artworks have fingerprints of an older scheme."""
    return conn.execute(
        "SELECT count(*) FROM artclf.artworks WHERE fingerprint_version < %s",
        (fingerprints.FINGERPRINT_VERSION,),
    ).fetchone()[0]


def _hashes(objects: s3lib.DataPath, bucket: str, key: str) -> tuple[int, int] | str:
    """The current scheme's ``(phash, dhash)`` of the picture at ``key``, or why not."""
    try:
        data, _ = objects.get(bucket, key)
        return fingerprints.catalogue_hashes(decode_image(data).image)
    except Exception as exc:  # noqa: BLE001 - reported per artwork, the run goes on
        return f"s3://{bucket}/{key}: {type(exc).__name__}: {exc}"


def rehash(
    settings: Settings,
    *,
    batch_size: int = BATCH_SIZE,
    workers: int = 8,
    objects: s3lib.DataPath | None = None,
    progress: Callable[[int], None] | None = None,
) -> RehashSummary:
    """Recompute the fingerprints of every artwork catalogued under an older scheme."""
    version = fingerprints.FINGERPRINT_VERSION
    objects = objects or s3lib.DataPath(settings)
    summary = RehashSummary()
    after = 0
    with (
        db.connect(settings.db_url) as conn,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="artclf-rehash") as pool,
    ):
        while True:
            rows = conn.execute(
                "SELECT id, bucket, key FROM artclf.artworks"
                " WHERE fingerprint_version < %s AND id > %s ORDER BY id LIMIT %s",
                (version, after, batch_size),
            ).fetchall()
            conn.commit()
            if not rows:
                break
            after = rows[-1][0]
            found = list(pool.map(lambda r: _hashes(objects, r[1], r[2]), rows))
            done = [(r[0], h) for r, h in zip(rows, found, strict=True) if isinstance(h, tuple)]
            summary.unreadable += [h for h in found if isinstance(h, str)]
            if done:
                summary.rehashed += _update(conn, done, version)
                conn.commit()
            if progress:
                progress(len(rows))
        summary.left = pending(conn)
    for why in summary.unreadable[:5]:
        log.warning("not rehashed: %s", why)
    return summary


def _update(conn: psycopg.Connection, done: list[tuple[int, tuple[int, int]]], version: int) -> int:
    """One UPDATE for a batch; rows another run got to first are left alone."""
    ids = [i for i, _ in done]
    phashes = [p for _, (p, _) in done]
    dhashes = [d for _, (_, d) in done]
    bands = [db.int_array_text(fingerprints.band_keys(p)) for p in phashes]
    cur = conn.execute(
        "UPDATE artclf.artworks AS a SET phash = u.phash, dhash = u.dhash,"
        " phash_bands = u.bands::integer[], fingerprint_version = %s"
        " FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::text[])"
        "   AS u(id, phash, dhash, bands)"
        " WHERE a.id = u.id AND a.fingerprint_version < %s",
        (version, ids, phashes, dhashes, bands, version),
    )
    return cur.rowcount
