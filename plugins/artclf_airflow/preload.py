"""Import what artclf tasks need once, in the process that forks them.

Every Airflow 3 task runs in a process forked from its executor's worker: the LocalExecutor's
workers are forked from the scheduler, the CeleryExecutor's pool from ``airflow celery
worker``. Measured on the project's 2 cores, an ``ingest_batch`` task spent ~4 s of a
one-image run importing TensorFlow/Keras (~1-4 s) and Great Expectations (~1-3 s) before
touching the image. Imported once in the parent, a forked task finds them in memory (shared
copy-on-write) and starts in a fraction of a second.

Only *imports* happen here: no model is loaded and no TensorFlow op runs, so TensorFlow has
not started its thread pools when the parent forks (forking a process whose runtime threads
hold locks is what makes TensorFlow fork-unsafe). Each task still loads the model itself.

Called from ``airflow_local_settings.py``, which Airflow imports in every process; the
embedded stack writes that file into ``$AIRFLOW_HOME/config/`` (see
``artclf_core/embedded/airflow.py``) and the compose image ships it. Off with
``ARTCLF_AIRFLOW_PRELOAD=0``.
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("artclf.preload")

#: Airflow commands whose process forks task processes.
FORKING_COMMANDS = (("scheduler",), ("celery", "worker"))


def forks_tasks(argv: list[str] | None = None) -> bool:
    """Whether this process is one that task processes are forked from."""
    args = [a for a in (argv if argv is not None else sys.argv)[1:] if not a.startswith("-")]
    return any(tuple(args[: len(cmd)]) == cmd for cmd in FORKING_COMMANDS)


def quiet_libraries() -> None:
    """TensorFlow's C++ banner and Great Expectations' INFO chatter would bury the task log
    (Airflow routes every logger at INFO into it). Called by every artclf task, and here."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    for name in ("great_expectations", "tensorflow", "absl", "h5py", "botocore", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


#: Niceness of the batch tasks (ingest, re-embed, retrain): ``ARTCLF_TASK_NICE``.
DEFAULT_TASK_NICE = 10


def yield_cpu() -> int:
    """Run this task process below the Airflow components (``os.nice``; threads started
    afterwards, the inference runtime's among them, inherit it); return the niceness.

    On a machine with as many busy batch threads as cores, the triggerer's event loop and the
    scheduler otherwise wait for a core: the triggerer then logs "async thread was blocked
    ... likely caused by a badly-written trigger" (19 times in a 40-image run, up to 1.9 s)
    although the trigger itself never blocks (tests/test_trigger.py; bench/trigger_loop.py
    times the loop beside busy processes at either priority). Batch work loses nothing that
    matters: it gets every cycle the latency-sensitive components leave.
    """
    wanted = int(os.environ.get("ARTCLF_TASK_NICE") or DEFAULT_TASK_NICE)
    current = os.nice(0)
    if wanted > current:
        current = os.nice(wanted - current)
    return current


def preload() -> float:
    """Import TensorFlow, Keras, Great Expectations and the artclf pipeline; return seconds."""
    started = time.perf_counter()
    quiet_libraries()
    import great_expectations  # noqa: F401
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    import artclf_core.ingest.ingestor  # noqa: F401
    import artclf_core.ingest.quality  # noqa: F401
    import artclf_core.lifecycle.reembed  # noqa: F401
    import artclf_core.model.artmodel  # noqa: F401

    return time.perf_counter() - started


def maybe_preload() -> None:
    """Preload in task-forking processes unless ``ARTCLF_AIRFLOW_PRELOAD`` is ``0``."""
    if os.environ.get("ARTCLF_AIRFLOW_PRELOAD", "1") == "0" or not forks_tasks():
        return
    try:
        seconds = preload()
    except Exception:  # noqa: BLE001 - an optimisation must never stop the scheduler
        log.warning("artclf preload failed; tasks will import on their own", exc_info=True)
        return
    log.info("artclf preloaded TensorFlow, Keras and Great Expectations in %.1fs", seconds)
