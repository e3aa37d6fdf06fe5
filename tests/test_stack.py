"""`artclf stack up|env|down`: real servers started and stopped by the project's own code."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from artclf_core.config import Settings, read_env_file
from artclf_core.embedded.procs import pid_alive, read_pid
from artclf_core.embedded.stack import Stack
from artclf_core.lake import s3 as s3lib


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
        sockets = Stack(home).seaweed.local_sockets()
        assert sockets  # weed's own sockets in /tmp, named after this stack's ports
    finally:
        down = artclf("stack", "down", home=home)
    assert down.returncode == 0, down.stderr
    assert not pid_alive(pg_pid) and not pid_alive(weed_pid)
    assert not [s for s in sockets if s.exists()]  # removed with the server: nothing in /tmp
    assert not list(Path("/tmp").glob(f"weed.*.{weed_pid}"))  # its glog files are in home
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


def _redis_or_skip() -> None:
    if not (shutil.which("redis-server") or shutil.which("valkey-server")):
        pytest.skip("no redis-server or valkey-server (apt-get install redis-server)")


def test_the_celery_broker_is_private_keeps_its_port_and_stops(tmp_path):
    """The Celery deployment's Redis: loopback only, a password nobody else can read, the
    same port after a restart (the broker URL in airflow.cfg stays right)."""
    _redis_or_skip()
    from artclf_core.embedded.redis import EmbeddedRedis

    broker = EmbeddedRedis(tmp_path)
    url = broker.start()
    try:
        assert url.startswith("redis://:") and "@127.0.0.1:" in url
        assert broker.ping()
        assert (broker.dir.stat().st_mode & 0o077) == 0
        assert (broker.config_file.stat().st_mode & 0o077) == 0
        assert broker.password() not in " ".join(
            Path(f"/proc/{read_pid(broker.pid_file)}/cmdline").read_text().split("\0")
        )
        port = int(broker.port_file.read_text())
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")  # no AUTH
            assert sock.recv(64).startswith(b"-NOAUTH")
        assert broker.start() == url  # idempotent
        broker.stop()
        assert not broker.is_running()
        assert broker.start() == url  # same port, same password
    finally:
        broker.stop()
    assert not broker.is_running()


def test_the_embedded_airflow_remembers_its_executor_and_writes_celery_settings(tmp_path):
    from artclf_core.embedded.airflow import EmbeddedAirflow

    assert EmbeddedAirflow(tmp_path).deployment() == {"executor": "local"}
    airflow = EmbeddedAirflow(tmp_path, executor="celery", workers=3)
    plan = airflow.deployment()
    assert plan == {"executor": "celery", "workers": 3, "concurrency": 2}
    airflow.dir.mkdir(parents=True)
    airflow._executor_file.write_text(json.dumps(plan))
    assert EmbeddedAirflow(tmp_path).deployment() == plan  # plain `artclf up` keeps it
    assert EmbeddedAirflow(tmp_path, executor="local").deployment() == {"executor": "local"}
    celery = {
        **plan,
        "broker_url": "redis://:pw@127.0.0.1:6390/0",
        "metadata_url": "postgresql+psycopg2://airflow:pw@127.0.0.1:5433/airflow",
    }
    airflow._write_config(8080, celery)
    cfg = airflow.config_file.read_text()
    assert "executor = CeleryExecutor" in cfg
    assert "sql_alchemy_conn = postgresql+psycopg2://airflow:pw@127.0.0.1:5433/airflow" in cfg
    assert "result_backend = db+postgresql+psycopg2://airflow:pw@" in cfg
    assert "broker_url = redis://:pw@127.0.0.1:6390/0" in cfg
    assert "parallelism = 6" in cfg and "task_instance_heartbeat_timeout = 60" in cfg
    assert (airflow.config_file.stat().st_mode & 0o077) == 0
    with pytest.raises(ValueError, match="unknown executor"):
        EmbeddedAirflow(tmp_path, executor="kubernetes").deployment()
