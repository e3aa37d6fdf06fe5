"""Faults with real processes and servers: an ``artclf ingest`` killed mid-run, then an
immediate re-run. Nothing may be stranded (no claim waits for the 15-minute lease), lost or
catalogued twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imagegen
import pytest

from artclf_core import db
from artclf_core import s3 as s3lib
from artclf_core.pipeline import Ingestor

N_OBJECTS = 400
TERMINAL = {"catalogued", "duplicate", "quarantined"}


def _states(settings) -> dict[str, int]:
    with db.connect(settings.db_url) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM artclf.ingest_log GROUP BY 1"))


def _drop(settings, n: int) -> None:
    client = s3lib.client(settings)
    for i in range(n):
        body = imagegen.encode(imagegen.make_artwork(1000 + i))
        client.put_object(Bucket=settings.bucket, Key=f"incoming/k{i:04d}.jpg", Body=body)


def _start_ingest(stack_env: dict[str, str], home: Path) -> subprocess.Popen:
    env = {**os.environ, **stack_env, "ARTCLF_HOME": str(home)}
    cli = [sys.executable, "-m", "artclf_core.cli", "ingest", "--batch-size", "16"]
    return subprocess.Popen(cli, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_mid_run(proc: subprocess.Popen, settings, sig: int) -> dict[str, int]:
    """Wait until the run has catalogued something and holds claims, then send ``sig``."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        states = _states(settings)
        if states.get("catalogued", 0) >= 16 and states.get("processing", 0) > 0:
            proc.send_signal(sig)
            proc.wait(timeout=60)
            return states
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"the run never reached mid-batch: {proc.communicate()[1].decode()[-2000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_an_immediate_rerun_finishes_what_a_killed_ingest_claimed(clean, stack, tmp_path, sig):
    settings = clean
    _, stack_env = stack
    _drop(settings, N_OBJECTS)
    proc = _start_ingest(stack_env, tmp_path / "home")
    _kill_mid_run(proc, settings, sig)
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM
        assert "stopped by SIGTERM" in proc.stderr.read().decode()
    left = _states(settings)
    assert left.get("processing", 0) > 0 or sig == signal.SIGTERM, left

    started = time.monotonic()
    with Ingestor(settings) as ing:
        summary = ing.ingest_prefix("incoming/")
    assert summary.skipped == 0, summary  # nothing waits for the lease
    recovery = time.monotonic() - started

    states = _states(settings)
    assert set(states) <= TERMINAL and sum(states.values()) == N_OBJECTS, states
    client = s3lib.client(settings)
    incoming = [r.key for p in s3lib.iter_pages(client, settings.bucket, "incoming/") for r in p]
    assert incoming == []
    with db.connect(settings.db_url) as conn:
        unfinished = conn.execute(
            "SELECT count(*) FROM artclf.ingest_log WHERE NOT finalized"
        ).fetchone()[0]
        twice = conn.execute(
            "SELECT count(*) FROM (SELECT sha256 FROM artclf.artworks GROUP BY 1"
            " HAVING count(*) > 1) AS d"
        ).fetchone()[0]
        claims = conn.execute("SELECT count(*) FROM artclf.claims").fetchone()[0]
    assert unfinished == 0 and twice == 0 and claims == 0
    print(f"{signal.Signals(sig).name}: re-run finished {N_OBJECTS} objects in {recovery:.1f}s")


def test_a_claim_of_a_live_session_is_kept_and_of_a_dead_one_taken(clean):
    """The claim rule itself (sql/007): the holder's database session decides, not a timer."""
    settings = clean
    _drop(settings, 2)
    client = s3lib.client(settings)
    refs = [r for page in s3lib.iter_pages(client, settings.bucket, "incoming/") for r in page]
    with db.connect(settings.db_url) as first, db.connect(settings.db_url) as other:
        ids = [r.id for r in db.register_objects(first, refs)]
        first.commit()
        assert len(db.claim(first, ids, worker="first", max_attempts=3)) == 2
        assert db.claim(other, ids, worker="other", max_attempts=3) == []  # alive: kept
        first.close()  # the holder's session ends, as when its process dies
        time.sleep(0.2)  # the server notices the closed connection
        taken = db.claim(other, ids, worker="other", max_attempts=3)
        assert sorted(r.id for r in taken) == sorted(ids)
        # The old holder can no longer record outcomes for them.
        with pytest.raises(db.ClaimLost):
            db.record_outcomes(other, [db.Outcome(log_id=ids[0], state="failed")], "first")
        other.rollback()
