"""What travels through the stages of a batch: the claimed objects (:class:`Item`), the batch
itself (:class:`Batch`) and what it did (:class:`Summary`).

Every stage reads and fills these; none keeps state of its own. An item's ``state`` moves
from "" (claimed, in progress) to one of :data:`TERMINAL` or to ``failed`` (retried by a later
run) or ``phantom`` (a stale listing of an object already moved away: its row is forgotten).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from artclf_core import CLASSES
from artclf_core.catalogue.artworks import ArtworkRow
from artclf_core.catalogue.ingest_log import LogRow
from artclf_core.config import TRAINING_PREFIX

if TYPE_CHECKING:  # TensorFlow loads only when a model does, not for a sweep
    from artclf_core.model.artmodel import ArtModel

#: States an object ends in; each has exactly one place in the lake.
TERMINAL = ("catalogued", "duplicate", "quarantined")
#: States a run may claim (``processing``: a dead holder's claim, taken over).
CLAIMABLE = ("pending", "failed", "processing")
#: The CPU account of a run (:attr:`Summary.cpu`), in the order a batch meets the stages.
#: Each is the CPU time of the thread that does the work (``time.thread_time``); ``other`` is
#: the rest of the process's CPU over the run: the interpreter's extra inference threads,
#: obstore's and psycopg's own threads (the model's load excluded).
CPU_STAGES = (
    "claim",
    "get",
    "decode",
    "sha256",
    "fingerprints",
    "model_input",
    "forward",
    "dedup",
    "plan",
    "quality",
    "put",
    "commit",
    "delete",
    "other",
)


@contextmanager
def cpu_of(account: dict[str, float], stage: str) -> Iterator[None]:
    """Add the CPU this thread spends in the block to ``account[stage]`` (seconds)."""
    start = time.thread_time()
    try:
        yield
    finally:
        account[stage] = account.get(stage, 0.0) + time.thread_time() - start


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
    #: CPU seconds per stage of :data:`CPU_STAGES` (thread CPU time, summed over threads).
    cpu: dict[str, float] = field(default_factory=dict)

    def add(self, other: Summary) -> None:
        for stage, secs in other.stages.items():
            self.stages[stage] = self.stages.get(stage, 0.0) + secs
        for stage, secs in other.cpu.items():
            self.cpu[stage] = self.cpu.get(stage, 0.0) + secs
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
            "cpu": {k: round(self.cpu[k], 4) for k in CPU_STAGES if k in self.cpu},
        }

    def settle_other(self, process_cpu: float) -> None:
        """Set ``other``: what the process spent over the run (``process_cpu`` seconds) that
        no stage's thread accounts for (extra inference threads, obstore's and psycopg's)."""
        self.cpu.pop("other", None)
        self.cpu["other"] = max(0.0, process_cpu - sum(self.cpu.values()))

    def cpu_line(self) -> str:
        """CPU milliseconds per processed object for each stage, in batch order."""
        n = max(self.processed, 1)
        parts = [f"{k} {1000 * self.cpu[k] / n:.2f}" for k in CPU_STAGES if k in self.cpu]
        return "CPU ms per object: " + ", ".join(parts)


@dataclass
class Item:
    """One claimed object on its way through a batch."""

    row: LogRow
    data_size: int = 0
    #: The downloaded bytes, kept until the move writes them at the final key (a PUT costs
    #: less than a server-side copy, lake.s3.DataPath), then dropped.
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
    origin: Item | None = None  # the earlier item of this batch it copies
    duplicate_of: int | None = None  # artwork id
    duplicate_kind: str | None = None
    distance: int | None = None
    artwork_id: int | None = None
    final_key: str | None = None
    #: A copy already placed under catalog/ for an artwork that turned out, at commit time,
    #: to duplicate one a concurrent worker had just catalogued: moved again after commit.
    misplaced: str | None = None
    #: CPU seconds of the per-object stages run on the pool threads (get ... model_input, put).
    cpu: dict[str, float] = field(default_factory=dict)

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


class Clock:
    """Wall seconds per stage of one batch (:attr:`Summary.stages`), and the CPU of the
    thread that runs them (:attr:`Summary.cpu`): the main thread's, then the tail thread's
    after :meth:`restart`."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.restart()

    def restart(self) -> None:
        self._last, self._last_cpu = time.perf_counter(), time.thread_time()

    def lap(self, name: str, cpu_stage: str | None = None) -> None:
        """End the lap ``name`` (wall); its thread CPU goes to ``cpu_stage`` (default: the
        same name)."""
        now, now_cpu = time.perf_counter(), time.thread_time()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        stage = cpu_stage or name
        self.cpu[stage] = self.cpu.get(stage, 0.0) + now_cpu - self._last_cpu
        self._last, self._last_cpu = now, now_cpu


@dataclass
class Batch:
    """A claimed batch on its way: downloading, then planned by the main thread (front), then
    moved and committed by the tail thread."""

    summary: Summary
    items: list[Item]
    futures: list = field(default_factory=list)
    #: The model that classified it (the active one may change before the commit).
    model: ArtModel | None = None
    #: Highest artwork id its de-duplication queries saw: the commit re-checks those above.
    seen_up_to: int = 0
    new_rows: list[tuple[Item, ArtworkRow]] = field(default_factory=list)
    clock: Clock = field(default_factory=Clock)


def summarise(items: Sequence[Item], clock: Clock | None = None) -> Summary:
    """The counts of a finished batch's outcomes, with its ``clock``'s wall and CPU laps."""
    s = Summary()
    if clock is not None:
        s.stages, s.cpu = dict(clock.laps), dict(clock.cpu)
    for it in items:
        for stage, secs in it.cpu.items():
            s.cpu[stage] = s.cpu.get(stage, 0.0) + secs
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
