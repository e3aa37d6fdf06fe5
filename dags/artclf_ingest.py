"""``artclf_ingest``: catalogue what lands under ``incoming/``, event-driven.

Thin on purpose: every decision (what needs work, claims, validation, de-duplication, the
model, the catalogue writes, crash repair) lives in ``artclf_core`` and is tested there; this
file only wires those calls into Airflow tasks, so that Airflow adds scheduling, fan-out over
workers, retries and a UI, and nothing that could disagree with ``artclf ingest``.

Nothing heavy is imported at parse time (the pipeline pulls in TensorFlow): the DAG processor
re-parses this file every few seconds, and tasks import what they use.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException
from artclf_airflow.assets import incoming_asset
from artclf_airflow.connections import settings_from_connections
from artclf_airflow.defaults import DEFAULT_ARGS
from artclf_airflow.preload import quiet_libraries, yield_cpu

log = logging.getLogger("artclf.dag")

DAG_ID = "artclf_ingest"
#: Stay under Airflow's ``[core] max_map_length`` (1024): a larger queue is taken by the next
#: runs (the trigger re-announces objects still pending).
MAX_BATCHES = 1000
#: Concurrent ``ingest_batch`` tasks over all runs. Each loads the model and runs the CPU-bound
#: forward pass, so more than the machine's cores only adds memory; raise it where Celery
#: workers bring their own cores (``ARTCLF_INGEST_CONCURRENCY``, read at parse time).
INGEST_CONCURRENCY = int(os.environ.get("ARTCLF_INGEST_CONCURRENCY", "2"))

DOC_MD = """
### artclf_ingest: validate, de-duplicate, classify, embed and catalogue new artworks

**When it runs.** By itself: it is scheduled on the asset `artclf_incoming`, whose watcher
fires when objects are queued under `s3://<bucket>/incoming/` (bucket notifications, or a
landing-zone sweep every few seconds). There is no clock schedule and nothing to backfill:
each run takes *everything* that waits, whatever event started it. Runs may overlap (at most
3 at once); every object is claimed by exactly one task (`SKIP LOCKED`), the others skip it.

**What a run does.**
1. `plan` sweeps the landing zone (repairs lost notifications; also the `prefix` param if
   given), lists the ingest-log rows that need work and splits them into batches of
   `batch_size` ids.
2. `ingest_batch` (one mapped task per batch; 2 at a time) loads the model once and puts every
   object of its batch in exactly one state: **catalogued** (`catalog/<label>/`),
   **duplicate** (`duplicates/`), **quarantined** with a reason (`quarantine/`), or
   **failed** (stays in `incoming/`). If objects failed and have attempts left, the task
   fails and Airflow retries it with exponential backoff, which retries just those objects.
3. `report` adds up the batches, logs the outcome by state and reason, and **fails the run**
   if any object of the run ended failed (parked after `ARTCLF_MAX_ATTEMPTS` = 3 attempts) or
   a batch could not finish. The failed objects and their reasons are in its log.

**Operating it.**
* *Watch*: Dags > artclf_ingest > Runs; `ingest_batch` instances are named by their id range.
* *Retry a failed task*: open the failed `ingest_batch` instance > Clear Task Instance, with
  Downstream (so `report` runs again). Its objects are claimed again; done ones are skipped,
  half-done moves are finished.
* *Re-ingest a prefix* (e.g. `training/` for labelled images, or `incoming/2024/`):
  Trigger > set `prefix`.
* *Re-run parked failed objects*: Trigger > `retry_failed` on (after fixing the cause).
* *See failures*: a red run; `report`'s log lists them; or `artclf report --state failed`,
  or `SELECT * FROM artclf.ingest_log WHERE state = 'failed'`.

