"""A lock the pipeline needs, held by another session: ingestion must give up within the
lock timeout with a message naming the holder, lose nothing, and an immediate re-run after
the holder let go must settle the lake. The read-only role must not be able to take the
lock at all (sql/superuser.sql)."""

from __future__ import annotations

import psycopg
import pytest
from lake_invariants import assert_lake_settled, drop

from artclf_core.catalogue import db
from artclf_core.ingest.ingestor import Ingestor


def test_a_held_catalogue_lock_fails_ingest_clearly_and_loses_nothing(clean, model, monkeypatch):
    settings = clean
    drop(settings, 6, seed=700)
    monkeypatch.setenv("ARTCLF_LOCK_TIMEOUT_S", "1.5")
    with psycopg.connect(settings.db_url, autocommit=True) as holder:
        holder.execute("SET application_name = 'a-stuck-session'")
        holder.execute("SELECT pg_advisory_lock(%s)", (db.CATALOGUE_LOCK,))
        holder_pid = holder.info.backend_pid
        with Ingestor(settings, model=model) as ing, pytest.raises(db.LockWaitTimeout) as err:
            ing.ingest_prefix("incoming/")
    message = str(err.value)
    assert "catalogue commit lock" in message and f"pid {holder_pid}" in message, message
    assert "a-stuck-session" in message and "waited 1.5 s" in message, message

    with Ingestor(settings, model=model) as ing:  # the holder is gone: at once
        summary = ing.ingest_prefix("incoming/")
    assert summary.skipped == 0 and summary.catalogued == 6, summary
    assert_lake_settled(settings, 6)


def test_a_held_migration_lock_times_out_with_the_holder_named(settings, monkeypatch):
    monkeypatch.setenv("ARTCLF_LOCK_TIMEOUT_S", "0.5")
    with psycopg.connect(settings.db_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (db.MIGRATION_LOCK,))
        with pytest.raises(db.LockWaitTimeout, match=f"pid {holder.info.backend_pid}"):
            db.migrate(settings.db_url)
    assert db.migrate(settings.db_url) == []  # and works once it is free


def test_the_reader_role_cannot_take_locks_or_make_large_objects(stack):
    _, env = stack
    with psycopg.connect(env["ARTCLF_READER_DB_URL"], autocommit=True) as reader:
        for statement in (
            f"SELECT pg_advisory_lock({db.CATALOGUE_LOCK})",
            f"SELECT pg_try_advisory_lock({db.CATALOGUE_LOCK})",
            f"SELECT pg_advisory_xact_lock({db.MIGRATION_LOCK})",
            "SELECT pg_advisory_lock_shared(1, 2)",
            "SELECT lo_from_bytea(0, 'x'::bytea)",
            "SELECT lo_create(0)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute(statement)
