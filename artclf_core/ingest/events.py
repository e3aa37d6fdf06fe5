"""Object events: how new objects become queued work, and how that work is announced.

Two sources feed the queue (``artclf.ingest_log``, see ``sql/001_catalogue.sql``):

* **MinIO notifications.** MinIO's PostgreSQL target appends each bucket event to
  ``artclf.minio_events``; a trigger in the database (``sql/004_object_events.sql``,
  ``sql/010_training_drops.sql``) queues every ``s3:ObjectCreated:*`` object under
  ``incoming/`` or ``training/`` and NOTIFYs channel
  :data:`CHANNEL`. The queue is durable as soon as MinIO's INSERT commits.
  :func:`parse_minio_record` is the same mapping in Python (tests hold the two to each other).
* **The landing-zone sweep** (:func:`artclf_core.ingest.queue.sweep`) for stores without
  notifications (SeaweedFS, plain S3) and to repair lost ones; :func:`sweep_and_notify`
  runs it and NOTIFYs when it queued something.

A watcher (the Airflow trigger, or anything else) LISTENs on :data:`CHANNEL` and calls
:func:`announce`, which hands out each pending row once per watcher name: a per-name
watermark (the highest log id announced) lives in ``artclf.trigger_state`` and advances in
the same transaction that reads the new rows, under a row lock, so restarts and concurrent
instances never announce a row twice. :func:`remind` is the repair for an announcement that
was committed but never reached the scheduler. :class:`IncomingWatcher` is the whole loop,
without Airflow, so that it can be tested and reused; docs/events.md explains the decisions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from botocore.exceptions import BotoCoreError, ClientError

from artclf_core.config import INCOMING_PREFIX, INPUT_PREFIXES, TRAINING_PREFIX, Settings
from artclf_core.lake.s3 import ObjectRef

log = logging.getLogger(__name__)

#: LISTEN/NOTIFY channel on which every source says "the queue has new pending rows".
CHANNEL = "artclf_ingest"
#: The table MinIO's PostgreSQL target writes (access format).
MINIO_EVENTS_TABLE = "artclf.minio_events"
#: Event names that create an object version (MinIO and AWS spell them alike).
OBJECT_CREATED = "s3:ObjectCreated:"

#: One prefix or several (``str.startswith`` and the SQL below take either).
Prefixes = str | Sequence[str]


def as_prefixes(prefix: Prefixes) -> tuple[str, ...]:
    """``"incoming/"`` or ``["incoming/", "training/"]`` as a tuple of prefixes."""
    return (prefix,) if isinstance(prefix, str) else tuple(prefix)


# --------------------------------------------------------------------------- MinIO records


def parse_minio_record(
    record: Mapping[str, Any], prefix: Prefixes = INPUT_PREFIXES
) -> ObjectRef | None:
    """The object version a MinIO/S3 event record announces, or None if it queues nothing.

    Mirrors ``artclf.minio_event_to_ingest_log()`` in SQL: only ``s3:ObjectCreated:*``
    records under ``prefix``; the key is query-unescaped (MinIO sends ``url.QueryEscape``:
    ``/`` as ``%2F``, space as ``+``) because the ingest log stores keys as S3 lists them;
    the eTag loses its quotes; the event time stands in for LastModified (informational, not
    part of the identity). Records that cannot be read (not UTF-8, bad size) give None: the
    sweep still finds their objects.
    """
    if not str(record.get("eventName", "")).startswith(OBJECT_CREATED):
        return None
    s3 = record.get("s3") or {}
    bucket = (s3.get("bucket") or {}).get("name")
    obj = s3.get("object") or {}
    raw_key = obj.get("key")
    if not bucket or raw_key is None:
        return None
    try:
        key = urllib.parse.unquote_plus(str(raw_key), errors="strict")
        size = int(obj.get("size") or 0)
        event_time = record.get("eventTime")
        last_modified = datetime.fromisoformat(event_time) if event_time else None
    except (UnicodeDecodeError, ValueError, TypeError):
        return None
    if not key.startswith(as_prefixes(prefix)) or key.endswith("/"):
        return None
    etag = str(obj.get("eTag") or "").strip('"')
    return ObjectRef(bucket=bucket, key=key, etag=etag, last_modified=last_modified, size=size)


def parse_minio_event(
    event_data: Mapping[str, Any], prefix: Prefixes = INPUT_PREFIXES
) -> list[ObjectRef]:
    """Every queued object of one MinIO event (``{"Records": [...]}``, as MinIO stores it)."""
    records = event_data.get("Records")
    if not isinstance(records, list):
        return []
    refs = (parse_minio_record(r, prefix) for r in records if isinstance(r, Mapping))
    return [r for r in refs if r is not None]


# --------------------------------------------------------------------------- queue signals


@contextmanager
def _transaction(conn: psycopg.Connection) -> Iterator[None]:
    """One committed transaction, whether or not the connection is in autocommit mode.

    On a regular connection this commits whatever the caller had pending too: these
    functions are meant to own their connection's transaction, like ``pipeline.sweep``.
    """
    if conn.autocommit:
        with conn.transaction():
            yield
        return
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def notify(
    conn: psycopg.Connection,
    *,
    source: str = "sweep",
    bucket: str | None = None,
    last_id: int | None = None,
) -> None:
    """Wake every listener of :data:`CHANNEL` (e.g. after a sweep queued new rows). Commits.

    NOTIFY is transactional: it is delivered when the transaction commits, so listeners
    never wake before the rows they are told about are visible. The payload is a hint for
    logs; listeners re-read the queue rather than trust it.
    """
    payload = json.dumps({"source": source, "bucket": bucket, "last_id": last_id})
    with _transaction(conn):
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


def max_log_id(conn: psycopg.Connection) -> int:
    """The highest ingest-log id (0 for an empty log)."""
    return conn.execute("SELECT coalesce(max(id), 0) FROM artclf.ingest_log").fetchone()[0]


_PENDING_AFTER = """
    SELECT count(*), min(id), max(id)
    FROM artclf.ingest_log
    WHERE id > %(after)s AND state = 'pending'
      AND (%(bucket)s::text IS NULL OR bucket = %(bucket)s) AND key ^@ ANY(%(prefixes)s::text[])
