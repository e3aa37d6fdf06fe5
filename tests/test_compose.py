"""docker-compose.yml, Dockerfile and .env.example, checked without Docker.

* the compose file, interpolated as Compose does, validates against the Compose
  Specification's JSON schema (``tests/fixtures/compose-spec.json``, vendored from the
  check-jsonschema 0.39.0 wheel, ``check_jsonschema/builtin_schemas/vendor/compose-spec.json``;
  Apache-2.0, licence beside it);
* every setting the code reads from the environment, and both Airflow connections, reach every
  Airflow service, and make valid settings;
* MinIO's notification target writes the table, schema and format the catalogue's trigger
  consumes (``sql/004_object_events.sql``), and the event the bucket subscription produces
  (``tests/fixtures/minio_event.json``) is one ``artclf_core.ingest.events`` queues;
* images are pinned, services are health-checked or one-shot, ports bind to 127.0.0.1, no
  secret has a default, and ``.env.example`` sets every required variable.
"""

from __future__ import annotations

import ast
import json
import re
import urllib.parse
from pathlib import Path

import jsonschema
import pytest
import yaml

from artclf_core.config import INCOMING_PREFIX, INPUT_PREFIXES, Settings
from artclf_core.ingest import events

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = ROOT / "tests" / "fixtures" / "compose-spec.json"
MINIO_EVENT = ROOT / "tests" / "fixtures" / "minio_event.json"

AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
#: Environment variables the code reads that the compose deployment must not set.
NOT_FOR_COMPOSE = {
    "ARTCLF_HOME": "state directory of the embedded stack (`artclf up`), not used here",
    "AWS_REGION": "fallback alias of AWS_DEFAULT_REGION, which is set",
    "ARTCLF_NATIVE_LOGS": "a user's switch for the CLI's own stderr filter, not for services",
}
SECRET_WORDS = ("PASSWORD", "SECRET", "FERNET", "JWT", "ACCESS_KEY", "ROOT_USER")

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


class MissingVariable(KeyError):
    pass


