"""The embedded Airflow's components, launched and kept alive: what ``airflow standalone``
does, plus Celery workers and restarts.

``EmbeddedAirflow`` starts this process (``python -m artclf_core.embedded.airflow_launcher
[--workers N --concurrency C]``) in a session of its own, with ``airflow.cfg`` already written
and the shim first on ``PATH``. It

* migrates the metadata database (the embedded PostgreSQL's ``airflow`` database);
* starts ``scheduler``, ``dag-processor``, ``triggerer``, ``api-server`` and, with
  ``--workers N``, N ``celery worker`` processes (hostnames ``worker1@<host>``, ...), every line
  of their output prefixed with its name, into its own output (``standalone.log``);
* **restarts a component that dies**, after ``RESTART_DELAY`` seconds, at most
  ``MAX_RESTARTS`` times in ``RESTART_WINDOW`` seconds (then it leaves it dead and says so;
  ``artclf up`` restarts the whole instance). ``airflow standalone`` restarts nothing: after
  a SIGKILL of its triggerer, drops went unnoticed until an operator came
  (docs/reliability.md). docker-compose gets the same from ``restart: unless-stopped``;
* records each component's pid and start time in ``components.json`` (rewritten at every
  restart), which ``EmbeddedAirflow`` reads to tell a dead component (the health endpoint
  knows nothing of Celery workers) and tests read to kill one;
* on SIGINT or SIGTERM stops them all: SIGTERM to each component (a Celery worker's warm
  shutdown finishes the task it runs; the scheduler ends its LocalExecutor workers), then
  SIGKILL after ``STOP_TIMEOUT`` seconds.

Why not ``airflow standalone``: it forces the LocalExecutor whatever the configuration says,
and it does not restart what dies.
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

from artclf_core.embedded.procs import start_time

#: Seconds the components get to stop after SIGTERM before they are killed.
STOP_TIMEOUT = 30.0
#: File, in the Airflow home, with ``{name: [pid, start time]}`` of every component.
COMPONENTS_FILE = "components.json"
#: A dead component is started again after this many seconds...
RESTART_DELAY = 2.0
#: ... unless it already died this many times in the last ``RESTART_WINDOW`` seconds (a
#: component that cannot start would otherwise loop forever).
MAX_RESTARTS = 5
RESTART_WINDOW = 600.0


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


class Launcher:
    """The components of one instance, each restarted when it dies (see the module doc)."""

    def __init__(self, airflow: str, home: Path, parts: dict[str, list[str]]) -> None:
        self.airflow, self.home, self.parts = airflow, home, parts
        self.procs: dict[str, subprocess.Popen] = {}
        self.deaths: dict[str, list[float]] = {name: [] for name in parts}
        self.stopping = threading.Event()
        self._out = threading.Lock()

    def say(self, text: str) -> None:
        with self._out:
            sys.stdout.write(f"{'launcher':<13} | {text}\n")
            sys.stdout.flush()

    def _pump(self, name: str, stream) -> None:
        for raw in iter(stream.readline, b""):
            with self._out:
                sys.stdout.buffer.write(f"{name:<13} | ".encode() + raw)
                sys.stdout.buffer.flush()

    def start(self, name: str) -> None:
        proc = subprocess.Popen(
            [self.airflow, *self.parts[name]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.procs[name] = proc
        threading.Thread(target=self._pump, args=(name, proc.stdout), daemon=True).start()
        self._record()
        self.say(f"started {name} (pid {proc.pid})")

    def _record(self) -> None:
        alive = {n: [p.pid, start_time(p.pid)] for n, p in self.procs.items() if p.poll() is None}
        tmp = self.home / f".{COMPONENTS_FILE}.tmp"
        tmp.write_text(json.dumps(alive))
        os.replace(tmp, self.home / COMPONENTS_FILE)

    def watch(self) -> None:
        """Until SIGINT/SIGTERM: restart what dies, within the restart budget."""
        due: dict[str, float] = {}
        given_up: set[str] = set()
        while not self.stopping.wait(0.5):
            now = time.monotonic()
            for name, proc in self.procs.items():
                if proc.poll() is None or name in due or name in given_up:
                    continue
                recent = [t for t in self.deaths[name] if now - t < RESTART_WINDOW] + [now]
                self.deaths[name] = recent
                self._record()
                if len(recent) > MAX_RESTARTS:
                    given_up.add(name)
                    self.say(
                        f"{name} exited with {proc.returncode}, {len(recent)} times in "
                        f"{RESTART_WINDOW:.0f} s: not restarting it again; `artclf up` "
                        "restarts the instance"
                    )
                    continue
                self.say(f"{name} exited with {proc.returncode}; restarting it")
                due[name] = now + RESTART_DELAY
            for name, when in list(due.items()):
                if now >= when and not self.stopping.is_set():
                    del due[name]
                    self.start(name)

    def stop(self) -> None:
        self.say("stopping the components")
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.say("complete")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=0, help="Celery workers (0: none)")
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args(argv)
    airflow = shutil.which("airflow")  # the shim (EmbeddedAirflow puts it first on PATH)
    if airflow is None:
        raise SystemExit("airflow not found on PATH")
    launcher = Launcher(
        airflow, Path(os.environ["AIRFLOW_HOME"]), commands(args.workers, args.concurrency)
    )

    def on_signal(signum, _frame) -> None:
        launcher.stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    launcher.say("migrating the metadata database")
    migrate = subprocess.run([airflow, "db", "migrate"], capture_output=True, text=True)
    if migrate.returncode:
        launcher.say(f"airflow db migrate failed ({migrate.returncode}):\n{migrate.stdout}")
        sys.stdout.write(migrate.stderr)
        return migrate.returncode
    for name in launcher.parts:
        if launcher.stopping.is_set():
            break
        launcher.start(name)
    launcher.watch()
    launcher.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
