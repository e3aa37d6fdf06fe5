"""Object events without Airflow, on the real PostgreSQL and SeaweedFS of the test stack.

MinIO notification rows queue objects inside the database exactly as the Python parser and
``ingest_log.register_objects`` would; the per-name watermark announces each pending row once, even
to concurrent announcers; reminders repair a lost announcement; a sweep NOTIFYs listeners.
"""

from __future__ import annotations

import copy
import json
import threading
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from artclf_core.catalogue import db, ingest_log
from artclf_core.ingest import events
from artclf_core.lake import s3 as s3lib
from artclf_core.lake.s3 import ObjectRef

FIXTURE = Path(__file__).parent / "fixtures" / "minio_event.json"
FIXTURE_KEY = "incoming/museum drop/nature morte (1890).jpg"


def minio_event(
    bucket: str,
    key: str | None = None,
    *,
    etag: str | None = None,
    event_name: str | None = None,
) -> dict:
    """The stored MinIO event (tests/fixtures/minio_event.json), retargeted.

    ``key`` is the plain key; it is escaped the way MinIO escapes it (Go's
    ``url.QueryEscape``, which is Python's ``quote_plus`` with nothing safe).
    """
    event = json.loads(FIXTURE.read_text())
    record = event["Records"][0]
    record["s3"]["bucket"]["name"] = bucket
    record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
    if key is not None:
        record["s3"]["object"]["key"] = urllib.parse.quote_plus(key, safe="")
    if etag is not None:
        record["s3"]["object"]["eTag"] = etag
    if event_name is not None:
        record["eventName"] = event_name
    return event


def insert_minio_events(conn: psycopg.Connection, *event_datas: dict | None) -> None:
    """What MinIO's PostgreSQL target does (access format), one INSERT per event."""
    for data in event_datas:
        records = (data or {}).get("Records")
        when = records[0]["eventTime"] if isinstance(records, list) else None
        conn.execute(
            "INSERT INTO artclf.minio_events (event_time, event_data) VALUES (%s, %s)",
            (when or datetime.now(UTC), Jsonb(data) if data is not None else None),
        )
        conn.commit()


def log_rows(conn: psycopg.Connection) -> list[dict]:
    return db.fetch_dicts(conn, "SELECT * FROM artclf.ingest_log ORDER BY id")


def register(conn: psycopg.Connection, bucket: str, keys: list[str]) -> list[int]:
    rows = ingest_log.register_objects(
        conn, [ObjectRef(bucket, k, f"etag-{k}", None, 10) for k in keys]
    )
    conn.commit()
    return sorted(r.id for r in rows)


@pytest.fixture
def conn(clean):
    with db.connect(clean.db_url) as c:
        c.execute("TRUNCATE artclf.minio_events, artclf.trigger_state")
        c.commit()
        yield c


@pytest.fixture
def listener(settings):
    with psycopg.connect(settings.db_url, autocommit=True) as c:
        c.execute(f"LISTEN {events.CHANNEL}")
        yield c


def drain(listener: psycopg.Connection, timeout: float = 0.3) -> list[dict]:
    return [json.loads(n.payload) for n in listener.notifies(timeout=timeout)]


# --------------------------------------------------------------------------- parsing


def test_parse_minio_record_reads_the_real_format():
    ref = events.parse_minio_record(json.loads(FIXTURE.read_text())["Records"][0])
    assert ref == ObjectRef(
        bucket="artclf",
        key=FIXTURE_KEY,
        etag="9b2cf535f27731c974343645a3985328",
        last_modified=datetime(2025, 11, 20, 9, 41, 27, 318000, tzinfo=UTC),
        size=48213,
    )


