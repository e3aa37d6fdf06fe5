"""The catalogue in PostgreSQL: migrations and the bulk reads/writes of the pipeline.

Every write here is bulk (COPY into a temporary table, then one INSERT ... SELECT, or one
UPDATE ... FROM unnest(...)) and idempotent (ON CONFLICT on natural keys), so re-running a
batch changes nothing and a batch costs a handful of round trips whatever its size.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg.rows import dict_row

MIGRATION_LOCK = 0x61727463  # pg_advisory_lock key: "artc"
#: Columns of artclf.similar_artworks and artclf.similar_to_embedding, in order; also the
#: keys of a neighbour in JSON answers (CLI and API).
NEIGHBOUR_FIELDS = ("rank", "artwork_id", "location", "label", "distance")


def sql_dir() -> Path:
    """Where the ordered migrations live (``ARTCLF_SQL_DIR`` or the repository's ``sql/``)."""
    override = os.environ.get("ARTCLF_SQL_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[1] / "sql"


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection:
    """Open a connection with pgvector's adapters when the extension is there."""
    conn = psycopg.connect(url, autocommit=autocommit)
    try:
        from pgvector.psycopg import register_vector

        register_vector(conn)
    except psycopg.ProgrammingError:
        # Before the first migration the vector type may not exist yet.
        conn.rollback() if not autocommit else None
    return conn


def migrate(url: str) -> list[str]:
    """Apply the migrations in ``sql/`` that are not applied yet, each in its own transaction.

    Safe to call concurrently (an advisory lock serialises runners) and repeatedly (applied
    versions are recorded in ``artclf.schema_migrations`` with their checksum; a changed
    applied file is an error, since it would mean two databases with the same version differ).
    """
    applied_now: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        advisory_lock(conn, MIGRATION_LOCK, "the migration lock", transaction=False)
        try:
            conn.execute("CREATE SCHEMA IF NOT EXISTS artclf")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS artclf.schema_migrations ("
                " version text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = dict(conn.execute("SELECT version, checksum FROM artclf.schema_migrations"))
            for path in sorted(sql_dir().glob("[0-9][0-9][0-9]_*.sql")):
                text = path.read_text()
                checksum = hashlib.sha256(text.encode()).hexdigest()
                if path.stem in done:
                    if done[path.stem] != checksum:
                        raise RuntimeError(
                            f"migration {path.name} changed after it was applied; "
                            "add a new migration instead of editing an applied one"
                        )
                    continue
                with conn.transaction():
                    conn.execute(text)
                    conn.execute(
                        "INSERT INTO artclf.schema_migrations (version, checksum) VALUES (%s, %s)",
                        (path.stem, checksum),
                    )
                applied_now.append(path.stem)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied_now


# --------------------------------------------------------------------------- models


def register_model(
    conn: psycopg.Connection,
    *,
    version: str,
    arch: str,
    classes: Sequence[str],
    artifact: str | None,
    metrics: dict | None = None,
    activate: bool | None = False,
    status: str = "registered",
) -> None:
    """Record a model version (idempotent) and give it an embedding partition.

    With ``activate`` True it becomes the active version through ``artclf.activate_model``
    (which refuses while the catalogue has artworks it has not embedded); with None only when
    no model is active yet (first start), and then quietly not if it cannot be.
    """
    conn.execute(
        "INSERT INTO artclf.model_versions (version, arch, classes, artifact, metrics, status)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (version) DO NOTHING",
        (version, arch, list(classes), artifact, json.dumps(metrics) if metrics else None, status),
    )
    if status == "registered":
        # A model registered to ingest with gets its partition indexed now (rows arrive one
        # batch at a time); a trained candidate's partition is filled by re-embedding first
        # and indexed once, at the switch (reembed.switch), which is much faster.
        conn.execute("SELECT artclf.build_embedding_index(%s)", (version,))
    if activate is None:
        if active_version(conn) is not None:
            return
        try:
            with conn.transaction():  # a savepoint: a refusal leaves the rest intact
                conn.execute("SELECT artclf.activate_model(%s, 'first model')", (version,))
        except psycopg.errors.ObjectNotInPrerequisiteState:
            pass
    elif activate:
        conn.execute("SELECT artclf.activate_model(%s, 'registered as active')", (version,))


_MODEL_FIELDS = {"status", "decision", "plots", "data_fingerprint", "params", "metrics"}


def update_model(conn: psycopg.Connection, version: str, **fields: Any) -> None:
    """Set registry fields of one version (dicts are stored as jsonb)."""
    unknown = set(fields) - _MODEL_FIELDS
    if unknown:
        raise ValueError(f"unknown model_versions fields: {sorted(unknown)}")
    names = sorted(fields)
    values = [json_text(fields[n]) if isinstance(fields[n], dict) else fields[n] for n in names]
    assignments = ", ".join(f"{n} = %s" for n in names)
    conn.execute(
        f"UPDATE artclf.model_versions SET {assignments} WHERE version = %s", (*values, version)
    )


def active_version(conn: psycopg.Connection) -> str | None:
    """The model version that serves similarity search and embeds new images."""
    return conn.execute("SELECT artclf.active_version()").fetchone()[0]


# --------------------------------------------------------------------------- ingest log


@dataclass(frozen=True)
class ObjectRef:
    """One version of one S3 object, as listed or announced."""

    bucket: str
    key: str
    etag: str
    last_modified: datetime | None
    size: int


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


def embedding_partition(conn: psycopg.Connection, version: str | None) -> str | None:
    """The qualified name of ``version``'s embedding partition; None when it has none (never
    embedded, or dropped). Finds it without creating it."""
    if version is None:
        return None
    return conn.execute("SELECT artclf._find_embedding_partition(%s)", (version,)).fetchone()[0]


def clock(conn: psycopg.Connection) -> datetime:
    """The database's wall clock (``clock_timestamp()``, not the transaction's ``now()``)."""
    return conn.execute("SELECT clock_timestamp()").fetchone()[0]


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


# --------------------------------------------------------------------------- de-duplication


#: pg_advisory_xact_lock key serialising commits of new artworks ("artw").
CATALOGUE_LOCK = 0x61727477


def lock_catalogue(conn: psycopg.Connection) -> None:
    """Serialise catalogue commits until the end of the current transaction.

    Waits at most :func:`lock_timeout_s`; a commit holds the lock for milliseconds, so a
    longer wait means a session that should not hold it (:class:`LockWaitTimeout` names it).
    """
    advisory_lock(conn, CATALOGUE_LOCK, "the catalogue commit lock", transaction=True)


class LockWaitTimeout(RuntimeError):
    """A lock the pipeline needs stayed taken by another session for the whole timeout."""


def lock_timeout_s() -> float:
    """Seconds to wait for a pipeline lock (``ARTCLF_LOCK_TIMEOUT_S``, default 60)."""
    return float(os.environ.get("ARTCLF_LOCK_TIMEOUT_S", "60"))


def advisory_lock(conn: psycopg.Connection, key: int, what: str, *, transaction: bool) -> None:
    """Take advisory lock ``key`` (for the transaction, or for the session), waiting at most
    :func:`lock_timeout_s`, then raise :class:`LockWaitTimeout` naming who holds it.

    PostgreSQL's ``lock_timeout`` bounds the wait; it is set only around the lock call and
    put back after, so other statements keep the session's own setting. The block is a
    savepoint inside the caller's transaction, which so stays usable for the holder query.
    """
    timeout_ms = str(max(1, int(lock_timeout_s() * 1000)))
    function = "pg_advisory_xact_lock" if transaction else "pg_advisory_lock"
    try:
        with conn.transaction():
            before = conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0]
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (timeout_ms,))
            conn.execute(f"SELECT {function}(%s)", (key,))
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (before,))
    except psycopg.errors.LockNotAvailable:
        holders = lock_holders(conn, key)
        raise LockWaitTimeout(
            f"waited {lock_timeout_s():g} s for {what} (advisory lock {key:#x}), held by "
            + ("; ".join(holders) or "a session that has ended")
            + ". A pipeline run holds it for milliseconds: end that session "
            "(SELECT pg_terminate_backend(pid)) or raise ARTCLF_LOCK_TIMEOUT_S"
        ) from None


