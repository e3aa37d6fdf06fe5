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
from lake_invariants import (
    assert_lake_settled,
    assert_no_orphans_and_full_history,
    drop,
    states,
    wait_mid_run,
)

from artclf_core.catalogue import db, ingest_log
from artclf_core.ingest.ingestor import Ingestor
from artclf_core.lake import s3 as s3lib

N_OBJECTS = 400


def _start_ingest(stack_env: dict[str, str], home: Path) -> subprocess.Popen:
    env = {**os.environ, **stack_env, "ARTCLF_HOME": str(home)}
    cli = [sys.executable, "-m", "artclf_core.cli", "ingest", "--batch-size", "16"]
    return subprocess.Popen(cli, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_an_immediate_rerun_finishes_what_a_killed_ingest_claimed(clean, stack, tmp_path, sig):
    settings = clean
    _, stack_env = stack
    drop(settings, N_OBJECTS)
    proc = _start_ingest(stack_env, tmp_path / "home")
    wait_mid_run(proc, settings)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM
        assert "stopped by SIGTERM" in proc.stderr.read().decode()
    left = states(settings)
    assert left.get("processing", 0) > 0 or sig == signal.SIGTERM, left

    started = time.monotonic()
    with Ingestor(settings) as ing:
        summary = ing.ingest_prefix("incoming/")
    assert summary.skipped == 0, summary  # nothing waits for the lease
    recovery = time.monotonic() - started

    assert_lake_settled(settings, N_OBJECTS)
    print(f"{signal.Signals(sig).name}: re-run finished {N_OBJECTS} objects in {recovery:.1f}s")


def test_a_claim_of_a_live_session_is_kept_and_of_a_dead_one_taken(clean):
    """The claim rule itself (sql/007): the holder's database session decides, not a timer."""
    settings = clean
    drop(settings, 2)
    client = s3lib.client(settings)
    refs = [r for page in s3lib.iter_pages(client, settings.bucket, "incoming/") for r in page]
    with db.connect(settings.db_url) as first, db.connect(settings.db_url) as other:
        ids = [r.id for r in ingest_log.register_objects(first, refs)]
        first.commit()
        assert len(ingest_log.claim(first, ids, worker="first", max_attempts=3)) == 2
        assert ingest_log.claim(other, ids, worker="other", max_attempts=3) == []  # alive: kept
        first.close()  # the holder's session ends, as when its process dies
        time.sleep(0.2)  # the server notices the closed connection
        taken = ingest_log.claim(other, ids, worker="other", max_attempts=3)
        assert sorted(r.id for r in taken) == sorted(ids)
        # The old holder can no longer record outcomes for them.
        with pytest.raises(ingest_log.ClaimLost):
            ingest_log.record_outcomes(
                other, [ingest_log.Outcome(log_id=ids[0], state="failed")], "first"
            )
        other.rollback()


def test_copies_of_a_run_that_died_before_its_commit_are_not_left_behind(clean, model):
    """A run dies after copying a batch to catalog/ and before committing it; meanwhile one
    of the objects is deleted from incoming/. The next run must remove that copy (the
    intended key was recorded before copying) and catalogue the rest exactly once."""
    settings = clean
    client = s3lib.client(settings)
    for i in range(4):
        body = imagegen.encode(imagegen.make_artwork(300 + i))
        client.put_object(Bucket=settings.bucket, Key=f"incoming/d{i}.jpg", Body=body)

    class Crash(BaseException):
        """Not an Exception: nothing on the way out gets to clean up, as with a kill."""

    class DiesBeforeCommit(Ingestor):
        def _commit(self, batch, new_rows):
            raise Crash()

    with DiesBeforeCommit(settings, model=model) as ing, pytest.raises(Crash):
        ing.ingest_prefix("incoming/")
    copies = [r.key for p in s3lib.iter_pages(client, settings.bucket, "catalog/") for r in p]
    assert len(copies) == 4  # copied, never committed
    client.delete_object(Bucket=settings.bucket, Key="incoming/d0.jpg")

    with Ingestor(settings, model=model) as ing:
        summary = ing.ingest_prefix("incoming/")
    assert summary.catalogued == 3, summary
    with db.connect(settings.db_url) as conn:
        artwork_keys = {r[0] for r in conn.execute("SELECT key FROM artclf.artworks")}
        final_keys = {r[0] for r in conn.execute("SELECT final_key FROM artclf.ingest_log")}
    assert len(artwork_keys) == 3
    assert_no_orphans_and_full_history(client, settings.bucket, artwork_keys, final_keys)


#: Keys a hostile or careless uploader produces: at the store's 255-byte part limit, non-ASCII,
#: URL and shell metacharacters, spaces, dots and nested folders.
HOSTILE_NAMES = [
    "a" * 236 + ".jpg",
    "é" * 110 + ".jpg",
    "100% off + free?.jpg",
    "#hash & amp; 'quote' \"dq\".jpg",
    " spaced  out .jpg",
    "..dots...jpg",
    "deep/er/and/deeper/" + "n" * 200 + ".jpeg",
    "UPPER.JPG",
    "ünï cödé ✓ 文字.png",
]


@pytest.mark.slow
def test_hostile_keys_and_bytes_survive_a_kill_and_an_immediate_rerun(clean, stack, tmp_path):
    """Long and hostile keys with hostile bytes among real artworks, ingest SIGKILLed mid-run:
    the re-run settles every object, each bad one quarantined with a reason, every long
    name shortened where it lands, full history on each."""
    settings = clean
    _, stack_env = stack
    client = s3lib.client(settings)
    expected: dict[str, str] = {}
    for i, name in enumerate(HOSTILE_NAMES):
        key = f"incoming/h{i}/{name}"
        fmt = "PNG" if name.endswith(".png") else "JPEG"
        body = imagegen.encode(imagegen.make_artwork(70_000 + i), fmt)
        client.put_object(Bucket=settings.bucket, Key=key, Body=body)
        expected[key] = "catalogued"
    for i, (name, (body, reason)) in enumerate(sorted(imagegen.bad_inputs().items())):
        if reason == "too_large_file":  # only under BAD_INPUT_LIMITS' small byte limit
            continue
        key = f"incoming/bad/{'x' * 200}-{i}-{name}.jpg"
        client.put_object(Bucket=settings.bucket, Key=key, Body=body)
        expected[key] = "quarantined"
    drop(settings, 200, seed=71_000)  # enough work for the kill to land mid-run
    total = len(expected) + 200
    proc = _start_ingest(stack_env, tmp_path / "home")
    wait_mid_run(proc, settings)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)

    with Ingestor(settings) as ing:
        summary = ing.ingest_prefix("incoming/")
    assert summary.skipped == 0, summary
    assert_lake_settled(settings, total)
    with db.connect(settings.db_url) as conn:
        rows = dict(
            conn.execute(
                "SELECT key, state FROM artclf.ingest_log WHERE key = ANY(%s)"
                " AND (state <> 'quarantined' OR reason IS NOT NULL)",
                (list(expected),),
            ).fetchall()
        )
        final_keys = [
            k for (k,) in conn.execute("SELECT final_key FROM artclf.ingest_log") if k is not None
        ]
    assert rows == expected
    assert all(len(part.encode()) <= 255 for k in final_keys for part in k.split("/"))
