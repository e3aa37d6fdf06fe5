"""CPU cost of each S3 request the pipeline makes, client (boto3) and server (SeaweedFS) apart.

    python bench/s3_ops.py [--data ../shared/data/artworks] [--n 1000]

Starts a throw-away embedded stack, uploads ``--n`` real images, then times, on 8 threads as
the pipeline does, ``--n`` GETs, server-side copies with the artclf trace metadata, PUTs of
the same bytes (the alternative to a copy), and DeleteObjects of 10 keys per request. For
each it prints the client CPU (this process) and the server CPU (the ``weed`` process) per
request, and the wall time per request. The pipeline's share of boto3 and SeaweedFS in the
ingest benchmark (docs/benchmarks.md, "Where the CPU goes") comes from here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ingest import images, upload  # noqa: E402

from artclf_core.config import Settings  # noqa: E402
from artclf_core.embedded.stack import Stack  # noqa: E402
from artclf_core.lake import s3 as s3lib  # noqa: E402

WARM_UP = 20
META = {"artclf-state": "catalogued", "artclf-log-id": "123", "artclf-source-key": "incoming/x"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    files = images(args.data, args.n)
    with tempfile.TemporaryDirectory(prefix="artclf-s3ops-") as tmp:
        stack = Stack(Path(tmp), bucket="bench")
        env = stack.up()
        try:
            settings = Settings.from_env(env, home=Path(tmp) / "none")
            upload(settings, files)
            client = s3lib.client(settings, max_pool=20)
            keys = [f"incoming/{p.parent.name}/{p.name}" for p in files]
            pool = ThreadPoolExecutor(8)
            data: dict[str, bytes] = {}

            def measure(name: str, fn: Callable[[str], object], items: list, per: int = 1):
                list(pool.map(fn, items[:WARM_UP]))
                server0 = stack.server_cpu()["s3"]
                client0, wall0 = time.process_time(), time.perf_counter()
                list(pool.map(fn, items[WARM_UP:]))
                n = (len(items) - WARM_UP) * per
                client_ms = 1000 * (time.process_time() - client0) / n
                server_ms = 1000 * (stack.server_cpu()["s3"] - server0) / n
                wall_ms = 1000 * (time.perf_counter() - wall0) / n
                print(
                    f"{name:34s} client {client_ms:5.2f} ms  server {server_ms:5.2f} ms  "
                    f"wall {wall_ms:5.2f} ms"
                )

            def get(key: str) -> None:
                data[key] = s3lib.get_bytes(client, settings.bucket, key)

            print(
                f"{len(keys)} objects, {sum(p.stat().st_size for p in files) / len(files):.0f} B "
                "on average; CPU per request (8 threads):"
            )
            measure("GET", get, keys)
            measure(
                "server-side copy (metadata REPLACE)",
                lambda k: s3lib.copy(client, settings.bucket, k, "catalog/a/" + k, META),
                keys,
            )
            measure(
                "PUT of the downloaded bytes",
                lambda k: client.put_object(
                    Bucket=settings.bucket, Key="catalog/b/" + k, Body=data[k], Metadata=META
                ),
                keys,
            )
            chunks = [["catalog/a/" + k for k in keys[i : i + 10]] for i in range(0, len(keys), 10)]
            measure(
                "DeleteObjects, per key (10 a call)",
                lambda c: s3lib.delete_many(client, settings.bucket, c),
                chunks,
                per=10,
            )
        finally:
            stack.down()


if __name__ == "__main__":
    main()