"""


def pending_after(
    conn: psycopg.Connection,
    last_id: int,
    *,
    bucket: str | None = None,
    prefix: Prefixes = INPUT_PREFIXES,
) -> tuple[int, int | None]:
    """How many pending rows lie above ``last_id``, and the highest of their ids (or None).

    Only ``pending`` rows count: a row another worker already claimed needs no wake-up call.
    The scan walks the primary key from ``last_id`` up, so it costs what is new, not the log.
    """
    n, _first, last = conn.execute(
        _PENDING_AFTER, {"after": last_id, "bucket": bucket, "prefixes": list(as_prefixes(prefix))}
    ).fetchone()
    return n, last


def sweep_and_notify(
    s3, conn: psycopg.Connection, bucket: str, prefix: str = INCOMING_PREFIX
) -> int:
    """Run the landing-zone sweep; NOTIFY :data:`CHANNEL` if it queued new rows.

    Returns what :func:`artclf_core.ingest.queue.sweep` returns (rows waiting under ``prefix``);
    :func:`sweep_counting` also says how many rows this sweep queued.
    """
    return sweep_counting(s3, conn, bucket, prefix)[0]


def sweep_counting(
    s3, conn: psycopg.Connection, bucket: str, prefix: str = INCOMING_PREFIX
) -> tuple[int, int]:
    """:func:`sweep_and_notify`, returning ``(rows waiting, rows newly queued)``."""
    # Imported here: the pipeline module loads TensorFlow (the model), which a process that
    # only watches the bucket (the Airflow triggerer) should pay for only when it sweeps.
    from artclf_core.ingest.queue import sweep

    before = max_log_id(conn)
    conn.commit()
    waiting = sweep(s3, conn, bucket, prefix)
    after = max_log_id(conn)
    conn.commit()
    if after > before:
        notify(conn, source="sweep", bucket=bucket, last_id=after)
    return waiting, after - before


# --------------------------------------------------------------------------- watermark


@dataclass(frozen=True)
class Watermark:
    """A watcher's persistent state (one row of ``artclf.trigger_state``)."""

    name: str
    last_id: int
    announced_at: datetime | None
    reminded_at: datetime | None
    announcements: int
    reminders: int


@dataclass(frozen=True)
class Announcement:
    """Pending rows handed to the orchestrator in one event."""

    trigger: str
    #: ``new``: rows above the watermark, announced for the first time; ``reminder``: rows
    #: announced earlier that are still pending long after (see :func:`remind`).
    reason: str
    count: int
    first_id: int
    last_id: int
    bucket: str | None
    #: The prefixes whose pending rows were counted (the landing zone and the training area).
    prefixes: tuple[str, ...]
    at: datetime

    def payload(self) -> dict[str, Any]:
        """The JSON payload of the Airflow ``TriggerEvent`` (asset event ``extra["payload"]``)."""
        return {
            "trigger": self.trigger,
            "reason": self.reason,
            "count": self.count,
            "first_id": self.first_id,
            "last_id": self.last_id,
            "bucket": self.bucket,
            "prefixes": list(self.prefixes),
            "announced_at": self.at.isoformat(),
        }


