"""The servers fail under a running ``artclf ingest``: PostgreSQL stopped immediately or
killed, the S3 server killed. The run must stop with a sentence naming the service (exit 3)
or finish what it can, and once the service is back an immediate re-run must settle the lake
(tests/lake_invariants.py). A throwaway stack: the session's shared one stays untouched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lake_invariants import assert_lake_settled, drop, wait_mid_run

from artclf_core.config import Settings
from artclf_core.embedded.procs import read_pid
from artclf_core.embedded.stack import Stack
from artclf_core.ingest.ingestor import Ingestor

N_OBJECTS = 240

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("faults-home")
    s = Stack(home, bucket="faults", pg_tuning={"fsync": "off", "full_page_writes": "off"})
    env = s.up()
    yield s, env
    s.down()


@pytest.fixture
def fresh(own_stack):
    import conftest

    s, env = own_stack
    env = s.up()  # a test before may have left a server down
    return s, env, conftest.reset(Settings.from_env(env, home=Path("/nonexistent")))


def _ingest(env: dict[str, str]) -> subprocess.Popen:
    cli = [sys.executable, "-m", "artclf_core.cli", "ingest", "--batch-size", "16"]
    return subprocess.Popen(
        cli, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _kill_postgres(s: Stack) -> None:
    """SIGKILL to every PostgreSQL process (postmaster and backends), as the OOM killer or
    a lost container would."""
    pid = read_pid(s.postgres.data_dir / "postmaster.pid")
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    # No waiting here: Stack.up must cope with a postmaster that is not reaped yet.


def _kill_s3(s: Stack) -> None:
    os.killpg(os.getpgid(read_pid(s.seaweed.pid_file)), signal.SIGKILL)


FAULTS = {
    "postgres-immediate-stop": ("PostgreSQL", lambda s: s.postgres.stop("immediate")),
    "postgres-sigkill": ("PostgreSQL", _kill_postgres),
    "s3-sigkill": ("S3", _kill_s3),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_an_immediate_rerun_after_a_server_came_back_settles_the_lake(fresh, fault):
    s, env, settings = fresh
    service, inflict = FAULTS[fault]
    drop(settings, N_OBJECTS, seed=5000)
    proc = _ingest(env)
    wait_mid_run(proc, settings)
    inflict(s)
    _, err = proc.communicate(timeout=300)
    err = err.decode()
    print(f"{fault}: run exited {proc.returncode}: {err.strip().splitlines()[-1:]}")
    assert "Traceback" not in err, err[-3000:]
    if proc.returncode != 0:
        assert proc.returncode == 3 and f"{service} is unreachable" in err, err[-3000:]

    s.up()  # same ports: the URLs handed out before still work
    started = time.monotonic()
    with Ingestor(settings) as ing:
        summary = ing.ingest_prefix("incoming/")
    recovery = time.monotonic() - started
    assert summary.skipped == 0, summary
    assert_lake_settled(settings, N_OBJECTS)
    print(f"{fault}: immediate re-run settled {N_OBJECTS} objects in {recovery:.1f}s ({summary})")
