"""The embedded Airflow's fixed names and the pieces of its configuration that need no
instance: where the ``airflow`` binary is, the connections the DAG reads, private files."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import urllib.parse
from pathlib import Path

#: The one Airflow user of the embedded instance (simple auth manager, role admin).
ADMIN_USER = "admin"
#: Logins of the embedded instance and their simple-auth-manager roles: the admin, and a
#: read-only user for people who browse the catalogue (the Artworks page) but may not
#: change labels or run DAGs. Passwords are generated once, in passwords.json.
USERS = {ADMIN_USER: "admin", "viewer": "viewer"}
logger = logging.getLogger(__name__)
#: The DAG that ingests drops (``dags/artclf_ingest.py``).
DAG_ID = "artclf_ingest"
#: Connection ids the DAG reads (``plugins/artclf_airflow/connections.py``).
DB_CONN_ID = "artclf_db"
S3_CONN_ID = "artclf_s3"
#: Environment variable every process of one embedded Airflow inherits; its value is that
#: instance's directory. ``stop`` finds the processes to end by it.
MARKER = "ARTCLF_AIRFLOW_INSTANCE"
#: Extra DAG files to load next to the repository's (benchmarks only; see ``_dags_folder``).
EXTRA_DAGS_ENV = "ARTCLF_AIRFLOW_EXTRA_DAGS"

SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)
HEALTH_PATH = "/api/v2/monitor/health"
#: Components whose heartbeat the health endpoint reports; all must be healthy to be ready.
COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
#: ``artclf up --executor``: the executors the embedded deployment can run.
EXECUTORS = ("local", "celery")
#: Airflow's metadata database and its owner in the stack's PostgreSQL (celery executor).
METADATA_DB = "airflow"


def repo_root() -> Path:
    """The checkout this module belongs to (``dags/`` and ``plugins/`` live there)."""
    return Path(__file__).resolve().parents[2]


def airflow_binary() -> str:
    """The real ``airflow`` entry point: next to this interpreter (the venv), else on PATH."""
    local = Path(sys.executable).parent / "airflow"
    if local.exists():
        return str(local)

    found = shutil.which("airflow")
    if not found:
        raise RuntimeError("Airflow is not installed: pip install 'artclf[airflow]'")
    return found


def airflow_connections(env: dict[str, str]) -> dict[str, str]:
    """``AIRFLOW_CONN_ARTCLF_DB`` and ``AIRFLOW_CONN_ARTCLF_S3`` (JSON) from the stack's env.

    The postgres connection carries the catalogue's URL split into fields (database in
    ``schema``, the Airflow convention); the aws connection carries the S3 keys as
    login/password and the endpoint, bucket and region in its extra.
    """
    url = urllib.parse.urlsplit(env["ARTCLF_DB_URL"])
    db_conn: dict[str, object] = {
        "conn_type": "postgres",
        "host": url.hostname or "127.0.0.1",
        "port": url.port or 5432,
        "login": urllib.parse.unquote(url.username or ""),
        "password": urllib.parse.unquote(url.password or ""),
        "schema": url.path.lstrip("/"),
    }
    query = dict(urllib.parse.parse_qsl(url.query))
    if query:
        db_conn["extra"] = query
    extra: dict[str, str] = {
        "bucket": env.get("ARTCLF_BUCKET", "artclf"),
        "region_name": env.get("AWS_DEFAULT_REGION", "us-east-1"),
    }
    if env.get("ARTCLF_S3_ENDPOINT"):
        extra["endpoint_url"] = env["ARTCLF_S3_ENDPOINT"]
    s3_conn = {
        "conn_type": "aws",
        "login": env.get("AWS_ACCESS_KEY_ID", ""),
        "password": env.get("AWS_SECRET_ACCESS_KEY", ""),
        "extra": extra,
    }
    return {
        f"AIRFLOW_CONN_{DB_CONN_ID.upper()}": json.dumps(db_conn),
        f"AIRFLOW_CONN_{S3_CONN_ID.upper()}": json.dumps(s3_conn),
    }


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created 600 before any byte is written)."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)


def airflow_cfg(
    *,
    home: Path,
    port: int,
    secrets: dict[str, str],
    dags_folder: Path,
    plugins_folder: Path,
    passwords_file: Path,
    celery: dict[str, object] | None = None,
    metadata_url: str | None = None,
) -> str:
    """The text of an embedded instance's ``airflow.cfg`` (``EmbeddedAirflow._write_config``).

    ``celery``: what ``EmbeddedAirflow._prepare_celery`` returned, for the CeleryExecutor.
    """

    def esc(value: object) -> str:  # Airflow's config parser interpolates '%'
        return str(value).replace("%", "%%")

    settings: dict[str, dict[str, object]] = {
        "core": {
            "dags_folder": dags_folder,
            "plugins_folder": plugins_folder,
            "load_examples": "False",
            "executor": "LocalExecutor",
            "auth_manager": SIMPLE_AUTH_MANAGER,
            "simple_auth_manager_users": ",".join(f"{u}:{r}" for u, r in USERS.items()),
            "simple_auth_manager_passwords_file": passwords_file,
            "fernet_key": secrets["fernet_key"],
            # Active as soon as it is parsed: the product is "drop an image, it is
            # catalogued", not "drop an image, then find the DAG and unpause it".
            "dags_are_paused_at_creation": "False",
            # Two cores: a handful of concurrent tasks, not 32 worker processes.
            "parallelism": "4",
            "max_active_tasks_per_dag": "4",
        },
        "database": {"sql_alchemy_conn": metadata_url or f"sqlite:///{home / 'airflow.db'}"},
        "api": {
            "host": "127.0.0.1",
            "port": port,
            # Task processes reach the execution API through this URL.
            "base_url": f"http://127.0.0.1:{port}/",
            "workers": "1",
            "secret_key": secrets["api_secret_key"],
        },
        "api_auth": {"jwt_secret": secrets["jwt_secret"]},
        "logging": {"base_log_folder": home / "logs"},
        "dag_processor": {
            # New and changed DAG files show up within seconds, not minutes.
            "refresh_interval": "5",
            "min_file_process_interval": "15",
        },
        "scheduler": {
            "enable_health_check": "False",
            # The scheduler sleeps this long when a loop found nothing to do; each hand-off
            # of a run (queued -> started, plan -> mapped tasks) waited up to the default
            # 1 s, ~1.8 s of a single image's 5.7 s (docs/bench-airflow.md).
            "scheduler_idle_sleep_time": "0.2",
        },
    }
    if celery is not None:
        settings["core"]["executor"] = "CeleryExecutor"
        # Tasks of both workers at once, plus the trigger-started runs' planning tasks.
        slots = int(celery["workers"]) * int(celery["concurrency"])  # type: ignore[call-overload]
        settings["core"]["parallelism"] = str(max(4, slots))
        settings["core"]["max_active_tasks_per_dag"] = str(max(4, slots))
        settings["database"]["sql_alchemy_conn"] = celery["metadata_url"]
        settings["celery"] = {
            "broker_url": celery["broker_url"],
            "result_backend": "db+" + str(celery["metadata_url"]),
            "worker_concurrency": celery["concurrency"],
        }
        settings["scheduler"].update(
            {
                # A worker that dies takes its task supervisors with it: nothing reports
                # the task's end, and the scheduler notices only when its heartbeats
                # stop. 60 s instead of 300 s: the retry (and the objects its claims
                # hold) are back within about a minute and a half (docs/reliability.md).
                "task_instance_heartbeat_timeout": "60",
                "task_instance_heartbeat_timeout_detection_interval": "5",
                # A task the dead worker had taken but not yet started stays "queued"
                # (no heartbeat to miss) until this timeout requeues it: 120 s, not 600.
                # Safe because parallelism equals the workers' slots, so a queued task
                # never waits long for a free one.
                "task_queued_timeout": "120",
            }
        )
    lines = [
        "# Written by artclf (artclf_core/embedded/airflow_config.py) at every `artclf up`.",
        "# Edit that module, not this file.",
    ]
    for section, options in settings.items():
        lines.append(f"\n[{section}]")
        lines.extend(f"{key} = {esc(value)}" for key, value in options.items())
    return "\n".join(lines) + "\n"
