"""What must hold after any fault and an immediate re-run (issue 13): every object in exactly
one final state and one place, nothing left in incoming/, no claim left, no row twice, no
orphan under catalog/, duplicates/ or quarantine/, full trace metadata on every moved object.
Shared by the fault tests so each scenario checks the same thing."""

from __future__ import annotations

import subprocess
import time

import imagegen
import pytest

from artclf_core.catalogue import db
from artclf_core.lake import s3 as s3lib

TERMINAL = {"catalogued", "duplicate", "quarantined"}


def states(settings) -> dict[str, int]:
    with db.connect(settings.db_url) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM artclf.ingest_log GROUP BY 1"))


def drop(settings, n: int, *, seed: int = 1000, prefix: str = "incoming/k") -> None:
    """``n`` distinct made-up artworks under ``incoming/``."""
    client = s3lib.client(settings)
    for i in range(n):
        body = imagegen.encode(imagegen.make_artwork(seed + i))
        client.put_object(Bucket=settings.bucket, Key=f"{prefix}{i:04d}.jpg", Body=body)


def assert_no_orphans_and_full_history(client, bucket, artwork_keys, final_keys) -> None:
    """Every object under catalog/ is an artwork, every one under duplicates/ or quarantine/
    is a log row's final place, and each carries its whole trace metadata."""
    for prefix in ("catalog/", "duplicates/", "quarantine/"):
        for page in s3lib.iter_pages(client, bucket, prefix):
            for ref in page:
                owners = artwork_keys if prefix == "catalog/" else final_keys
                assert ref.key in owners, f"orphan {ref.key}"
                meta = client.head_object(Bucket=bucket, Key=ref.key)["Metadata"]
                assert {"artclf-state", "artclf-log-id", "artclf-source-key"} <= set(meta), ref.key
                if prefix == "catalog/":
                    assert "artclf-label" in meta, ref.key
                if prefix == "duplicates/":
                    assert "artclf-duplicate-of" in meta, ref.key


def assert_lake_settled(settings, n_objects: int) -> None:
    """The whole invariant, for a drop of ``n_objects`` distinct keys."""
    now = states(settings)
    assert set(now) <= TERMINAL and sum(now.values()) == n_objects, now
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
        keys_twice = conn.execute(
            "SELECT count(*) FROM (SELECT bucket, key FROM artclf.ingest_log GROUP BY 1, 2"
            " HAVING count(*) > 1) AS d"
        ).fetchone()[0]
        claims = conn.execute("SELECT count(*) FROM artclf.claims").fetchone()[0]
        artwork_keys = {r[0] for r in conn.execute("SELECT key FROM artclf.artworks")}
        final_keys = {r[0] for r in conn.execute("SELECT final_key FROM artclf.ingest_log")}
    assert (unfinished, twice, keys_twice, claims) == (0, 0, 0, 0)
    assert_no_orphans_and_full_history(client, settings.bucket, artwork_keys, final_keys)


def wait_mid_run(proc: subprocess.Popen, settings, *, batch: int = 16) -> dict[str, int]:
    """Return the states once ``proc`` has catalogued a batch and holds claims on more: the
    moment a fault hurts most."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        now = states(settings)
        if now.get("catalogued", 0) >= batch and now.get("processing", 0) > 0:
            return now
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"the run never reached mid-batch: {proc.communicate()[1].decode()[-2000:]}")
