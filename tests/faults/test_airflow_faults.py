"""Faults through Airflow: the real ``artclf up`` (airflow standalone, LocalExecutor) on its
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

from artclf_core import db
from artclf_core.config import Settings, read_env_file
from artclf_core.embedded.airflow import EmbeddedAirflow

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
            now = states(settings)
            return set(now) <= TERMINAL and sum(now.values()) == N_OBJECTS

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


def test_artclf_up_brings_back_a_killed_triggerer_and_the_drop_is_catalogued(tmp_path):
    """``airflow standalone`` does not restart a killed triggerer, so drops go unnoticed;
    ``artclf up`` sees the unhealthy component and restarts Airflow, whose watcher's first
    sweep takes what waited."""
    home = tmp_path / "state"
    with _product_up(home) as settings:
        victims = _triggerer_pids(home)
        assert victims
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        drop(settings, 30, seed=30_000)
        airflow = EmbeddedAirflow(home)
        wait_for(
            lambda: airflow.health()["triggerer"]["status"] != "healthy",
            180,
            "Airflow reports the triggerer unhealthy",
            2.0,
        )
        assert states(settings) == {}  # nothing noticed the drop
        again = artclf("up", home=home, timeout=420)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "triggerer unhealthy: restarting" in again.stderr, again.stderr[-2000:]
        assert "already up" not in again.stdout
        wait_for(
            lambda: states(settings).get("catalogued", 0) == 30, 300, "the drop catalogued", 2.0
        )
        assert_lake_settled(settings, 30)