@pytest.mark.parametrize(
    "change",
    [
        {"eventName": "s3:ObjectRemoved:Delete"},
        {"eventName": "s3:ObjectAccessed:Get"},
        {"key": "catalog%2Fpainting%2Fx.jpg"},  # output, not input
        {"key": "incoming%2Fsub%2F"},  # "folder" marker
        {"key": "incoming%2F%FF.jpg"},  # not UTF-8
        {"size": "lots"},
    ],
)
def test_parse_minio_record_skips_what_queues_nothing(change):
    record = json.loads(FIXTURE.read_text())["Records"][0]
    if "eventName" in change:
        record["eventName"] = change["eventName"]
    for field in ("key", "size"):
        if field in change:
            record["s3"]["object"][field] = change[field]
    assert events.parse_minio_record(record) is None
    assert events.parse_minio_event({"Records": [record]}) == []


def test_parse_minio_event_tolerates_odd_rows():
    assert events.parse_minio_event({}) == []
    assert events.parse_minio_event({"Records": "nope"}) == []
    assert len(events.parse_minio_event(json.loads(FIXTURE.read_text()))) == 1


KEYS = [
    "incoming/a b+c.jpg",
    "incoming/été/日本 画 (2).png",
    "incoming/100% real.jpg",
    "incoming/x%zz%2",
    "incoming/~tilde_under-dash.jpg",
]


def test_sql_url_decoding_matches_python(conn):
    for key in KEYS:
        for text in (urllib.parse.quote_plus(key, safe=""), key):
            got = conn.execute("SELECT artclf.url_unquote_plus(%s)", (text,)).fetchone()[0]
            assert got == urllib.parse.unquote_plus(text), text


# --------------------------------------------------------------------------- MinIO rows -> queue


def test_minio_event_row_queues_the_object_and_notifies(conn, listener, settings):
    bucket = settings.bucket
    event = minio_event(bucket)
    insert_minio_events(conn, event)

    (row,) = log_rows(conn)
    expected = events.parse_minio_record(event["Records"][0])
    assert (row["bucket"], row["key"], row["etag"], row["size"]) == (
        bucket,
        FIXTURE_KEY,
        expected.etag,
        expected.size,
    )
    assert row["last_modified"] == expected.last_modified
    assert (row["state"], row["generation"]) == ("pending", 0)
    (note,) = drain(listener)
    assert note == {"source": "minio", "bucket": bucket, "last_id": row["id"]}

    # The same version again, from MinIO (a retry) or from a listing: nothing new, no wake-up.
    insert_minio_events(conn, event)
    assert [r["id"] for r in log_rows(conn)] == [row["id"]]
    assert drain(listener) == []
    same = ingest_log.register_objects(conn, [expected])
    conn.commit()
    assert [r.id for r in same] == [row["id"]]

    # A new version of the key (other bytes, other eTag) is a new row.
    insert_minio_events(conn, minio_event(bucket, etag='"0123456789abcdef0123456789abcdef"'))
    rows = log_rows(conn)
    assert [r["etag"] for r in rows] == [expected.etag, "0123456789abcdef0123456789abcdef"]
    assert len(drain(listener)) == 1


def test_minio_rows_that_queue_nothing_still_land(conn, listener, settings):
    bucket = settings.bucket
    bad_key = minio_event(bucket)
    bad_key["Records"][0]["s3"]["object"]["key"] = "incoming%2F%FF.jpg"
    bad_size = minio_event(bucket, "incoming/ok-name.jpg")
    bad_size["Records"][0]["s3"]["object"]["size"] = "lots"
    insert_minio_events(
        conn,
        minio_event(bucket, event_name="s3:ObjectRemoved:Delete"),
        minio_event(bucket, "catalog/painting/x.jpg"),
        minio_event(bucket, "incoming/folder/"),
        bad_key,
        bad_size,
        {"Records": 5},
        {},
        None,
    )
    assert log_rows(conn) == []
    assert drain(listener) == []
    # MinIO's INSERTs all succeeded: the audit trail has every event.
    assert conn.execute("SELECT count(*) FROM artclf.minio_events").fetchone()[0] == 8


