"""The Celery deployment on this machine, faulted: ``artclf up --executor celery --workers 2``
(CeleryExecutor, Debian's redis-server as the broker, Airflow's metadata in the embedded
PostgreSQL, two ``airflow celery worker`` processes), 2,000 images dropped, and one worker
SIGKILLed with everything it runs while it holds claims. The surviving worker must settle
the lake (tests/lake_invariants.py), with no object waiting for the 15-minute claim lease,
Airflow's retry must end every run in success, and the launcher brings the dead worker
back by itself."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time

import psutil
import pytest
from lake_invariants import TERMINAL, assert_lake_settled, drop, states
from test_airflow_stack import artclf, request, token_for, wait_for

from artclf_core.catalogue import db
from artclf_core.config import Settings, read_env_file
from artclf_core.embedded.airflow import EmbeddedAirflow

N_OBJECTS = 2000
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("redis-server") or shutil.which("valkey-server")),
        reason="no redis-server or valkey-server (apt-get install redis-server)",
    ),
]


def _claim_pids(settings: Settings) -> dict[int, int]:
    """{OS pid: claims} of the task processes holding claims (``...@host:pid``)."""
    with db.connect(settings.db_url) as conn:
        rows = conn.execute(
            "SELECT claimed_by, count(*) FROM artclf.ingest_log"
            " WHERE state = 'processing' GROUP BY 1"
        ).fetchall()
    return {int(m.group(1)): n for h, n in rows if (m := re.search(r"@[^:]+:(\d+)$", h or ""))}


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _log_lines_after(airflow: EmbeddedAirflow, offset: int, prefix: str) -> list[str]:
    with open(airflow.log_file, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_a_killed_celery_worker_loses_nothing_and_the_other_finishes(tmp_path):
    home = tmp_path / "state"
    up = artclf("up", "--executor", "celery", "--workers", "2", home=home, timeout=420)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "CeleryExecutor: 2 workers x 2 slots" in up.stdout
    airflow = EmbeddedAirflow(home)
    try:
        settings = Settings.from_env(read_env_file(home / "stack.env"))
        cfg = airflow.config_file.read_text()
        assert "executor = CeleryExecutor" in cfg and "postgresql+psycopg2://airflow:" in cfg
        assert airflow.dead_workers() == []
        worker1 = airflow.components()["worker1"][0]

        started = time.monotonic()
        drop(settings, N_OBJECTS, seed=40_000)
        dropped = time.monotonic()

        def worker1_holds_claims() -> dict[int, int]:
            if not states(settings).get("catalogued"):
                return {}
            mine = {p.pid for p in _tree(worker1)}
            return {pid: n for pid, n in _claim_pids(settings).items() if pid in mine}

        held = wait_for(worker1_holds_claims, 300, "worker1 runs a task holding claims", 0.1)
        log_at_kill = airflow.log_file.stat().st_size
        victims = _tree(worker1)
        for proc in victims:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        killed_at = time.monotonic()
        print(
            f"SIGKILLed worker1 and its {len(victims) - 1} child processes "
            f"({sum(held.values())} claims held) at {states(settings)}",
            file=sys.stderr,
        )

        def settled() -> bool:
            now = states(settings)
            return set(now) <= TERMINAL and sum(now.values()) == N_OBJECTS

        wait_for(settled, 900, "the surviving worker settles the drop (lease 900 s)", 2.0)
        done = time.monotonic()
        assert_lake_settled(settings, N_OBJECTS)
        finished = [
            line
            for line in _log_lines_after(airflow, log_at_kill, "worker2 ")
            if "succeeded in" in line
        ]
        assert finished, "worker2 ran no task after the kill"
        print(
            f"{N_OBJECTS} objects: dropped in {dropped - started:.0f} s, settled "
            f"{done - killed_at:.0f} s after the kill ({done - started:.0f} s in all; "
            f"worker2 finished {len(finished)} task(s) after the kill); {states(settings)}",
            file=sys.stderr,
        )

        # Airflow's side: the killed task instances are failed by the heartbeat timeout
        # (60 s), retried on worker2, find their objects final, and every run succeeds.
        url = airflow.url()
        token = token_for(url, "admin", airflow.password())

        def runs_by_state() -> dict[str, int]:
            runs = request(f"{url}/api/v2/dags/artclf_ingest/dagRuns?limit=200", token=token)
            counts: dict[str, int] = {}
            for run in runs["dag_runs"]:
                counts[run["state"]] = counts.get(run["state"], 0) + 1
            return counts

        seen: dict[str, int] = {}

        def all_succeeded() -> bool:
            seen.clear()
            seen.update(runs_by_state())
            return set(seen) == {"success"}

        try:
            wait_for(all_succeeded, 300, "every run succeeds", 3.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; runs by state: {seen}") from None
        print(
            f"runs {runs_by_state()} {time.monotonic() - killed_at:.0f} s after the kill",
            file=sys.stderr,
        )

        # The launcher started worker1 again by itself; `artclf up` finds all well.
        relaunched = _log_lines_after(airflow, log_at_kill, "launcher ")
        assert any("worker1 exited with -9; restarting it" in x for x in relaunched), relaunched
        wait_for(lambda: airflow.dead_workers() == [], 120, "worker1 is back", 2.0)
        again = artclf("up", home=home, timeout=420)  # the executor is remembered
        assert again.returncode == 0, again.stdout + again.stderr
        assert "already up" in again.stdout and "CeleryExecutor" in again.stdout
        drop(settings, 10, seed=50_000, prefix="incoming/after")
        wait_for(
            lambda: (
                sum(states(settings).values()) == N_OBJECTS + 10
                and set(states(settings)) <= TERMINAL
            ),
            300,
            "a drop after the restart settled",
            2.0,
        )
    finally:
        down = artclf("down", home=home, timeout=180)
        assert down.returncode == 0, down.stderr
        assert not airflow.redis.is_running()
        assert not [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(home) in " ".join(p.info["cmdline"] or []) and p.pid != os.getpid()
        ]
