"""Stage 6 of a batch: artworks and every outcome in ONE transaction (tail thread).

Takes the batch and the artwork rows its copies succeeded for; inserts the artworks and
records every item's outcome (state, final key, reason, duplicate of). Under the catalogue
lock it re-checks the new artworks against those committed concurrently (late duplicates)
and refuses a batch classified by a model that is no longer the active one
(:class:`ModelSwitched`). Rows decided in place (``training/``) are finalised here; the
others when their source is deleted (:func:`artclf_core.ingest.place.delete_sources`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from artclf_core.catalogue import artworks, db, ingest_log, registry
from artclf_core.catalogue.artworks import ArtworkRow
from artclf_core.ingest.batch import TERMINAL, Batch, Item
from artclf_core.ingest.dedupe import drop_concurrent_copies, late_duplicate

if TYPE_CHECKING:
    from artclf_core.ingest.worker import Worker


class ModelSwitched(RuntimeError):
    """The active model changed between classifying a batch and committing it."""


def commit(w: Worker, batch: Batch, new_rows: list[tuple[Item, ArtworkRow]]) -> None:
    """Artworks and every outcome of ``batch`` in one transaction."""
    items = batch.items
    conn = w.tail_conn
    conn.commit()  # so that the block below is the outermost transaction, not a savepoint
    with conn.transaction():  # outermost block: commits on exit, rolls back on error
        # Commits of new artworks are serialised (a short lock: the copies and checks are
        # done), so what concurrent workers catalogued since our de-duplication has ids above
        # what we saw: look at just those rows for copies of ours.
        db.lock_catalogue(conn)
        if w.follow_active and new_rows:
            active = registry.active_version(conn)
            if active is not None and active != batch.model.version:
                raise ModelSwitched(
                    f"model {active} was activated while this batch was classified "
                    f"with {batch.model.version}"
                )
        new_rows = drop_concurrent_copies(conn, new_rows, batch.seen_up_to)
        inserted, existing = artworks.insert_artworks(conn, [row for _, row in new_rows])
        for it, _row in new_rows:
            if it.sha256 in inserted:
                it.artwork_id = inserted[it.sha256]
            else:  # the same bytes were catalogued meanwhile (outside our lock's reach)
                late_duplicate(it, existing[it.sha256], exact=True)
        for it in items:
            if it.state == "duplicate" and it.duplicate_of is None:
                origin = it.origin
                if origin is not None and (origin.artwork_id or origin.duplicate_of):
                    it.duplicate_of = origin.artwork_id or origin.duplicate_of
                else:  # its original failed to land: both are retried next run
                    it.fail("origin_failed", "the artwork it copies was not catalogued")
        ingest_log.forget(conn, [it.row.id for it in items if it.state == "phantom"])
        ingest_log.record_outcomes(
            conn,
            [
                ingest_log.Outcome(
                    log_id=it.row.id,
                    state=it.state,
                    final_key=it.final_key,
                    reason=it.reason,
                    message=it.message,
                    artwork_id=it.artwork_id,
                    duplicate_of=it.duplicate_of,
                    duplicate_kind=it.duplicate_kind,
                    distance=it.distance,
                    finalized=it.in_place and it.state in TERMINAL,
                    stray_key=it.misplaced,
                )
                for it in items
                if it.state != "phantom"
            ],
            w.worker_id,
        )
