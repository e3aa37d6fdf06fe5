"""Faults through Airflow: the real ``artclf up`` (LocalExecutor, artclf's launcher) on its
own embedded stack; an ``ingest_batch`` task process SIGKILLed mid-batch. Airflow's retry
and the next runs must settle the lake (tests/lake_invariants.py) without any object
waiting for the 15-minute claim lease."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from lake_invariants import TERMINAL, assert_lake_settled, drop, states
from test_airflow_stack import artclf, wait_for

from artclf_core.catalogue import db
from artclf_core.config import Settings, read_env_file
from artclf_core.embedded.airflow import EmbeddedAirflow
from artclf_core.lake import s3 as s3lib

N_OBJECTS = 300
pytestmark = pytest.mark.slow


@contextmanager
def _product_up(home: Path) -> Iterator[Settings]:
    """``artclf up`` in ``home``, the stack's settings inside, ``artclf down`` after."""
    up = artclf("up", home=home, timeout=420)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield Settings.from_env(read_env_file(home / "stack.env"))
    finally:
        down = artclf("down", home=home, timeout=180)
        assert down.returncode == 0, down.stderr


def _task_pids(settings) -> set[int]:
    """OS pids of the Airflow task processes holding claims (``...@host:pid``)."""
    with db.connect(settings.db_url) as conn:
        holders = conn.execute(
            "SELECT DISTINCT claimed_by FROM artclf.ingest_log WHERE state = 'processing'"
        ).fetchall()
    return {int(m.group(1)) for (h,) in holders if (m := re.search(r"@[^:]+:(\d+)$", h or ""))}


def test_a_task_killed_mid_batch_is_finished_by_airflows_retry(tmp_path):
    with _product_up(tmp_path / "state") as settings:
        drop(settings, N_OBJECTS, seed=20_000)

        def mid_batch() -> set[int]:
            return _task_pids(settings) if states(settings).get("catalogued", 0) else set()

        victims = wait_for(mid_batch, 300, "a task holds claims after a first commit", 0.1)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        print(f"killed task process(es) {sorted(victims)} at {states(settings)}")

        def settled() -> bool:
            # Every row final is not enough: a task killed between its commit and its
            # deletes leaves final rows whose objects are still in incoming/ until the
            # retry (20 s later) finishes the moves. Wait for that retry too.
            now = states(settings)
            if not (set(now) <= TERMINAL and sum(now.values()) == N_OBJECTS):
                return False
            client = s3lib.client(settings)
            return not any(s3lib.iter_pages(client, settings.bucket, "incoming/"))

        wait_for(settled, 600, "Airflow's retry settles the drop (the lease is 900 s)", 2.0)
        recovery = time.monotonic() - killed_at
        assert_lake_settled(settings, N_OBJECTS)
        print(f"settled {N_OBJECTS} objects {recovery:.0f} s after the kill", file=sys.stderr)


def _triggerer_pids(home: Path) -> list[int]:
    found = []
    for pid in EmbeddedAirflow(home).processes():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"triggerer" in cmdline:
            found.append(pid)
    return found


def test_a_killed_triggerer_is_restarted_and_the_drop_is_catalogued(tmp_path):
    """The launcher restarts a component that dies (``airflow standalone`` did not: drops
    went unnoticed until an operator ran ``artclf up``): after a SIGKILL of the triggerer,
    a drop is catalogued with nobody doing anything."""
    home = tmp_path / "state"
    with _product_up(home) as settings:
        airflow = EmbeddedAirflow(home)
        victims = _triggerer_pids(home)
        assert victims
        log_at_kill = airflow.log_file.stat().st_size
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        drop(settings, 30, seed=30_000)
        wait_for(
            lambda: states(settings).get("catalogued", 0) == 30, 300, "the drop catalogued", 2.0
        )
        print(
            f"30 dropped objects catalogued {time.monotonic() - killed_at:.0f} s after the "
            "triggerer was killed",
            file=sys.stderr,
        )
        assert_lake_settled(settings, 30)
        with open(airflow.log_file, "rb") as fh:
            fh.seek(log_at_kill)
            assert b"triggerer exited with -9; restarting it" in fh.read()
        again = artclf("up", home=home, timeout=420)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "already up" in again.stdout
