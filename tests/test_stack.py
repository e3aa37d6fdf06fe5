"""`artclf stack up|env|down`: real servers started and stopped by the project's own code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

from artclf_core import s3 as s3lib
from artclf_core.config import Settings, read_env_file
from artclf_core.embedded.procs import pid_alive, read_pid


def artclf(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ARTCLF_HOME": str(home)}
    for var in ("ARTCLF_DB_URL", "ARTCLF_S3_ENDPOINT", "ARTCLF_BUCKET"):
        env.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "artclf_core.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_stack_up_env_down_leaves_nothing_behind(tmp_path):
    home = tmp_path / "state"
    up = artclf("stack", "up", home=home)
    assert up.returncode == 0, up.stderr
    try:
        env_out = artclf("stack", "env", home=home)
        assert env_out.returncode == 0
        for var in (
            "ARTCLF_DB_URL",
            "ARTCLF_S3_ENDPOINT",
            "ARTCLF_BUCKET",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ):
            assert f"export {var}=" in env_out.stdout
        env = read_env_file(home / "stack.env")
        # Both servers answer, on loopback only, with the printed credentials.
        assert "127.0.0.1" in env["ARTCLF_DB_URL"] and "127.0.0.1" in env["ARTCLF_S3_ENDPOINT"]
        with psycopg.connect(env["ARTCLF_DB_URL"]) as conn:
            assert conn.execute("SELECT count(*) FROM artclf.schema_migrations").fetchone()[0] >= 3
            # The shipped model is registered and active before anything was ingested.
            assert (
                conn.execute(
                    "SELECT count(*) FROM artclf.model_versions WHERE is_active"
                ).fetchone()[0]
                == 1
            )
        s3 = s3lib.client(Settings.from_env(env))
        s3.put_object(Bucket=env["ARTCLF_BUCKET"], Key="incoming/x.txt", Body=b"x")
        # A second `up` is a no-op that keeps the same servers and data.
        pg_pid = read_pid(home / "pg" / "data" / "postmaster.pid")
        weed_pid = read_pid(home / "s3" / "weed.pid")
        assert pg_pid and weed_pid
        again = artclf("stack", "up", home=home)
        assert again.returncode == 0, again.stderr
        assert read_pid(home / "pg" / "data" / "postmaster.pid") == pg_pid
        assert read_pid(home / "s3" / "weed.pid") == weed_pid
        assert "running" in artclf("stack", "status", home=home).stdout
        # Credentials, S3 data and logs are the owner's; others may only pass through home
        # (the embedded PostgreSQL's system user needs to).
        assert oct((home / "secrets.json").stat().st_mode)[-3:] == "600"
        assert oct(home.stat().st_mode)[-3:] == "711"
        assert oct((home / "s3").stat().st_mode)[-3:] == "700"
        first_env = env
    finally:
        down = artclf("stack", "down", home=home)
    assert down.returncode == 0, down.stderr
    assert not pid_alive(pg_pid) and not pid_alive(weed_pid)
    assert not (home / "stack.env").exists()
    # Data survives a restart.
    assert artclf("stack", "up", home=home).returncode == 0
    try:
        env = read_env_file(home / "stack.env")
        # Same ports as before: connections handed out before the restart still work.
        assert env["ARTCLF_S3_ENDPOINT"] == first_env["ARTCLF_S3_ENDPOINT"]
        assert env["ARTCLF_DB_URL"] == first_env["ARTCLF_DB_URL"]
        s3 = s3lib.client(Settings.from_env(env))
        assert (
            s3.get_object(Bucket=env["ARTCLF_BUCKET"], Key="incoming/x.txt")["Body"].read() == b"x"
        )
    finally:
        assert artclf("stack", "down", home=home).returncode == 0


def test_commands_without_a_stack_say_what_to_do(tmp_path):
    out = artclf("ingest", home=tmp_path / "nothing")
    assert out.returncode == 2
    assert "artclf stack up" in out.stderr


def test_two_stack_ups_at_the_same_moment_share_one_stack(tmp_path):
    """The second waits for the first and finds the stack running, instead of racing for the
    same ports (and its clean-up stopping the winner's servers)."""
    home = tmp_path / "state"
    env = {**os.environ, "ARTCLF_HOME": str(home)}
    cmd = [sys.executable, "-m", "artclf_core.cli", "stack", "up"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)]
    procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        results = [(p.wait(timeout=240), p.stderr.read().decode()) for p in procs]
        assert [rc for rc, _ in results] == [0, 0], results
        env_file = read_env_file(home / "stack.env")
        with psycopg.connect(env_file["ARTCLF_DB_URL"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert read_pid(home / "s3" / "weed.pid")
    finally:
        assert artclf("stack", "down", home=home).returncode == 0
