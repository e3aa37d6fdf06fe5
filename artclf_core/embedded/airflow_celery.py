"""``airflow standalone`` for the CeleryExecutor: the components, plus N Celery workers.

``airflow standalone`` forces the LocalExecutor whatever the configuration says, so the
Celery deployment of ``artclf up --executor celery`` is launched by this small process
instead (``python -m artclf_core.embedded.airflow_celery --workers 2 --concurrency 2``), in
the same place and in the same way: started by ``EmbeddedAirflow`` in a session of its own,
with ``airflow.cfg`` already written and the shim first on ``PATH``. It

* migrates the metadata database (the embedded PostgreSQL's ``airflow`` database),
* starts ``scheduler``, ``dag-processor``, ``triggerer``, ``api-server`` and one
  ``celery worker`` per ``--workers`` (hostnames ``worker1@<host>``, ``worker2@<host>``, ...),
  every line of their output prefixed with its name, into the launcher's own output
  (``standalone.log``, as for ``airflow standalone``);
* records each component's pid and start time in ``components.json``, which
  ``EmbeddedAirflow`` reads to tell a dead worker (the health endpoint knows nothing of
  Celery workers) and tests read to kill one;
* on SIGINT or SIGTERM stops them all: SIGTERM (a Celery worker's warm shutdown finishes the
  task it runs), then SIGKILL after 30 s.

A component that dies is reported, not restarted, exactly like ``airflow standalone``:
``artclf up`` restarts an instance with a dead component (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

#: Seconds the components get to stop after SIGTERM before they are killed.
STOP_TIMEOUT = 30.0
#: File, in the Airflow home, with ``{name: [pid, start time]}`` of every component.
COMPONENTS_FILE = "components.json"


def worker_name(i: int) -> str:
    return f"worker{i}"


def commands(workers: int, concurrency: int) -> dict[str, list[str]]:
    """Each component's ``airflow`` arguments (the shim adds ``--skip-serve-logs`` to the
    scheduler and the triggerer; the workers get it here: the api-server on this machine
    reads task logs from the local folder)."""
    parts: dict[str, list[str]] = {
        "scheduler": ["scheduler"],
        "dag-processor": ["dag-processor"],
        "triggerer": ["triggerer"],
        "api-server": ["api-server"],
    }
    for i in range(1, workers + 1):
        parts[worker_name(i)] = [
            "celery",
            "worker",
            "--concurrency",
            str(concurrency),
            "--celery-hostname",
            f"{worker_name(i)}@%h",
            "--skip-serve-logs",
            "--without-mingle",
            "--without-gossip",
        ]
    return parts


def _start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[19])


def _pump(name: str, stream, lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        with lock:
            sys.stdout.buffer.write(f"{name:<13} | ".encode() + raw)
            sys.stdout.buffer.flush()


def say(text: str) -> None:
    sys.stdout.write(f"{'launcher':<13} | {text}\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args(argv)
    airflow = shutil.which("airflow")  # the shim (EmbeddedAirflow puts it first on PATH)
    if airflow is None:
        raise SystemExit("airflow not found on PATH")
    home = Path(os.environ["AIRFLOW_HOME"])
    stopping = threading.Event()

    def on_signal(signum, _frame) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    say("migrating the metadata database")
    migrate = subprocess.run([airflow, "db", "migrate"], capture_output=True, text=True)
    if migrate.returncode:
        say(f"airflow db migrate failed ({migrate.returncode}):\n{migrate.stdout}{migrate.stderr}")
        return migrate.returncode
    lock = threading.Lock()
    procs: dict[str, subprocess.Popen] = {}
    for name, cmd in commands(args.workers, args.concurrency).items():
        if stopping.is_set():
            break
        proc = subprocess.Popen(
            [airflow, *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        procs[name] = proc
        threading.Thread(target=_pump, args=(name, proc.stdout, lock), daemon=True).start()
        say(f"started {name} (pid {proc.pid})")
    (home / COMPONENTS_FILE).write_text(
        json.dumps({n: [p.pid, _start_time(p.pid)] for n, p in procs.items()})
    )
    reported: set[str] = set()
    while not stopping.wait(0.5):
        for name, proc in procs.items():
            if proc.poll() is not None and name not in reported:
                say(f"{name} exited with {proc.returncode}; `artclf up` restarts the instance")
                reported.add(name)
    say("stopping the components")
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    say("complete")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
