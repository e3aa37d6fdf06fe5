"""Task defaults every artclf DAG shares.

Every task retries: each one reads or writes PostgreSQL or S3, and a blip of either (a
restart, a failover, a dropped connection) must not fail a run that a second try would
finish. Every task is safe to repeat (claims, ``ON CONFLICT`` writes, moves recorded before
they are made), so a retry never duplicates anything. Tasks that need more (the ingest
batches, the re-embedding batches) set their own, larger, values.
"""

from __future__ import annotations

from datetime import timedelta

DEFAULT_ARGS: dict[str, object] = {
    "owner": "artclf",
    "retries": 2,
    "retry_delay": timedelta(seconds=15),
    "retry_exponential_backoff": 2.0,
}
