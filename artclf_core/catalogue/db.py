"""Connections, migrations, locks and the small SQL helpers every part of the catalogue uses.

The schema itself is sql/ (ordered migrations, applied once each under an advisory lock);
the tables' bulk reads and writes are in ``ingest_log``, ``artworks`` and
``registry``. Every write there is bulk (COPY into a temporary table, then one INSERT ...
SELECT, or one UPDATE ... FROM unnest(...)) and idempotent (ON CONFLICT on natural keys), so
re-running a batch changes nothing and a batch costs a handful of round trips.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
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
    return Path(override) if override else Path(__file__).resolve().parents[2] / "sql"


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


def clock(conn: psycopg.Connection) -> datetime:
    """The database's wall clock (``clock_timestamp()``, not the transaction's ``now()``)."""
    return conn.execute("SELECT clock_timestamp()").fetchone()[0]


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


def vector_text(v: np.ndarray) -> str:
    """pgvector's text form of a vector (what COPY and ``::vector`` casts read)."""
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(v, dtype=np.float32)) + "]"


def int_array_text(values: Iterable[int]) -> str:
    """PostgreSQL's text form of an ``integer[]`` (what COPY and ``::integer[]`` casts read);
    for a batch of arrays, which psycopg cannot send as one ragged ``integer[][]``."""
    return "{" + ",".join(str(int(v)) for v in values) + "}"


def json_text(value: Any) -> str:
    """Compact JSON for a jsonb column."""
    return json.dumps(value, separators=(",", ":"))


def fetch_dicts(conn: psycopg.Connection, query: str, params: Sequence | dict = ()) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()
