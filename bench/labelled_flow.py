"""The ML owner's flow on the running product: labelled drops to a recorded gate decision.

    .venv/bin/python bench/labelled_flow.py [--data ../shared/data/artworks] [--per-class N]

In a throw-away ``ARTCLF_HOME``: ``artclf up`` (embedded PostgreSQL, SeaweedFS, Airflow),
``artclf drop --prefix training/ <label folder>`` of every class folder of ``--data`` (no ingest
command follows), then wait until the trigger's training-area sweep and the ``artclf_ingest``
runs it starts have put every labelled object in a final state; trigger ``artclf_retrain``
through the REST API and wait for it; print the seconds from the last PUT to the last final
state, the retraining run's seconds and its recorded report (``artclf.retrain_runs``).
``artclf down`` at the end. Issue 16's baseline: nothing was catalogued at all without a
hand-run ``artclf ingest --prefix training/`` (which took 38 s for 2,751 images).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from artclf_core import CLASSES  # noqa: E402
from artclf_core.catalogue import db  # noqa: E402
from artclf_core.config import read_env_file  # noqa: E402
from artclf_core.embedded.airflow import EmbeddedAirflow  # noqa: E402


def cli(*args: str, home: Path, timeout: float = 900) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARTCLF_", "AIRFLOW", "AWS_"))}
    env["ARTCLF_HOME"] = str(home)
    out = subprocess.run(
        [sys.executable, "-m", "artclf_core.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode:
        raise SystemExit(f"artclf {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def api(url: str, token: str | None = None, body: dict | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=30) as r:
        return json.loads(r.read())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    parser.add_argument("--per-class", type=int, help="drop only the first N files per class")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="artclf-flow-") as tmp:
        home = Path(tmp)
        cli("up", home=home, timeout=600)
        try:
            env = read_env_file(home / "stack.env")
            dropped = 0
            for label in CLASSES:
                files = sorted(p for p in (args.data / label).iterdir() if p.is_file())
                files = files[: args.per_class] if args.per_class else files
                staged = home / "staging" / label  # the folder name is the label
                staged.mkdir(parents=True)
                for f in files:
                    (staged / f.name).symlink_to(f.resolve())
                cli("drop", "--prefix", "training/", str(staged), home=home)
                dropped += len(files)
            last_put = time.monotonic()
            print(f"dropped {dropped} labelled files; no ingest command", flush=True)
            with db.connect(env["ARTCLF_DB_URL"]) as conn:
                while True:
                    states = dict(
                        conn.execute(
                            "SELECT state, count(*) FROM artclf.ingest_log"
                            " WHERE key ^@ 'training/' AND finalized GROUP BY 1"
                        ).fetchall()
                    )
                    conn.commit()
                    if sum(states.values()) >= dropped:
                        break
                    if time.monotonic() - last_put > 1800:
                        raise SystemExit(f"not catalogued after 30 min: {states}")
                    time.sleep(1.0)
            settled = time.monotonic() - last_put
            print(f"every labelled object final {settled:.0f} s after the last PUT: {states}")
            info = EmbeddedAirflow(home).info()
            url = info["AIRFLOW_URL"]
            token = api(
                url + "/auth/token",
                body={"username": "admin", "password": info["AIRFLOW_PASSWORD"]},
            )["access_token"]
            run = api(f"{url}/api/v2/dags/artclf_retrain/dagRuns", token, {"logical_date": None})[
                "dag_run_id"
            ]
            started = time.monotonic()
            while True:
                state = api(f"{url}/api/v2/dags/artclf_retrain/dagRuns/{run}", token)["state"]
                if state in ("success", "failed"):
                    break
                time.sleep(5.0)
            took = time.monotonic() - started
            with db.connect(env["ARTCLF_DB_URL"]) as conn:
                row = db.fetch_dicts(
                    conn,
                    "SELECT status, reason, version, seconds, report_md"
                    " FROM artclf.retrain_runs ORDER BY id DESC LIMIT 1",
                )[0]
            print(
                f"artclf_retrain run {run}: {state} in {took:.0f} s (load {os.getloadavg()[0]:.1f})"
            )
            print(json.dumps({k: v for k, v in row.items() if k != "report_md"}, default=str))
            print(row["report_md"])
        finally:
            cli("down", home=home, timeout=300)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
