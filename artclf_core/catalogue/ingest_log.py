"""The ingest log (artclf.ingest_log): one row per object version dropped, its claim, its
outcome and whether its move is finished.

A row is registered when its object is listed or announced, claimed by one worker at a time
(SKIP LOCKED, a lease that ends with the session), decided (catalogued, duplicate,
quarantined or failed) in the batch's commit, and finalised when the object is at its final
key. Every function is one bulk statement, idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from artclf_core.catalogue.db import fetch_dicts
from artclf_core.lake.s3 import ObjectRef

MIGRATION_LOCK = 0x61727463  # pg_advisory_lock key: "artc"
#: Columns of artclf.similar_artworks and artclf.similar_to_embedding, in order; also the
#: keys of a neighbour in JSON answers (CLI and API).
NEIGHBOUR_FIELDS = ("rank", "artwork_id", "location", "label", "distance")


@dataclass
class LogRow:
    id: int
    bucket: str
    key: str
    etag: str
    last_modified: datetime
    size: int
    state: str
    attempts: int
    final_key: str | None
    finalized: bool
    generation: int = 0
    #: A copy that may exist without being the row's final place (sql/007).
    intended_key: str | None = None

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.bucket, self.key, self.etag, self.last_modified, self.size)


_LOG_COLS = (
    "id, bucket, key, etag, last_modified, size, state, attempts, final_key, finalized,"
    " generation, intended_key"
)


def register_objects(
    conn: psycopg.Connection,
    objects: Sequence[ObjectRef],
    *,
    listed_at: datetime | None = None,
) -> list[LogRow]:
    """Insert the objects into the ingest log if new; return their current log rows.

    An object version is (bucket, key, etag). One whose latest row says it was already moved
    away (finalised, final key elsewhere) but that is listed or announced again is a new drop
    of the same bytes under the same key: it gets a new row, one generation up. (If it was a
    stale listing instead, the object is gone and the pipeline forgets that row.)

    ``listed_at`` (the database clock, :func:`clock`, read just before the LIST request)
    tells a stale listing from a re-upload: a listing that began before a worker finalised the
    move of that object version may have seen it on its way out, so it registers nothing
    instead of a new generation that a later run would only find gone (337 such rows in a
    2,000-image drop through Airflow). Finalising happens after the S3 delete, so an object
    listed by a LIST that began after it is really there again: a new drop. A re-upload that
    the stale rule skipped is registered by the next listing. Events (no ``listed_at``) always
    register a moved-away version again.
    """
    if not objects:
        return []
    cols = list(
        zip(*[(o.bucket, o.key, o.etag, o.last_modified, o.size) for o in objects], strict=True)
    )
    ident = "bucket, key, etag"
    prefixed = ", ".join("l." + c.strip() for c in _LOG_COLS.split(","))
    rows = conn.execute(
        f"""
        WITH input AS (
            SELECT DISTINCT ON (bucket, key, etag) *
            FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::bigint[])
                AS t(bucket, key, etag, last_modified, size)
        ), latest AS (
            SELECT DISTINCT ON ({ident}) {prefixed},
                   (l.finalized AND l.final_key IS DISTINCT FROM l.key) AS moved_away,
                   (l.updated_at >= %s::timestamptz) AS maybe_stale
            FROM artclf.ingest_log l JOIN input i USING ({ident})
            ORDER BY {ident}, l.generation DESC
        ), ins AS (
            INSERT INTO artclf.ingest_log (bucket, key, etag, last_modified, size, generation)
            SELECT i.bucket, i.key, i.etag, i.last_modified, i.size,
                   coalesce(lt.generation + 1, 0)
            FROM input i LEFT JOIN latest lt USING ({ident})
            WHERE lt.id IS NULL OR (lt.moved_away AND NOT coalesce(lt.maybe_stale, false))
            ON CONFLICT DO NOTHING
            RETURNING {_LOG_COLS}
        )
        SELECT {_LOG_COLS} FROM ins
        UNION ALL
        SELECT {_LOG_COLS} FROM latest WHERE NOT moved_away
        """,
        [*[list(c) for c in cols], listed_at],
    ).fetchall()
    return [LogRow(*r) for r in rows]


def rows_by_ids(conn: psycopg.Connection, ids: Sequence[int]) -> list[LogRow]:
    rows = conn.execute(
        f"SELECT {_LOG_COLS} FROM artclf.ingest_log WHERE id = ANY(%s) ORDER BY id", (list(ids),)
    ).fetchall()
    return [LogRow(*r) for r in rows]


def open_ids(
    conn: psycopg.Connection,
    *,
    max_attempts: int,
    retry_failed: bool = False,
    limit: int = 100_000,
    lease_seconds: int = 900,
    ids: Sequence[int] | None = None,
) -> list[int]:
    """Ids of the rows that need work: claimable ones and decided-but-not-moved ones.

    What an orchestrator splits into batches (the claim itself happens in each batch), or,
    with ``ids``, what of a batch is still left after a try.
    """
    rows = conn.execute(
        """
        SELECT id FROM artclf.ingest_log
        WHERE (state = 'pending'
               OR (state = 'failed' AND (attempts < %(max)s OR %(retry)s))
               OR (state = 'processing' AND artclf.claim_is_dead(
                       claimed_at, claim_pid, claim_session_start, %(lease)s))
               OR (state IN ('catalogued', 'duplicate', 'quarantined') AND NOT finalized))
          AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
        ORDER BY id
        LIMIT %(limit)s
        """,
        {
            "max": max_attempts,
            "retry": retry_failed,
            "lease": lease_seconds,
            "limit": limit,
            "ids": list(ids) if ids is not None else None,
        },
    ).fetchall()
    conn.commit()
    return [r[0] for r in rows]


def release_claims(conn: psycopg.Connection, ids: Sequence[int], claimed_by_prefix: str) -> int:
    """Make rows claimable now that a worker signed with ``claimed_by_prefix`` left in
    ``processing``; returns how many.

    For a holder that is still alive but gives its claims up (a run stopped by SIGTERM or
    an error, an orchestrator retrying the same task): a dead holder's claims need no
    release, they end with its database session (sql/007).
    """
    n = conn.execute(
        "UPDATE artclf.ingest_log SET claimed_at = '-infinity'"
        " WHERE id = ANY(%s) AND state = 'processing'"
        " AND left(claimed_by, length(%s)) = %s",
        (list(ids), claimed_by_prefix, claimed_by_prefix),
    ).rowcount
    conn.commit()
    return n


@dataclass
class QueueReport:
    """Where a set of ingest-log rows stands, for an orchestrator's end-of-run report."""

    states: dict[str, int]
    failed: list[dict]
    #: Rows still ``processing`` under a claim signed with the given prefix.
    stuck: int


