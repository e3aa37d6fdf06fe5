"""How long the trigger's event loop waits, idle and beside busy batch processes.

    python bench/trigger_loop.py [--seconds 10] [--hogs N]

The timed companion of ``tests/test_trigger.py::test_the_trigger_never_blocks_the_event_loop``
(which checks, without a clock, that no blocking call runs on the loop). Starts a throw-away
embedded stack, fills a training area (400 objects) and a landing zone (50), and runs the
watcher the trigger runs (``IncomingWatcher``: LISTEN, sweeps every 0.3 s and 1 s, 20 late
drops announced) in a fresh interpreter under asyncio's debug mode, three times:

* ``idle``: nothing else running;
* ``busy, nice 0``: ``--hogs`` processes (default: cores + 1) spinning at normal priority,
  the batch tasks before ``preload.yield_cpu``;
* ``busy, task nice``: the same processes after ``yield_cpu()`` (nice 10, the default).

For each it prints the longest stall of the triggerer's own watchdog (a 0.1 s sleep's
overrun; Airflow warns "async thread was blocked" above 0.2 s), how many sleeps overran by
more than that, and asyncio's slow callbacks (steps of 0.1 s or more).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from artclf_core.config import Settings  # noqa: E402
from artclf_core.embedded.stack import Stack  # noqa: E402
from artclf_core.lake import s3 as s3lib  # noqa: E402

#: The triggerer's block watchdog: a 0.1 s sleep that overruns by more than 0.2 s.
WATCHDOG_SLEEP, WATCHDOG_THRESHOLD = 0.1, 0.2

_PROBE = r"""
import asyncio, logging, sys, time
from artclf_core.config import Settings
from artclf_core.ingest.events import IncomingWatcher
from artclf_core.lake import s3 as s3lib

slow, stalls = [], []

class Catch(logging.Handler):
    def emit(self, record):
        if "took" in record.getMessage():
            slow.append(record.getMessage())

logging.getLogger("asyncio").addHandler(Catch())
logging.getLogger("asyncio").setLevel(logging.WARNING)
stop = False

async def watchdog(sleep):
    while not stop:
        before = time.monotonic()
        await asyncio.sleep(sleep)
        stalls.append(time.monotonic() - before - sleep)

async def main(seconds, sleep):
    global stop
    settings = Settings.from_env()
    asyncio.get_running_loop().slow_callback_duration = 0.1
    dog = asyncio.ensure_future(watchdog(sleep))
    watcher = IncomingWatcher(settings, name=sys.argv[3], sweep_interval=0.3,
                              training_sweep_interval=1.0, reannounce_after=3600)
    events = watcher.watch()
    await asyncio.wait_for(events.__anext__(), 60)
    s3 = await asyncio.to_thread(s3lib.client, settings)
    for i in range(20):
        await asyncio.to_thread(s3.put_object, Bucket=settings.bucket,
                                Key=f"incoming/{sys.argv[3]}-{i}.jpg", Body=b"x")
    await asyncio.wait_for(events.__anext__(), 60)
    await asyncio.sleep(seconds)
    await events.aclose()
    stop = True
    await dog
    print(f"{max(stalls):.3f} {sum(s > float(sys.argv[4]) for s in stalls)} {len(slow)}")

asyncio.run(main(float(sys.argv[1]), float(sys.argv[2])), debug=True)
"""

_HOG = (
    "import sys, time; sys.path.insert(0, sys.argv[1]);"
    "from artclf_airflow.preload import yield_cpu;"
    "sys.argv[2] == 'nice' and yield_cpu();"
    "end = time.time() + float(sys.argv[3])\nwhile time.time() < end: pass"
)


def run_probe(env: dict[str, str], name: str, seconds: float) -> tuple[float, int, int]:
    """Longest watchdog stall (s), stalls over the threshold, slow callbacks."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _PROBE,
            str(seconds),
            str(WATCHDOG_SLEEP),
            name,
            str(WATCHDOG_THRESHOLD),
        ],
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=seconds + 180,
        check=True,
    )
    worst, over, slow = out.stdout.split()[-3:]
    return float(worst), int(over), int(slow)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="quiet time after drops")
    parser.add_argument("--hogs", type=int, default=(os.cpu_count() or 2) + 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="artclf-trigger-loop-") as tmp:
        stack = Stack(Path(tmp), bucket="bench")
        env = stack.up()
        try:
            settings = Settings.from_env(env, home=Path(tmp) / "none")
            client = s3lib.client(settings)
            for i in range(400):
                client.put_object(
                    Bucket=settings.bucket, Key=f"training/painting/t__{i:03d}.jpg", Body=b"t"
                )
            for i in range(50):
                client.put_object(Bucket=settings.bucket, Key=f"incoming/e{i}.jpg", Body=b"e")
            print(
                f"{'condition':<18} {'longest stall':>14} {'stalls > 0.2 s':>15} "
                f"{'slow callbacks':>15}"
            )
            for label, hog in (
                ("idle", None),
                ("busy, nice 0", "plain"),
                ("busy, task nice", "nice"),
            ):
                hogs = [
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-c",
                            _HOG,
                            str(REPO / "plugins"),
                            hog,
                            str(args.seconds + 120),
                        ]
                    )
                    for _ in range(args.hogs if hog else 0)
                ]
                try:
                    worst, over, slow = run_probe(
                        env, label.replace(", ", "-").replace(" ", "-"), args.seconds
                    )
                finally:
                    for h in hogs:
                        h.kill()
                        h.wait()
                print(f"{label:<18} {worst:>12.3f} s {over:>15} {slow:>15}")
        finally:
            stack.down()


if __name__ == "__main__":
    main()
