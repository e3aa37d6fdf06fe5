"""Stage 1 of a batch: take the rows this run will process.

Takes log rows (listed, announced or handed out by the queue); finishes the moves of rows
already decided (``place.finish_moves``), claims the claimable rest with ``SKIP LOCKED``
(several workers share a prefix), removes copies a dead holder made of them but never
committed, and returns the :class:`Batch` of claimed items, in key order. States: a claimed
row becomes ``processing``; nothing else changes. :func:`release` gives claims back when a
run stops early.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from artclf_core.catalogue import ingest_log
from artclf_core.catalogue.ingest_log import LogRow
from artclf_core.ingest import place
from artclf_core.ingest.batch import CLAIMABLE, TERMINAL, Batch, Item, Summary, cpu_of

if TYPE_CHECKING:
    from artclf_core.ingest.worker import Worker

log = logging.getLogger(__name__)


def claim(w: Worker, rows: Sequence[LogRow], *, retry_failed: bool) -> Batch:
    """Finish interrupted moves, claim the rest; the batch's items, not yet downloaded."""
    summary = Summary(seen=len(rows))
    with cpu_of(summary.cpu, "claim"):
        items = _claim(w, rows, summary, retry_failed=retry_failed)
    return Batch(summary, items)


def _claim(w: Worker, rows: Sequence[LogRow], summary: Summary, *, retry_failed: bool) -> list:
    summary.repaired = place.finish_moves(
        w, ingest_log.unfinalized(w.conn, [r.id for r in rows if r.state in TERMINAL])
    )
    candidates = [r.id for r in rows if r.state in CLAIMABLE]
    claimed = ingest_log.claim(
        w.conn,
        candidates,
        worker=w.worker_id,
        max_attempts=w.settings.max_attempts,
        retry_failed=retry_failed,
    )
    summary.skipped = len(rows) - len(claimed) - summary.repaired
    # Copies a dead holder made of these objects but never committed: remove them now,
    # before this run decides (perhaps differently) where each object goes.
    strays = [(r.bucket, r.intended_key) for r in claimed if r.intended_key]
    if strays:
        place.remove_keys(w, strays, [r.id for r in claimed], w.conn)
        log.info("removed up to %d uncommitted copies of a dead run", len(strays))
    # Key order, so that within a batch the first of a group of copies (in listing order) is
    # the one catalogued, whatever order the database returned rows in.
    claimed.sort(key=lambda r: (r.key, r.id))
    return [Item(row=r) for r in claimed]


def release(w: Worker, batch: Batch) -> None:
    """Make a batch's claims claimable again at once (a run stopped before finishing it)."""
    for future in batch.futures:
        future.cancel()
    if w.conn.closed or w.conn.broken:
        return  # the claims ended with the session (sql/007): nothing to release
    try:
        w.conn.rollback()
        ingest_log.release_claims(w.conn, [it.row.id for it in batch.items], w.worker_id)
    except Exception as exc:  # noqa: BLE001 - best effort while another error propagates
        # A lost connection ends the claims anyway (sql/007); the error that stopped the run
        # is the one to show, so one line here, not a second traceback.
        log.warning("could not release %d claims: %s", len(batch.items), exc)