def queue_report(
    conn: psycopg.Connection, ids: Sequence[int], claimed_by_prefix: str
) -> QueueReport:
    states: dict[str, int] = {}
    for row in rows_by_ids(conn, ids):
        states[row.state] = states.get(row.state, 0) + 1
    failed = fetch_dicts(
        conn,
        "SELECT id, key, reason, message, attempts FROM artclf.ingest_log"
        " WHERE id = ANY(%s) AND state = 'failed' ORDER BY id",
        (list(ids),),
    )
    stuck = conn.execute(
        "SELECT count(*) FROM artclf.ingest_log WHERE id = ANY(%s)"
        " AND state = 'processing' AND left(claimed_by, length(%s)) = %s",
        (list(ids), claimed_by_prefix, claimed_by_prefix),
    ).fetchone()[0]
    conn.commit()
    return QueueReport(states, failed, stuck)


def forget(conn: psycopg.Connection, log_ids: Iterable[int]) -> None:
    """Drop log rows that never stood for a real object (a stale listing of a moved one)."""
    ids = list(log_ids)
    if ids:
        conn.execute("DELETE FROM artclf.ingest_log WHERE id = ANY(%s) AND generation > 0", (ids,))


def claim(
    conn: psycopg.Connection,
    ids: Sequence[int],
    *,
    worker: str,
    max_attempts: int,
    lease_seconds: int = 900,
    retry_failed: bool = False,
) -> list[LogRow]:
    """Take the given log rows for processing, skipping rows another worker holds.

    Claimable: pending rows; failed rows with attempts left (or all failed rows when an
    operator asks to retry them); processing rows whose holder is dead: its database session
    (``claim_pid`` + ``claim_session_start``, sql/007) has ended, or, for a holder the
    server cannot see, the claim is older than the lease. The claim is signed with this
    connection's session, so ``conn`` must be one the worker keeps while it works.
    ``FOR UPDATE SKIP LOCKED`` keeps concurrent workers off each other's rows.
    """
    if not ids:
        return []
    rows = conn.execute(
        f"""
        UPDATE artclf.ingest_log AS l
        SET state = 'processing', attempts = l.attempts + 1, claimed_at = now(),
            claimed_by = %(worker)s, claim_pid = me.pid, claim_session_start = me.started,
            updated_at = now()
        FROM (
            SELECT id FROM artclf.ingest_log
            WHERE id = ANY(%(ids)s)
              AND (state = 'pending'
                   OR (state = 'failed' AND (attempts < %(max)s OR %(retry)s))
                   OR (state = 'processing' AND artclf.claim_is_dead(
                           claimed_at, claim_pid, claim_session_start, %(lease)s)))
            FOR UPDATE SKIP LOCKED
        ) AS c,
        (SELECT pid, backend_start AS started FROM pg_catalog.pg_stat_activity
          WHERE pid = pg_backend_pid()) AS me
        WHERE l.id = c.id
        RETURNING {", ".join("l." + c.strip() for c in _LOG_COLS.split(","))}
        """,
        {
            "worker": worker,
            "ids": list(ids),
            "max": max_attempts,
            "retry": retry_failed,
            "lease": lease_seconds,
        },
    ).fetchall()
    conn.commit()
    return [LogRow(*r) for r in rows]


