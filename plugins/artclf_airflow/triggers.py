"""``IncomingObjectsTrigger``: event-driven scheduling of the ingest DAG on new objects.

An ``AssetWatcher`` runs this trigger in the triggerer for as long as a DAG schedules on the
asset (``artclf_airflow.assets.incoming_asset``); every ``TriggerEvent`` it yields becomes
an asset event, and the scheduler starts (or coalesces into) a run of that DAG. The logic
lives in :class:`artclf_core.ingest.events.IncomingWatcher`, free of Airflow and tested on its
own; this class only resolves Airflow connections and wraps announcements into events.
See docs/events.md for the delivery guarantees.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from artclf_airflow.connections import (
    DEFAULT_AWS_CONN_ID,
    DEFAULT_POSTGRES_CONN_ID,
    settings_from_connections,
)
from artclf_core.config import INCOMING_PREFIX, TRAINING_PREFIX, Settings
from artclf_core.ingest.events import IncomingWatcher

#: The classpath the triggerer imports (``plugins/`` is on its ``sys.path``). Spelled out
#: rather than derived from ``__module__``, which would differ if the module were imported
#: under another package path, and a different classpath is a different trigger to Airflow.
CLASSPATH = "artclf_airflow.triggers.IncomingObjectsTrigger"


class IncomingObjectsTrigger(BaseEventTrigger):
    """Fires when objects are newly queued under ``s3://<bucket>/<prefix>`` or the training
    area ``s3://<bucket>/<training_prefix>`` (labelled drops; None: not watched).

    It waits on PostgreSQL LISTEN/NOTIFY (MinIO notifications and sweeps both NOTIFY), sweeps
    the landing zone every ``sweep_interval`` seconds for stores that cannot notify (<= 0:
    never) and the training area at most every ``training_sweep_interval`` seconds (it keeps
    its objects, so each sweep lists all of it), and yields one event per batch of newly
    queued pending objects, with payload ``{"trigger", "reason", "count", "first_id",
    "last_id", "bucket", "prefixes", "announced_at"}`` (``reason``: ``"new"``, or
    ``"reminder"`` for objects still pending ``reannounce_after`` seconds after they were
    announced; <= 0: never).

    Each object version is announced once per ``name``: the watermark is stored in the
    catalogue (``artclf.trigger_state``), so a restarted or moved trigger resumes where it
    stopped and announces what arrived while it was down. Two watchers that must each see
    every object need two names.
    """

    def __init__(
        self,
        *,
        postgres_conn_id: str = DEFAULT_POSTGRES_CONN_ID,
        aws_conn_id: str = DEFAULT_AWS_CONN_ID,
        bucket: str | None = None,
        prefix: str = INCOMING_PREFIX,
        sweep_interval: float = 5.0,
        training_prefix: str | None = TRAINING_PREFIX,
        training_sweep_interval: float = 30.0,
        name: str = "artclf_incoming",
        reannounce_after: float = 600.0,
    ) -> None:
        super().__init__()
        if not name:
            raise ValueError("the trigger needs a name: its watermark is stored under it")
        self.postgres_conn_id = postgres_conn_id
        self.aws_conn_id = aws_conn_id
        self.bucket = bucket
        self.prefix = prefix
        self.sweep_interval = float(sweep_interval)
        self.training_prefix = training_prefix
        self.training_sweep_interval = float(training_sweep_interval)
        self.name = name
        self.reannounce_after = float(reannounce_after)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and kwargs; Airflow re-creates the trigger from them in the triggerer.

        For an event trigger they are also its identity (``BaseEventTrigger.hash``): the
        same kwargs from two DAG files are one trigger, changed kwargs a new one.
        """
        return (
            CLASSPATH,
            {
                "postgres_conn_id": self.postgres_conn_id,
                "aws_conn_id": self.aws_conn_id,
                "bucket": self.bucket,
                "prefix": self.prefix,
                "sweep_interval": self.sweep_interval,
                "training_prefix": self.training_prefix,
                "training_sweep_interval": self.training_sweep_interval,
                "name": self.name,
                "reannounce_after": self.reannounce_after,
            },
        )

    async def _settings(self) -> Settings:
        """Resolve the connections (blocking lookups, in a thread), retrying on failure.

        A secrets backend that is briefly unreachable must not end the watch: a trigger
        that raises is not restarted until the triggerer reloads it.
        """
        delay = 1.0
        while True:
            try:
                return await asyncio.to_thread(
                    settings_from_connections, self.postgres_conn_id, self.aws_conn_id, self.bucket
                )
            except Exception as exc:  # any lookup failure: log and retry
                self.log.error(
                    "cannot resolve connections %s/%s (%s); retrying in %.0f s",
                    self.postgres_conn_id,
                    self.aws_conn_id,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, IncomingWatcher.MAX_BACKOFF)

    def watcher(self, settings: Settings) -> IncomingWatcher:
        """The Airflow-free loop this trigger runs."""
        return IncomingWatcher(
            settings,
            name=self.name,
            prefix=self.prefix,
            sweep_interval=self.sweep_interval,
            training_prefix=self.training_prefix,
            training_sweep_interval=self.training_sweep_interval,
            reannounce_after=self.reannounce_after,
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Yield a ``TriggerEvent`` per announcement, forever (an event trigger never ends)."""
        settings = await self._settings()
        async for announcement in self.watcher(settings).watch():
            yield TriggerEvent(announcement.payload())
