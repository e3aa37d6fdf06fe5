"""Stage 4 of a batch: exact (SHA-256) and near (pHash confirmed by dHash, and the
embedding) copies, within the batch and against the catalogue, in one indexed query each.

:func:`deduplicate` takes the classified items and decides each one's state: ``duplicate``
(of an artwork, or of an earlier item of the batch: ``origin``) or ``catalogued``. At commit
time, under the catalogue lock, :func:`drop_concurrent_copies` re-checks the new artworks
against those a concurrent worker committed meanwhile (the thresholds are
:mod:`artclf_core.images.fingerprints`'s).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from artclf_core.catalogue import artworks
from artclf_core.catalogue.artworks import ArtworkRow
from artclf_core.config import DUPLICATES_PREFIX
from artclf_core.images import fingerprints
from artclf_core.ingest.batch import Item
from artclf_core.ingest.place import side_key

if TYPE_CHECKING:
    import psycopg

    from artclf_core.ingest.worker import Worker


def deduplicate(w: Worker, items: list[Item]) -> int:
    """Exact then near duplicates, against the catalogue and within the batch.

    Returns the highest artwork id the queries could see: artworks committed after that (by
    concurrent workers, or this worker's previous batch) are checked again at commit time
    (:func:`drop_concurrent_copies`), under the catalogue lock.
    """
    conn = w.conn
    seen_up_to = artworks.max_artwork_id(conn)
    shas = [it.sha256 for it in items]
    hashes = [it.phash for it in items]
    exact = artworks.find_exact(conn, shas)
    need_near = [i for i, it in enumerate(items) if it.sha256 not in exact]
    near = artworks.find_near(
        conn,
        [hashes[i] for i in need_near],
        [items[i].dhash for i in need_near],
        [items[i].embedding for i in need_near],
        model_version=w.model.version,
    )
    near_by_item = {need_near[q]: hit for q, hit in near.items()}
    in_batch = fingerprints.find_duplicates_in_batch(
        shas, hashes, dhashes=[it.dhash for it in items]
    )
    for i, it in enumerate(items):
        if it.sha256 in exact:
            it.state, it.duplicate_kind, it.distance = "duplicate", "exact", 0
            it.duplicate_of = exact[it.sha256]
        elif in_batch[i] and in_batch[i][0] == "exact":
            it.state, it.duplicate_kind, it.distance = "duplicate", "exact", 0
            it.origin = items[in_batch[i][1]]
        elif i in near_by_item:
            it.state, it.duplicate_kind = "duplicate", "near"
            it.duplicate_of, it.distance = near_by_item[i]
        elif in_batch[i]:
            j = in_batch[i][1]
            it.state, it.duplicate_kind = "duplicate", "near"
            it.origin = items[j]
            it.distance = fingerprints.hamming(hashes[i], hashes[j])
        else:
            it.state = "catalogued"
    # Resolve chains: a copy of an earlier item that is itself a copy points at the original.
    for it in items:
        origin = it.origin
        while origin is not None and origin.origin is not None:
            origin = origin.origin
        if origin is not None and origin.duplicate_of is not None:
            it.duplicate_of, it.origin = origin.duplicate_of, None
        else:
            it.origin = origin
    return seen_up_to


def drop_concurrent_copies(
    conn: psycopg.Connection, new_rows: list[tuple[Item, ArtworkRow]], seen_up_to: int
) -> list[tuple[Item, ArtworkRow]]:
    """Turn into duplicates the new artworks that copy one a concurrent worker committed after
    our de-duplication queries (the caller holds the catalogue lock); the rest is returned."""
    if not new_rows:
        return new_rows
    recent = artworks.artworks_after(conn, seen_up_to)
    if not recent:
        return new_rows
    ids = [r[0] for r in recent]
    shas = {r[1]: r[0] for r in recent}
    hashes = np.array([r[2] for r in recent], dtype=np.int64).view(np.uint64)
    dhashes = np.array([r[3] for r in recent], dtype=np.int64).view(np.uint64)
    kept = []
    for it, row in new_rows:
        match = shas.get(it.sha256)
        if match is None:
            p = np.bitwise_count(hashes ^ np.uint64(fingerprints.to_unsigned64(it.phash)))
            d = np.bitwise_count(dhashes ^ np.uint64(fingerprints.to_unsigned64(it.dhash)))
            hits = np.flatnonzero(
                (p <= fingerprints.NEAR_DUP_MAX_DISTANCE) & (d <= fingerprints.NEAR_DUP_MAX_DHASH)
            )
            match = ids[int(hits[0])] if hits.size else None
        if match is None:
            kept.append((it, row))
        else:
            late_duplicate(it, match, exact=it.sha256 in shas)
    return kept


def late_duplicate(it: Item, artwork_id: int, *, exact: bool) -> None:
    """Record ``it`` as a duplicate of an artwork catalogued concurrently: its catalog/ copy
    becomes ``misplaced`` (moved to duplicates/ after the commit)."""
    it.misplaced = None if it.in_place else it.final_key
    it.state, it.duplicate_of = "duplicate", artwork_id
    it.duplicate_kind = "exact" if exact else "near"
    it.distance = 0 if exact else None
    it.final_key = it.row.key if it.in_place else side_key(DUPLICATES_PREFIX, it.row.id, it.row.key)