The same work without Airflow: `artclf ingest [--prefix P] [--retry-failed]`.
See docs/operating.md.
"""


@task
def plan() -> list[list[int]]:
    """Sweep the landing zone, then split the ingest-log rows that need work into batches."""
    quiet_libraries()
    from artclf_core.catalogue import db, ingest_log
    from artclf_core.config import INCOMING_PREFIX
    from artclf_core.ingest.queue import check_prefix, sweep
    from artclf_core.lake import s3 as s3lib

    context = get_current_context()
    params = context["params"]
    size = int(params["batch_size"])
    events = context.get("triggering_asset_events") or {}
    announced = sum(len(evs) for evs in events.values())
    settings = settings_from_connections()
    client = s3lib.client(settings)
    prefixes = [INCOMING_PREFIX]
    if params.get("prefix") and check_prefix(params["prefix"]) != INCOMING_PREFIX:
        prefixes.append(check_prefix(params["prefix"]))
    with db.connect(settings.db_url) as conn:
        for prefix in prefixes:
            waiting = sweep(client, conn, settings.bucket, prefix)
            log.info("swept s3://%s/%s: %d object(s) waiting", settings.bucket, prefix, waiting)
        ids = ingest_log.open_ids(
            conn,
            max_attempts=settings.max_attempts,
            retry_failed=bool(params["retry_failed"]),
            limit=size * MAX_BATCHES,
        )
    batches = [ids[i : i + size] for i in range(0, len(ids), size)]
    log.info(
        "%d asset event(s); %d object(s) need work -> %d batch(es) of up to %d",
        announced,
        len(ids),
        len(batches),
        size,
    )
    if len(ids) == size * MAX_BATCHES:
        log.warning("queue longer than %d batches: the rest is left to the next runs", MAX_BATCHES)
    return batches


def _run_claims(ti) -> str:
    """How this run's workers sign their claims (``artclf.ingest_log.claimed_by``)."""
    return f"airflow:{ti.dag_id}/{ti.run_id}/"


def _take_over_earlier_tries(conn, ids: list[int], task_claims: str) -> None:
    """Let this retry claim the rows an earlier try of the same task left in ``processing``.

    A try that died between its claim and its commit (killed, out of memory, an exception)
    holds its rows for the claim lease (15 minutes), and the retry would skip them and
    succeed without doing them. Airflow starts a retry only once the earlier try has ended,
    so those claims are orphans: release them. Only rows signed by this very task instance
    (dag, run, map index) are touched.
    """
    from artclf_core.catalogue import ingest_log

    n = ingest_log.release_claims(conn, ids, task_claims)
    if n:
        log.warning("took over %d object(s) an earlier try claimed and did not finish", n)


@task(
    retries=4,
    retry_delay=timedelta(seconds=20),
    retry_exponential_backoff=2.0,
    max_retry_delay=timedelta(minutes=10),
    max_active_tis_per_dag=INGEST_CONCURRENCY,
    execution_timeout=timedelta(hours=1),
    map_index_template="{{ batch_label }}",
)
def ingest_batch(batch: list[int]) -> dict:
    """Process one batch of queued ids with one model load; retry what failed transiently."""
    quiet_libraries()
    yield_cpu()  # below the triggerer and the scheduler
    from artclf_core.catalogue import ingest_log
    from artclf_core.ingest.ingestor import Ingestor

    context = get_current_context()
    context["batch_label"] = f"ids {batch[0]}-{batch[-1]} ({len(batch)})" if batch else "empty"
    retry_failed = bool(context["params"]["retry_failed"])
    ti = context["ti"]
    task_claims = f"{_run_claims(ti)}{ti.map_index}#"
    worker = f"{task_claims}{ti.try_number}@{socket.gethostname()}:{os.getpid()}"
    settings = settings_from_connections()
    with Ingestor(settings, worker_id=worker) as ingestor:
        if ti.try_number > 1:
            _take_over_earlier_tries(ingestor.conn, batch, task_claims)
        summary = ingestor.ingest_log_ids(batch, retry_failed=retry_failed)
        log.info("%s", summary.line())
        for reason, n in sorted(summary.reasons.items()):
            log.info("  %s: %d", reason, n)
        # What of this batch still needs work (failed with attempts left, a move to finish):
        # fail so that Airflow retries after a backoff; the retry touches only those objects.
        left = ingest_log.open_ids(
            ingestor.conn,
            max_attempts=settings.max_attempts,
            retry_failed=retry_failed,
            ids=batch,
        )
    if left:
        raise RuntimeError(
            f"{len(left)} object(s) of this batch need another attempt "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(summary.reasons.items()))}); "
            "Airflow retries this task"
        )
    return summary.as_dict()


