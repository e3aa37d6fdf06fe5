"""Ingest throughput: `artclf ingest` against a prototype-style baseline, in one run.

    python bench/ingest.py [--data ../shared/data/artworks] [--limit N] [--baseline-sample 200]

1. Starts a throw-away embedded stack (real PostgreSQL + pgvector, real SeaweedFS S3).
2. Uploads the real images to ``incoming/`` (not timed: that is the users' side).
3. Baseline, in this process, over a sample of the same objects, written the way the
   prototype worked: GET, full decode, resize, one model call for the class and another for
   the embedding, one INSERT + COMMIT per image.
4. ``artclf ingest`` as a subprocess (the real command, end to end: validation, exact and near
   de-duplication, one forward pass per batch, Great Expectations, bulk COPY, S3 moves), with
   its peak RSS.

Prints images/s of both and the ratio. Numbers go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from artclf_core import s3 as s3lib  # noqa: E402
from artclf_core.config import Settings  # noqa: E402
from artclf_core.stack import Stack  # noqa: E402


def images(data: Path, limit: int | None) -> list[Path]:
    suffixes = {".jpg", ".jpeg", ".png", ".webp"}
    files = sorted(p for p in data.glob("*/*") if p.suffix.lower() in suffixes)
    return files[:limit] if limit else files


def upload(settings: Settings, files: list[Path]) -> None:
    client = s3lib.client(settings)

    def put(p: Path) -> None:
        client.upload_file(str(p), settings.bucket, f"incoming/{p.parent.name}/{p.name}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, files))


def baseline(settings: Settings, model_path: str | None, keys: list[str]) -> float:
    """The prototype's way: per image, decode, resize, two model calls, INSERT + COMMIT."""
    import keras
    import numpy as np
    import psycopg
    from PIL import Image

    from artclf_core.model import ArtModel

    art = ArtModel.load(model_path)
    model = art.model
    classify = keras.Model(model.input, model.output["probabilities"])
    embed = keras.Model(model.input, model.output["embedding"])
    client = s3lib.client(settings)
    with psycopg.connect(settings.db_url) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS public.baseline_artworks (id serial PRIMARY KEY,"
            " location text, label text, probability real, embedding vector(128))"
        )
        conn.commit()
        started = time.perf_counter()
        for key in keys:
            data = client.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
            size = art.image_size  # the prototype resized to its fixed 150 x 150
            img = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size))
            x = np.asarray(img, dtype=np.float32)[None]
            probs = classify.predict(x, verbose=0)[0]
            emb = embed.predict(x, verbose=0)[0]
            conn.execute(
                "INSERT INTO public.baseline_artworks (location, label, probability, embedding)"
                " VALUES (%s, %s, %s, %s::vector)",
                (
                    f"s3://{settings.bucket}/{key}",
                    art.classes[int(probs.argmax())],
                    float(probs.max()),
                    "[" + ",".join(map(str, emb.tolist())) + "]",
                ),
            )
            conn.commit()
        elapsed = time.perf_counter() - started
    return len(keys) / elapsed


def server_cpu(stack: Stack) -> dict[str, float]:
    """CPU seconds used so far by the S3 server and by PostgreSQL (with its exited backends,
    which the postmaster has reaped), to show where the two cores go during the ingest."""
    import psutil

    from artclf_core.embedded.procs import read_pid

    out = {}
    for name, pid in (
        ("seaweedfs", read_pid(stack.seaweed.pid_file)),
        ("postgres", read_pid(stack.postgres.data_dir / "postmaster.pid")),
    ):
        if pid is None:
            continue
        proc = psutil.Process(pid)
        total = sum(proc.cpu_times()[:4])  # user, system, children_user, children_system
        for child in proc.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        out[name] = total
    return out


def run_ingest(env: dict, model_path: str | None, batch_size: int) -> tuple[dict, float, float]:
    args = [
        sys.executable,
        "-m",
        "artclf_core.cli",
        "ingest",
        "--json",
        "--batch-size",
        str(batch_size),
    ]
    if model_path:
        args += ["--model", model_path]
    started = time.perf_counter()
    out = subprocess.run(
        args, env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"artclf ingest failed:\n{out.stderr[-3000:]}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = json.loads(out.stdout)
    summary["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    return summary, wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    parser.add_argument("--limit", type=int, help="use only the first N images")
    parser.add_argument("--baseline-sample", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--model", help=".keras model (default: the shipped one)")
    args = parser.parse_args()

    files = images(args.data, args.limit)
    if not files:
        raise SystemExit(f"no images under {args.data}")
    with tempfile.TemporaryDirectory(prefix="artclf-bench-") as tmp:
        stack = Stack(Path(tmp), bucket="bench")
        env = stack.up()
        try:
            settings = Settings.from_env(env, home=Path(tmp) / "none")
            t0 = time.perf_counter()
            upload(settings, files)
            print(f"uploaded {len(files)} images in {time.perf_counter() - t0:.1f} s")

            step = max(1, len(files) // args.baseline_sample)
            sample = [f"incoming/{p.parent.name}/{p.name}" for p in files[::step]]
            sample = sample[: args.baseline_sample]
            base_rate = baseline(settings, args.model, sample)
            print(f"baseline (prototype style): {base_rate:.1f} images/s over {len(sample)}")

            cpu_before = server_cpu(stack)
            summary, wall, peak_mib = run_ingest(env, args.model, args.batch_size)
            cpu_after = server_cpu(stack)
            cpu = {"artclf ingest": summary["cpu_seconds"]}
            cpu.update({k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after})
            rate = summary["seen"] / summary["seconds"]
            rate_wall = summary["seen"] / wall
        finally:
            stack.down()

    print()
    print(
        f"artclf ingest: {summary['seen']} objects -> catalogued {summary['catalogued']},"
        f" duplicates {summary['duplicates']}, quarantined {summary['quarantined']},"
        f" failed {summary['failed']}"
    )
    print(f"  pipeline time {summary['seconds']:.1f} s  -> {rate:.0f} images/s")
    print(
        f"  command wall time (incl. start-up, model load) {wall:.1f} s -> {rate_wall:.0f} images/s"
    )
    print(f"  peak RSS of the ingest process: {peak_mib:.0f} MiB")
    stages = ", ".join(f"{k} {v:.1f}" for k, v in summary.get("stages", {}).items())
    print(f"  wall seconds by stage: {stages}")
    spent = ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
    available = (os.cpu_count() or 1) * wall
    print(f"  CPU seconds during the command: {spent} (of {available:.1f} available)")
    print(
        f"  ratio against baseline: {rate / base_rate:.1f}x (pipeline), "
        f"{rate_wall / base_rate:.1f}x (whole command)"
    )
    print(f"  cores: {os.cpu_count()}")


if __name__ == "__main__":
    main()
