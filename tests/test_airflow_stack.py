"""``artclf up`` / ``artclf down``: the whole product started and stopped by one command.

A real ``airflow standalone`` on the real embedded stack, in a temporary ARTCLF_HOME: it
serves its health endpoint, listens on loopback only, logs in with the generated password,
catalogues a drop by itself (asset watcher -> DAG run), and ``artclf down`` leaves no process
of it behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import imagegen
import pytest

from artclf_core import db
from artclf_core import s3 as s3lib
from artclf_core.config import Settings, read_env_file
from artclf_core.embedded.airflow import DAG_ID, EmbeddedAirflow
from artclf_core.embedded.procs import pid_alive, read_pid

pytestmark = pytest.mark.slow


def artclf(*args: str, home: Path, timeout: float) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: no stack settings inherited from the test session."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ARTCLF_", "AIRFLOW", "AWS_")) or k == "ARTCLF_MODEL"
    }
    env["ARTCLF_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "artclf_core.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def request(url: str, *, token: str | None = None, body: dict | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=10) as resp:
        return json.loads(resp.read())


def wait_for(check, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last = exc
        time.sleep(interval)
    raise AssertionError(f"{what} within {timeout:.0f} s; last: {last!r}")


def listening_addresses(pids: list[int]) -> set[str]:
    """``address:port`` of every TCP socket in LISTEN state that one of ``pids`` holds."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            hexaddr, hexport = fields[1].split(":")
            if width == 8:
                addr = ".".join(str(int(hexaddr[i : i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                addr = "ipv6:" + hexaddr
            found.add(f"{addr}:{int(hexport, 16)}")
    return found


def test_artclf_up_runs_everything_and_down_leaves_nothing(tmp_path):
    home = tmp_path / "state"
    started = time.monotonic()
    up = artclf("up", home=home, timeout=420)
    assert up.returncode == 0, up.stdout + up.stderr
    up_seconds = time.monotonic() - started
    airflow = EmbeddedAirflow(home)
    info = airflow.info()
    pids = airflow.processes()
    leader = airflow.leader()
    pg_pid = read_pid(home / "pg" / "data" / "postmaster.pid")
    weed_pid = read_pid(home / "s3" / "weed.pid")
    try:
        # What `artclf up` prints: where Airflow is and how to log in, the bucket and its
        # credentials, how to get the settings and what to do next.
        env = read_env_file(home / "stack.env")
        for text in (
            info["AIRFLOW_URL"],
            f"login admin / {info['AIRFLOW_PASSWORD']}",
            env["ARTCLF_S3_ENDPOINT"],
            env["AWS_ACCESS_KEY_ID"],
            env["AWS_SECRET_ACCESS_KEY"],
            'eval "$(artclf stack env)"',
            "artclf drop",
            "artclf similar",
        ):
            assert text in up.stdout, text
        assert info["AIRFLOW_URL"].startswith("http://127.0.0.1:")

        # Every component healthy; every listener of the instance on loopback.
        health = request(info["AIRFLOW_URL"] + "/api/v2/monitor/health")
        for component in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
            assert health[component]["status"] == "healthy", health
        listeners = listening_addresses(pids)
        assert listeners, "the api-server listens somewhere"
        assert all(a.startswith("127.0.0.1:") for a in listeners), listeners
        # Secrets are for the owner only.
        for name in ("passwords.json", "secrets.json", "airflow.cfg"):
            assert oct((home / "airflow" / name).stat().st_mode)[-3:] == "600", name

        # The generated login works, and the DAG is there, active, on its asset.
        token = request(
            info["AIRFLOW_URL"] + "/auth/token",
            body={"username": "admin", "password": info["AIRFLOW_PASSWORD"]},
        )["access_token"]
        api = info["AIRFLOW_URL"] + "/api/v2"
        dag = wait_for(
            lambda: request(f"{api}/dags/{DAG_ID}", token=token), 90, "the DAG is parsed"
        )
        assert dag["is_paused"] is False

        # The product: drop images, they are catalogued by an asset-triggered run.
        s3 = s3lib.client(Settings.from_env(env))
        for i in range(2):
            s3.put_object(
                Bucket=env["ARTCLF_BUCKET"],
                Key=f"incoming/up/art{i}.jpg",
                Body=imagegen.encode(imagegen.make_artwork(600 + i)),
            )

        def catalogued() -> bool:
            with db.connect(env["ARTCLF_DB_URL"]) as conn:
                states = conn.execute(
                    "SELECT state, finalized FROM artclf.ingest_log WHERE key LIKE 'incoming/up/%'"
                ).fetchall()
            return len(states) == 2 and all(s == ("catalogued", True) for s in states)

        wait_for(catalogued, 240, "the drop is catalogued", interval=2.0)
        runs = request(f"{api}/dags/{DAG_ID}/dagRuns", token=token)["dag_runs"]
        assert any(r["run_type"] == "asset_triggered" for r in runs), runs

        # A second `up` starts nothing and prints the same information.
        again = artclf("up", home=home, timeout=120)
        assert again.returncode == 0, again.stderr
        assert "already up" in again.stdout
        assert f"login admin / {info['AIRFLOW_PASSWORD']}" in again.stdout
        assert airflow.leader() == leader
        assert set(airflow.processes()) >= {leader[0]}
    finally:
        everything = set(pids) | set(airflow.processes())
        down = artclf("down", home=home, timeout=180)
    assert down.returncode == 0, down.stderr
    # Nothing left: not one process of the instance (whatever group it moved to), nor of
    # the standalone's session, nor the stack's servers.
    assert airflow.processes() == []
    assert not [p for p in everything if pid_alive(p)]
    assert not [p for p in _session(leader[0]) if pid_alive(p)]
    assert not pid_alive(pg_pid) and not pid_alive(weed_pid)
    assert not airflow.is_running()
    print(f"artclf up took {up_seconds:.0f} s", file=sys.stderr)


def _session(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-s", str(sid), "-o", "pid="], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]