_STATE_COLS = "name, last_id, announced_at, reminded_at, announcements, reminders"


def _ensure_state(conn: psycopg.Connection, name: str) -> None:
    conn.execute(
        "INSERT INTO artclf.trigger_state (name) VALUES (%s) ON CONFLICT (name) DO NOTHING",
        (name,),
    )


def load_watermark(conn: psycopg.Connection, name: str) -> Watermark:
    """The watcher's state, created at 0 on first use (then everything pending is new). Commits."""
    with _transaction(conn):
        _ensure_state(conn, name)
        row = conn.execute(
            f"SELECT {_STATE_COLS} FROM artclf.trigger_state WHERE name = %s", (name,)
        ).fetchone()
    return Watermark(*row)


def set_watermark(conn: psycopg.Connection, name: str, last_id: int) -> None:
    """Move a watermark by hand (operators: replay from an id, or skip a backlog). Commits."""
    with _transaction(conn):
        _ensure_state(conn, name)
        conn.execute(
            "UPDATE artclf.trigger_state SET last_id = %s, updated_at = now() WHERE name = %s",
            (last_id, name),
        )


def announce(
    conn: psycopg.Connection,
    name: str,
    *,
    bucket: str | None = None,
    prefix: Prefixes = INPUT_PREFIXES,
) -> Announcement | None:
    """Hand out the pending rows above ``name``'s watermark, once, and advance it. Commits.

    The watermark row is locked (``FOR UPDATE``) while the new rows are read and the
    watermark moves past them, and all of it commits before the caller sees the result: two
    instances with the same name (a restart, a triggerer hand-over) serialise here and the
    second finds nothing new. Committing *before* the event leaves the process means a crash
    in between can lose an announcement but never repeat one; :func:`remind` repairs the loss.
    """
    with _transaction(conn):
        _ensure_state(conn, name)
        # A plain read first: an idle watcher (most calls) then neither locks nor writes.
        (seen,) = conn.execute(
            "SELECT last_id FROM artclf.trigger_state WHERE name = %s", (name,)
        ).fetchone()
        if not pending_after(conn, seen, bucket=bucket, prefix=prefix)[0]:
            return None
        (last_id,) = conn.execute(
            "SELECT last_id FROM artclf.trigger_state WHERE name = %s FOR UPDATE", (name,)
        ).fetchone()
        count, first, last = conn.execute(
            _PENDING_AFTER,
            {"after": last_id, "bucket": bucket, "prefixes": list(as_prefixes(prefix))},
        ).fetchone()
        if not count:  # another instance announced them meanwhile
            return None
        (at,) = conn.execute(
            "UPDATE artclf.trigger_state SET last_id = %s, announced_at = now(),"
            " announcements = announcements + 1, updated_at = now()"
            " WHERE name = %s RETURNING announced_at",
            (last, name),
        ).fetchone()
    return Announcement(name, "new", count, first, last, bucket, as_prefixes(prefix), at)


def remind(
    conn: psycopg.Connection,
    name: str,
    *,
    after_seconds: float,
    bucket: str | None = None,
    prefix: Prefixes = INPUT_PREFIXES,
) -> Announcement | None:
    """Re-announce rows still pending ``after_seconds`` after they were queued. Commits.

    Only when the watcher has been quiet (no announcement or reminder) for ``after_seconds``:
    any announcement starts a run that drains *every* open row, so a reminder is needed only
    when nothing else will. This repairs an announcement lost between :func:`announce`'s
    commit and the scheduler (a triggerer killed in between), and a row whose id was
    allocated before a higher one that committed first (ids are not commit-ordered). The
    price: objects that really are waiting that long (orchestrator paused or far behind) get
    one extra event per ``after_seconds``, which the orchestrator coalesces into its queued run.
    """
    with _transaction(conn):
        _ensure_state(conn, name)
        last_id, recent = conn.execute(
            "SELECT last_id, greatest(announced_at, reminded_at)"
            " > now() - make_interval(secs => %s)"
            " FROM artclf.trigger_state WHERE name = %s FOR UPDATE",
            (after_seconds, name),
        ).fetchone()
        if recent:
            return None
        count, first, last = conn.execute(
            """
            SELECT count(*), min(id), max(id)
            FROM artclf.ingest_log
            WHERE id <= %(upto)s AND state = 'pending'
              AND first_seen < now() - make_interval(secs => %(after)s)
              AND (%(bucket)s::text IS NULL OR bucket = %(bucket)s)
              AND key ^@ ANY(%(prefixes)s::text[])
            """,
            {
                "upto": last_id,
                "after": after_seconds,
                "bucket": bucket,
                "prefixes": list(as_prefixes(prefix)),
            },
        ).fetchone()
        if not count:
            return None
        (at,) = conn.execute(
            "UPDATE artclf.trigger_state SET reminded_at = now(), reminders = reminders + 1,"
            " updated_at = now() WHERE name = %s RETURNING reminded_at",
            (name,),
        ).fetchone()
    return Announcement(name, "reminder", count, first, last, bucket, as_prefixes(prefix), at)


