"""Airflow for the embedded default, started, kept alive and stopped by artclf.

``artclf up`` runs the whole product on one machine: the stack (PostgreSQL + pgvector,
SeaweedFS) and an Airflow that runs the ``artclf_ingest`` DAG whenever objects land under
``incoming/``. Airflow is launched as a subprocess (this module never imports it, so the core
stays free of Airflow) and kept in ``<ARTCLF_HOME>/airflow``:

* ``airflow.cfg``: written at every start from what this module decides (DAGs and plugins from
  this repository, no examples, simple auth manager, every listener on 127.0.0.1, fast DAG
  discovery; the metadata in the stack's PostgreSQL; the executor: ``local`` =
  LocalExecutor, or ``celery`` = CeleryExecutor with a Redis broker), so an
  operator can also run ``AIRFLOW_HOME=.artclf/airflow airflow ...`` by hand against it;
* ``secrets.json`` (Fernet key, JWT and API secrets, the metadata database's password) and
  ``passwords.json`` (the generated ``admin`` and ``viewer`` passwords, read by Airflow's
  simple auth manager), both mode 600; ``executor.json``, the executor of the last start;
* ``standalone.pid`` (the launcher), ``components.json``, ``api.port``, ``standalone.log``
  (every component's output) and ``logs/`` (task logs). The names go back to when this was
  ``airflow standalone``; they are kept so that existing homes and habits stay right.

The components are started by ``airflow_launcher`` (not ``airflow standalone``, which forces
the LocalExecutor and restarts nothing), which restarts one that dies.

The catalogue and the lake reach the DAG as the Airflow connections ``artclf_db`` and
``artclf_s3``, given as ``AIRFLOW_CONN_*`` environment variables built from the stack's
settings: no credential is written into Airflow's database or into code.

Two more things handled here:

* the scheduler and triggerer serve task logs on ports 8793/8794 of *every* interface, with no
  setting for the address. The api-server on this machine reads task logs from the local log
  folder anyway, so we skip those servers: the launcher starts components as ``airflow
  <component>`` found on ``PATH``, and the ``airflow`` first on that ``PATH`` is a small shim
  (``bin/airflow``) that adds ``--skip-serve-logs`` to ``scheduler`` and ``triggerer`` (the
  launcher gives it to Celery workers). The only listener left is the api-server, bound to
  127.0.0.1. This also keeps two instances on one machine (two checkouts, a test run next to
  ``artclf up``) from fighting over fixed ports.
* it runs a dozen processes and more while tasks run, and task runners put themselves in
  process groups of their own, so neither the launcher's pid nor its process group names them
  all. It is started in a session of its own; ``stop`` sends SIGINT to the launcher alone (it
  then terminates each component, which shut down cleanly; a SIGINT to the whole group would
  also reach the LocalExecutor's workers, and the scheduler then waits for them forever),
  waits, and then SIGTERMs and SIGKILLs whatever is left of the session or still carries
  this instance's marker in its environment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from artclf_core.embedded.airflow_config import (
    ADMIN_USER,
    COMPONENTS,
    EXECUTORS,
    EXTRA_DAGS_ENV,
    HEALTH_PATH,
    MARKER,
    METADATA_DB,
    USERS,
    airflow_binary,
    airflow_cfg,
    airflow_connections,
    repo_root,
    write_private,
)
from artclf_core.embedded.airflow_launcher import COMPONENTS_FILE, commands, worker_name
from artclf_core.embedded.postgres import EmbeddedPostgres
from artclf_core.embedded.procs import GaveUp, pick_port, proc_stat, start_time, wait_until
from artclf_core.embedded.redis import EmbeddedRedis

logger = logging.getLogger(__name__)


@dataclass
class EmbeddedAirflow:
    """One embedded Airflow keeping its state in ``home/airflow``.

    ``home`` is the stack's ``ARTCLF_HOME``; ``port`` the api-server's preferred port (the
    previous one, else 8080; another free one if taken).
    """

    home: Path
    port: int | None = None
    #: Seconds ``start`` waits for every component to report healthy.
    start_timeout: float = 300.0
    #: ``"local"`` (LocalExecutor) or ``"celery"`` (CeleryExecutor: Redis broker,
    #: ``workers`` Celery workers of
    #: ``concurrency`` task slots each; see ``airflow_launcher``). ``None``: what
    #: the last start used (``executor.json``), else ``"local"``.
    executor: str | None = None
    workers: int | None = None
    concurrency: int | None = None
    #: Size of ``standalone.log`` when this object last started the instance: readiness
    #: is read from what the launcher wrote after it.
    _log_start: int = field(default=0, init=False, repr=False)

    # ------------------------------------------------------------------ paths

    @property
    def dir(self) -> Path:
        return self.home / "airflow"

    @property
    def pid_file(self) -> Path:
        return self.dir / "standalone.pid"

    @property
    def port_file(self) -> Path:
        return self.dir / "api.port"

    @property
    def log_file(self) -> Path:
        return self.dir / "standalone.log"

    @property
    def config_file(self) -> Path:
        return self.dir / "airflow.cfg"

    @property
    def passwords_file(self) -> Path:
        return self.dir / "passwords.json"

    @property
    def _secrets_file(self) -> Path:
        return self.dir / "secrets.json"

    @property
    def _digest_file(self) -> Path:
        return self.dir / "started.sha256"

    @property
    def _shim(self) -> Path:
        return self.dir / "bin" / "airflow"

    @property
    def _executor_file(self) -> Path:
        return self.dir / "executor.json"

    def deployment(self) -> dict[str, object]:
        """The executor settings of this start: those given, else the last start's."""
        try:
            last = json.loads(self._executor_file.read_text())
        except (OSError, ValueError):
            last = {}
        executor = self.executor or last.get("executor") or "local"
        if executor not in EXECUTORS:
            raise ValueError(f"unknown executor {executor!r}: one of {', '.join(EXECUTORS)}")
        if executor == "local":
            return {"executor": "local"}
        same = last.get("executor") == executor
        return {
            "executor": executor,
            "workers": self.workers or (same and last.get("workers")) or 2,
            "concurrency": self.concurrency or (same and last.get("concurrency")) or 2,
        }

    @property
    def redis(self) -> EmbeddedRedis:
        """The Celery broker (used only by the celery executor)."""
        return EmbeddedRedis(self.home)

    # ------------------------------------------------------------------ state

    def leader(self) -> tuple[int, int] | None:
        """(pid, start time) of the launcher process, as recorded at start."""
        try:
            pid, started = self.pid_file.read_text().split()[:2]
            return int(pid), int(started)
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        leader = self.leader()
        return leader is not None and start_time(leader[0]) == leader[1]

    def url(self) -> str:
        return f"http://127.0.0.1:{int(self.port_file.read_text())}"

    def password(self, user: str = ADMIN_USER) -> str:
        return json.loads(self.passwords_file.read_text())[user]

    def info(self) -> dict[str, str]:
        """What a user needs to reach this Airflow (the password included: it is local)."""
        return {
            "AIRFLOW_URL": self.url(),
            "AIRFLOW_USER": ADMIN_USER,
            "AIRFLOW_PASSWORD": self.password(),
            "AIRFLOW_HOME": str(self.dir),
            "AIRFLOW_LOG": str(self.log_file),
            "AIRFLOW_EXECUTOR": str(self.deployment()["executor"]),
        }

    def components(self) -> dict[str, tuple[int, int]]:
        """``{name: (pid, start time)}`` of the live components, as the launcher recorded
        them (it rewrites the file at every start and restart)."""
        try:
            raw = json.loads((self.dir / COMPONENTS_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return {name: (int(v[0]), int(v[1])) for name, v in raw.items()}

    def dead_components(self) -> list[str]:
        """Components of this deployment not alive now (never recorded, gone, or being
        restarted by the launcher)."""
        plan = self.deployment()
        have = self.components()
        return [
            name
            for name in commands(int(plan.get("workers", 0)), int(plan.get("concurrency", 2)))
            if name not in have or start_time(have[name][0]) != have[name][1]
        ]

    def dead_workers(self) -> list[str]:
        """The Celery workers among :meth:`dead_components` (the health endpoint knows the
        others)."""
        workers = int(self.deployment().get("workers", 0))
        names = {worker_name(i) for i in range(1, workers + 1)}
        return [name for name in self.dead_components() if name in names]

    def processes(self) -> list[int]:
        """Pids of every live process of this instance.

        Two ways to belong, because each alone misses some: the session of the launcher
        process (every component, executor worker and task runner, whatever process group it
        moved to; but not what a task starts in a new session), and the environment marker
        (inherited by everything, but erased from ``/proc/<pid>/environ`` by processes that
        set their title, which Airflow's workers do).
        """
        leader = self.leader()
        session = None
        if leader is not None:
            now = start_time(leader[0])
            # The session is ours while its leader lives, or after it died (a session id is
            # not reused while a member lives); not when the pid now belongs to another.
            if now is None or now == leader[1]:
                session = leader[0]
        want = f"{MARKER}={self.dir}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            fields = proc_stat(pid)
            if fields is None or fields[0] == "Z":
                continue
            if session is not None and int(fields[3]) == session:
                found.append(pid)
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:  # gone, or another user's process
                continue
            if want in environ.split(b"\0"):
                found.append(pid)
        return found

    # ------------------------------------------------------------------ start / stop

    def start(self, env: dict[str, str]) -> dict[str, str]:
        """Start Airflow for the stack described by ``env`` (idempotent); return ``info()``.

        ``env`` is what ``Stack.up()`` returns. When this instance already runs for the same
        stack and every component is healthy, nothing is started; when it runs for a
        different one (the stack came back on other ports), or a component is dead (the
        launcher restarts one that dies, but gives up on one that keeps dying), it is
        restarted.
        """
        plan = self.deployment()
        digest = hashlib.sha256(json.dumps([env, plan], sort_keys=True).encode()).hexdigest()
        if self.is_running():
            previous = self._digest_file.read_text() if self._digest_file.exists() else ""
            unhealthy = self._unhealthy()
            if previous == digest and not unhealthy:
                return self.info()
            if unhealthy:
                logger.warning("Airflow runs but %s unhealthy: restarting it", ", ".join(unhealthy))
            self.stop()
        self.stop()  # leftovers of a crashed instance, if any
        self.dir.mkdir(parents=True, exist_ok=True)
        airflow = airflow_binary()
        previous_port = int(self.port_file.read_text()) if self.port_file.exists() else None
        port = pick_port(self.port or previous_port or 8080)
        metadata = self._metadata_database()
        celery = self._prepare_celery(plan, metadata) if plan["executor"] == "celery" else None
        self._write_config(port, celery, metadata_url=metadata)
        self._write_passwords()
        self._write_shim(airflow)
        self._write_local_settings()
        child_env = self._child_env(env, airflow)
        command = [
            sys.executable,
            "-m",
            "artclf_core.embedded.airflow_launcher",
            f"--workers={plan.get('workers', 0)}",
            f"--concurrency={plan.get('concurrency', 2)}",
        ]
        (self.dir / COMPONENTS_FILE).unlink(missing_ok=True)
        self._log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            command,
            cwd=self.dir,
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.pid_file.write_text(f"{proc.pid} {start_time(proc.pid)}\n")
        self.port_file.write_text(str(port))
        self._digest_file.write_text(digest)
        self._executor_file.write_text(json.dumps(plan))
        try:
            self._wait_healthy(proc)
        except BaseException:
            self.stop()
            raise
        return self.info()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every process of this instance and leave none behind.

        SIGINT to the launcher alone: it then terminates each component, which
        shuts down cleanly (the scheduler ends its executor workers and their tasks). A SIGINT
        to the whole group instead reaches the LocalExecutor workers too, and the scheduler
        then waits forever for them; so the group gets SIGTERM, then SIGKILL, only for what is
        left after ``timeout`` seconds.
        """
        if self.is_running():
            leader = self.leader()
            assert leader is not None
            try:
                os.kill(leader[0], signal.SIGINT)
            except ProcessLookupError:
                pass
            self._wait_gone(timeout)
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            left = self.processes()
            if not left:
                break
            for p in left:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            self._wait_gone(wait)
        if left := self.processes():
            raise RuntimeError(f"Airflow processes survived SIGKILL: {left}")
        self.pid_file.unlink(missing_ok=True)
        self.redis.stop()  # the celery broker, once nothing of Airflow uses it

    def _wait_gone(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.processes():
            time.sleep(0.2)

    def health(self) -> dict:
        """The api-server's health document (``/api/v2/monitor/health``; no login needed)."""
        with urllib.request.urlopen(self.url() + HEALTH_PATH, timeout=5) as resp:
            return json.loads(resp.read())

    def _unhealthy(self, settle: float = 20.0) -> list[str]:
        """Components not healthy now, or still not after ``settle`` seconds (a component
        that is just starting gets that long)."""
        deadline = time.monotonic() + settle
        while True:
            try:
                health = self.health()
                bad = [n for n in COMPONENTS if (health.get(n) or {}).get("status") != "healthy"]
            except OSError as exc:
                bad = [f"the api-server ({exc})"]
            bad += [f"Celery {name}" for name in self.dead_workers()]
            if not bad or time.monotonic() > deadline:
                return bad
            time.sleep(1.0)

    def _wait_healthy(self, proc: subprocess.Popen | None) -> None:
        def ready() -> bool:
            if proc is not None and proc.poll() is not None:
                raise GaveUp(
                    f"the Airflow launcher exited with {proc.returncode}:\n{self._log_tail()}"
                )
            if "not restarting it again" in self._log_since_start():
                raise GaveUp(f"an Airflow component keeps dying:\n{self._log_tail()}")
            health = self.health()
            healthy = all((health.get(n) or {}).get("status") == "healthy" for n in COMPONENTS)
            return healthy and self._workers_ready()

        try:
            wait_until(ready, timeout=self.start_timeout, interval=1.0, what="Airflow")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self._log_tail()}") from None

    def _workers_ready(self) -> bool:
        """Every Celery worker of this start has said ``ready.`` (always true for the
        LocalExecutor)."""
        plan = self.deployment()
        if plan["executor"] != "celery":
            return True
        lines = self._log_since_start().splitlines()
        return all(
            any(line.startswith(f"{worker_name(i):<13} | ") and " ready." in line for line in lines)
            for i in range(1, int(plan["workers"]) + 1)
        )

    def _log_since_start(self) -> str:
        try:
            with open(self.log_file, "rb") as fh:
                fh.seek(self._log_start)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ files

    def _secrets(self) -> dict[str, str]:
        """Generated once, kept in ``secrets.json`` (600); a key added by a later version
        of artclf is generated the first time it is needed."""
        import base64

        known = json.loads(self._secrets_file.read_text()) if self._secrets_file.exists() else {}
        makers = {
            # A Fernet key is 32 url-safe base64 bytes.
            "fernet_key": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "jwt_secret": lambda: secrets.token_urlsafe(32),
            "api_secret_key": lambda: secrets.token_urlsafe(32),
            "metadata_db_password": lambda: secrets.token_urlsafe(18),
        }
        values = {**{k: make() for k, make in makers.items() if k not in known}, **known}
        if values != known:
            write_private(self._secrets_file, json.dumps(values, indent=2))
        return values

    def _metadata_database(self) -> str:
        """Airflow's metadata database in the stack's PostgreSQL (created, owned by its own
        ``airflow`` role), for both executors; its SQLAlchemy URL.

        Not SQLite: the scheduler starts a queued run only once ``run_after <= now()``, and
        SQLite's ``now()`` has whole seconds, so every event-triggered run waited for the next
        second to begin (0.88 s median of a single drop's 2.36 s, issue 32)."""
        url = EmbeddedPostgres(self.home).ensure_database(
            METADATA_DB, METADATA_DB, self._secrets()["metadata_db_password"], catalogue=False
        )
        return url.replace("postgresql://", "postgresql+psycopg2://", 1)

    def _prepare_celery(self, plan: dict[str, object], metadata: str) -> dict[str, object]:
        """The broker (started); the Celery settings for ``airflow.cfg``."""
        return {**plan, "broker_url": self.redis.start(), "metadata_url": metadata}

    def _write_passwords(self) -> None:
        """The simple auth manager's password file: a password generated once per user."""
        known: dict[str, str] = {}
        if self.passwords_file.exists():
            self.passwords_file.chmod(0o600)
            known = json.loads(self.passwords_file.read_text() or "{}")
            if set(USERS) <= set(known):
                return
        passwords = {user: known.get(user) or secrets.token_urlsafe(12) for user in USERS}
        write_private(self.passwords_file, json.dumps(passwords) + "\n")

    def _write_config(
        self, port: int, celery: dict[str, object] | None = None, metadata_url: str | None = None
    ) -> None:
        """``airflow.cfg`` for this instance; rewritten at every start (ports may move).

        ``celery``: what ``_prepare_celery`` returned, for the CeleryExecutor deployment.
        """
        root = repo_root()
        text = airflow_cfg(
            home=self.dir,
            port=port,
            secrets=self._secrets(),
            dags_folder=self._dags_folder(root),
            plugins_folder=root / "plugins",
            passwords_file=self.passwords_file,
            celery=celery,
            metadata_url=metadata_url,
        )
        write_private(self.config_file, text)

    def _dags_folder(self, root: Path) -> Path:
        """The repository's ``dags/``; or, when ``ARTCLF_AIRFLOW_EXTRA_DAGS`` is set (paths
        of DAG files, ``os.pathsep``-separated; used by ``bench/`` for a baseline DAG that
        must not ship in ``dags/``), ``<home>/airflow/dags``: symlinks to the repository's
        DAG files and to those extra files, rebuilt at every start."""
        extra = [p for p in os.environ.get(EXTRA_DAGS_ENV, "").split(os.pathsep) if p]
        if not extra:
            return root / "dags"
        folder = self.dir / "dags"
        if folder.exists():
            for old in folder.iterdir():
                old.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        for src in [*sorted((root / "dags").glob("*.py")), *map(Path, extra)]:
            (folder / src.name).symlink_to(src.resolve())
        return folder

    def _write_local_settings(self) -> None:
        """``config/airflow_local_settings.py``: the scheduler, whose LocalExecutor workers
        fork every task, imports TensorFlow and Great Expectations once
        (``plugins/artclf_airflow/preload.py``)."""
        target = self.dir / "config" / "airflow_local_settings.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        source = repo_root() / "plugins" / "artclf_airflow" / "airflow_local_settings.py"
        target.write_text(source.read_text())

    def _write_shim(self, airflow: str) -> None:
        """``bin/airflow``: the real one, without the all-interfaces log servers."""
        self._shim.parent.mkdir(exist_ok=True)
        self._shim.write_text(
            "#!/bin/sh\n"
            "# Written by artclf: the launcher starts Airflow's components by this name.\n"
            "# The scheduler's and triggerer's log servers would listen on every interface;\n"
            "# the api-server reads the local log folder, so they are not needed here.\n"
            'case "$1" in\n'
            f'  scheduler|triggerer) exec "{airflow}" "$@" --skip-serve-logs ;;\n'
            "esac\n"
            f'exec "{airflow}" "$@"\n'
        )
        self._shim.chmod(0o755)

    def _child_env(self, env: dict[str, str], airflow: str) -> dict[str, str]:
        """The launcher's environment: ours minus any other Airflow's settings, plus the
        stack's settings, the two connections, the shim first on PATH and the marker."""
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))
            and k not in ("AIRFLOW_HOME", "AIRFLOW_CONFIG", "PYTHONPATH")
        }
        path = os.pathsep.join(
            [str(self._shim.parent), str(Path(airflow).parent), inherited.get("PATH", "")]
        )
        return {
            **inherited,
            **env,
            **airflow_connections(env),
            "AIRFLOW_HOME": str(self.dir),
            "AIRFLOW_CONFIG": str(self.config_file),
            "PATH": path,
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "GX_ANALYTICS_ENABLED": "False",
            "NO_COLOR": "1",
            # Inference threads per task (model.runtime.inference_threads): the cores are
            # shared by the ingest_batch tasks that run at once (dags/artclf_ingest.py).
            "ARTCLF_CONCURRENT_TASKS": inherited.get("ARTCLF_CONCURRENT_TASKS")
            or inherited.get("ARTCLF_INGEST_CONCURRENCY")
            or "2",
            MARKER: str(self.dir),
        }