def test_minio_event_after_the_object_moved_away_is_a_new_generation(conn, settings):
    event = minio_event(settings.bucket)
    insert_minio_events(conn, event)
    (first,) = log_rows(conn)
    conn.execute(
        "UPDATE artclf.ingest_log SET state = 'quarantined', reason = 'test',"
        " final_key = 'quarantine/x.jpg', finalized = true WHERE id = %s",
        (first["id"],),
    )
    conn.commit()
    insert_minio_events(conn, event)  # the same bytes dropped again under the same key
    rows = log_rows(conn)
    assert [(r["generation"], r["state"]) for r in rows] == [(0, "quarantined"), (1, "pending")]


def test_stale_listing_of_a_moved_object_registers_nothing(conn, settings):
    """A listing that began before a worker finalised an object's move must not queue that
    object again; a listing that began after it means the key was uploaded again."""
    ref = ObjectRef(settings.bucket, "incoming/s.jpg", "etag-s", None, 10)
    (row,) = ingest_log.register_objects(conn, [ref])
    conn.commit()
    listed_before_the_move = db.clock(conn)
    conn.execute(
        "UPDATE artclf.ingest_log SET state = 'quarantined', reason = 'test',"
        " final_key = 'quarantine/s.jpg' WHERE id = %s",
        (row.id,),
    )
    ingest_log.mark_finalized(conn, [row.id])
    conn.commit()
    assert ingest_log.register_objects(conn, [ref], listed_at=listed_before_the_move) == []
    assert [r["generation"] for r in log_rows(conn)] == [0]
    (new,) = ingest_log.register_objects(conn, [ref], listed_at=db.clock(conn))
    assert (new.generation, new.state) == (1, "pending")
    conn.commit()


# --------------------------------------------------------------------------- watermark


def test_announce_hands_out_each_pending_row_once_per_name(conn, settings):
    bucket = settings.bucket
    first = register(conn, bucket, ["incoming/a.jpg", "incoming/b.jpg", "incoming/c.jpg"])
    register(conn, "other-bucket", ["incoming/z.jpg"])  # another bucket
    (labelled,) = register(conn, bucket, ["training/painting/t.jpg"])  # another prefix
    only_incoming = events.announce(conn, "t0", bucket=bucket, prefix="incoming/")
    assert (only_incoming.count, only_incoming.last_id) == (3, first[-1])
    # By default a watcher announces the landing zone and the training area.
    both = events.announce(conn, "t-both", bucket=bucket)
    assert (both.count, both.last_id, both.prefixes) == (4, labelled, ("incoming/", "training/"))
    ingest_log.claim(conn, [labelled], worker="w", max_attempts=3)
    conn.commit()

    ann = events.announce(conn, "t1", bucket=bucket)
    assert (ann.reason, ann.count, ann.first_id, ann.last_id) == ("new", 3, first[0], first[-1])
    assert events.announce(conn, "t1", bucket=bucket) is None
    assert events.pending_after(conn, ann.last_id, bucket=bucket) == (0, None)

    more = register(conn, bucket, ["incoming/d.jpg", "incoming/e.jpg"])
    assert events.pending_after(conn, ann.last_id, bucket=bucket) == (2, more[-1])
    again = events.announce(conn, "t1", bucket=bucket)
    assert (again.count, again.first_id, again.last_id) == (2, more[0], more[-1])

    # Rows someone already claimed need no announcement.
    claimed = register(conn, bucket, ["incoming/f.jpg"])
    ingest_log.claim(conn, claimed, worker="w", max_attempts=3)
    assert events.announce(conn, "t1", bucket=bucket) is None

    mark = events.load_watermark(conn, "t1")
    assert (mark.last_id, mark.announcements) == (more[-1], 2)
    # Another name has its own watermark: it starts with the whole pending backlog.
    other = events.announce(conn, "t2", bucket=bucket)
    assert other.count == 5
    # The payload is what the Airflow event carries.
    payload = again.payload()
    assert json.loads(json.dumps(payload)) == payload
    assert payload["count"] == 2 and payload["trigger"] == "t1" and payload["bucket"] == bucket


