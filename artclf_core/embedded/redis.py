"""A real Celery broker for ``artclf up --executor celery``: Redis (or Valkey) from a package.

Debian's ``redis-server`` (or ``valkey-server``) is started by artclf, never by the system:
bound to 127.0.0.1 on a port kept across restarts, with a generated password
(``requirepass``) in a config file only the owner can read, so neither the port nor the
password shows on a command line. Nothing is persisted (``save ""``, no AOF): the broker
only carries task messages, and after a broker restart Airflow's scheduler re-queues what it
had handed out (``task_queued_timeout``), so a snapshot would only bring back stale messages.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from artclf_core.embedded.procs import GaveUp, pick_port, read_pid, stop_group, wait_until

#: Binaries tried in order: Debian/Ubuntu ``redis-server``, then its fork ``valkey-server``.
BINARIES = ("redis-server", "valkey-server")


def redis_binary() -> str:
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        "the Celery executor needs a Redis or Valkey server: install Debian's package "
        "(apt-get install redis-server) or run with the default executor (artclf up)"
    )


@dataclass
class EmbeddedRedis:
    """One ``redis-server`` keeping its config, log and pid in ``home/redis``."""

    home: Path
    port: int | None = None

    @property
    def dir(self) -> Path:
        return self.home / "redis"

    @property
    def pid_file(self) -> Path:
        return self.dir / "redis.pid"

    @property
    def port_file(self) -> Path:
        return self.dir / "redis.port"

    @property
    def _password_file(self) -> Path:
        return self.dir / "password"

    @property
    def config_file(self) -> Path:
        return self.dir / "redis.conf"

    def is_running(self) -> bool:
        return read_pid(self.pid_file) is not None

    def password(self) -> str:
        if not self._password_file.exists():
            self._password_file.touch(mode=0o600)
            self._password_file.write_text(secrets.token_urlsafe(24))
        return self._password_file.read_text().strip()

    def url(self, db: int = 0) -> str:
        """The broker URL for Celery (``redis://:<password>@127.0.0.1:<port>/<db>``)."""
        return f"redis://:{self.password()}@127.0.0.1:{int(self.port_file.read_text())}/{db}"

    def start(self) -> str:
        """Start (idempotent); return the broker URL once the server answers PING."""
        if self.is_running():
            return self.url()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        previous = int(self.port_file.read_text()) if self.port_file.exists() else None
        port = pick_port(self.port or previous or 6379)
        self.config_file.touch(mode=0o600)
        self.config_file.write_text(
            "# Written by artclf (artclf_core/embedded/redis.py) at every start.\n"
            f"bind 127.0.0.1\nport {port}\nprotected-mode yes\n"
            f"requirepass {self.password()}\n"
            f'dir {self.dir}\nlogfile "{self.dir / "redis.log"}"\n'
            'save ""\nappendonly no\ndaemonize no\n'
        )
        proc = subprocess.Popen(
            [redis_binary(), str(self.config_file)],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid_file.write_text(str(proc.pid))
        self.port_file.write_text(str(port))

        def answers() -> bool:
            if proc.poll() is not None:
                raise GaveUp(
                    f"redis-server exited with {proc.returncode}; see {self.dir / 'redis.log'}"
                )
            return self.ping()

        wait_until(answers, timeout=30, interval=0.1, what="Redis")
        return self.url()

    def ping(self) -> bool:
        """AUTH and PING over the wire protocol (no client library needed)."""
        port = int(self.port_file.read_text())
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            password = self.password().encode()
            sock.sendall(
                b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n" % (len(password), password)
            )
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
        return reply == b"+OK\r\n+PONG\r\n"

    def stop(self) -> None:
        """SIGTERM: Redis shuts down cleanly (nothing to save)."""
        pid = read_pid(self.pid_file)
        if pid is not None:
            stop_group(pid, first=signal.SIGTERM)
        self.pid_file.unlink(missing_ok=True)