@task(trigger_rule="all_done")
def report(batches: list[list[int]] | None, summaries) -> dict:
    """Add up the batches, log the outcome and fail the run if objects ended failed."""
    from artclf_core.catalogue import db, ingest_log
    from artclf_core.ingest.batch import Summary

    if batches is None:  # all_done runs this even when plan failed: the run must stay red
        raise AirflowFailException("plan did not finish: nothing was ingested (see its log)")
    # Indexing, not iterating: iteration asks for one XCom past the end (an error line).
    done = [summaries[i] for i in range(len(summaries))] if summaries is not None else []
    done = [s for s in done if s]
    total = Summary()
    for item in done:
        part = Summary(**item)
        total.add(part)
        total.seconds += part.seconds  # task-seconds: the batches may have run in parallel
    ids = [i for b in batches for i in b]
    settings = settings_from_connections()
    # Claimed by a task of this run that is over: it died before its commit and its retries
    # did not take the rows back. The claim lease (15 min) frees them.
    mine = _run_claims(get_current_context()["ti"])
    with db.connect(settings.db_url) as conn:
        queue = ingest_log.queue_report(conn, ids, mine)
    states, failed, stuck = queue.states, queue.failed, queue.stuck
    log.info("work done by %d of %d batch(es): %s", len(done), len(batches), total.line())
    for stage, secs in sorted(total.stages.items()):
        log.info("  stage %-12s %8.1f s", stage, secs)
    if total.processed:
        log.info("%s", total.cpu_line())
    log.info("the run's %d object(s) now: %s", len(ids), states or "nothing to do")
    for row in failed:
        log.error(
            "failed: log id %s %s [%s] %s (attempts %s)",
            row["id"],
            row["key"],
            row["reason"],
            (row["message"] or "")[:300],
            row["attempts"],
        )
    result = {"objects": len(ids), "states": states, "summary": total.as_dict()}
    if failed:
        raise AirflowFailException(
            f"{len(failed)} object(s) failed (parked after {settings.max_attempts} attempts "
            "unless retried); see the log above or `artclf report --state failed`, fix the "
            "cause and trigger with retry_failed"
        )
    if stuck:
        raise AirflowFailException(
            f"{stuck} object(s) are still claimed by tasks of this run that died; the next "
            "run takes them once the 15-minute claim lease is over"
        )
    if len(done) < len(batches):
        raise AirflowFailException(
            f"{len(batches) - len(done)} batch(es) did not finish; see the failed "
            "ingest_batch instances (Clear one to run it again)"
        )
    return result


@dag(
    dag_id=DAG_ID,
    schedule=[incoming_asset()],
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=3,
    dagrun_timeout=timedelta(hours=6),
    tags=["artclf", "ingest", "event-driven"],
    doc_md=DOC_MD,
    default_args=DEFAULT_ARGS,
    params={
        "prefix": Param(
            "incoming/",
            type="string",
            pattern=r"^(incoming|training)(/.*)?$",
            title="Prefix to (re-)ingest",
            description=(
                "incoming/ is always swept; give training/ (labelled images, catalogued in "
                "place) or a sub-prefix such as incoming/2024/ to sweep it as well."
            ),
        ),
        "retry_failed": Param(
            False,
            type="boolean",
            title="Retry parked failed objects",
            description="Also take objects that used up their attempts (after a fix).",
        ),
        "batch_size": Param(
            256,
            type="integer",
            minimum=1,
            maximum=4096,
            title="Batch size",
            description="Objects per ingest_batch task (one model forward pass each).",
        ),
    },
)
def artclf_ingest() -> None:
    batches = plan()
    summaries = ingest_batch.expand(batch=batches)
    report(batches, summaries)


artclf_ingest()