def lock_holders(conn: psycopg.Connection, key: int) -> list[str]:
    """Who holds advisory lock ``key`` in this database, in words."""
    rows = conn.execute(
        "SELECT a.pid, a.usename, a.application_name, coalesce(host(a.client_addr), 'local'),"
        "       round(extract(epoch FROM now() - a.backend_start))"
        " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted"
        "   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        "   AND l.classid = %s AND l.objid = %s AND l.objsubid = 1",
        (key >> 32, key & 0xFFFFFFFF),
    ).fetchall()
    return [
        f"pid {pid} (role {user}, application {app or '-'}, from {addr}, connected {age:g} s)"
        for pid, user, app, addr, age in rows
    ]


def max_artwork_id(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT coalesce(max(id), 0) FROM artclf.artworks").fetchone()[0]


def artworks_after(conn: psycopg.Connection, after_id: int) -> list[tuple[int, str, int, int]]:
    """(id, sha256, phash, dhash) of artworks with ids above ``after_id``."""
    return conn.execute(
        "SELECT id, sha256, phash, dhash FROM artclf.artworks WHERE id > %s ORDER BY id",
        (after_id,),
    ).fetchall()


def find_exact(conn: psycopg.Connection, sha256s: Sequence[str]) -> dict[str, int]:
    """Catalogued artworks with these SHA-256 digests: {sha256: artwork id}."""
    if not sha256s:
        return {}
    rows = conn.execute(
        "SELECT sha256, id FROM artclf.artworks WHERE sha256 = ANY(%s::char(64)[])",
        (list(sha256s),),
    ).fetchall()
    return {sha: aid for sha, aid in rows}


#: Candidates taken from the embedding index per query (see :func:`find_near`).
NEAR_EMBEDDING_CANDIDATES = 16
#: HNSW search breadth for that lookup.
NEAR_EF_SEARCH = 40


def find_near(
    conn: psycopg.Connection,
    phashes: Sequence[int],
    dhashes: Sequence[int],
    embeddings: Sequence[np.ndarray],
    *,
    max_distance: int | None = None,
    max_dhash: int | None = None,
    bands: Sequence[Sequence[int]] | None = None,
    k: int = NEAR_EMBEDDING_CANDIDATES,
    model_version: str | None = None,
) -> dict[int, tuple[int, int]]:
    """For each query, the closest catalogued near duplicate: {query index: (id, distance)}.

    A near duplicate is within ``max_distance`` pHash bits AND ``max_dhash`` dHash bits
    (defaults: ``dedup.NEAR_DUP_MAX_DISTANCE`` / ``NEAR_DUP_MAX_DHASH``); the distance
    returned is the pHash one. Candidates come from two indexes, never from a scan, so the
    cost stays flat as the catalogue grows:

    * the ``k`` nearest artworks by embedding of ``model_version`` (default: the active one;
      the HNSW index of its partition, which similarity search uses anyway): a re-encoded,
      resized or slightly cropped copy keeps its CNN embedding almost exactly, so its
      original is among its nearest neighbours;
    * every artwork sharing one of the query's four 16-bit pHash bands exactly (the GIN index
      on ``phash_bands``): by the pigeonhole principle this alone finds every hash within
      3 bits, whatever the embedding says.

    Each candidate is then checked with the exact Hamming distances. Measured recall and
    latency: docs/dedup.md and docs/benchmarks.md.
    """
    from artclf_core import dedup

    if not phashes:
        return {}
    max_distance = dedup.NEAR_DUP_MAX_DISTANCE if max_distance is None else max_distance
    max_dhash = dedup.NEAR_DUP_MAX_DHASH if max_dhash is None else max_dhash
    bands = bands if bands is not None else [dedup.band_keys(h) for h in phashes]
    band_text = ["{" + ",".join(map(str, b)) + "}" for b in bands]
    emb_text = [_vector_text(e) for e in embeddings]
    if model_version is None:
        model_version = active_version(conn)
    # The version's own partition, named in the query: a "model_version = v" filter on the
    # parent lets the planner pick a key scan plus an exact sort of the whole partition while
    # its statistics lag behind a fast-growing catalogue (measured: 5 ms instead of 0.1 ms per
    # query at 800 rows); on the partition the HNSW index is the only ordered path.
    part = embedding_partition(conn, model_version)
    nearest = (
        f"SELECT v.artwork_id FROM {part} AS v ORDER BY v.embedding <=> q.e::vector LIMIT %(k)s"
        if part
        else "SELECT NULL::bigint AS artwork_id WHERE false"
    )
    # The classifier's embedding puts look-alikes of one kind close together, so take a few
    # more candidates than one would think (measured: k 5 -> 16 finds more cropped copies).
    # SET LOCAL ends with the transaction.
    conn.execute(f"SET LOCAL hnsw.ef_search = {max(int(k), NEAR_EF_SEARCH)}")
    # Candidates must come from the indexes whatever the statistics say. After a TRUNCATE or
    # while a new partition fills, the planner believes the tables hold ~100 rows and prefers
    # a sequential scan + sort of the whole partition per query, which it keeps doing as the
    # catalogue grows (measured: 5.9 s of de-duplication instead of 0.4 s for 1,576 images
    # ingested after a TRUNCATE). Off for this transaction only, so only an index path
    # remains for each candidate set (HNSW, GIN on the bands, the primary key for the join).
    conn.execute("SET LOCAL enable_seqscan = off")
    query = """
        SELECT q.i, m.id, m.d
        FROM unnest(%(i)s::int[], %(h)s::bigint[], %(g)s::bigint[], %(e)s::text[],
                    %(b)s::text[]) AS q(i, h, g, e, b)
        CROSS JOIN LATERAL (
            SELECT x.id, x.d
            FROM (
                SELECT c.id, bit_count((c.phash # q.h)::bit(64))::int AS d,
                       bit_count((c.dhash # q.g)::bit(64))::int AS e
                FROM (
                    (SELECT a.id, a.phash, a.dhash
                     FROM ({nearest}) AS n
                     JOIN artclf.artworks AS a ON a.id = n.artwork_id)
                    UNION
                    (SELECT a.id, a.phash, a.dhash FROM artclf.artworks AS a
                     WHERE a.phash_bands && q.b::int[])
                ) AS c
            ) AS x
            WHERE x.d <= %(d)s AND x.e <= %(dd)s
            ORDER BY x.d + x.e, x.d, x.id
            LIMIT 1
        ) AS m
        """.replace("{nearest}", nearest)
    rows = conn.execute(
        query,
        {
            "i": list(range(len(phashes))),
            "h": list(phashes),
            "g": list(dhashes),
            "e": emb_text,
            "b": band_text,
            "k": k,
            "d": max_distance,
            "dd": max_dhash,
        },
    ).fetchall()
    return {i: (aid, d) for i, aid, d in rows}


def vector_text(v: np.ndarray) -> str:
    """pgvector's text form of a vector (what COPY and ``::vector`` casts read)."""
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(v, dtype=np.float32)) + "]"