def test_concurrent_announcers_never_share_a_row(conn, settings):
    """Two triggerers running the same trigger (a hand-over) split the rows, never repeat."""
    bucket = settings.bucket
    total = 120
    got: list[events.Announcement] = []
    done = threading.Event()
    lock = threading.Lock()

    def announcer() -> None:
        with psycopg.connect(settings.db_url) as c:
            while True:
                finished = done.is_set()
                found = events.announce(c, "shared", bucket=bucket)
                if found:
                    with lock:
                        got.append(found)
                elif finished:
                    return

    threads = [threading.Thread(target=announcer) for _ in range(3)]
    for t in threads:
        t.start()
    ids: list[int] = []
    for i in range(0, total, 6):
        ids += register(conn, bucket, [f"incoming/c{j:03d}.jpg" for j in range(i, i + 6)])
    done.set()
    for t in threads:
        t.join(timeout=30)
    assert sum(a.count for a in got) == total
    ranges = sorted((a.first_id, a.last_id) for a in got)
    assert all(prev[1] < cur[0] for prev, cur in zip(ranges, ranges[1:], strict=False))
    assert ranges[0][0] == ids[0] and ranges[-1][1] == ids[-1]


def test_remind_repairs_an_announcement_lost_after_its_commit(conn, settings):
    bucket = settings.bucket
    ids = register(conn, bucket, ["incoming/lost-1.jpg", "incoming/lost-2.jpg"])
    assert events.announce(conn, "t", bucket=bucket).count == 2  # ... and the process died
    assert events.remind(conn, "t", after_seconds=60, bucket=bucket) is None  # too early

    conn.execute(
        "UPDATE artclf.ingest_log SET first_seen = first_seen - interval '2 minutes'"
        " WHERE id = ANY(%s)",
        (ids,),
    )
    conn.execute(
        "UPDATE artclf.trigger_state SET announced_at = announced_at - interval '2 minutes'"
    )
    conn.commit()
    reminder = events.remind(conn, "t", after_seconds=60, bucket=bucket)
    assert (reminder.reason, reminder.count, reminder.first_id, reminder.last_id) == (
        "reminder",
        2,
        ids[0],
        ids[1],
    )
    assert events.remind(conn, "t", after_seconds=60, bucket=bucket) is None  # once per quiet
    # Processed rows are never re-announced.
    ingest_log.claim(conn, ids, worker="w", max_attempts=3)
    conn.execute("UPDATE artclf.trigger_state SET reminded_at = now() - interval '1 hour'")
    conn.commit()
    assert events.remind(conn, "t", after_seconds=60, bucket=bucket) is None
    assert events.load_watermark(conn, "t").reminders == 1


def test_set_watermark_replays_from_an_id(conn, settings):
    ids = register(conn, settings.bucket, ["incoming/r1.jpg", "incoming/r2.jpg"])
    assert events.announce(conn, "r", bucket=settings.bucket).count == 2
    events.set_watermark(conn, "r", ids[0])
    assert events.announce(conn, "r", bucket=settings.bucket).first_id == ids[1]


# --------------------------------------------------------------------------- sweep


def test_sweep_queues_and_notifies_only_when_something_is_new(conn, listener, settings):
    client = s3lib.client(settings)
    for name in ("s1.jpg", "s2.jpg"):
        client.put_object(Bucket=settings.bucket, Key=f"incoming/{name}", Body=b"x" * 10)
    client.put_object(Bucket=settings.bucket, Key="training/painting/t.jpg", Body=b"t")

    assert events.sweep_and_notify(client, conn, settings.bucket) == 2
    (note,) = drain(listener)
    assert note["source"] == "sweep" and note["last_id"] == events.max_log_id(conn)
    assert events.sweep_and_notify(client, conn, settings.bucket) == 2  # still waiting
    assert drain(listener) == []
    # The sweep and MinIO agree on identity: the event of a swept object queues nothing.
    head = client.head_object(Bucket=settings.bucket, Key="incoming/s1.jpg")
    event = minio_event(settings.bucket, "incoming/s1.jpg", etag=head["ETag"])
    insert_minio_events(conn, copy.deepcopy(event))
    assert len(log_rows(conn)) == 2
    assert drain(listener) == []