@dataclass
class Outcome:
    """The final state of one claimed object, written by ``record_outcomes``."""

    log_id: int
    state: str
    final_key: str | None = None
    reason: str | None = None
    message: str | None = None
    artwork_id: int | None = None
    duplicate_of: int | None = None
    duplicate_kind: str | None = None
    distance: int | None = None
    finalized: bool = False
    #: A copy left to remove (a late duplicate's catalog/ copy), see ``LogRow.intended_key``.
    stray_key: str | None = None


class ClaimLost(RuntimeError):
    """Rows this worker claimed are no longer its own (see :func:`record_outcomes`)."""


def record_outcomes(conn: psycopg.Connection, outcomes: Sequence[Outcome], worker: str) -> None:
    """Write final states for many log rows in one statement (no commit), only for rows still
    claimed by ``worker``; raises :class:`ClaimLost` if any is not."""
    if not outcomes:
        return
    fields = [
        "log_id",
        "state",
        "final_key",
        "reason",
        "message",
        "artwork_id",
        "duplicate_of",
        "duplicate_kind",
        "distance",
        "finalized",
        "stray_key",
    ]
    types = [
        "bigint",
        "text",
        "text",
        "text",
        "text",
        "bigint",
        "bigint",
        "text",
        "integer",
        "boolean",
        "text",
    ]
    columns = [[getattr(o, f) for o in outcomes] for f in fields]
    unnest = ", ".join(f"%s::{t}[]" for t in types)
    cur = conn.execute(
        f"""
        UPDATE artclf.ingest_log AS l
        SET state = o.state, final_key = o.final_key, reason = o.reason, message = o.message,
            artwork_id = o.artwork_id, duplicate_of = o.duplicate_of,
            duplicate_kind = o.duplicate_kind, distance = o.distance,
            finalized = o.finalized, handled_by = l.claimed_by,
            claimed_at = NULL, claimed_by = NULL, claim_pid = NULL,
            claim_session_start = NULL, intended_key = o.stray_key, updated_at = now()
        FROM unnest({unnest}) AS o({", ".join(fields)})
        WHERE l.id = o.log_id AND l.state = 'processing' AND l.claimed_by = %s
        """,
        [*columns, worker],
    )
    if cur.rowcount != len(outcomes):
        # Another worker took over some of these claims (this one was taken for dead): the
        # whole commit, artworks included, must roll back; the objects are that worker's.
        raise ClaimLost(
            f"{len(outcomes) - cur.rowcount} of {len(outcomes)} claims of {worker} were taken"
            " over by another worker; this batch is left to it"
        )


