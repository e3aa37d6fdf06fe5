"""Peak memory of one ``artclf ingest`` as the drop grows: it must stay flat (issue 13).

    .venv/bin/python bench/ingest_memory.py [--sizes 300 10000]

For each size, on a throw-away embedded stack: upload that many distinct made-up artworks
(tests/imagegen.py, 8 threads, not timed), run ``artclf ingest`` as a subprocess and print
its peak RSS (getrusage of that child alone), wall time and the states it left. The ratio is
against the first size, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import imagegen  # noqa: E402

from artclf_core.config import Settings  # noqa: E402
from artclf_core.embedded.stack import throwaway  # noqa: E402
from artclf_core.lake import s3 as s3lib  # noqa: E402


def measure(n: int) -> dict:
    with throwaway("mem") as (stack, env):
        settings = Settings.from_env(env)
        client = s3lib.client(settings, max_pool=16)

        def put(i: int) -> None:
            body = imagegen.encode(imagegen.make_artwork(100_000 + i))
            client.put_object(Bucket=settings.bucket, Key=f"incoming/m{i:06d}.jpg", Body=body)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, range(n)))
        cli = [sys.executable, "-m", "artclf_core.cli", "ingest", "--json"]
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child execs the CLI; its rusage is then ours alone to read
            os.execve(sys.executable, cli, {**os.environ, **env})
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - started
        assert os.waitstatus_to_exitcode(status) == 0, status
        out = subprocess.run(
            [sys.executable, "-m", "artclf_core.cli", "report"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
        )
        return {
            "objects": n,
            "peak_rss_mb": usage.ru_maxrss / 1024,
            "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "report": out.stdout.strip()[-300:],
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 10_000])
    args = parser.parse_args()
    first = None
    for n in args.sizes:
        row = measure(n)
        first = first or row
        row["rss_ratio"] = row["peak_rss_mb"] / first["peak_rss_mb"]
        print(json.dumps(row), f"load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
