"""IncomingObjectsTrigger, driven through its real ``run()`` with asyncio and timeouts.

Connections are Airflow's own (``AIRFLOW_CONN_*`` in JSON form, read by the providers'
hooks) pointing at the test stack's PostgreSQL and SeaweedFS. The trigger fires on a MinIO
notification row and on a sweep, never twice for one object version, resumes after a restart
without repeating itself, re-announces an announcement lost in a crash, and reconnects when
its database sessions are killed.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import sys
import tempfile
import urllib.parse
import uuid
from contextlib import suppress
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(ROOT / "plugins"))  # as Airflow does with its plugins folder
if "airflow" not in sys.modules and "AIRFLOW_HOME" not in os.environ:
    # Importing Airflow must not write into ~/airflow; the folder goes with the session.
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="artclf-airflow-")
    atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)

from airflow.sdk import Asset  # noqa: E402
from airflow.triggers.base import BaseEventTrigger, TriggerEvent  # noqa: E402
from artclf_airflow.assets import incoming_asset  # noqa: E402
from artclf_airflow.connections import settings_from_connections  # noqa: E402
from artclf_airflow.triggers import CLASSPATH, IncomingObjectsTrigger  # noqa: E402
from test_events import insert_minio_events, minio_event  # noqa: E402

from artclf_core.catalogue import db  # noqa: E402
from artclf_core.ingest import events  # noqa: E402
from artclf_core.lake import s3 as s3lib  # noqa: E402

#: Seconds within which an event must come (LISTEN wakes in milliseconds; sweeps below
#: run every SWEEP seconds), and a quiet period that spans several sweeps.
SOON = 8.0
SWEEP = 0.3
QUIET = 1.5


def connection_env(env: dict[str, str]) -> dict[str, str]:
    """``AIRFLOW_CONN_ARTCLF_DB`` / ``_S3`` in Airflow's JSON form, from the stack's env."""
    url = urllib.parse.urlsplit(env["ARTCLF_DB_URL"])
    pg = {
        "conn_type": "postgres",
        "host": url.hostname,
        "port": url.port,
        "login": urllib.parse.unquote(url.username or ""),
        "password": urllib.parse.unquote(url.password or ""),
        "schema": url.path.lstrip("/"),
        "extra": {"connect_timeout": "5"},
    }
    aws = {
        "conn_type": "aws",
        "login": env["AWS_ACCESS_KEY_ID"],
        "password": env["AWS_SECRET_ACCESS_KEY"],
        "extra": {
            "endpoint_url": env["ARTCLF_S3_ENDPOINT"],
            "region_name": env.get("AWS_DEFAULT_REGION", "us-east-1"),
            "bucket": env["ARTCLF_BUCKET"],
        },
    }
    return {"AIRFLOW_CONN_ARTCLF_DB": json.dumps(pg), "AIRFLOW_CONN_ARTCLF_S3": json.dumps(aws)}


@pytest.fixture
def airflow_conns(stack, monkeypatch):
    _, env = stack
    for key, value in connection_env(env).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ARTCLF_BUCKET", raising=False)
    return env


@pytest.fixture
def lake(clean, airflow_conns):
    """Empty queue and bucket, Airflow connections set; (settings, s3 client, db conn)."""
    with db.connect(clean.db_url) as conn:
        conn.execute("TRUNCATE artclf.minio_events, artclf.trigger_state")
        conn.commit()
        yield clean, s3lib.client(clean), conn


class Running:
    """A trigger's ``run()`` in a task, its event payloads in a queue."""

    def __init__(self, trigger: IncomingObjectsTrigger) -> None:
        self.trigger = trigger
        self.events: asyncio.Queue[dict] = asyncio.Queue()
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for event in self.trigger.run():
            assert isinstance(event, TriggerEvent)
            await self.events.put(event.payload)

    async def next(self, timeout: float = SOON) -> dict:
        getter = asyncio.ensure_future(self.events.get())
        done, _ = await asyncio.wait(
            {getter, self.task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if getter in done:
            return getter.result()
        getter.cancel()
        if self.task in done:
            self.task.result()  # raise what killed the trigger
        raise AssertionError(f"no event within {timeout} s")

    async def quiet(self, seconds: float = QUIET) -> None:
        await asyncio.sleep(seconds)
        assert self.events.empty(), f"unexpected event: {self.events.get_nowait()}"
        assert not self.task.done(), self.task

    async def stop(self) -> None:
        self.task.cancel()
        with suppress(asyncio.CancelledError):
            await self.task


def trigger(name: str, **kwargs) -> IncomingObjectsTrigger:
    kwargs.setdefault("sweep_interval", SWEEP)
    kwargs.setdefault("reannounce_after", 3600)
    return IncomingObjectsTrigger(name=name, **kwargs)


def unique() -> str:
    return f"test_{uuid.uuid4().hex[:8]}"


def ids_of(conn, *keys: str) -> list[int]:
    rows = conn.execute(
        "SELECT id FROM artclf.ingest_log WHERE key = ANY(%s) ORDER BY id", (list(keys),)
    ).fetchall()
    return [r[0] for r in rows]


# --------------------------------------------------------------------------- definition


def test_serialize_round_trips_and_is_a_stable_identity():
    from airflow.sdk.module_loading import import_string
    from airflow.serialization.serialized_objects import BaseSerialization

    original = IncomingObjectsTrigger(
        postgres_conn_id="pg",
        aws_conn_id="s3",
        bucket="b",
        prefix="incoming/sub/",
        sweep_interval=2,
        name="n",
        reannounce_after=60,
    )
    classpath, kwargs = original.serialize()
    assert classpath == CLASSPATH
    assert import_string(classpath) is IncomingObjectsTrigger
    rebuilt = import_string(classpath)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert BaseEventTrigger.hash(classpath, kwargs) == BaseEventTrigger.hash(*rebuilt.serialize())
    assert json.loads(json.dumps(BaseSerialization.serialize(kwargs)))  # Airflow-JSON encodable
    assert IncomingObjectsTrigger().serialize()[1] == {
        "postgres_conn_id": "artclf_db",
        "aws_conn_id": "artclf_s3",
        "bucket": None,
        "prefix": "incoming/",
        "sweep_interval": 5.0,
        "training_prefix": "training/",
        "training_sweep_interval": 30.0,
        "name": "artclf_incoming",
        "reannounce_after": 600.0,
    }


def test_incoming_asset_watches_the_configured_bucket(monkeypatch):
    monkeypatch.setenv("ARTCLF_BUCKET", "lake-1")
    asset = incoming_asset()
    assert isinstance(asset, Asset)
    assert (asset.name, asset.uri) == ("artclf_incoming", "s3://lake-1/incoming")
    (watcher,) = asset.watchers
    assert isinstance(watcher.trigger, IncomingObjectsTrigger)
    # The trigger resolves the bucket from the connections at run time, like the DAG's tasks.
    assert watcher.trigger.serialize() == IncomingObjectsTrigger(sweep_interval=1.0).serialize()
    assert incoming_asset() == asset  # equal from every DAG file
    monkeypatch.delenv("ARTCLF_BUCKET")
    assert incoming_asset().uri == "s3://artclf/incoming"


def test_settings_from_connections(airflow_conns, settings, monkeypatch):
    got = settings_from_connections()
    assert (got.s3_endpoint, got.bucket, got.s3_region) == (
        settings.s3_endpoint,
        settings.bucket,
        "us-east-1",
    )
    assert (got.aws_access_key_id, got.aws_secret_access_key) == (
        settings.aws_access_key_id,
        settings.aws_secret_access_key,
    )
    assert got.db_url.startswith("postgresql://") and "connect_timeout=5" in got.db_url
    with db.connect(got.db_url) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == "artclf"
    s3lib.client(got).head_bucket(Bucket=got.bucket)
    # bucket: argument > connection extra > ARTCLF_BUCKET > "artclf"
    assert settings_from_connections(bucket="given").bucket == "given"
    env = json.loads(os.environ["AIRFLOW_CONN_ARTCLF_S3"])
    del env["extra"]["bucket"]
    monkeypatch.setenv("AIRFLOW_CONN_ARTCLF_S3", json.dumps(env))
    monkeypatch.setenv("ARTCLF_BUCKET", "from-env")
    assert settings_from_connections().bucket == "from-env"
    monkeypatch.delenv("ARTCLF_BUCKET")
    assert settings_from_connections().bucket == "artclf"


# --------------------------------------------------------------------------- run()


def test_fires_on_a_minio_notification_row(lake):
    settings, _client, conn = lake

    async def scenario() -> None:
        # No sweep at all: only the database notification can wake it.
        run = Running(trigger(unique(), sweep_interval=0))
        try:
            await run.quiet(1.0)  # empty queue: nothing to announce at start
            insert_minio_events(conn, minio_event(settings.bucket))
            payload = await run.next(timeout=3.0)
            (log_id,) = ids_of(conn, "incoming/museum drop/nature morte (1890).jpg")
            assert payload["reason"] == "new" and payload["count"] == 1
            assert payload["first_id"] == payload["last_id"] == log_id
            assert payload["bucket"] == settings.bucket and payload["prefixes"] == [
                "incoming/",
                "training/",
            ]
            await run.quiet(1.0)
        finally:
            await run.stop()

    asyncio.run(scenario())


def test_fires_on_a_sweep_and_never_twice_for_one_version(lake):
    settings, client, conn = lake

    async def scenario() -> None:
        run = Running(trigger(unique()))
        try:
            await run.quiet(1.0)
            client.put_object(Bucket=settings.bucket, Key="incoming/one.jpg", Body=b"one")
            payload = await run.next()
            assert payload["count"] == 1
            assert payload["first_id"] == payload["last_id"] == ids_of(conn, "incoming/one.jpg")[0]

            # The same version again, by listing (every sweep), by upload of the same bytes,
            # and by a MinIO notification: still queued once, never announced again.
            client.put_object(Bucket=settings.bucket, Key="incoming/one.jpg", Body=b"one")
            etag = client.head_object(Bucket=settings.bucket, Key="incoming/one.jpg")["ETag"]
            insert_minio_events(conn, minio_event(settings.bucket, "incoming/one.jpg", etag=etag))
            await run.quiet()
            assert len(ids_of(conn, "incoming/one.jpg")) == 1

            # A new object is one new event, with only that object in it.
            client.put_object(Bucket=settings.bucket, Key="incoming/two.jpg", Body=b"two")
            payload = await run.next()
            (two,) = ids_of(conn, "incoming/two.jpg")
            assert (payload["count"], payload["first_id"], payload["last_id"]) == (1, two, two)
            await run.quiet()
        finally:
            await run.stop()

    asyncio.run(scenario())


def test_labelled_drops_under_training_are_swept_less_often_and_announced(lake):
    """training/ keeps its objects, so it is swept on its own, slower clock; what it queues is
    announced like a drop under incoming/ (the ingest DAG then catalogues it in place)."""
    settings, client, conn = lake

    async def scenario() -> None:
        run = Running(trigger(unique(), training_sweep_interval=4.0))
        try:
            # Once this is announced the watcher runs and its first training sweep is done.
            client.put_object(Bucket=settings.bucket, Key="incoming/first.jpg", Body=b"1")
            await run.next()
            client.put_object(Bucket=settings.bucket, Key="training/painting/p__1.jpg", Body=b"p1")
            client.put_object(Bucket=settings.bucket, Key="incoming/now.jpg", Body=b"now")
            first = await run.next()
            assert ids_of(conn, "training/painting/p__1.jpg") == []  # not swept yet
            assert first["prefixes"] == ["incoming/", "training/"]
            payload = await run.next(timeout=6.0)
            (labelled,) = ids_of(conn, "training/painting/p__1.jpg")
            assert payload["count"] == 1 and payload["last_id"] == labelled
            # A MinIO notification queues a labelled drop at once.
            insert_minio_events(conn, minio_event(settings.bucket, "training/sculpture/s.jpg"))
            payload = await run.next(timeout=3.0)
            assert payload["last_id"] == ids_of(conn, "training/sculpture/s.jpg")[0]
        finally:
            await run.stop()

    asyncio.run(scenario())


def test_a_restarted_trigger_resumes_from_its_watermark(lake):
    settings, client, conn = lake
    name = unique()

    async def scenario() -> None:
        first = Running(trigger(name))
        try:
            client.put_object(Bucket=settings.bucket, Key="incoming/before.jpg", Body=b"b")
            assert (await first.next())["count"] == 1
        finally:
            await first.stop()

        # While it is down: two drops found by the sweep, one announced by MinIO.
        for key in ("incoming/down-1.jpg", "incoming/down-2.jpg"):
            client.put_object(Bucket=settings.bucket, Key=key, Body=key.encode())
        insert_minio_events(conn, minio_event(settings.bucket, "incoming/down-3.jpg"))

        second = Running(trigger(name))
        try:
            payload = await second.next()
            down = ids_of(conn, "incoming/down-1.jpg", "incoming/down-2.jpg", "incoming/down-3.jpg")
            (before,) = ids_of(conn, "incoming/before.jpg")
            assert payload["count"] == 3
            assert (payload["first_id"], payload["last_id"]) == (min(down), max(down))
            assert payload["first_id"] > before  # what was announced is not announced again
            await second.quiet()
        finally:
            await second.stop()

        # Another name is another watcher with its own watermark: it sees all four.
        other = Running(trigger(unique(), sweep_interval=0))
        try:
            assert (await other.next())["count"] == 4
        finally:
            await other.stop()

    asyncio.run(scenario())


def test_a_lost_announcement_is_re_announced_on_restart(lake):
    settings, _client, conn = lake
    name = unique()
    insert_minio_events(conn, minio_event(settings.bucket))
    # A triggerer committed this announcement, then died before Airflow stored the event.
    assert events.announce(conn, name, bucket=settings.bucket).count == 1
    conn.execute("UPDATE artclf.ingest_log SET first_seen = first_seen - interval '10 minutes'")
    conn.execute("UPDATE artclf.trigger_state SET announced_at = now() - interval '10 minutes'")
    conn.commit()

    async def scenario() -> None:
        run = Running(trigger(name, sweep_interval=0, reannounce_after=300))
        try:
            payload = await run.next()
            assert (payload["reason"], payload["count"]) == ("reminder", 1)
            await run.quiet(1.0)  # once per quiet period, not in a loop
        finally:
            await run.stop()

    asyncio.run(scenario())


def test_survives_losing_its_database_sessions(lake):
    settings, _client, conn = lake
    name = unique()

    async def scenario() -> None:
        run = Running(trigger(name, sweep_interval=0))
        try:
            await run.quiet(0.5)
            # An operator (or a failover) ends the watcher's sessions; it reconnects by itself
            # and announces what was queued while it was away.
            ended = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (f"artclf-watcher:{name}",),
            ).fetchone()[0]
            conn.commit()
            assert ended == 2
            insert_minio_events(conn, minio_event(settings.bucket))
            payload = await run.next()
            assert payload["count"] == 1
            await run.quiet(0.5)
        finally:
            await run.stop()

    asyncio.run(scenario())


def test_a_bulk_drop_is_announced_once_when_it_stops_arriving(lake, monkeypatch):
    """Sweeps that keep finding many new objects hold the announcement (one run with full
    batches instead of one per sweep); a lone image is still announced at once."""
    from artclf_core.ingest.events import IncomingWatcher

    settings, client, conn = lake
    monkeypatch.setattr(IncomingWatcher, "BURST", 1)  # any sweep with news holds
    monkeypatch.setattr(IncomingWatcher, "MAX_HOLD", 30.0)

    sweep = 1.0  # a wave of 6 PUTs every third of it: each sweep sees new objects

    async def scenario() -> None:
        run = Running(trigger(unique(), sweep_interval=sweep))
        try:
            await run.quiet(1.0)
            # A drop still arriving over several sweeps (every sweep sees new objects).
            for wave in range(6):
                for i in range(6):
                    client.put_object(
                        Bucket=settings.bucket, Key=f"incoming/bulk/{wave}-{i}.jpg", Body=b"x"
                    )
                await asyncio.sleep(sweep / 3)
                assert run.events.empty(), "announced while the drop was still arriving"
            payload = await run.next()
            assert payload["count"] == 36
            await run.quiet()
            client.put_object(Bucket=settings.bucket, Key="incoming/lone.jpg", Body=b"y")
            payload = await run.next()  # SOON: far from the 30 s a held drop would wait
            assert payload["count"] == 1
        finally:
            await run.stop()

    asyncio.run(scenario())


#: Run in a fresh interpreter, as the triggerer runs the trigger. Every blocking entry point
#: the trigger could reach (libpq's synchronous calls, botocore's requests and client
#: construction, the connection lookup, ``time.sleep``) and every module loaded for the first
#: time is recorded when it happens on the event loop's thread. That is what makes the
#: triggerer warn "async thread was blocked", found without a clock: the probe first calls
#: two of them on the loop itself, to show that the guards see them.
_LOOP_PROBE = r"""
import asyncio, sys, threading, time
sys.path.insert(0, sys.argv[1])
import boto3, botocore.client, psycopg
import artclf_airflow.triggers as triggers
from artclf_airflow.triggers import IncomingObjectsTrigger

loop_thread = None
seen = []

def on_loop():
    return threading.get_ident() == loop_thread

def guard(name, fn):
    def guarded(*args, **kwargs):
        if on_loop():
            seen.append(name)
        return fn(*args, **kwargs)
    return guarded

for name in ("execute", "commit", "rollback", "close"):
    setattr(psycopg.Connection, name, guard(f"psycopg {name}", getattr(psycopg.Connection, name)))
psycopg.Cursor.execute = guard("psycopg cursor execute", psycopg.Cursor.execute)
psycopg.Connection.connect = classmethod(
    guard("psycopg connect", psycopg.Connection.connect.__func__))
psycopg.connect = guard("psycopg connect", psycopg.connect)  # bound when psycopg loaded
botocore.client.BaseClient._make_api_call = guard(
    "botocore request", botocore.client.BaseClient._make_api_call)
boto3.session.Session.client = guard("boto3 client", boto3.session.Session.client)
triggers.settings_from_connections = guard(
    "connection lookup", triggers.settings_from_connections)
time.sleep = guard("time.sleep", time.sleep)
sys.addaudithook(lambda event, args: event == "import" and on_loop() and seen.append(
    f"import {args[0]}"))

async def main(bucket, s3, db_url):
    global loop_thread
    loop_thread = threading.get_ident()
    s3.list_buckets()  # the controls: blocking calls on the loop, on purpose
    psycopg.connect(db_url).close()
    control = sorted(set(seen))
    seen.clear()
    trig = IncomingObjectsTrigger(name=sys.argv[2], sweep_interval=0.3,
                                  training_sweep_interval=1.0, reannounce_after=3600)
    events = trig.run()
    await asyncio.wait_for(events.__anext__(), 60)
    for i in range(20):
        key = f"incoming/late{i}.jpg"
        await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=key, Body=b"x")
    await asyncio.wait_for(events.__anext__(), 30)
    await asyncio.sleep(3.0)  # several sweeps of both areas
    await events.aclose()
    print("CONTROL:" + repr(control))
    print("ON_LOOP:" + repr(sorted(set(seen))))

bucket, endpoint, key, secret, db_url = sys.argv[3:8]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                  aws_secret_access_key=secret, region_name="us-east-1")  # the probe's own
asyncio.run(main(bucket, s3, db_url))
"""


def _probe(settings, airflow_conns) -> dict[str, list[str]]:
    """Run the probe; ``{"CONTROL": [...], "ON_LOOP": [...]}``."""
    import ast
    import subprocess

    env = {**os.environ, **connection_env(airflow_conns)}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOOP_PROBE,
            str(ROOT / "plugins"),
            unique(),
            settings.bucket,
            settings.s3_endpoint,
            settings.aws_access_key_id,
            settings.aws_secret_access_key,
            settings.db_url,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = {}
    for line in out.stdout.splitlines():
        head, sep, tail = line.partition(":")
        if sep and head in ("CONTROL", "ON_LOOP"):
            found[head] = ast.literal_eval(tail)
    return found


def _fill(settings, client) -> None:
    for i in range(400):
        client.put_object(
            Bucket=settings.bucket, Key=f"training/painting/t__{i:03d}.jpg", Body=b"t"
        )
    for i in range(50):
        client.put_object(Bucket=settings.bucket, Key=f"incoming/early{i}.jpg", Body=b"e")


def test_the_trigger_never_blocks_the_event_loop(lake, airflow_conns):
    """The trigger's loop (start-up, sweeps of a training area of 400 objects and of a landing
    zone, LISTEN, announcements) never makes a blocking call nor loads a module on the event
    loop's thread: every one goes to a worker thread. The triggerer's warning "async thread
    was blocked ... likely caused by a badly-written trigger" is about exactly that. The
    timed version of this check (the triggerer's watchdog, with busy cores) is
    ``bench/trigger_loop.py``."""
    settings, client, _ = lake
    _fill(settings, client)
    found = _probe(settings, airflow_conns)
    assert {"botocore request", "psycopg connect"} <= set(found["CONTROL"]), found
    assert found["ON_LOOP"] == []


def test_batch_tasks_run_below_the_airflow_components():
    """What made the triggerer warn in a real run: ingest tasks keeping every core busy. The
    batch tasks lower their priority (``preload.yield_cpu``, nice 10 by default,
    ``ARTCLF_TASK_NICE``), and the threads they start afterwards (the inference runtime's)
    inherit it."""
    import subprocess

    from artclf_airflow.preload import DEFAULT_TASK_NICE

    probe = (
        "import os, sys, threading; sys.path.insert(0, sys.argv[1]);"
        "from artclf_airflow.preload import yield_cpu; task = yield_cpu();"
        "seen = [];"
        "t = threading.Thread(target=lambda: seen.append("
        "os.getpriority(os.PRIO_PROCESS, threading.get_native_id())));"
        "t.start(); t.join(); print(task, os.nice(0), seen[0])"
    )

    def niceness(**env: str) -> list[int]:
        base = {k: v for k, v in os.environ.items() if k != "ARTCLF_TASK_NICE"}
        out = subprocess.run(
            [sys.executable, "-c", probe, str(ROOT / "plugins")],
            env={**base, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        return [int(x) for x in out.stdout.split()]

    start = os.nice(0)
    assert niceness() == [max(start, DEFAULT_TASK_NICE)] * 3
    assert niceness(ARTCLF_TASK_NICE="15") == [max(start, 15)] * 3
