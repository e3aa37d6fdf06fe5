"""Where each object goes in the lake, and the moves that put it there.

**Crash safety** (the one argument the whole ingest rests on):

1. every final key is a pure function of the object and its log row (:func:`catalog_key`,
   :func:`side_key`), so a re-run decides the same place;
2. the key a batch is about to write is recorded in the log row *before* the copy
   (``intended_key``, :func:`artclf_core.catalogue.ingest_log.record_intents`), so a run that
   takes over a dead claim knows which uncommitted copies to remove (:func:`remove_keys`);
3. the copy happens **before** the commit and the source's delete **after** it
   (:func:`copy_all`, then :mod:`~artclf_core.ingest.commit`, then :func:`delete_sources`);
4. a committed row that is not ``finalized`` is a move decided but not finished, and the next
   run finishes it from the row alone (:func:`finish_moves`).

So a crash, a kill or a restart at any point leaves either nothing committed (the copies are
removed and the objects claimed again) or a committed decision that the next run completes:
nothing is lost, no row is written twice, no copy is orphaned.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError

from artclf_core.catalogue import ingest_log
from artclf_core.catalogue.artworks import ArtworkRow
from artclf_core.catalogue.ingest_log import LogRow
from artclf_core.config import CATALOG_PREFIX, DUPLICATES_PREFIX, QUARANTINE_PREFIX
from artclf_core.images import fingerprints
from artclf_core.ingest.batch import TERMINAL, Item, cpu_of
from artclf_core.lake import s3 as s3lib

if TYPE_CHECKING:
    import psycopg

    from artclf_core.ingest.worker import Worker
    from artclf_core.model.artmodel import ArtModel

log = logging.getLogger(__name__)


def catalog_key(label: str, sha256: str, key: str) -> str:
    """``catalog/<label>/<sha256[:16]>-<name>``: unique per content, stable across re-runs
    (an over-long name is shortened to fit the store, :func:`artclf_core.lake.s3.fit_key`)."""
    return s3lib.fit_key(f"{CATALOG_PREFIX}{label}/", f"{sha256[:16]}-", s3lib.basename(key))


def side_key(prefix: str, log_id: int, key: str) -> str:
    """``duplicates/<log id>-<name>`` or ``quarantine/<log id>-<name>`` (shortened to fit)."""
    return s3lib.fit_key(prefix, f"{log_id}-", s3lib.basename(key))


def trace_metadata(item: Item) -> dict[str, str]:
    """S3 user metadata written on the moved object: its history, readable by any S3 client."""
    return trace(
        item.state,
        item.row.id,
        item.row.key,
        reason=item.reason,
        label=item.label,
        duplicate_of=item.duplicate_of,
        artwork_id=item.artwork_id,
    )


def trace(
    state: str,
    log_id: int,
    source_key: str,
    *,
    reason: str | None = None,
    label: str | None = None,
    duplicate_of: int | None = None,
    artwork_id: int | None = None,
) -> dict[str, str]:
    """The trace metadata from its fields: one layout for first moves and repairs."""
    meta = {
        "artclf-state": state,
        "artclf-log-id": str(log_id),
        "artclf-source-key": urllib.parse.quote(source_key),
    }
    if reason:
        meta["artclf-reason"] = reason
    if label:
        meta["artclf-label"] = label
    if duplicate_of:
        meta["artclf-duplicate-of"] = str(duplicate_of)
    if artwork_id:
        meta["artclf-artwork-id"] = str(artwork_id)
    return meta


def plan(model: ArtModel, items: list[Item]) -> list[tuple[Item, ArtworkRow]]:
    """Decide every item's final key (state -> place) and build the artwork rows to insert.

    Takes items with a terminal state decided by the classify and de-duplicate stages; sets
    ``final_key``; changes no state.
    """
    new_rows = []
    for it in items:
        key = it.row.key
        if it.state == "catalogued":
            it.final_key = key if it.in_place else catalog_key(it.label, it.sha256, key)
            probs = {c: float(p) for c, p in zip(model.classes, it.probabilities, strict=True)}
            row = ArtworkRow(
                bucket=it.row.bucket,
                key=it.final_key,
                label=it.label,
                probability=float(np.max(it.probabilities)),
                probabilities=probs,
                embedding=it.embedding,
                model_version=model.version,
                sha256=it.sha256,
                phash=it.phash,
                phash_bands=fingerprints.band_keys(it.phash),
                dhash=it.dhash,
                width=it.width,
                height=it.height,
                format=it.format,
                byte_size=it.data_size,
                source_key=key,
                source_etag=it.row.etag,
                curated_label=it.curated_label,
            )
            new_rows.append((it, row))
        elif it.state == "duplicate":
            it.final_key = key if it.in_place else side_key(DUPLICATES_PREFIX, it.row.id, key)
        elif it.state == "quarantined":
            it.final_key = key if it.in_place else side_key(QUARANTINE_PREFIX, it.row.id, key)
    return new_rows


def write(w: Worker, movers: list[Item], new_rows: list) -> None:
    """Record the keys about to be written (point 2 above), then :func:`copy_all`."""
    ingest_log.record_intents(
        w.tail_conn, [(it.row.id, it.final_key) for it in movers], w.worker_id
    )
    w.tail_conn.commit()
    copy_all(w, movers, new_rows)


def copy_all(w: Worker, movers: list[Item], new_rows: list) -> None:
    """Write every moving object at its final key, in parallel: a PUT of the bytes
    downloaded (and hashed) with the trace metadata, or a server-side copy where they are not
    at hand (a quarantine decided before the download).

    A failed copy turns its item ``failed`` (retried next run) and drops its artwork row.
    """

    def copy_one(it: Item) -> None:
        with cpu_of(it.cpu, "put"):
            put_one(it)

    def put_one(it: Item) -> None:
        data, it.data = it.data, None
        try:
            if data is not None:
                w.data_path.put(
                    it.row.bucket, it.final_key, data, trace_metadata(it), it.content_type
                )
            else:
                s3lib.copy(w.s3, it.row.bucket, it.row.key, it.final_key, trace_metadata(it))
        except (ClientError, BotoCoreError, s3lib.S3Failure) as exc:
            it.fail("s3_error", f"S3 copy to {it.final_key} failed: {exc}")

    list(w.move_pool.map(copy_one, movers))
    new_rows[:] = [(it, row) for it, row in new_rows if it.state == "catalogued"]


def place_late_duplicates(w: Worker, late: list[Item]) -> list[Item]:
    """Copy late duplicates (found at commit time) from incoming/ to duplicates/ and drop
    their catalog/ copy.

    Returns the items whose copy failed: their source stays in incoming/ and the next run
    finishes the move (their log row is decided but not finalised).
    """
    unplaced: list[Item] = []

    def copy_one(it: Item) -> None:
        try:
            s3lib.copy(w.s3, it.row.bucket, it.row.key, it.final_key, trace_metadata(it))
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not move %s to %s: %s", it.row.key, it.final_key, exc)
            unplaced.append(it)

    list(w.move_pool.map(copy_one, late))
    placed = [it for it in late if it not in unplaced]
    remove_keys(w, [(it.row.bucket, it.misplaced) for it in placed], [it.row.id for it in placed])
    for it in placed:
        it.misplaced = None
    return unplaced


def remove_copies(w: Worker, items: list[Item]) -> None:
    """Best effort: drop the final-key copies of objects that were not committed."""
    remove_keys(
        w,
        [
            (it.row.bucket, it.final_key)
            for it in items
            if it.final_key and it.final_key != it.row.key
        ],
        [it.row.id for it in items],
    )


def undo(w: Worker, items: list[Item], movers: list[Item], reason: str, message: str) -> list:
    """Fail a batch that must not be committed and remove its copies (quarantines stay:
    their decision does not depend on the checks or the model). No artwork rows remain."""
    copied = [it for it in movers if it.state != "quarantined" and it.state in TERMINAL]
    for it in items:
        if it.state != "quarantined":
            it.fail(reason, message)
    remove_copies(w, copied)
    return []


def remove_keys(
    w: Worker,
    keys: list[tuple[str, str]],
    own_ids: Sequence[int],
    conn: psycopg.Connection | None = None,
) -> None:
    """Delete (bucket, key) copies made for the rows ``own_ids``, except keys that an
    artwork or another row owns (a concurrent worker may have placed the same bytes under the
    same name: :func:`artclf_core.catalogue.ingest_log.owned_keys`)."""
    conn = conn or w.tail_conn
    by_bucket: dict[str, list[str]] = {}
    for bucket, key in keys:
        by_bucket.setdefault(bucket, []).append(key)
    for bucket, names in by_bucket.items():
        owned = ingest_log.owned_keys(conn, bucket, names, own_ids)
        conn.commit()
        names = [k for k in names if k not in owned]
        try:
            s3lib.delete_many(w.s3, bucket, names)
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not remove %d uncommitted copies: %s", len(names), exc)


def delete_sources(w: Worker, moved: list[Item]) -> None:
    """After the commit: remove the moved objects from incoming/ (one DeleteObjects call per
    1,000) and mark their rows finalised; a failed delete is finished by the next run."""
    by_bucket: dict[str, list[Item]] = {}
    for it in moved:
        by_bucket.setdefault(it.row.bucket, []).append(it)
    done: list[int] = []
    for bucket, items in by_bucket.items():
        try:
            failed = s3lib.delete_many(w.s3, bucket, [it.row.key for it in items])
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not delete %d sources (next run finishes it): %s", len(items), exc)
            continue
        done += [it.row.id for it in items if it.row.key not in failed]
    ingest_log.mark_finalized(w.tail_conn, done)
    w.tail_conn.commit()


def finish_moves(w: Worker, rows: Iterable[LogRow]) -> int:
    """Finish moves that a crashed run committed but did not complete: copy to the final key
    with the same trace metadata as a first move, delete the source, drop a stray copy the row
    still records, and mark the row finalized. Returns how many rows it finished."""
    rows = list(rows)
    if not rows:
        return 0
    fields = ingest_log.trace_fields(w.conn, [r.id for r in rows])
    w.conn.commit()
    strays = [(r.bucket, r.intended_key) for r in rows if r.intended_key]
    if strays:
        remove_keys(w, strays, [r.id for r in rows], w.conn)

    def finish(row: LogRow) -> bool:
        if not row.final_key or row.final_key == row.key:
            return True  # decided in place: nothing to move
        f = fields.get(row.id, {})
        meta = trace(
            row.state,
            row.id,
            row.key,
            reason=f.get("reason"),
            label=f.get("label"),
            duplicate_of=f.get("duplicate_of"),
            artwork_id=f.get("artwork_id"),
        )
        try:
            s3lib.copy(w.s3, row.bucket, row.key, row.final_key, meta)
            s3lib.delete(w.s3, row.bucket, row.key)
            return True
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            return code in ("NoSuchKey", "404")  # already moved

    done = [r.id for r, ok in zip(rows, w.move_pool.map(finish, rows), strict=True) if ok]
    ingest_log.mark_finalized(w.conn, done)
    w.conn.commit()
    return len(done)