def record_intents(
    conn: psycopg.Connection, intents: Sequence[tuple[int, str]], worker: str
) -> None:
    """Record, before copying, the key each claimed row is about to be copied to (no commit):
    if the claim dies before its outcome is recorded, the run that takes it over removes
    that copy (:func:`owned_keys`)."""
    if intents:
        conn.execute(
            "UPDATE artclf.ingest_log AS l SET intended_key = i.k"
            " FROM unnest(%s::bigint[], %s::text[]) AS i(id, k)"
            " WHERE l.id = i.id AND l.state = 'processing' AND l.claimed_by = %s",
            ([i for i, _ in intents], [k for _, k in intents], worker),
        )


def owned_keys(
    conn: psycopg.Connection, bucket: str, keys: Sequence[str], exclude_ids: Sequence[int] = ()
) -> set[str]:
    """Which of ``keys`` an artwork lives at, or another row (not in ``exclude_ids``) is
    about to copy to or keeps as its final place: keys a clean-up must not delete."""
    rows = conn.execute(
        "SELECT key FROM artclf.artworks WHERE bucket = %(b)s AND key = ANY(%(k)s)"
        " UNION SELECT k FROM artclf.ingest_log AS l, LATERAL (VALUES (l.intended_key),"
        " (CASE WHEN l.state IN ('catalogued', 'duplicate', 'quarantined')"
        " THEN l.final_key END)) AS v(k)"
        " WHERE l.bucket = %(b)s AND v.k = ANY(%(k)s) AND NOT (l.id = ANY(%(x)s))",
        {"b": bucket, "k": list(keys), "x": list(exclude_ids)},
    ).fetchall()
    return {r[0] for r in rows}


def unfinalized_under(conn: psycopg.Connection, bucket: str, prefix: str) -> list[LogRow]:
    """Decided rows under ``prefix`` whose move was not completed, however the run ended
    (the source may already be gone: a kill between the delete and the bookkeeping)."""
    rows = conn.execute(
        f"SELECT {_LOG_COLS} FROM artclf.ingest_log WHERE bucket = %s"
        " AND left(key, length(%s)) = %s"
        " AND state IN ('catalogued', 'duplicate', 'quarantined') AND NOT finalized",
        (bucket, prefix, prefix),
    ).fetchall()
    return [LogRow(*r) for r in rows]


def dead_claims_under(
    conn: psycopg.Connection, bucket: str, prefix: str, lease_seconds: int = 900
) -> list[LogRow]:
    """Rows under ``prefix`` still 'processing' under a claim whose holder is dead."""
    rows = conn.execute(
        f"SELECT {_LOG_COLS} FROM artclf.ingest_log WHERE bucket = %s"
        " AND left(key, length(%s)) = %s AND state = 'processing'"
        " AND artclf.claim_is_dead(claimed_at, claim_pid, claim_session_start, %s)"
        " ORDER BY id",
        (bucket, prefix, prefix, lease_seconds),
    ).fetchall()
    conn.commit()
    return [LogRow(*r) for r in rows]


def trace_fields(conn: psycopg.Connection, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """What the trace metadata of a moved object says, per log id, read back from the
    catalogue (a repair writes the same metadata as the first move)."""
    rows = fetch_dicts(
        conn,
        "SELECT l.id, l.reason, l.artwork_id, l.duplicate_of, a.label"
        " FROM artclf.ingest_log AS l LEFT JOIN artclf.artworks AS a ON a.id = l.artwork_id"
        " WHERE l.id = ANY(%s)",
        (list(ids),),
    )
    return {r["id"]: r for r in rows}


def mark_finalized(conn: psycopg.Connection, log_ids: Iterable[int]) -> None:
    ids = list(log_ids)
    if ids:
        conn.execute(
            "UPDATE artclf.ingest_log SET finalized = true, intended_key = NULL,"
            " updated_at = clock_timestamp()"
            " WHERE id = ANY(%s)",
            (ids,),
        )


def unfinalized(conn: psycopg.Connection, ids: Sequence[int]) -> list[LogRow]:
    """Rows decided in an earlier run whose object was not moved yet (crash in between)."""
    rows = conn.execute(
        f"SELECT {_LOG_COLS} FROM artclf.ingest_log WHERE id = ANY(%s)"
        " AND state IN ('catalogued', 'duplicate', 'quarantined') AND NOT finalized",
        (list(ids),),
    ).fetchall()
    return [LogRow(*r) for r in rows]
