"""What a sweep of the training area costs, next to a sweep of an empty landing zone.

    .venv/bin/python bench/training_sweep.py [--objects 3000] [--repeats 5]

``training/`` keeps its objects (they are catalogued in place), so every sweep of it lists
the whole area and looks every key up in the ingest log; that is why the trigger sweeps it
every ``ARTCLF_TRAINING_SWEEP_INTERVAL`` (30 s) rather than every second. On a throw-away
embedded stack: upload ``--objects`` small objects under ``training/painting/`` (not timed),
sweep once (queues them), then time ``--repeats`` steady-state sweeps (nothing new: the
nightly case) of ``training/`` and of the empty ``incoming/`` interleaved, and print the
median wall time and CPU seconds of this process, of the S3 server and of PostgreSQL per
sweep, the wall-time ratio against the landing-zone sweep measured in the same run, and the
share of one core each sweep interval would cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

import psutil  # noqa: E402

from artclf_core.catalogue import db  # noqa: E402
from artclf_core.config import Settings  # noqa: E402
from artclf_core.embedded.stack import Stack  # noqa: E402
from artclf_core.ingest.events import sweep_counting  # noqa: E402
from artclf_core.lake import s3 as s3lib  # noqa: E402


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _server_procs(home: Path) -> tuple[list[psutil.Process], list[psutil.Process]]:
    weed = int((home / "s3" / "weed.pid").read_text().split()[0])
    pg = int((home / "pg" / "data" / "postmaster.pid").read_text().split()[0])
    s3_procs = [psutil.Process(weed), *psutil.Process(weed).children(recursive=True)]
    pg_procs = [psutil.Process(pg), *psutil.Process(pg).children(recursive=True)]
    return s3_procs, pg_procs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="artclf-sweep-") as tmp:
        home = Path(tmp)
        stack = Stack(home, bucket="sweep")
        env = stack.up()
        try:
            settings = Settings.from_env(env)
            client = s3lib.client(settings, max_pool=16)

            def put(i: int) -> None:
                client.put_object(
                    Bucket=settings.bucket, Key=f"training/painting/s__{i:06d}.jpg", Body=b"x"
                )

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(put, range(args.objects)))
            with db.connect(settings.db_url) as conn:
                waiting, added = sweep_counting(client, conn, settings.bucket, "training/")
                assert added == args.objects, (waiting, added)
                figures: dict[str, list[dict[str, float]]] = {"incoming/": [], "training/": []}
                me = psutil.Process()
                for _ in range(args.repeats):
                    for prefix in figures:
                        s3_procs, pg_procs = _server_procs(home)  # PG backends come and go
                        before = (_cpu([me]), _cpu(s3_procs), _cpu(pg_procs))
                        started = time.perf_counter()
                        _, added = sweep_counting(client, conn, settings.bucket, prefix)
                        wall = time.perf_counter() - started
                        after = (_cpu([me]), _cpu(s3_procs), _cpu(pg_procs))
                        assert added == 0
                        figures[prefix].append(
                            {
                                "wall_s": wall,
                                "client_cpu_s": after[0] - before[0],
                                "s3_cpu_s": after[1] - before[1],
                                "pg_cpu_s": after[2] - before[2],
                            }
                        )
        finally:
            stack.down()
    result: dict[str, object] = {"objects": args.objects, "load": os.getloadavg()[0]}
    for prefix, runs in figures.items():
        result[prefix] = {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]}
    base, train = result["incoming/"], result["training/"]
    cpu = sum(v for k, v in train.items() if k.endswith("cpu_s"))
    result["training_cpu_s_per_sweep"] = round(cpu, 3)
    # CPU clocks tick in 10 ms: the empty sweep reads 0, so the ratio is on wall time.
    result["wall_ratio_vs_empty_landing_zone"] = round(train["wall_s"] / base["wall_s"], 1)
    result["share_of_one_core"] = {f"every {t} s": round(cpu / t, 4) for t in (1, 5, 30, 300)}
    print(json.dumps(result, indent=2))
    print(
        f"training/ sweep of {args.objects} known objects: {train['wall_s']:.3f} s wall "
        f"({result['wall_ratio_vs_empty_landing_zone']}x the empty incoming/ sweep), "
        f"{cpu:.3f} CPU-s (client+S3+PG): {100 * cpu:.1f} % of one core if swept every second, "
        f"{100 * cpu / 30:.2f} % every 30 s (load {result['load']:.1f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