_vector_text = vector_text


def json_text(value: Any) -> str:
    """Compact JSON for a jsonb column."""
    return json.dumps(value, separators=(",", ":"))


# --------------------------------------------------------------------------- artworks


@dataclass
class ArtworkRow:
    bucket: str
    key: str
    label: str
    probability: float
    probabilities: dict[str, float]
    embedding: np.ndarray
    model_version: str
    sha256: str
    phash: int
    phash_bands: list[int]
    dhash: int
    width: int
    height: int
    format: str
    byte_size: int
    source_key: str
    source_etag: str | None
    curated_label: str | None = None

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


_ART_COLS = [
    "location",
    "bucket",
    "key",
    "label",
    "probability",
    "probabilities",
    "model_version",
    "sha256",
    "phash",
    "phash_bands",
    "dhash",
    "width",
    "height",
    "format",
    "byte_size",
    "source_key",
    "source_etag",
    "curated_label",
]


def insert_artworks(
    conn: psycopg.Connection, rows: Sequence[ArtworkRow]
) -> tuple[dict[str, int], dict[str, int]]:
    """Bulk-insert artworks (COPY into a temp table, then one INSERT ... ON CONFLICT).

    Returns ``(inserted, existing)``, both {sha256: id}: rows created now, and rows whose
    content was already catalogued (by a concurrent worker), which callers turn into exact
    duplicates. No commit: the caller commits artworks and log outcomes together.
    """
    if not rows:
        return {}, {}
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS _artworks_in ON COMMIT DELETE ROWS AS"
        f" SELECT {', '.join(_ART_COLS)} FROM artclf.artworks WITH NO DATA"
    )
    conn.execute("ALTER TABLE _artworks_in ADD COLUMN IF NOT EXISTS embedding vector(128)")
    cols = ", ".join([*_ART_COLS, "embedding"])
    with conn.cursor().copy(f"COPY _artworks_in ({cols}) FROM STDIN") as copy:
        for r in rows:
            copy.write_row(
                [
                    r.location,
                    r.bucket,
                    r.key,
                    r.label,
                    float(r.probability),
                    json.dumps({k: round(float(v), 6) for k, v in r.probabilities.items()}),
                    r.model_version,
                    r.sha256,
                    int(r.phash),
                    "{" + ",".join(map(str, r.phash_bands)) + "}",
                    int(r.dhash),
                    int(r.width),
                    int(r.height),
                    r.format,
                    int(r.byte_size),
                    r.source_key,
                    r.source_etag,
                    r.curated_label,
                    _vector_text(r.embedding),
                ]
            )
    inserted = dict(
        conn.execute(
            f"INSERT INTO artclf.artworks ({', '.join(_ART_COLS)})"
            f" SELECT {', '.join(_ART_COLS)} FROM _artworks_in"
            " ON CONFLICT DO NOTHING RETURNING sha256, id"
        ).fetchall()
    )
    if inserted:
        # Each new artwork's embedding goes to its model's partition (created on first use).
        conn.execute(
            "SELECT artclf.embedding_partition(v)"
            " FROM (SELECT DISTINCT model_version AS v FROM _artworks_in) AS d"
        )
        conn.execute(
            "INSERT INTO artclf.embeddings"
            " (model_version, artwork_id, label, probability, probabilities, embedding)"
            " SELECT i.model_version, a.id, i.label, i.probability, i.probabilities, i.embedding"
            " FROM _artworks_in AS i JOIN artclf.artworks AS a USING (sha256)"
            " WHERE a.id = ANY(%s) ON CONFLICT DO NOTHING",
            (list(inserted.values()),),
        )
    existing = {
        sha: aid
        for sha, aid in conn.execute(
            "SELECT a.sha256, a.id FROM artclf.artworks a JOIN _artworks_in i USING (sha256)"
        ).fetchall()
        if sha not in inserted
    }
    conn.execute("TRUNCATE _artworks_in")
    return inserted, existing


def fetch_dicts(conn: psycopg.Connection, query: str, params: Sequence | dict = ()) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()
