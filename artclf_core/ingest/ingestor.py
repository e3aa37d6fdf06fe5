"""``artclf ingest``: the orchestrator that runs the stages over each batch (a listing page
of a few hundred objects), three batches in flight.

1. **claim** (:mod:`.claim`) the rows in the ingest log;
2. **fetch** (:mod:`.fetch`): GET, decode and validate, hash, on the I/O threads;
3. **classify** (:mod:`.classify`): ONE forward pass of the model for the whole batch;
4. **de-duplicate** (:mod:`.dedupe`) exact and near copies, in the batch and the catalogue;
5. **place** (:mod:`.place`): decide the final keys and write the copies there, while the
   Great Expectations suite (:mod:`.quality`) checks the rows;
6. **commit** (:mod:`.commit`) artworks and outcomes in one transaction, then **delete**
   the sources (:func:`.place.delete_sources`).

While the tail thread does 5-6 for batch n (mostly waiting on the servers), the main thread
does 3-4 for batch n+1 (the CPU-bound forward pass) and the I/O threads do 2 for batch n+2.
Why a crash at any point loses nothing is argued once, in :mod:`.place`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future

from artclf_core.catalogue import ingest_log
from artclf_core.catalogue.ingest_log import LogRow
from artclf_core.config import INCOMING_PREFIX
from artclf_core.ingest import claim, classify, commit, dedupe, fetch, place, quality
from artclf_core.ingest.batch import TERMINAL, Batch, Clock, Item, Summary, summarise
from artclf_core.ingest.queue import check_prefix, registered_pages
from artclf_core.ingest.worker import Worker
from artclf_core.lake.s3 import ObjectRef

log = logging.getLogger(__name__)


class Ingestor(Worker):
    """Loads the model once and processes any number of batches with it."""

    # ------------------------------------------------------------------ entry points

    def ingest_prefix(
        self,
        prefix: str = INCOMING_PREFIX,
        *,
        batch_size: int = 256,
        retry_failed: bool = False,
        progress: Callable[[Summary], None] | None = None,
    ) -> Summary:
        """Process every object under ``prefix`` (``incoming/...`` or ``training/...``)."""
        prefix = check_prefix(prefix)
        # Moves an earlier run decided but did not finish, including those whose source is
        # already gone (killed between the delete and the bookkeeping): listing would miss them.
        bucket = self.settings.bucket
        repaired = place.finish_moves(self, ingest_log.unfinalized_under(self.conn, bucket, prefix))

        pages = registered_pages(self.s3, self.conn, bucket, prefix, batch_size)
        summary = self._run(pages, retry_failed=retry_failed, progress=progress)
        summary.repaired += repaired
        # Claims of dead runs on objects the listing no longer shows (deleted meanwhile):
        # taken over so that their uncommitted copies are removed and each row ends in a
        # recorded state (object_missing) instead of waiting in 'processing'.
        dead = ingest_log.dead_claims_under(self.conn, bucket, prefix)
        if dead:
            chunks = [dead[i : i + batch_size] for i in range(0, len(dead), batch_size)]
            summary.add(self._run(chunks, retry_failed=retry_failed))
        return summary

    def ingest_objects(self, refs: Sequence[ObjectRef], *, retry_failed: bool = False) -> Summary:
        """Register, claim and process one batch of object versions (any source of events)."""
        rows = ingest_log.register_objects(self.conn, refs)
        self.conn.commit()
        return self._run([rows], retry_failed=retry_failed)

    def ingest_log_ids(
        self, ids: Sequence[int], *, retry_failed: bool = False, chunk_size: int = 256
    ) -> Summary:
        """Process ingest-log rows already queued (by a sweep or a bucket notification).

        What an Airflow mapped task runs: the queue hands out ids, each task takes its share;
        rows another worker holds are skipped, finished rows are left alone. The ids go
        through in chunks of ``chunk_size``, so that a task given more overlaps downloading,
        classifying and moving. A task of the DAG's default 256 ids is one chunk: every chunk
        pays a quality validation (~60 ms), a commit and a delete call, and two tasks at once
        keep the cores busy anyway. 256 against 128: 10 % less CPU per image and 16 % more
        images/s through Airflow (docs/benchmarks.md, "Smaller inference calls, fewer chunks").
        """
        rows = ingest_log.rows_by_ids(self.conn, ids)
        self.conn.commit()
        chunks = [rows[i : i + chunk_size] for i in range(0, len(rows), chunk_size)]
        return self._run(chunks, retry_failed=retry_failed)

    # ------------------------------------------------------------------ three batches in flight

    def _run(
        self,
        row_batches: Iterable[Sequence[LogRow]],
        *,
        retry_failed: bool,
        progress: Callable[[Summary], None] | None = None,
    ) -> Summary:
        """Push batches of log rows through the stages, three batches in flight at once.

        De-duplicating batch n+1 before batch n is committed is safe: the commit re-checks,
        under the catalogue lock, every artwork committed since (as for concurrent workers).
        """
        total = Summary()
        started = time.perf_counter()
        process_cpu, load_cpu = time.process_time(), self.load_cpu
        waiting: list[Batch] = []  # claimed and downloading, in order
        ready: Batch | None = None  # in the main thread's hands, not yet the tail's
        tail: Future[Summary] | None = None

        def collect() -> None:
            nonlocal tail
            if tail is not None:
                done, tail = tail, None
                total.add(done.result())
                total.seconds = time.perf_counter() - started
                if progress:
                    progress(total)

        def advance() -> None:
            """Front of the oldest waiting batch, then its tail after the previous one's."""
            nonlocal ready, tail
            ready = waiting.pop(0)
            self._front(ready)
            collect()
            tail, ready = self.tail_pool.submit(self._tail, ready), None

        try:
            for rows in row_batches:
                batch = claim.claim(self, rows, retry_failed=retry_failed)
                fetch.start(self, batch)
                waiting.append(batch)
                if len(waiting) > 1:  # keep one batch downloading while the other is worked
                    advance()
            while waiting:
                advance()
            collect()
        except BaseException:
            # What was claimed but not finished becomes claimable again at once instead of
            # waiting for the claim lease (a batch whose tail failed is the retry's job).
            if tail is not None:
                try:
                    tail.result()
                except Exception as exc:  # noqa: BLE001 - the first error is the one raised
                    log.warning(
                        "a batch's tail failed while another error stopped the run: %s", exc
                    )
            for batch in [*waiting, *([ready] if ready is not None else [])]:
                claim.release(self, batch)
            raise
        total.seconds = time.perf_counter() - started
        # The model's load and the checks' first import are start-up, not this run's work.
        total.settle_other(time.process_time() - process_cpu - (self.load_cpu - load_cpu))
        if progress:
            progress(total)
        return total

    def _front(self, batch: Batch) -> None:
        """Main thread: wait for the downloads, classify, de-duplicate, plan the final keys."""
        if not batch.items:
            return
        waited = time.perf_counter()
        for future in batch.futures:
            future.result()
        clock = batch.clock = Clock()
        clock.laps["fetch_wait"] = time.perf_counter() - waited
        valid = [it for it in batch.items if not it.state]
        if valid:
            self.follow_model_switch()
        batch.model = self.model
        if valid:
            classify.classify(self.model, valid)
            clock.lap("model", "forward")
            batch.seen_up_to = dedupe.deduplicate(self, valid)
            self.conn.commit()  # end the read-only transaction of the queries
            clock.lap("dedup")
        batch.new_rows = place.plan(self.model, batch.items)
        clock.lap("plan")

    def _tail(self, batch: Batch) -> Summary:
        """Tail thread: copy to the final keys, check, commit, delete the sources."""
        items, new_rows, clock = batch.items, batch.new_rows, batch.clock
        if not items:
            return batch.summary
        clock.restart()
        # The quality checks (CPU) run while the copies (I/O) are under way.
        rows = [row for _, row in new_rows]
        verdict_future = self.check_pool.submit(quality.timed, self.validate, rows)
        movers = [it for it in items if it.state in TERMINAL and not it.in_place]
        place.write(self, movers, new_rows)
        clock.lap("copy", "put")
        verdict, checks_cpu = verdict_future.result()
        clock.lap("quality")
        clock.cpu["quality"] += checks_cpu
        if not verdict.success:
            log.error("batch failed its quality checks, not committed: %s", verdict.summary())
            new_rows = place.undo(
                self, items, movers, "quality_check_failed", verdict.summary()[:2000]
            )
        try:
            self._commit(batch, new_rows)
        except commit.ModelSwitched as exc:
            # A new model became active while this batch was classified with the old one:
            # committing would file artworks the active version has no embedding for. Undo
            # the copies and retry the batch (with the new model) on the next run.
            log.warning("%s; the batch is retried", exc)
            self._commit(batch, place.undo(self, items, movers, "model_switched", str(exc)))
        clock.lap("commit")
        unplaced = place.place_late_duplicates(self, [it for it in movers if it.misplaced])
        moved = [it for it in items if it.state in TERMINAL and not it.in_place]
        self._delete_sources([it for it in moved if it not in unplaced])
        clock.lap("delete")
        batch.summary.add(summarise(items, clock))
        return batch.summary

    # The two steps either side of the commit are methods, so that a test (or a subclass)
    # can crash a run exactly there (tests/faults, tests/test_dags.py).

    def _commit(self, batch: Batch, new_rows: list) -> None:
        commit.commit(self, batch, new_rows)

    def _delete_sources(self, moved: list[Item]) -> None:
        place.delete_sources(self, moved)
