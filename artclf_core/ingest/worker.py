"""The resources one ingest process holds for all its batches: S3 clients, connections, thread
pools and the model, loaded once and reloaded when another version becomes active.

Every stage of :mod:`artclf_core.ingest` takes a :class:`Worker` for what it needs from these;
the orchestrator (:class:`artclf_core.ingest.ingestor.Ingestor`) is a Worker.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Self

from artclf_core.catalogue import db, registry
from artclf_core.catalogue.artworks import ArtworkRow
from artclf_core.config import Settings
from artclf_core.images.decode import DEFAULT_LIMITS, Limits
from artclf_core.ingest import quality
from artclf_core.lake import s3 as s3lib
from artclf_core.model.files import keep_copy

if TYPE_CHECKING:  # TensorFlow loads only when a model does, not for a sweep
    from artclf_core.model.artmodel import ArtModel

log = logging.getLogger(__name__)


class Worker:
    """Loads the model once and holds what the stages of every batch share."""

    def __init__(
        self,
        settings: Settings,
        *,
        model: ArtModel | None = None,
        workers: int = 8,
        limits: Limits = DEFAULT_LIMITS,
        worker_id: str | None = None,
        validate: Callable[[Sequence[ArtworkRow]], quality.QualityResult] | None = None,
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
        #: CPU seconds spent loading models (once per process, and at a switch) and importing
        #: Great Expectations: the start-up ``artclf ingest -v`` keeps apart from the
        #: per-object account.
        self.load_cpu = 0.0
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

        First used on the main thread (the claim stage, before any download is submitted),
        so the I/O threads only ever read a loaded model.
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
            self.check_pool.submit(self._warm_up_checks)
        if getattr(model, "path", None):
            keep_copy(model.path, model.version)
        registry.register_model(
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

    def _warm_up_checks(self) -> None:
        start = time.thread_time()
        quality.warm_up()
        self.load_cpu += time.thread_time() - start

    def _load_model(self) -> ArtModel:
        start = time.process_time()
        model = registry.load_for_inference(self.settings)
        self.load_cpu += time.process_time() - start
        return model

    def follow_model_switch(self) -> None:
        """Reload the model if another one became active since this worker loaded it."""
        if not self.follow_active or self._model is None:
            return  # nothing loaded yet: the first use loads the active model anyway
        active = registry.active_version(self.conn)
        self.conn.commit()
        if active is not None and active != self.model.version:
            log.info("active model is now %s (was %s): reloading", active, self.model.version)
            self.model = self._load_model()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.move_pool.shutdown(wait=True)
        self.tail_pool.shutdown(wait=True)
        self.check_pool.shutdown(wait=True)
        self.conn.close()
        self.tail_conn.close()
