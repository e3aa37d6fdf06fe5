"""``artclf stack up|down|env``: the embedded default, started and stopped by artclf.

State lives in one project-local directory (``ARTCLF_HOME``, default ``./.artclf``):
``pg/`` (the PostgreSQL cluster), ``s3/`` (SeaweedFS data), ``secrets.json`` (credentials
generated on first start, mode 600, never printed unless asked) and ``stack.env`` (the
``export`` lines that psql, boto3, the AWS CLI and ``artclf`` itself use to reach the stack).
"""

from __future__ import annotations

import fcntl
import json
import re
import secrets
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from artclf_core.catalogue import db, registry
from artclf_core.config import Settings, default_home, read_env_file
from artclf_core.embedded.postgres import EmbeddedPostgres
from artclf_core.embedded.procs import read_pid, tree_cpu
from artclf_core.embedded.seaweed import EmbeddedSeaweed

DB_NAME = "artclf"
DB_USER = "artclf"
READER_USER = "artclf_analyst"
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass
class Stack:
    home: Path
    pg_port: int | None = None
    s3_port: int | None = None
    bucket: str = "artclf"
    #: Extra server settings, e.g. fsync=off for throw-away test clusters.
    pg_tuning: dict[str, str] | None = None

    @classmethod
    def default(cls) -> Stack:
        return cls(default_home())

    @property
    def postgres(self) -> EmbeddedPostgres:
        return EmbeddedPostgres(self.home, port=self.pg_port)

    @property
    def seaweed(self) -> EmbeddedSeaweed:
        return EmbeddedSeaweed(self.home, port=self.s3_port)

    @property
    def env_file(self) -> Path:
        return self.home / "stack.env"

    def _secrets(self) -> dict[str, str]:
        path = self.home / "secrets.json"
        if path.exists():
            return json.loads(path.read_text())
        values = {
            "db_password": secrets.token_urlsafe(18),
            "reader_password": secrets.token_urlsafe(18),
            "s3_access_key": "artclf" + secrets.token_hex(4),
            "s3_secret_key": secrets.token_urlsafe(24),
        }
        self.home.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(values, indent=2))
        return values

    def up(self) -> dict[str, str]:
        """Start PostgreSQL and S3 (idempotent), create bucket and roles, apply migrations."""
        if not BUCKET_NAME.fullmatch(self.bucket):
            raise ValueError(
                f"invalid S3 bucket name {self.bucket!r}: 3-63 characters of "
                "lowercase letters, digits, '.' and '-'"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        # Others may pass through (the embedded PostgreSQL's system user must reach its data
        # directory) but not list it; what is inside is the owner's (secrets, S3 data, logs).
        self.home.chmod(0o711)
        with self._exclusive():
            try:
                return self._up()
            except BaseException:
                self._down()  # never leave half a stack running
                raise

    def _up(self) -> dict[str, str]:
        creds = self._secrets()
        pg = self.postgres
        pg.start(tuning=self.pg_tuning)
        db_url = pg.ensure_database(DB_NAME, DB_USER, creds["db_password"])
        db.migrate(db_url)
        registry.register(db_url)  # the default model, so the catalogue knows it from the start
        reader_url = self._ensure_reader(db_url, creds["reader_password"])
        endpoint = self.seaweed.start(
            access_key=creds["s3_access_key"],
            secret_key=creds["s3_secret_key"],
            bucket=self.bucket,
        )
        env = {
            "ARTCLF_HOME": str(self.home),
            "ARTCLF_DB_URL": db_url,
            "ARTCLF_READER_DB_URL": reader_url,
            "ARTCLF_S3_ENDPOINT": endpoint,
            "ARTCLF_BUCKET": self.bucket,
            "AWS_ACCESS_KEY_ID": creds["s3_access_key"],
            "AWS_SECRET_ACCESS_KEY": creds["s3_secret_key"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": endpoint,
        }
        self.env_file.touch(mode=0o600)
        self.env_file.write_text(format_env(env))
        return env

    def _ensure_reader(self, db_url: str, password: str) -> str:
        """A login for analysts in the read-only ``artclf_reader`` role."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(db_url, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (READER_USER,)
            ).fetchone()
            verb = sql.SQL("ALTER" if exists else "CREATE")
            conn.execute(
                sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                    verb, sql.Identifier(READER_USER), sql.Literal(password)
                )
            )
            conn.execute(sql.SQL("GRANT artclf_reader TO {}").format(sql.Identifier(READER_USER)))
        host = db_url.rsplit("@", 1)[1]
        return f"postgresql://{READER_USER}:{password}@{host}"

    @contextmanager
    def _exclusive(self, timeout: float = 300.0) -> Iterator[None]:
        """One ``up`` or ``down`` of this home at a time: two ``artclf stack up`` at the same
        moment would otherwise race for the same ports, and the loser's clean-up would stop
        the winner's servers. The second waits and then finds the stack running."""
        with open(self.home / "stack.lock", "a") as fh:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"another artclf stack up/down of {self.home} has held "
                            f"{fh.name} for {timeout:.0f} s; is it stuck?"
                        ) from None
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def down(self) -> None:
        """Stop everything this stack started; data stays for the next ``up``."""
        if not self.home.exists():
            return
        with self._exclusive():
            self._down()

    def _down(self) -> None:
        self.seaweed.stop()
        self.postgres.stop()
        self.env_file.unlink(missing_ok=True)

    def status(self) -> dict[str, bool]:
        return {"postgres": self.postgres.is_running(), "s3": self.seaweed.is_running()}

    def server_cpu(self) -> dict[str, float]:
        """CPU seconds used so far by this stack's S3 server and PostgreSQL, their workers
        included; a server not running here is left out. ``artclf ingest -v`` and the
        benchmarks take the difference over a run."""
        out = {}
        pids = {
            "s3": read_pid(self.seaweed.pid_file),
            "postgres": read_pid(self.postgres.data_dir / "postmaster.pid"),
        }
        for name, pid in pids.items():
            cpu = tree_cpu(pid) if pid else None
            if cpu is not None:
                out[name] = cpu
        return out

    def serves(self, settings: Settings) -> bool:
        """Whether ``settings`` point at this stack (its database URL is the one it wrote)."""
        return read_env_file(self.env_file).get("ARTCLF_DB_URL") == settings.db_url


def format_env(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


@contextmanager
def throwaway(
    bucket: str = "artclf", *, pg_tuning: dict[str, str] | None = None
) -> Iterator[tuple[Stack, dict[str, str]]]:
    """A stack in a fresh temporary home: yields ``(stack, env)`` once it is up, then stops it
    and deletes the home, whatever happened. For benchmarks and one-off measurements, which
    must run on the same servers as the product (``pg_tuning``: e.g. ``fsync=off`` where the
    data is thrown away anyway)."""
    home = Path(tempfile.mkdtemp(prefix="artclf-stack-"))
    stack = Stack(home, bucket=bucket, pg_tuning=pg_tuning)
    try:
        yield stack, stack.up()
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)
