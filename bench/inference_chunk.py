"""The forward pass's CPU per image by images per interpreter call (the runtime's chunk).

    python bench/inference_chunk.py [--manifest bench/manifests/ingest-sources-1000.tsv]
        [--images 256] [--chunks 4,8,16,32] [--threads 1,2] [--rounds 3]

Decodes ``--images`` of the manifest's real pictures as ingestion does (not timed), then, for
each inference thread count (a fresh interpreter each, as ``ARTCLF_INFER_THREADS`` gives a
task), runs the same batch cut into calls of each ``--chunks`` size, the sizes alternating
within each of ``--rounds`` rounds, and prints the median CPU (process time: every thread of
the interpreter counts) and wall milliseconds per image. Every chunk's outputs are compared
bit by bit with the first chunk's: the chunk is a speed setting, never a change of answers.
``TFLITE_CHUNK`` in ``artclf_core/model/runtime.py`` is chosen from this.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ingest import read_manifest  # noqa: E402

from artclf_core.images.decode import decode_image  # noqa: E402
from artclf_core.images.model_input import to_model_input  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    parser.add_argument(
        "--manifest", type=Path, default=REPO / "bench/manifests/ingest-sources-1000.tsv"
    )
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--chunks", default="4,8,16,32")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from artclf_core.model.artmodel import ArtModel
    from artclf_core.model.runtime import TFLITE_CHUNK

    files = read_manifest(args.manifest, args.data)
    step = max(1, len(files) // args.images)
    chosen = files[::step][: args.images]
    model = ArtModel.load()
    batch = np.stack(
        [to_model_input(decode_image(p.read_bytes()).image, model.image_size) for p in chosen]
    )
    chunks = [int(c) for c in args.chunks.split(",")]
    print(
        f"{len(batch)} images of {args.manifest.name}, {os.cpu_count()} cores, "
        f"product chunk {TFLITE_CHUNK}"
    )
    print(f"{'threads':>7} {'chunk':>5} {'CPU ms/img':>10} {'wall ms/img':>11} {'same bits':>9}")
    for threads in (int(t) for t in args.threads.split(",")):
        os.environ["ARTCLF_INFER_THREADS"] = str(threads)
        runner = ArtModel.load().runner  # a fresh interpreter with this many threads
        cpu: dict[int, list[float]] = {c: [] for c in chunks}
        wall: dict[int, list[float]] = {c: [] for c in chunks}
        same: dict[int, bool] = {}
        reference = None
        for _ in range(args.rounds):
            for chunk in chunks:
                runner(batch[:chunk])  # the interpreter re-plans for the new size: not timed
                c0, w0 = time.process_time(), time.perf_counter()
                parts = [runner(batch[i : i + chunk]) for i in range(0, len(batch), chunk)]
                cpu[chunk].append(1000 * (time.process_time() - c0) / len(batch))
                wall[chunk].append(1000 * (time.perf_counter() - w0) / len(batch))
                out = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
                if reference is None:
                    reference = out
                same[chunk] = same.get(chunk, True) and all(
                    np.array_equal(a, b) for a, b in zip(out, reference, strict=True)
                )
        for chunk in chunks:
            print(
                f"{threads:>7} {chunk:>5} {statistics.median(cpu[chunk]):>10.3f} "
                f"{statistics.median(wall[chunk]):>11.3f} {str(same[chunk]):>9}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
