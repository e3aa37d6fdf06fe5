"""``artclf ingest``: from objects waiting in the bucket to catalogued rows, in batches.

One batch (a listing page of a few hundred objects) goes through:

1. **register + claim** in the ingest log (one statement each; ``SKIP LOCKED`` lets several
   workers share a prefix);
2. **fetch + validate + hash** on a thread pool (S3 GETs wait on the network, Pillow and
   numpy release the GIL while decoding and hashing);
3. **classify + embed** with ONE forward pass of the model for the whole batch;
4. **de-duplicate** exact (SHA-256) and near (pHash confirmed by dHash) copies, within the
   batch and against the catalogue (one indexed query each for the whole batch);
5. **copy** each object to its final key while the Great Expectations suite checks the rows
   (a failing batch is not committed and its copies are removed);
6. **commit** artworks and outcomes in one transaction, then **delete** the source objects
   (one DeleteObjects call) and mark them finalised.

Three batches are in flight at once: while the tail thread does 5-6 for batch n (S3 copies
and deletes, the checks, the commit: mostly waiting on the servers), the main thread does 3-4
for batch n+1 (the CPU-bound forward pass) and the I/O threads do 2 for batch n+2.

Crash safety: the copy happens before the commit and the delete after it, and every final key
is a pure function of the object and its log row, so re-running after a crash at any point
repeats the same copies and finishes the job; nothing is lost, no row is written twice.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError

from artclf_core import CLASSES, db, dedup, quality, registry
from artclf_core import s3 as s3lib
from artclf_core.config import (
    CATALOG_PREFIX,
    DUPLICATES_PREFIX,
    INCOMING_PREFIX,
    QUARANTINE_PREFIX,
    TRAINING_PREFIX,
    Settings,
)
from artclf_core.images import DEFAULT_LIMITS, ImageRejected, Limits, decode_image
from artclf_core.preprocess import to_model_input

if TYPE_CHECKING:  # TensorFlow loads only when an Ingestor is built, not for a sweep
    import psycopg

    from artclf_core.model import ArtModel

log = logging.getLogger(__name__)

TERMINAL = ("catalogued", "duplicate", "quarantined")
CLAIMABLE = ("pending", "failed", "processing")


@dataclass
class Summary:
    """What one ``ingest`` did; printed by the CLI and returned to Airflow tasks."""

    seen: int = 0
    catalogued: int = 0
    duplicates: int = 0
    quarantined: int = 0
    failed: int = 0
    skipped: int = 0
    repaired: int = 0
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)
    #: Wall seconds per stage: fetch_wait (waiting for downloads/decoding that did not overlap
    #: the previous batch), model, dedup, quality, copy, commit, delete.
    stages: dict[str, float] = field(default_factory=dict)

    def add(self, other: Summary) -> None:
        for stage, secs in other.stages.items():
            self.stages[stage] = self.stages.get(stage, 0.0) + secs
        for name in (
            "seen",
            "catalogued",
            "duplicates",
            "quarantined",
            "failed",
            "skipped",
            "repaired",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for reason, n in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n

    @property
    def processed(self) -> int:
        return self.catalogued + self.duplicates + self.quarantined + self.failed

    def line(self) -> str:
        rate = self.processed / self.seconds if self.seconds else 0.0
        text = (
            f"catalogued {self.catalogued} / duplicates {self.duplicates} / "
            f"quarantined {self.quarantined} / failed {self.failed}"
        )
        if self.skipped:
            text += f" / skipped {self.skipped}"
        if self.repaired:
            text += f" / repaired {self.repaired}"
        return text + f"  ({self.seen} seen, {self.seconds:.1f} s, {rate:.0f} images/s)"

    def as_dict(self) -> dict:
        return {
            "seen": self.seen,
            "catalogued": self.catalogued,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
            "failed": self.failed,
            "skipped": self.skipped,
            "repaired": self.repaired,
            "seconds": round(self.seconds, 3),
            "reasons": dict(self.reasons),
            "stages": {k: round(v, 3) for k, v in self.stages.items()},
        }


@dataclass
class _Batch:
    """A claimed batch on its way: downloading, then planned by the main thread (front), then
    moved and committed by the tail thread."""

    summary: Summary
    items: list[_Item]
    futures: list
    #: The model that classified it (the active one may change before the commit).
    model: ArtModel | None = None
    #: Highest artwork id its de-duplication queries saw: the commit re-checks those above.
    seen_up_to: int = 0
    new_rows: list[tuple[_Item, db.ArtworkRow]] = field(default_factory=list)
    clock: _Clock | None = None


@dataclass
class _Item:
    """One claimed object on its way through a batch."""

    row: db.LogRow
    data_size: int = 0
    #: The downloaded bytes, kept until the move writes them at the final key (a PUT costs
    #: less than a server-side copy, s3.DataPath), then dropped.
    data: bytes | None = None
    content_type: str | None = None
    pixels: np.ndarray | None = None
    width: int = 0
    height: int = 0
    format: str = ""
    sha256: str = ""
    phash: int = 0
    dhash: int = 0
    # outcome
    state: str = ""
    reason: str | None = None
    message: str | None = None
    label: str | None = None
    probabilities: np.ndarray | None = None
    embedding: np.ndarray | None = None
    origin: _Item | None = None  # the earlier item of this batch it copies
    duplicate_of: int | None = None  # artwork id
    duplicate_kind: str | None = None
    distance: int | None = None
    artwork_id: int | None = None
    final_key: str | None = None
    #: A copy already placed under catalog/ for an artwork that turned out, at commit time,
    #: to duplicate one a concurrent worker had just catalogued: moved again after commit.
    misplaced: str | None = None

    @property
    def in_place(self) -> bool:
        return self.row.key.startswith(TRAINING_PREFIX)

    @property
    def curated_label(self) -> str | None:
        """``training/<label>/...`` objects carry their label in the key."""
        if not self.in_place:
            return None
        parts = self.row.key[len(TRAINING_PREFIX) :].split("/", 1)
        return parts[0] if len(parts) == 2 and parts[0] in CLASSES else None

    def fail(self, reason: str, message: str) -> None:
        self.state, self.reason, self.message = "failed", reason, message

    def quarantine(self, reason: str, message: str) -> None:
        self.state, self.reason, self.message = "quarantined", reason, message


def catalog_key(label: str, sha256: str, key: str) -> str:
    """``catalog/<label>/<sha256[:16]>-<name>``: unique per content, stable across re-runs
    (an over-long name is shortened to fit the store, :func:`artclf_core.s3.fit_key`)."""
    return s3lib.fit_key(f"{CATALOG_PREFIX}{label}/", f"{sha256[:16]}-", s3lib.basename(key))


def side_key(prefix: str, log_id: int, key: str) -> str:
    """``duplicates/<log id>-<name>`` or ``quarantine/<log id>-<name>`` (shortened to fit)."""
    return s3lib.fit_key(prefix, f"{log_id}-", s3lib.basename(key))


def trace_metadata(item: _Item) -> dict[str, str]:
    """S3 user metadata written on the moved object: its history, readable by any S3 client."""
    return _trace(
        item.state,
        item.row.id,
        item.row.key,
        reason=item.reason,
        label=item.label,
        duplicate_of=item.duplicate_of,
        artwork_id=item.artwork_id,
    )


def _trace(
    state: str,
    log_id: int,
    source_key: str,
    *,
    reason: str | None = None,
    label: str | None = None,
    duplicate_of: int | None = None,
    artwork_id: int | None = None,
) -> dict[str, str]:
    """The trace metadata from its fields: one layout for first moves and repairs."""
    meta = {
        "artclf-state": state,
        "artclf-log-id": str(log_id),
        "artclf-source-key": urllib.parse.quote(source_key),
    }
    if reason:
        meta["artclf-reason"] = reason
    if label:
        meta["artclf-label"] = label
    if duplicate_of:
        meta["artclf-duplicate-of"] = str(duplicate_of)
    if artwork_id:
        meta["artclf-artwork-id"] = str(artwork_id)
    return meta


class ModelSwitched(RuntimeError):
    """The active model changed between classifying a batch and committing it."""


class Ingestor:
    """Loads the model once and processes any number of batches with it."""

    def __init__(
        self,
        settings: Settings,
        *,
        model: ArtModel | None = None,
        workers: int = 8,
        limits: Limits = DEFAULT_LIMITS,
        worker_id: str | None = None,
        validate: Callable[[Sequence[db.ArtworkRow]], quality.QualityResult] | None = None,
    ) -> None:
        self.settings = settings
        self.s3 = s3lib.client(settings, max_pool=max(workers * 2, 10))
        #: GETs and the moves' PUTs (obstore); listings, deletes and copies use ``self.s3``.
        self.data_path = s3lib.DataPath(settings)
        #: Given a model (argument or ARTCLF_MODEL), use it whatever the registry says; else
        #: follow the registry's active model, reloading it when a new one is switched in.
        self.follow_active = model is None and not settings.model_path
        #: Loaded when the first claimed object needs it (:attr:`model`): a run with nothing
        #: to do lists, finds nothing and returns without TensorFlow or Great Expectations.
        self._model: ArtModel | None = None
        self.limits = limits
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="artclf-io")
        # Moves get their own threads so they never queue behind the next batch's downloads.
        self.move_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="artclf-mv")
        self.check_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="artclf-gx")
        #: One batch's tail (copies, checks, commit, deletes) at a time, in batch order.
        self.tail_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="artclf-tail")
        self.validate = validate or quality.validate_rows
        self._warm_checks = validate is None
        self.conn = db.connect(settings.db_url)
        #: The tail thread's own connection: it commits batch n while the main thread queries
        #: for batch n+1.
        self.tail_conn = db.connect(settings.db_url)
        if model is not None:
            self._use(model)

    @property
    def model(self) -> ArtModel:
        """The model batches are classified with, loaded (and registered) on first use.

        First used on the main thread (``_stage``, before any download is submitted), so the
        I/O threads only ever read a loaded model.
        """
        if self._model is None:
            self._use(self._load_model())
        assert self._model is not None
        return self._model

    @model.setter
    def model(self, model: ArtModel) -> None:
        self._use(model)

    def _use(self, model: ArtModel) -> None:
        """Make ``model`` this worker's, known to the registry; start Great Expectations'
        import meanwhile (a worker that classifies will check a batch soon)."""
        if self._warm_checks:  # import Great Expectations while the first batch downloads
            self._warm_checks = False
            self.check_pool.submit(quality.warm_up)
        if getattr(model, "path", None):
            registry.keep_copy(model.path, model.version)
        db.register_model(
            self.conn,
            version=model.version,
            arch=model.arch,
            classes=model.classes,
            artifact=str(getattr(model, "path", "") or "") or None,
            metrics=getattr(model, "metrics", None),
            activate=None,  # the first model to ingest becomes the active one
        )
        self.conn.commit()
        self._model = model

    def _load_model(self) -> ArtModel:
        from artclf_core.model import load_for_inference

        return load_for_inference(self.settings)

    def _follow_model_switch(self) -> None:
        """Reload the model if another one became active since this worker loaded it."""
        if not self.follow_active or self._model is None:
            return  # nothing loaded yet: the first use loads the active model anyway
        active = db.active_version(self.conn)
        self.conn.commit()
        if active is not None and active != self.model.version:
            log.info("active model is now %s (was %s): reloading", active, self.model.version)
            self.model = self._load_model()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.move_pool.shutdown(wait=True)
        self.tail_pool.shutdown(wait=True)
        self.check_pool.shutdown(wait=True)
        self.conn.close()
        self.tail_conn.close()

    def __enter__(self) -> Ingestor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        repaired = self._finish_moves(db.unfinalized_under(self.conn, self.settings.bucket, prefix))

        def pages() -> Iterator[list[db.LogRow]]:
            for listed_at, refs in timed_pages(
                self.s3, self.conn, self.settings.bucket, prefix, batch_size
            ):
                rows = db.register_objects(self.conn, refs, listed_at=listed_at)
                self.conn.commit()
                yield rows

        summary = self._run(pages(), retry_failed=retry_failed, progress=progress)
        summary.repaired += repaired
        # Claims of dead runs on objects the listing no longer shows (deleted meanwhile):
        # taken over here so that their uncommitted copies are removed and each row ends in
        # a recorded state (object_missing) instead of waiting in 'processing'.
        dead = db.dead_claims_under(self.conn, self.settings.bucket, prefix)
        if dead:
            chunks = [dead[i : i + batch_size] for i in range(0, len(dead), batch_size)]
            summary.add(self._run(chunks, retry_failed=retry_failed))
        return summary

    def ingest_objects(
        self, refs: Sequence[db.ObjectRef], *, retry_failed: bool = False
    ) -> Summary:
        """Register, claim and process one batch of object versions (any source of events)."""
        rows = db.register_objects(self.conn, refs)
        self.conn.commit()
        return self._run([rows], retry_failed=retry_failed)

    def ingest_log_ids(
        self, ids: Sequence[int], *, retry_failed: bool = False, chunk_size: int = 128
    ) -> Summary:
        """Process ingest-log rows already queued (by a sweep or a bucket notification).

        This is what an Airflow mapped task runs: the queue hands out ids, each task takes its
        share; rows another worker holds are skipped, finished rows are left alone. The ids go
        through the pipeline in chunks of ``chunk_size``, so that even one task overlaps
        downloading, classifying and moving.
        """
        rows = db.rows_by_ids(self.conn, ids)
        self.conn.commit()
        chunks = [rows[i : i + chunk_size] for i in range(0, len(rows), chunk_size)]
        return self._run(chunks, retry_failed=retry_failed)

    # ------------------------------------------------------------------ the batch pipeline

    def _run(
        self,
        row_batches: Iterable[Sequence[db.LogRow]],
        *,
        retry_failed: bool,
        progress: Callable[[Summary], None] | None = None,
    ) -> Summary:
        """Push batches of log rows through the pipeline, three batches in flight at once.

        While batch n is copied, checked, committed and moved (its *tail*, on the tail thread
        with a connection of its own), the main thread classifies and de-duplicates batch n+1
        and the I/O threads download and decode batch n+2. The CPU-bound forward pass thus
        overlaps the I/O-bound S3 copies instead of waiting for them. De-duplicating batch n+1
        before batch n is committed is safe: the commit re-checks, under the catalogue lock,
        every artwork committed since its de-duplication (as for concurrent workers).
        """
        total = Summary()
        started = time.perf_counter()
        waiting: list[_Batch] = []  # claimed and downloading, in order
        ready: _Batch | None = None  # in the main thread's hands, not yet the tail's
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
                waiting.append(self._stage(rows, retry_failed=retry_failed))
                if len(waiting) > 1:  # keep one batch downloading while the other is worked
                    advance()
            while waiting:
                advance()
            collect()
        except BaseException:
            # Whatever was claimed but not finished becomes claimable again at once instead of
            # waiting for the claim lease (a batch whose tail failed is the retry's job).
            if tail is not None:
                try:
                    tail.result()
                except Exception as exc:  # noqa: BLE001 - the first error is the one raised
                    log.warning(
                        "a batch's tail failed while another error stopped the run: %s", exc
                    )
                    log.debug("the tail's error", exc_info=True)
            for batch in [*waiting, *([ready] if ready is not None else [])]:
                self._release(batch)
            raise
        total.seconds = time.perf_counter() - started
        if progress:
            progress(total)
        return total

    def _stage(self, rows: Sequence[db.LogRow], *, retry_failed: bool) -> _Batch:
        """Finish interrupted moves, claim the rest and start downloading it (non-blocking)."""
        summary = Summary(seen=len(rows))
        summary.repaired = self._finish_moves(
            db.unfinalized(self.conn, [r.id for r in rows if r.state in TERMINAL])
        )
        candidates = [r.id for r in rows if r.state in CLAIMABLE]
        claimed = db.claim(
            self.conn,
            candidates,
            worker=self.worker_id,
            max_attempts=self.settings.max_attempts,
            retry_failed=retry_failed,
        )
        summary.skipped = len(rows) - len(claimed) - summary.repaired
        # Key order, so that within a batch the first of a group of copies (in listing
        # order) is the one catalogued, whatever order the database returned rows in.
        # Copies a dead holder made of these objects but never committed: remove them now,
        # before this run decides (perhaps differently) where each object goes.
        strays = [(r.bucket, r.intended_key) for r in claimed if r.intended_key]
        if strays:
            self._remove_keys(strays, [r.id for r in claimed], self.conn)
            log.info("removed up to %d uncommitted copies of a dead run", len(strays))
        claimed.sort(key=lambda r: (r.key, r.id))
        if claimed:
            self.model  # noqa: B018 - load it here, on the main thread, before the downloads
        items = [_Item(row=r) for r in claimed]
        futures = [self.pool.submit(self._prepare, it) for it in items]
        return _Batch(summary, items, futures)

    def _release(self, batch: _Batch) -> None:
        for future in batch.futures:
            future.cancel()
        if self.conn.closed or self.conn.broken:
            return  # the claims ended with the session (sql/007): nothing to release
        try:
            self.conn.rollback()
            db.release_claims(self.conn, [it.row.id for it in batch.items], self.worker_id)
        except Exception as exc:  # noqa: BLE001 - best effort while another error propagates
            # A lost connection ends the claims anyway (sql/007); the error that stopped the
            # run is the one to show, so one line here, not a second traceback.
            log.warning("could not release %d claims: %s", len(batch.items), exc)

    # ------------------------------------------------------------------ one batch

    def _front(self, batch: _Batch) -> None:
        """Main thread: wait for the downloads, classify, de-duplicate, plan the final keys."""
        if not batch.items:
            return
        waited = time.perf_counter()
        for future in batch.futures:
            future.result()
        clock = batch.clock = _Clock()
        clock.laps["fetch_wait"] = time.perf_counter() - waited
        items = batch.items
        valid = [it for it in items if not it.state]
        if valid:
            self._follow_model_switch()
        batch.model = self.model
        if valid:
            self._classify(valid)
            clock.lap("model")
            batch.seen_up_to = self._deduplicate(valid)
            self.conn.commit()  # end the read-only transaction of the queries
            clock.lap("dedup")
        batch.new_rows = self._plan(items)

    def _tail(self, batch: _Batch) -> Summary:
        """Tail thread: copy to the final keys, check, commit, delete the sources."""
        items, new_rows = batch.items, batch.new_rows
        if not items:
            return batch.summary
        clock = batch.clock
        clock.restart()
        # The quality checks (~60 ms per batch, CPU) run while the server-side copies (I/O)
        # are under way; a batch that fails them is not committed and its copies are removed.
        verdict_future = self.check_pool.submit(self.validate, [row for _, row in new_rows])
        movers = [it for it in items if it.state in TERMINAL and not it.in_place]
        # Recorded before the copies are made, so a run that takes these claims over after a
        # crash knows which copies to remove (no orphan under catalog/ or duplicates/).
        db.record_intents(
            self.tail_conn, [(it.row.id, it.final_key) for it in movers], self.worker_id
        )
        self.tail_conn.commit()
        self._copy_all(movers, new_rows)
        clock.lap("copy")
        verdict = verdict_future.result()
        clock.lap("quality")
        if not verdict.success:
            log.error("batch failed its quality checks, not committed: %s", verdict.summary())
            undo = [it for it in movers if it.state != "quarantined" and it.state in TERMINAL]
            for it in items:
                if it.state != "quarantined":
                    it.fail("quality_check_failed", verdict.summary()[:2000])
            new_rows = []
            self._remove_copies(undo)
        try:
            self._commit(batch, new_rows)
        except ModelSwitched as exc:
            # A new model became active while this batch was classified with the old one:
            # committing would file artworks the active version has no embedding for. Undo
            # the copies and retry the batch (with the new model) on the next run.
            log.warning("%s; the batch is retried", exc)
            undo = [it for it in movers if it.state != "quarantined" and it.state in TERMINAL]
            for it in items:
                if it.state != "quarantined":
                    it.fail("model_switched", str(exc))
            self._remove_copies(undo)
            self._commit(batch, [])
        clock.lap("commit")
        unplaced = self._place_late_duplicates([it for it in movers if it.misplaced])
        moved = [
            it for it in items if it.state in TERMINAL and not it.in_place and it not in unplaced
        ]
        self._delete_sources(moved)
        clock.lap("delete")
        outcome = _summarise(items)
        outcome.stages = clock.laps
        batch.summary.add(outcome)
        return batch.summary

    def _prepare(self, item: _Item) -> None:
        """Fetch, validate and hash one object (runs on the I/O thread pool)."""
        row = item.row
        if item.in_place and item.curated_label is None:
            # A labelled drop whose folder is not a class would train nothing and is almost
            # always a typo (training/paintings/, training/Sculpture/): say so, keep it there.
            folder = row.key[len(TRAINING_PREFIX) :].partition("/")
            item.quarantine(
                "unknown_label",
                f"labelled drops go under training/<label>/ with <label> one of "
                f"{', '.join(CLASSES)}; "
                + (f"{folder[0]!r} is not one" if folder[1] else "this one has no label folder")
                + " (move it to the right folder; it stays where it is until then)",
            )
            return
        try:
            data, item.content_type = self.data_path.get(
                row.bucket, row.key, max_bytes=self.limits.max_bytes
            )
        except s3lib.ObjectTooLarge as exc:
            item.quarantine(
                "too_large_file",
                f"file is {exc.size} bytes, the limit is {self.limits.max_bytes} bytes",
            )
            return
        except s3lib.ObjectMissing:
            if row.generation > 0:
                item.state = "phantom"  # a stale listing of an object already moved away
            else:
                item.fail("object_missing", "the object was deleted before it was processed")
            return
        except (s3lib.S3Failure, OSError) as exc:
            item.fail("s3_error", f"S3 GET failed: {exc}")
            return
        item.data_size = len(data)
        try:
            decoded = decode_image(data, self.limits)
        except ImageRejected as exc:
            item.quarantine(exc.reason, exc.message)
            return
        except Exception as exc:  # noqa: BLE001 - an unexpected decoder crash is retryable
            item.fail("internal_error", f"decoding crashed: {type(exc).__name__}: {exc}")
            return
        item.sha256 = dedup.sha256_hex(data)
        if not item.in_place:
            item.data = data  # written at its final key by the move
        item.phash, item.dhash = dedup.image_hashes(decoded.image)
        item.pixels = to_model_input(decoded.image, self.model.image_size)
        item.width, item.height, item.format = decoded.width, decoded.height, decoded.format

    def _classify(self, items: list[_Item]) -> None:
        """One forward pass for the whole batch: probabilities and embeddings together."""
        size = self.model.image_size
        # A model switch between download and classification can change the input size.
        batch = np.stack([_resized(it.pixels, size) for it in items])
        probs, embeddings = self.model.predict(batch)
        classes = list(self.model.classes)
        for it, p, e in zip(items, probs, embeddings, strict=True):
            it.probabilities, it.embedding = p, e
            it.label = classes[int(np.argmax(p))]
            it.pixels = None  # free the pixels early; the batch only keeps vectors now

    def _deduplicate(self, items: list[_Item]) -> int:
        """Exact then near duplicates, against the catalogue and within the batch.

        Returns the highest artwork id the queries could see: artworks committed after that
        (by concurrent workers, or this worker's previous batch) are checked again at commit
        time (see _commit), under the catalogue lock.
        """
        seen_up_to = db.max_artwork_id(self.conn)
        shas = [it.sha256 for it in items]
        hashes = [it.phash for it in items]
        exact = db.find_exact(self.conn, shas)
        need_near = [i for i, it in enumerate(items) if it.sha256 not in exact]
        near = db.find_near(
            self.conn,
            [hashes[i] for i in need_near],
            [items[i].dhash for i in need_near],
            [items[i].embedding for i in need_near],
            model_version=self.model.version,
        )
        near_by_item = {need_near[q]: hit for q, hit in near.items()}
        in_batch = dedup.find_duplicates_in_batch(shas, hashes, dhashes=[it.dhash for it in items])
        for i, it in enumerate(items):
            if it.sha256 in exact:
                it.state, it.duplicate_kind, it.distance = "duplicate", "exact", 0
                it.duplicate_of = exact[it.sha256]
            elif in_batch[i] and in_batch[i][0] == "exact":
                it.state, it.duplicate_kind, it.distance = "duplicate", "exact", 0
                it.origin = items[in_batch[i][1]]
            elif i in near_by_item:
                it.state, it.duplicate_kind = "duplicate", "near"
                it.duplicate_of, it.distance = near_by_item[i]
            elif in_batch[i]:
                j = in_batch[i][1]
                it.state, it.duplicate_kind = "duplicate", "near"
                it.origin = items[j]
                it.distance = dedup.hamming(hashes[i], hashes[j])
            else:
                it.state = "catalogued"
        # Resolve chains: a copy of an earlier item that is itself a copy points at the original.
        for it in items:
            origin = it.origin
            while origin is not None and origin.origin is not None:
                origin = origin.origin
            if origin is not None and origin.duplicate_of is not None:
                it.duplicate_of, it.origin = origin.duplicate_of, None
            else:
                it.origin = origin
        return seen_up_to

    def _plan(self, items: list[_Item]) -> list[tuple[_Item, db.ArtworkRow]]:
        """Decide every final key and build the artwork rows to insert."""
        new_rows = []
        for it in items:
            key = it.row.key
            if it.state == "catalogued":
                it.final_key = key if it.in_place else catalog_key(it.label, it.sha256, key)
                probs = {
                    c: float(p) for c, p in zip(self.model.classes, it.probabilities, strict=True)
                }
                new_rows.append(
                    (
                        it,
                        db.ArtworkRow(
                            bucket=it.row.bucket,
                            key=it.final_key,
                            label=it.label,
                            probability=float(np.max(it.probabilities)),
                            probabilities=probs,
                            embedding=it.embedding,
                            model_version=self.model.version,
                            sha256=it.sha256,
                            phash=it.phash,
                            phash_bands=dedup.band_keys(it.phash),
                            dhash=it.dhash,
                            width=it.width,
                            height=it.height,
                            format=it.format,
                            byte_size=it.data_size,
                            source_key=key,
                            source_etag=it.row.etag,
                            curated_label=it.curated_label,
                        ),
                    )
                )
            elif it.state == "duplicate":
                it.final_key = key if it.in_place else side_key(DUPLICATES_PREFIX, it.row.id, key)
            elif it.state == "quarantined":
                it.final_key = key if it.in_place else side_key(QUARANTINE_PREFIX, it.row.id, key)
        return new_rows

    def _copy_all(self, movers: list[_Item], new_rows: list) -> None:
        """Write every moving object at its final key, in parallel: a PUT of the bytes
        downloaded (and hashed) with the trace metadata, or a server-side copy where they
        are not at hand (a quarantine decided before the download)."""

        def copy_one(it: _Item) -> None:
            data, it.data = it.data, None
            try:
                if data is not None:
                    self.data_path.put(
                        it.row.bucket, it.final_key, data, trace_metadata(it), it.content_type
                    )
                else:
                    s3lib.copy(self.s3, it.row.bucket, it.row.key, it.final_key, trace_metadata(it))
            except (ClientError, BotoCoreError, s3lib.S3Failure) as exc:
                it.fail("s3_error", f"S3 copy to {it.final_key} failed: {exc}")

        list(self.move_pool.map(copy_one, movers))
        new_rows[:] = [(it, row) for it, row in new_rows if it.state == "catalogued"]

    def _drop_concurrent_copies(
        self, new_rows: list[tuple[_Item, db.ArtworkRow]], seen_up_to: int
    ) -> list[tuple[_Item, db.ArtworkRow]]:
        """Turn into duplicates the new artworks that copy one that a concurrent worker
        committed after our de-duplication queries (we hold the catalogue lock)."""
        if not new_rows:
            return new_rows
        recent = db.artworks_after(self.tail_conn, seen_up_to)
        if not recent:
            return new_rows
        ids = [r[0] for r in recent]
        shas = {r[1]: r[0] for r in recent}
        hashes = np.array([r[2] for r in recent], dtype=np.int64).view(np.uint64)
        dhashes = np.array([r[3] for r in recent], dtype=np.int64).view(np.uint64)
        kept = []
        for it, row in new_rows:
            match = shas.get(it.sha256)
            if match is None:
                p = np.bitwise_count(hashes ^ np.uint64(dedup.to_unsigned64(it.phash)))
                d = np.bitwise_count(dhashes ^ np.uint64(dedup.to_unsigned64(it.dhash)))
                hits = np.flatnonzero(
                    (p <= dedup.NEAR_DUP_MAX_DISTANCE) & (d <= dedup.NEAR_DUP_MAX_DHASH)
                )
                match = ids[int(hits[0])] if hits.size else None
            if match is None:
                kept.append((it, row))
            else:
                exact = it.sha256 in shas
                self._late_duplicate(it, match, exact=exact)
        return kept

    def _late_duplicate(self, it: _Item, artwork_id: int, *, exact: bool) -> None:
        """Record ``it`` as a duplicate of an artwork catalogued concurrently (see _commit)."""
        it.misplaced = None if it.in_place else it.final_key
        it.state, it.duplicate_of = "duplicate", artwork_id
        it.duplicate_kind = "exact" if exact else "near"
        it.distance = 0 if exact else None
        it.final_key = (
            it.row.key if it.in_place else side_key(DUPLICATES_PREFIX, it.row.id, it.row.key)
        )

    def _place_late_duplicates(self, late: list[_Item]) -> list[_Item]:
        """Copy late duplicates from incoming/ to duplicates/ and drop their catalog/ copy.

        Returns the items whose copy failed: their source stays in incoming/ and the next run
        finishes the move (their log row is decided but not finalised).
        """
        unplaced: list[_Item] = []

        def copy_one(it: _Item) -> None:
            try:
                s3lib.copy(self.s3, it.row.bucket, it.row.key, it.final_key, trace_metadata(it))
            except (ClientError, BotoCoreError) as exc:
                log.warning("could not move %s to %s: %s", it.row.key, it.final_key, exc)
                unplaced.append(it)

        list(self.move_pool.map(copy_one, late))
        placed = [it for it in late if it not in unplaced]
        self._remove_keys(
            [(it.row.bucket, it.misplaced) for it in placed], [it.row.id for it in placed]
        )
        for it in placed:
            it.misplaced = None
        return unplaced

    def _remove_copies(self, items: list[_Item]) -> None:
        """Best effort: drop the final-key copies of objects that were not committed."""
        self._remove_keys(
            [
                (it.row.bucket, it.final_key)
                for it in items
                if it.final_key and it.final_key != it.row.key
            ],
            [it.row.id for it in items],
        )

    def _remove_keys(
        self,
        keys: list[tuple[str, str]],
        own_ids: Sequence[int],
        conn: psycopg.Connection | None = None,
    ) -> None:
        """Delete (bucket, key) copies made for the rows ``own_ids``, except keys that an
        artwork or another row owns (a concurrent worker may have placed the same bytes
        under the same name: :func:`artclf_core.db.owned_keys`)."""
        conn = conn or self.tail_conn
        by_bucket: dict[str, list[str]] = {}
        for bucket, key in keys:
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, names in by_bucket.items():
            owned = db.owned_keys(conn, bucket, names, own_ids)
            conn.commit()
            names = [k for k in names if k not in owned]
            try:
                s3lib.delete_many(self.s3, bucket, names)
            except (ClientError, BotoCoreError) as exc:
                log.warning("could not remove %d uncommitted copies: %s", len(names), exc)

    def _commit(self, batch: _Batch, new_rows: list[tuple[_Item, db.ArtworkRow]]) -> None:
        """Artworks and every outcome of ``batch`` in one transaction (tail thread)."""
        items = batch.items
        conn = self.tail_conn
        conn.commit()  # so that the block below is the outermost transaction, not a savepoint
        with conn.transaction():  # outermost block: commits on exit, rolls back on error
            # Commits of new artworks are serialised (a short lock: the copies and checks are
            # done), so what concurrent workers catalogued since our de-duplication has ids
            # above what we saw: look at just those rows for copies of ours.
            db.lock_catalogue(conn)
            if self.follow_active and new_rows:
                active = db.active_version(conn)
                if active is not None and active != batch.model.version:
                    raise ModelSwitched(
                        f"model {active} was activated while this batch was classified "
                        f"with {batch.model.version}"
                    )
            new_rows = self._drop_concurrent_copies(new_rows, batch.seen_up_to)
            inserted, existing = db.insert_artworks(conn, [row for _, row in new_rows])
            for it, _row in new_rows:
                if it.sha256 in inserted:
                    it.artwork_id = inserted[it.sha256]
                else:  # the same bytes were catalogued meanwhile (outside our lock's reach)
                    self._late_duplicate(it, existing[it.sha256], exact=True)
            for it in items:
                if it.state == "duplicate" and it.duplicate_of is None:
                    origin = it.origin
                    if origin is not None and (origin.artwork_id or origin.duplicate_of):
                        it.duplicate_of = origin.artwork_id or origin.duplicate_of
                    else:  # its original failed to land: both are retried next run
                        it.fail("origin_failed", "the artwork it copies was not catalogued")
            db.forget(conn, [it.row.id for it in items if it.state == "phantom"])
            db.record_outcomes(
                conn,
                [
                    db.Outcome(
                        log_id=it.row.id,
                        state=it.state,
                        final_key=it.final_key,
                        reason=it.reason,
                        message=it.message,
                        artwork_id=it.artwork_id,
                        duplicate_of=it.duplicate_of,
                        duplicate_kind=it.duplicate_kind,
                        distance=it.distance,
                        finalized=it.in_place and it.state in TERMINAL,
                        stray_key=it.misplaced,
                    )
                    for it in items
                    if it.state != "phantom"
                ],
                self.worker_id,
            )

    def _delete_sources(self, moved: list[_Item]) -> None:
        """Remove the moved objects from incoming/ (one DeleteObjects call per 1,000)."""
        by_bucket: dict[str, list[_Item]] = {}
        for it in moved:
            by_bucket.setdefault(it.row.bucket, []).append(it)
        done: list[int] = []
        for bucket, items in by_bucket.items():
            try:
                failed = s3lib.delete_many(self.s3, bucket, [it.row.key for it in items])
            except (ClientError, BotoCoreError) as exc:
                log.warning(
                    "could not delete %d sources (next run finishes it): %s", len(items), exc
                )
                continue
            done += [it.row.id for it in items if it.row.key not in failed]
        db.mark_finalized(self.tail_conn, done)
        self.tail_conn.commit()

    def _finish_moves(self, rows: Iterable[db.LogRow]) -> int:
        """Finish moves that a crashed run committed but did not complete: copy to the final
        key with the same trace metadata as a first move, delete the source, drop a stray
        copy the row still records, and mark the row finalized."""
        rows = list(rows)
        if not rows:
            return 0
        fields = db.trace_fields(self.conn, [r.id for r in rows])
        self.conn.commit()
        strays = [(r.bucket, r.intended_key) for r in rows if r.intended_key]
        if strays:
            self._remove_keys(strays, [r.id for r in rows], self.conn)

        def finish(row: db.LogRow) -> bool:
            if not row.final_key or row.final_key == row.key:
                return True  # decided in place: nothing to move
            f = fields.get(row.id, {})
            meta = _trace(
                row.state,
                row.id,
                row.key,
                reason=f.get("reason"),
                label=f.get("label"),
                duplicate_of=f.get("duplicate_of"),
                artwork_id=f.get("artwork_id"),
            )
            try:
                s3lib.copy(self.s3, row.bucket, row.key, row.final_key, meta)
                s3lib.delete(self.s3, row.bucket, row.key)
                return True
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                return code in ("NoSuchKey", "404")  # already moved

        done = [r.id for r, ok in zip(rows, self.move_pool.map(finish, rows), strict=True) if ok]
        db.mark_finalized(self.conn, done)
        self.conn.commit()
        return len(done)


def sweep(s3, conn, bucket: str, prefix: str = INCOMING_PREFIX, page_size: int = 1000) -> int:
    """Landing-zone sweep: queue every object under ``prefix`` not queued yet.

    For S3 stores without notifications (SeaweedFS, plain AWS S3 without an event bus), and to
    repair lost notifications. Processed objects leave ``incoming/``, so a sweep costs what is
    pending, not the size of the lake. Returns how many rows are waiting to be processed.
    """
    prefix = check_prefix(prefix)
    waiting = 0
    for listed_at, refs in timed_pages(s3, conn, bucket, prefix, page_size):
        rows = db.register_objects(conn, refs, listed_at=listed_at)
        conn.commit()
        waiting += sum(1 for r in rows if r.state in CLAIMABLE)
    return waiting


def timed_pages(
    s3, conn, bucket: str, prefix: str, page_size: int
) -> Iterator[tuple[datetime, list[db.ObjectRef]]]:
    """Listing pages, each with the database clock read just before its LIST request, so that
    :func:`db.register_objects` can tell a stale listing from a re-upload."""
    pages = iter(s3lib.iter_pages(s3, bucket, prefix, page_size=page_size))
    while True:
        listed_at = db.clock(conn)
        refs = next(pages, None)
        if refs is None:
            return
        yield listed_at, refs


def _resized(pixels: np.ndarray, size: int) -> np.ndarray:
    if pixels.shape[0] == size:
        return pixels
    from PIL import Image

    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))


class _Clock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def restart(self) -> None:
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self._last = now


def _summarise(items: Sequence[_Item]) -> Summary:
    s = Summary()
    for it in items:
        if it.state == "phantom":
            s.seen -= 1
        elif it.state == "catalogued":
            s.catalogued += 1
        elif it.state == "duplicate":
            s.duplicates += 1
        elif it.state == "quarantined":
            s.quarantined += 1
        else:
            s.failed += 1
        if it.reason:
            s.reasons[it.reason] = s.reasons.get(it.reason, 0) + 1
    return s


def check_prefix(prefix: str) -> str:
    """Only the landing zone and the training area are input; the rest is output."""
    if prefix in (INCOMING_PREFIX.rstrip("/"), TRAINING_PREFIX.rstrip("/")):
        prefix += "/"
    if not prefix.startswith((INCOMING_PREFIX, TRAINING_PREFIX)):
        raise ValueError(
            f"cannot ingest from {prefix!r}: input lives under {INCOMING_PREFIX!r} "
            f"(new drops) or {TRAINING_PREFIX!r} (labelled images, catalogued in place)"
        )
    return prefix