# --------------------------------------------------------------------------- the loop


def _close_when_idle(conn: psycopg.Connection) -> None:
    """Close a connection that a worker thread may still be using, without waiting.

    When the watcher is cancelled, a query of its own can still be running in a thread;
    closing the connection under it would free libpq state in use. Take the connection's
    lock (held by every query) in a daemon thread, then close.
    """

    def close() -> None:
        with conn.lock:
            conn.close()

    threading.Thread(target=close, name="artclf-watcher-close", daemon=True).start()


class IncomingWatcher:
    """LISTEN for queued objects, sweep the landing zone, yield :class:`Announcement` s.

    The event loop only ever waits on the LISTEN connection (psycopg's async
    ``notifies()``, no polling); every blocking call (psycopg queries, boto3 listings) runs
    in a worker thread. One pass of the loop:

    1. every ``sweep_interval`` seconds (never if <= 0), sweep ``bucket``/``prefix`` and
       NOTIFY when that queued rows; with it, at most every ``training_sweep_interval``
       seconds, the training area ``training_prefix`` (labelled drops; None or an interval
       <= 0: never). The
       landing zone empties as objects are processed, so its sweep costs what waits; the
       training area keeps its objects (they are catalogued in place), so its sweep lists
       all of it and runs less often (with MinIO notifications it only repairs);
    2. :func:`announce`; when there is nothing new and the reminder check is due,
       :func:`remind`;
    3. yield the announcement, if any;
    4. wait for a notification (not our own), the next sweep, or the next check, then let a
       burst of notifications settle for ``settle`` seconds so that a thousand uploads make
       a handful of events, not a thousand.

    Database or S3 outages are logged and retried with backoff; the watcher never returns.
    On (re)connection it announces whatever was queued meanwhile, LISTENing first so that
    nothing falls between the two.
    """

    #: Longest wait without a notification (re-checks the queue even with no sweep).
    IDLE_CHECK = 60.0
    MAX_BACKOFF = 60.0
    #: A sweep that queues at least this many new objects means a bulk drop is still
    #: arriving: the announcement is held until a sweep finds fewer (the upload ended) or
    #: for at most :attr:`MAX_HOLD` seconds, so that a drop of thousands becomes one run with
    #: full batches instead of one small run per sweep, each paying the task start-up. A
    #: single image (or a few) is announced at the first sweep that sees it.
    BURST = 32
    MAX_HOLD = 10.0

    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        prefix: str = INCOMING_PREFIX,
        training_prefix: str | None = TRAINING_PREFIX,
        sweep_interval: float = 5.0,
        training_sweep_interval: float = 30.0,
        reannounce_after: float = 600.0,
        settle: float = 0.25,
    ) -> None:
        self.settings = settings
        self.name = name
        self.prefix = prefix
        self.training_prefix = training_prefix
        #: What this watcher announces: pending rows under the landing zone or training area.
        self.prefixes = (prefix,) + ((training_prefix,) if training_prefix else ())
        self.sweep_interval = sweep_interval
        self.training_sweep_interval = training_sweep_interval
        self.reannounce_after = reannounce_after
        self.settle = settle
        self._s3 = None

    @property
    def remind_check(self) -> float:
        """How often to look for stale pending rows (inf: reminders off)."""
        if self.reannounce_after <= 0:
            return math.inf
        return min(self.IDLE_CHECK, max(0.5, self.reannounce_after / 2))

    async def watch(self) -> AsyncIterator[Announcement]:
        """Announcements, forever."""
        delay = 1.0
        while True:
            try:
                async for announcement in self._session():
                    delay = 1.0
                    yield announcement
            except (psycopg.Error, OSError) as exc:
                log.warning(
                    "watcher %s: catalogue unreachable (%s); retrying in %.0f s",
                    self.name,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.MAX_BACKOFF)

    async def _session(self) -> AsyncIterator[Announcement]:
        """One connected stretch: LISTEN, then announce/sweep/wait until an error."""
        loop = asyncio.get_running_loop()
        bucket = self.settings.bucket
        # Named sessions, so that an operator sees (and can end) them in pg_stat_activity.
        app = f"artclf-watcher:{self.name}"[:63]
        listen = await psycopg.AsyncConnection.connect(
            self.settings.db_url, autocommit=True, application_name=app
        )
        work: psycopg.Connection | None = None
        try:
            await listen.execute(f"LISTEN {CHANNEL}")
            work = await asyncio.to_thread(
                psycopg.connect, self.settings.db_url, application_name=app
            )
            own_pid = work.info.backend_pid
            mark = await asyncio.to_thread(load_watermark, work, self.name)
            training = bool(self.training_prefix) and self.training_sweep_interval > 0
            log.info(
                "watcher %s: listening on %s for s3://%s/{%s} (watermark %d, sweep every %s s,"
                " training area every %s s)",
                self.name,
                CHANNEL,
                bucket,
                ",".join(self.prefixes),
                mark.last_id,
                self.sweep_interval if self.sweep_interval > 0 else "-",
                self.training_sweep_interval if training else "-",
            )
            next_sweep = loop.time() if self.sweep_interval > 0 else math.inf
            next_training = loop.time() if training else math.inf
            # Reminders are checked at once: a restart is when a lost announcement shows.
            next_remind = loop.time() if self.reannounce_after > 0 else math.inf
            held_since: float | None = None
            while True:
                if loop.time() >= next_sweep:
                    added = await self._sweep(work, self.prefix)
                    if loop.time() >= next_training:
                        added += await self._sweep(work, self.training_prefix)
                        next_training = loop.time() + self.training_sweep_interval
                    next_sweep = loop.time() + self.sweep_interval
                    if added >= self.BURST:
                        held_since = held_since if held_since is not None else loop.time()
                    else:
                        held_since = None
                    if held_since is not None and loop.time() - held_since < self.MAX_HOLD:
                        log.info(
                            "watcher %s: %d new object(s) in one sweep, a bulk drop is still "
                            "arriving: announcing after the next sweep",
                            self.name,
                            added,
                        )
                        await asyncio.sleep(max(0.0, next_sweep - loop.time()))
                        continue
                    held_since = None
                found = await asyncio.to_thread(
                    announce, work, self.name, bucket=bucket, prefix=self.prefixes
                )
                if found is None and loop.time() >= next_remind:
                    found = await asyncio.to_thread(
                        remind,
                        work,
                        self.name,
                        after_seconds=self.reannounce_after,
                        bucket=bucket,
                        prefix=self.prefixes,
                    )
                    next_remind = loop.time() + self.remind_check
                if found is not None:
                    log.info(
                        "watcher %s: %s %d pending object(s), log ids %d..%d",
                        self.name,
                        "announcing" if found.reason == "new" else "re-announcing",
                        found.count,
                        found.first_id,
                        found.last_id,
                    )
                    yield found
                deadline = min(next_sweep, next_remind, loop.time() + self.IDLE_CHECK)
                await self._wait(listen, own_pid, max(0.0, deadline - loop.time()))
        finally:
            if work is not None:
                _close_when_idle(work)
            await listen.close()

    async def _sweep(self, work: psycopg.Connection, prefix: str) -> int:
        """Sweep ``prefix`` in a thread; return how many objects it newly queued. An S3
        outage is logged, not fatal (notifications still work)."""
        try:
            if self._s3 is None:
                from artclf_core.lake import s3 as s3lib

                self._s3 = await asyncio.to_thread(s3lib.client, self.settings)
            _, added = await asyncio.to_thread(
                sweep_counting, self._s3, work, self.settings.bucket, prefix
            )
            return added
        except (BotoCoreError, ClientError) as exc:
            await asyncio.to_thread(work.rollback)
            log.warning(
                "watcher %s: sweep of s3://%s/%s failed: %s",
                self.name,
                self.settings.bucket,
                prefix,
                exc,
            )
            return 0

    async def _wait(self, listen: psycopg.AsyncConnection, own_pid: int, timeout: float) -> None:
        """Until a notification from another session arrives or ``timeout`` passes."""
        woken = False
        async with aclosing(listen.notifies(timeout=timeout)) as notes:
            async for note in notes:
                if note.pid != own_pid:  # our own sweep's NOTIFY: already announced
                    woken = True
                    break
        if woken and self.settle > 0:
            async with aclosing(listen.notifies(timeout=self.settle)) as notes:
                async for _ in notes:
                    pass