def interpolate(value, env: dict[str, str]):
    """Compose's interpolation of every string in the parsed file (``${V}``, ``${V:-d}``,
    ``${V-d}``, ``${V:?msg}``, ``${V?msg}``, ``$$``); an unset required variable raises."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if not unset:
            return current
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise MissingVariable(f"{name}: {arg}")
        return ""

    return _VAR.sub(sub, value)


def variables(text: str) -> dict[str, tuple[str | None, str | None]]:
    """Every ``${VAR...}`` of a text: name -> (operator, argument)."""
    found: dict[str, tuple[str | None, str | None]] = {}
    for m in _VAR.finditer(text):
        if m.group(1):
            found.setdefault(m.group(1), (m.group(2), m.group(3)))
    return found


def strings(value) -> str:
    """Every string of the parsed file, one per line (comments are not configuration)."""
    if isinstance(value, dict):
        return "\n".join(strings(v) for v in value.values())
    if isinstance(value, list):
        return "\n".join(strings(v) for v in value)
    return value if isinstance(value, str) else ""


def read_env_example() -> dict[str, str]:
    env = {}
    for raw in ENV_EXAMPLE.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=value: {raw!r}"
            env[key.strip()] = value.strip()
    return env


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    """The file as `docker compose` sees it after `cp .env.example .env`."""
    return interpolate(raw, read_env_example())


def service_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def image_tag(image: str) -> str | None:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.partition(":")[2] or None


# --------------------------------------------------------------------------- the schema


def test_validates_against_compose_spec_schema(compose):
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_schema_rejects_a_broken_file(compose):
    """The vendored schema really constrains services (guards against an empty schema)."""
    schema = json.loads(SCHEMA.read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["redis"]["healthcheck"]["retries"] = "many"
    broken["services"]["redis"]["no_such_key"] = 1
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(broken))


def test_env_example_sets_every_required_variable(raw):
    required = {name for name, (op, _) in variables(strings(raw)).items() if op in (":?", "?")}
    assert required, "no required variable found: the parser is broken"
    missing = required - {k for k, v in read_env_example().items() if v}
    assert not missing, f".env.example lacks {sorted(missing)}"
    with pytest.raises(MissingVariable):
        interpolate(raw, {})  # no .env: compose refuses to start, it does not invent secrets


# --------------------------------------------------------------------------- settings


def env_vars_read_by_code() -> set[str]:
    """Names the code reads from the environment (the embedded stack's modules excluded)."""
    patterns = [
        r"os\.environ\.get\(\s*['\"]([A-Z0-9_]+)['\"]",
        r"os\.environ\[\s*['\"]([A-Z0-9_]+)['\"]\s*\]",
        r"os\.getenv\(\s*['\"]([A-Z0-9_]+)['\"]",
        r"merged\.get\(\s*['\"]([A-Z0-9_]+)['\"]",  # Settings.from_env
    ]
    files = [
        p
        for folder in ("artclf_core", "plugins", "dags")
        for p in (ROOT / folder).rglob("*.py")
        if "embedded" not in p.relative_to(ROOT).parts
    ]
    names: set[str] = set()
    for path in files:
        text = path.read_text()
        for pattern in patterns:
            names.update(re.findall(pattern, text))
    return names


def connection_ids() -> dict[str, str]:
    tree = ast.parse((ROOT / "plugins" / "artclf_airflow" / "connections.py").read_text())
    ids = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.endswith("_CONN_ID"):
                    ids[target.id] = node.value.value
    return ids


def test_every_setting_the_code_reads_is_set_for_airflow(compose):
    names = env_vars_read_by_code()
    expected_core = {
        "ARTCLF_DB_URL", "ARTCLF_S3_ENDPOINT", "ARTCLF_BUCKET", "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "ARTCLF_MODEL", "ARTCLF_MAX_ATTEMPTS",
        "ARTCLF_INGEST_CONCURRENCY", "ARTCLF_SQL_DIR", "ARTCLF_EXPECTATIONS_DIR",
    }  # fmt: skip
    assert expected_core <= names, f"the grep lost {sorted(expected_core - names)}"
    wanted = names - set(NOT_FOR_COMPOSE)
    for name in AIRFLOW_SERVICES:
        env = service_env(compose["services"][name])
        missing = wanted - set(env)
        assert not missing, f"{name} lacks {sorted(missing)}"


def test_the_cli_settings_in_the_containers(compose, tmp_path):
    env = service_env(compose["services"]["airflow-worker"])
    s = Settings.from_env(env, home=tmp_path)
    url = urllib.parse.urlsplit(s.db_url)
    assert (url.hostname, url.port, url.path) == ("postgres", 5432, "/artclf")
    assert s.s3_endpoint == "http://minio:9000"
    assert s.bucket == "artclf"
    assert s.aws_access_key_id and s.aws_secret_access_key
    assert s.model_path is None  # the shipped model
    assert s.max_attempts == 3
    assert int(env["ARTCLF_INGEST_CONCURRENCY"]) >= 1


def test_airflow_connections(compose):
    ids = connection_ids()
    db_id, s3_id = ids["DEFAULT_POSTGRES_CONN_ID"], ids["DEFAULT_AWS_CONN_ID"]
    assert (db_id, s3_id) == ("artclf_db", "artclf_s3")
    for name in AIRFLOW_SERVICES:
        env = service_env(compose["services"][name])
        db_conn = json.loads(env[f"AIRFLOW_CONN_{db_id.upper()}"])
        s3_conn = json.loads(env[f"AIRFLOW_CONN_{s3_id.upper()}"])
        assert db_conn["conn_type"] == "postgres"
        assert (db_conn["host"], db_conn["port"], db_conn["schema"]) == ("postgres", 5432, "artclf")
        assert db_conn["login"] and db_conn["password"]
        assert s3_conn["conn_type"] == "aws"
        assert s3_conn["login"] and s3_conn["password"]
        assert s3_conn["extra"]["endpoint_url"] == "http://minio:9000"
        assert s3_conn["extra"]["bucket"] == env["ARTCLF_BUCKET"]
        # The CLI and the connections name the same catalogue and the same S3 user.
        url = urllib.parse.urlsplit(env["ARTCLF_DB_URL"])
        assert (url.username, url.password) == (db_conn["login"], db_conn["password"])
        assert env["AWS_ACCESS_KEY_ID"] == s3_conn["login"]
        assert env["AWS_SECRET_ACCESS_KEY"] == s3_conn["password"]


# --------------------------------------------------------------------------- MinIO events


def minio_target(compose) -> tuple[str, dict[str, str]]:
    """(target id, {SETTING: value}) of MinIO's one PostgreSQL notification target."""
    env = service_env(compose["services"]["minio"])
    prefix = "MINIO_NOTIFY_POSTGRES_ENABLE_"
    ids = [k.removeprefix(prefix) for k, v in env.items() if k.startswith(prefix) and v == "on"]
    assert len(ids) == 1, ids
    target = ids[0]
    settings = {
        k.removeprefix("MINIO_NOTIFY_POSTGRES_").removesuffix(f"_{target}"): v
        for k, v in env.items()
        if k.startswith("MINIO_NOTIFY_POSTGRES_") and k.endswith(f"_{target}")
    }
    return target, settings


def test_minio_writes_the_table_the_catalogue_consumes(compose):
    sql = (ROOT / "sql" / "004_object_events.sql").read_text()
    schema, table = re.search(
        r"CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)\s*\(\s*event_time", sql
    ).groups()
    assert (schema, table) == ("artclf", "minio_events")
    assert re.search(rf"CREATE TRIGGER \w+\s+AFTER INSERT ON {schema}\.{table}", sql)

    _, target = minio_target(compose)
    assert target["FORMAT"] == "access"  # one row per event: (event_time, event_data)
    assert target["TABLE"] == table  # MinIO refuses schema-qualified names ...
    dsn = dict(part.split("=", 1) for part in target["CONNECTION_STRING"].split())
    assert dsn["search_path"] == schema  # ... so search_path names the schema
    assert dsn["host"] == "postgres"
    worker = service_env(compose["services"]["airflow-worker"])
    assert dsn["dbname"] == json.loads(worker["AIRFLOW_CONN_ARTCLF_DB"])["schema"]
    assert target.get("QUEUE_DIR", "").startswith("/data/")  # events survive a PostgreSQL outage
    # The login MinIO uses is the one the init script creates in the INSERT-only role.
    pg_env = service_env(compose["services"]["postgres"])
    assert dsn["user"] == pg_env["MINIO_NOTIFY_DB_USER"]
    assert dsn["password"] == pg_env["MINIO_NOTIFY_DB_PASSWORD"]
    init = (ROOT / "docker" / "postgres" / "10-artclf-databases.sh").read_text()
    assert re.search(r'CREATE ROLE :"notify_user" LOGIN PASSWORD \S+ IN ROLE artclf_minio', init)
    assert "GRANT SELECT, INSERT ON artclf.minio_events TO artclf_minio" in sql


def test_bucket_subscription_matches_target_and_trigger(compose):
    target_id, _ = minio_target(compose)
    script = compose["services"]["minio-setup"]["command"][0]
    add = next(line for line in script.splitlines() if "mc event add" in line).split()
    arn = next(word for word in add if word.startswith("arn:"))
    assert arn == f"arn:minio:sqs::{target_id.lower()}:postgresql"
    assert add[add.index("--event") + 1] == "put"  # s3:ObjectCreated:*
    assert add[add.index("--prefix") + 1] == '"$prefix"'
    # The loop subscribes every input prefix: those the catalogue's trigger queues.
    loop = next(line for line in script.splitlines() if line.strip().startswith("for prefix in"))
    assert loop.split("in", 1)[1].strip().rstrip(";").split("; do")[0].split() == list(
        INPUT_PREFIXES
    )
    assert 'mc mb --ignore-existing "local/${ARTCLF_BUCKET}"' in script


def test_fixture_event_is_what_the_catalogue_queues(compose):
    """The fixture is one `access`-format row's event_data, for an object the subscription
    above announces: the Python mirror of the SQL trigger queues exactly that object."""
    event_data = json.loads(MINIO_EVENT.read_text())
    assert set(event_data) == {"Records"} and len(event_data["Records"]) == 1
    record = event_data["Records"][0]
    assert record["eventName"].startswith("s3:ObjectCreated:")  # what `--event put` sends
    ref = events.parse_minio_record(record)
    assert ref is not None
    assert ref.bucket == service_env(compose["services"]["minio-setup"])["ARTCLF_BUCKET"]
    assert (
        ref.key.startswith(INCOMING_PREFIX)
        and ref.key == "incoming/museum drop/nature morte (1890).jpg"
    )
    assert ref.etag and ref.size > 0 and ref.last_modified is not None
    assert events.parse_minio_event(event_data) == [ref]
    # Events the subscription filters out are not queued either.
    other = json.loads(json.dumps(record))
    other["s3"]["object"]["key"] = "catalog%2Fpainting%2Fx.jpg"
    assert events.parse_minio_record(other) is None


# --------------------------------------------------------------------------- hygiene


def test_images_are_pinned(compose):
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"{name}: no image"
        tag = image_tag(image)
        assert tag and tag != "latest" and "@" not in tag, f"{name}: unpinned image {image}"
        if name.startswith("airflow-"):
            assert "build" in service, (
                f"{name}: the artclf Airflow image is built from ./Dockerfile"
            )
        elif re.fullmatch(r"\d+(\.\d+)?(-\w+)?", tag) and name != "postgres":
            pytest.fail(f"{name}: {image} is a moving minor tag; pin a release")
    pg = compose["services"]["postgres"]["image"]
    assert pg.startswith("pgvector/pgvector:") and re.search(r"\d+\.\d+\.\d+-pg1[78]", pg)


def test_dockerfile_pins_airflow_and_installs_the_project():
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms == ["apache/airflow:3.3.2-python3.11"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"apache-airflow==3.3.2"' in pyproject  # the image and the extra agree
    assert '"/opt/artclf[airflow]"' in text
    assert re.search(r"^COPY .*\bdags /opt/airflow/dags$", text, re.M)
    assert re.search(r"^COPY .*\bplugins /opt/airflow/plugins$", text, re.M)
    for folder in ("sql", "expectations", "artclf_core"):
        assert re.search(rf"^COPY .*\b{folder} /opt/artclf/{folder}$", text, re.M)


def test_every_service_is_health_checked_or_one_shot(compose):
    services = compose["services"]
    one_shots = {
        dep
        for s in services.values()
        for dep, cond in (s.get("depends_on") or {}).items()
        if cond.get("condition") == "service_completed_successfully"
    }
    assert one_shots == {"airflow-init", "minio-setup"}
    for name, service in services.items():
        if name in one_shots:
            assert service.get("restart") == "no", name
            assert "healthcheck" not in service and "ports" not in service, name
        else:
            test = (service.get("healthcheck") or {}).get("test")
            assert test and test != ["NONE"], f"{name}: no healthcheck"
        for dep, cond in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health"
            else:
                assert cond["condition"] == "service_completed_successfully", (name, dep)
    for name in AIRFLOW_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        if name != "airflow-init":
            assert deps["airflow-init"]["condition"] == "service_completed_successfully"
            assert deps["redis"]["condition"] == "service_healthy"


def test_init_service_migrates_both_databases_creates_the_admin_registers_the_model(compose):
    script = compose["services"]["airflow-init"]["command"][0]
    steps = [line.strip() for line in script.splitlines() if line.strip()]
    assert steps[0] == "airflow db migrate"
    assert any(s.startswith("airflow users create --role Admin") for s in steps)
    assert steps[-2:] == ["artclf db migrate", "artclf models register"]
    init = (ROOT / "docker" / "postgres" / "10-artclf-databases.sh").read_text()
    mounts = compose["services"]["postgres"]["volumes"]
    assert any(
        m.startswith("./docker/postgres/10-artclf-databases.sh:/docker-entrypoint-initdb.d/")
        for m in mounts
    )
    assert re.search(r'\\connect :"artclf_db"\s+CREATE EXTENSION IF NOT EXISTS vector;', init)
    assert 'CREATE DATABASE :"airflow_db" OWNER :"airflow_user"' in init
    assert 'CREATE DATABASE :"artclf_db" OWNER :"artclf_user"' in init


def test_ports_bind_to_localhost_by_default(raw):
    # The file's own defaults: only the required variables (secrets) come from .env.example.
    required = {name for name, (op, _) in variables(strings(raw)).items() if op in (":?", "?")}
    env = {k: v for k, v in read_env_example().items() if k in required}
    assert read_env_example()["ARTCLF_BIND_ADDRESS"] == "127.0.0.1"
    published = 0
    for name, service in interpolate(raw, env)["services"].items():
        for port in service.get("ports") or []:
            published += 1
            assert isinstance(port, str) and port.count(":") == 2, (
                f"{name}: {port!r} has no host IP"
            )
            assert port.split(":")[0] == "127.0.0.1", f"{name}: {port} is not on 127.0.0.1"
    assert published == 4  # Airflow UI, S3 API, MinIO console, PostgreSQL


def test_worker_is_scalable(compose):
    worker = compose["services"]["airflow-worker"]
    assert worker["command"] == ["celery", "worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert service_env(worker)["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_no_secret_has_a_default(raw):
    text = strings(raw)
    for name, (op, _) in variables(text).items():
        if any(word in name for word in SECRET_WORDS):
            assert op in (":?", "?"), f"${{{name}}} must be required, not defaulted"
    # No literal credential in a URL, a DSN or a JSON connection.
    assert not re.search(r"://[^/\s$]+:[^@\s$]+@", text)
    assert not re.search(r"password=(?!\$\{)", text)
    assert not re.search(r'"password":\s*"(?!\$\{)', text)
    # .env.example's secrets are visibly placeholders.
    for key, value in read_env_example().items():
        if any(w in key for w in ("PASSWORD", "SECRET")) and value:
            assert "local-dev" in value, f".env.example {key} is not marked local-dev"


# --------------------------------------------------------------------------- the database side


def test_postgres_init_then_migrations_then_a_minio_event(compose, tmp_path):
    """What the postgres and airflow-init services do, on a real PostgreSQL with pgvector
    (the embedded one the other tests use): the init script as the superuser, `artclf db
    migrate` as the catalogue's owner (no superuser, no CREATEROLE), then MinIO's role writes
    the fixture event exactly as its target does (unqualified table, its own search_path)
    and the object is queued."""
    import subprocess

    import psycopg

    from artclf_core.catalogue import db
    from artclf_core.embedded.postgres import EmbeddedPostgres, bin_dir

    services = compose["services"]
    pg_env = service_env(services["postgres"])
    pg = EmbeddedPostgres(tmp_path / "home")
    pg.start()
    try:
        port = pg.running_port()

        def local(url: str) -> str:  # the service name "postgres" -> this server
            return url.replace("@postgres:5432/", f"@127.0.0.1:{port}/")

        run_env = {
            **{k: v for k, v in pg_env.items() if not k.startswith("POSTGRES_")},
            "POSTGRES_USER": "postgres",  # the embedded cluster's superuser
            "PATH": f"{bin_dir()}:/usr/bin:/bin",
            "PGHOST": str(pg.socket_dir),
            "PGPORT": str(port),
            "ARTCLF_SUPERUSER_SQL": str(ROOT / "sql" / "superuser.sql"),  # mounted in compose
        }
        script = ROOT / "docker" / "postgres" / "10-artclf-databases.sh"
        done = subprocess.run(["bash", str(script)], env=run_env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

        worker = service_env(services["airflow-worker"])
        catalogue_url = local(worker["ARTCLF_DB_URL"])
        assert db.migrate(catalogue_url)  # as the owner role, not the superuser
        with psycopg.connect(catalogue_url) as conn:  # sql/superuser.sql ran in the catalogue
            assert not conn.execute(
                "SELECT has_function_privilege('artclf_reader',"
                " 'pg_catalog.pg_advisory_lock(bigint)', 'EXECUTE')"
            ).fetchone()[0]

        _, target = minio_target(compose)
        dsn = dict(part.split("=", 1) for part in target["CONNECTION_STRING"].split())
        dsn.pop("search_path")  # a libpq URL has no such key; the role's default must do
        dsn.update(host="127.0.0.1", port=str(port))
        event = MINIO_EVENT.read_text()
        with psycopg.connect(" ".join(f"{k}={v}" for k, v in dsn.items())) as conn:
            conn.execute(f"SELECT 1 FROM {target['TABLE']}")  # MinIO's start-up check
            conn.execute(
                f"INSERT INTO {target['TABLE']} (event_time, event_data) VALUES (now(), %s)",
                (event,),
            )
            conn.commit()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM artclf.ingest_log")
        with psycopg.connect(catalogue_url) as conn:
            rows = conn.execute("SELECT bucket, key, state FROM artclf.ingest_log").fetchall()
            assert conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
        ref = events.parse_minio_event(json.loads(event))[0]
        assert rows == [(ref.bucket, ref.key, "pending")]

        airflow_url = service_env(services["airflow-scheduler"])[
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
        ].replace("postgresql+psycopg2://", "postgresql://")
        with psycopg.connect(local(airflow_url)) as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == (
                pg_env["AIRFLOW_DB_USER"],
                pg_env["AIRFLOW_DB_NAME"],
            )
    finally:
        pg.stop()
