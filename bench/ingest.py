"""Ingest cost, honestly: CPU milliseconds per image over the pipeline window, A/B interleaved.

    python bench/ingest.py [--manifest bench/manifests/ingest-1000.tsv] [--rounds 3]
                           [--data ../shared/data/artworks] [--threads 2,1] [--baseline-sample 200]
    python bench/ingest.py --write-manifest bench/manifests/ingest-1000.tsv --images 1000

* **A pinned image list.** The images are those of a manifest (path under ``--data``, SHA-256,
  bytes), checked before anything runs: a file that is missing or changed stops the bench, so
  figures stay comparable as ``../shared`` grows. ``--write-manifest`` makes one (every k-th
  file of ``--data``, sorted).
* **Each run on a fresh catalogue.** A throw-away embedded stack (real PostgreSQL + pgvector,
  durable as the product runs it, real SeaweedFS) per run, the images uploaded under
  ``incoming/run/`` (not timed), and a warm-up ingest of 16 made-up images first (not
  timed), so TensorFlow, the model runner and Great Expectations are loaded before the
  window opens.
* **The pipeline window only.** ``Ingestor.ingest_prefix`` runs in this process; its CPU is
  ``RUSAGE_SELF`` (every thread) around that one call, the S3 server's and PostgreSQL's are
  their processes' CPU (reaped backends included) over the same window. Start-up is in none
  of them. The forward pass alone is measured on the same images by the same runner and
  subtracted for the "excluding the forward pass" figure (issue 15's goal).
* **A/B/A/B.** Configurations alternate within each round, ``--rounds`` times, and the median
  is printed: the product at each ``--threads`` value (``ARTCLF_INFER_THREADS``; the first is
  the reference) and the prototype-style baseline (per image: GET, full decode, two model
  calls, INSERT + COMMIT) over ``--baseline-sample`` of the same images. Ratios are against
  the first configuration. The load average is printed with each run.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import resource
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


from artclf_core.config import Settings  # noqa: E402
from artclf_core.embedded.stack import throwaway  # noqa: E402
from artclf_core.lake import s3 as s3lib  # noqa: E402

DEFAULT_MANIFEST = REPO / "bench" / "manifests" / "ingest-1000.tsv"
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
WARM_UP = 16


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(data: Path, out: Path, n: int, *, by_source: bool = False) -> None:
    """Every k-th file of ``data`` (sorted); ``by_source``: as many files of every source
    (the file-name prefix before ``__``) as can be, evenly spaced within each, so that the
    manifest has the sizes, formats and looks of all of them, not mostly of the largest."""
    files = sorted(p for p in data.glob("*/*") if p.suffix.lower() in SUFFIXES)
    if not files:
        raise SystemExit(f"no images under {data}")
    if by_source:
        groups: dict[str, list[Path]] = {}
        for p in files:
            groups.setdefault(p.name.split("__")[0], []).append(p)
        share, chosen = {s: 0 for s in groups}, []
        while len(chosen) < min(n, len(files)):  # one more from each source in turn
            for s, members in sorted(groups.items()):
                if share[s] < len(members) and len(chosen) < n:
                    share[s] += 1
                    chosen.append(s)
        chosen = [
            groups[s][(i * len(groups[s])) // share[s]]
            for s in sorted(groups)
            for i in range(share[s])
        ]
    else:
        chosen = [files[(i * len(files)) // n] for i in range(min(n, len(files)))]
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# path under the data folder\tsha256\tbytes"]
    lines += [f"{p.relative_to(data)}\t{sha256(p)}\t{p.stat().st_size}" for p in chosen]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}: {len(chosen)} of {len(files)} images of {data}")


def read_manifest(manifest: Path, data: Path) -> list[Path]:
    """The manifest's files under ``data``, each checked against its hash."""
    files, bad = [], []
    for line in manifest.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        rel, digest, size = line.split("\t")
        path = data / rel
        if not path.is_file() or path.stat().st_size != int(size) or sha256(path) != digest:
            bad.append(rel)
        files.append(path)
    if bad:
        raise SystemExit(
            f"{len(bad)} of {len(files)} files of {manifest} are missing or changed under {data} "
            f"(first: {bad[0]}): the figures would not be comparable"
        )
    return files


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Result:
    images: int
    wall: float
    cpu: dict[str, float]
    forward_cpu: float = 0.0
    #: The ingest's own CPU account per stage (Summary.cpu, thread CPU seconds).
    stages: dict[str, float] = field(default_factory=dict)
    load: float = field(default_factory=lambda: os.getloadavg()[0])

    @property
    def rate(self) -> float:
        return self.images / self.wall

    def ms(self, part: str | None = None) -> float:
        total = self.cpu.get(part, 0.0) if part else sum(self.cpu.values())
        return 1000 * total / self.images


def images(data: Path, limit: int | None) -> list[Path]:
    """``DIR/<class>/*`` images in name order, the first ``limit`` (the other benches' input)."""
    files = sorted(p for p in data.glob("*/*") if p.suffix.lower() in SUFFIXES)
    return files[:limit] if limit else files


def upload(settings: Settings, files: list[Path], prefix: str = "incoming/") -> list[str]:
    """PUT ``files`` as ``<prefix><class folder>/<name>``, 8 at a time; returns the keys."""
    client = s3lib.client(settings)
    keys = [f"{prefix}{p.parent.name}/{p.name}" for p in files]

    def put(item: tuple[Path, str]) -> None:
        client.upload_file(str(item[0]), settings.bucket, item[1])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, zip(files, keys, strict=True)))
    return keys


def warm_up(settings: Settings) -> None:
    import imagegen

    client = s3lib.client(settings)
    for i in range(WARM_UP):
        body = imagegen.encode(imagegen.make_artwork(900_000 + i))
        client.put_object(Bucket=settings.bucket, Key=f"incoming/warm/{i:02d}.jpg", Body=body)


def run_product(model, files: list[Path]) -> Result:
    """One measured ``ingest_prefix`` on a fresh stack, the model already loaded."""
    import numpy as np

    from artclf_core.images.model_input import open_rgb, to_model_input
    from artclf_core.ingest.ingestor import Ingestor

    with throwaway("bench") as (stack, env):
        settings = Settings.from_env(env, home=stack.home / "none")
        upload(settings, files, "incoming/run/")
        warm_up(settings)
        with Ingestor(settings, model=model) as ingestor:
            ingestor.ingest_prefix("incoming/warm/")
            servers, mine = stack.server_cpu(), self_cpu()
            started = time.perf_counter()
            summary = ingestor.ingest_prefix("incoming/run/")
            wall = time.perf_counter() - started
            mine, servers_after = self_cpu() - mine, stack.server_cpu()
    if summary.processed != len(files):
        raise SystemExit(f"ingest processed {summary.processed} of {len(files)}: {summary.line()}")
    cpu = {"ingest": mine, **{k: servers_after[k] - v for k, v in servers.items()}}
    # The forward pass alone, same runner, same images (decode not timed).
    batch = np.stack([to_model_input(open_rgb(str(p)), model.image_size) for p in files])
    before = time.process_time()
    model.predict(batch)
    forward = time.process_time() - before
    return Result(summary.processed, wall, cpu, forward_cpu=forward, stages=dict(summary.cpu))


def run_plain_decode(model, files: list[Path]) -> Result:
    """The yardstick of the issue-32 measurement: a plain full Pillow decode of the same
    files (bytes already read, one thread), so that figures from machines of different speed
    compare as ratios."""
    from PIL import Image

    data = [p.read_bytes() for p in files]
    started, cpu = time.perf_counter(), self_cpu()
    for raw in data:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
    return Result(len(data), time.perf_counter() - started, {"ingest": self_cpu() - cpu})


def run_baseline(model, files: list[Path]) -> Result:
    """The prototype's way: per image GET, full decode, two model calls, INSERT + COMMIT."""
    import keras
    import numpy as np
    import psycopg
    from PIL import Image

    classify = keras.Model(model.model.input, model.model.output["probabilities"])
    embed = keras.Model(model.model.input, model.model.output["embedding"])
    with throwaway("bench") as (stack, env):
        settings = Settings.from_env(env, home=stack.home / "none")
        keys = upload(settings, files, "incoming/run/")
        client = s3lib.client(settings)
        with psycopg.connect(settings.db_url) as conn:
            conn.execute(
                "CREATE TABLE public.baseline_artworks (id serial PRIMARY KEY,"
                " location text, label text, probability real, embedding vector(128))"
            )
            conn.commit()
            x = np.zeros((1, model.image_size, model.image_size, 3), np.float32)
            classify.predict(x, verbose=0), embed.predict(x, verbose=0)  # warm-up
            servers, mine = stack.server_cpu(), self_cpu()
            started = time.perf_counter()
            for key in keys:
                data = client.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
                size = model.image_size
                img = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size))
                x = np.asarray(img, dtype=np.float32)[None]
                probs = classify.predict(x, verbose=0)[0]
                emb = embed.predict(x, verbose=0)[0]
                conn.execute(
                    "INSERT INTO public.baseline_artworks (location, label, probability,"
                    " embedding) VALUES (%s, %s, %s, %s::vector)",
                    (
                        key,
                        model.classes[int(probs.argmax())],
                        float(probs.max()),
                        "[" + ",".join(map(str, emb.tolist())) + "]",
                    ),
                )
                conn.commit()
            wall = time.perf_counter() - started
            mine, servers_after = self_cpu() - mine, stack.server_cpu()
    cpu = {"ingest": mine, **{k: servers_after[k] - v for k, v in servers.items()}}
    return Result(len(keys), wall, cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--write-manifest", type=Path, help="write a manifest and exit")
    parser.add_argument("--images", type=int, default=1000, help="with --write-manifest")
    parser.add_argument(
        "--by-source", action="store_true", help="with --write-manifest: every source alike"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="2,1", help="ARTCLF_INFER_THREADS values to compare")
    parser.add_argument("--baseline-sample", type=int, default=200, help="0: no baseline")
    args = parser.parse_args()
    if args.write_manifest:
        write_manifest(args.data, args.write_manifest, args.images, by_source=args.by_source)
        return 0
    files = read_manifest(args.manifest, args.data)
    from artclf_core.model.artmodel import ArtModel

    models = {}
    for threads in [int(t) for t in args.threads.split(",")]:
        os.environ["ARTCLF_INFER_THREADS"] = str(threads)
        model = ArtModel.load()
        model.runner  # noqa: B018 - built now, with this thread count
        models[f"product, {threads} thread(s)"] = model
    configs = {name: (run_product, m, files) for name, m in models.items()}
    configs["plain Pillow decode"] = (run_plain_decode, None, files)
    if args.baseline_sample:
        step = max(1, len(files) // args.baseline_sample)
        sample = files[::step][: args.baseline_sample]
        configs["prototype baseline"] = (run_baseline, next(iter(models.values())), sample)
    results: dict[str, list[Result]] = {name: [] for name in configs}
    print(f"{len(files)} images of {args.manifest.name} (hashes checked), {os.cpu_count()} cores")
    for r in range(args.rounds):
        for name, (run, model, chosen) in configs.items():
            res = run(model, chosen)
            results[name].append(res)
            print(
                f"  round {r + 1} {name}: {res.rate:.0f} images/s, "
                f"{res.ms():.2f} CPU ms/image (ingest {res.ms('ingest'):.2f}, "
                f"S3 {res.ms('s3'):.2f}, PostgreSQL {res.ms('postgres'):.2f}), "
                f"load {res.load:.1f}",
                flush=True,
            )
    print()
    print(f"median of {args.rounds} interleaved rounds; CPU ms per image over the pipeline window")
    header = (
        f"{'configuration':<24} {'images/s':>8} {'ratio':>6} {'total':>6} {'ratio':>6} "
        f"{'ingest':>6} {'S3':>5} {'PG':>5} {'fwd':>5} {'total-fwd':>9} {'load':>5}"
    )
    print(header)
    first = None
    for name, runs in results.items():
        rate = statistics.median(r.rate for r in runs)
        total = statistics.median(r.ms() for r in runs)
        first = first or (rate, total)
        fwd = statistics.median(1000 * r.forward_cpu / r.images for r in runs)
        print(
            f"{name:<24} {rate:>8.0f} {rate / first[0]:>6.2f} {total:>6.2f} "
            f"{total / first[1]:>6.2f} {statistics.median(r.ms('ingest') for r in runs):>6.2f} "
            f"{statistics.median(r.ms('s3') for r in runs):>5.2f} "
            f"{statistics.median(r.ms('postgres') for r in runs):>5.2f} "
            f"{fwd:>5.2f} {f'{total - fwd:.2f}' if fwd else '-':>9} "
            f"{statistics.median(r.load for r in runs):>5.1f}"
        )
    print_stages(results)
    return 0


def print_stages(results: dict[str, list[Result]]) -> None:
    """The ingest's own CPU account (``artclf ingest -v``'s), median ms per image per stage:
    the CPU of the thread that ran each stage; ``other`` is the rest of the ingest process
    (the extra inference threads, obstore's and psycopg's threads)."""
    from artclf_core.ingest.batch import CPU_STAGES

    product = {name: runs for name, runs in results.items() if runs[0].stages}
    if not product:
        return
    print()
    print("CPU ms per image by stage (median; thread CPU of the thread that ran it)")
    print(f"{'stage':<14}" + "".join(f"{name[-16:]:>18}" for name in product))
    for stage in CPU_STAGES:
        cells = [
            statistics.median(1000 * r.stages.get(stage, 0.0) / r.images for r in runs)
            for runs in product.values()
        ]
        print(f"{stage:<14}" + "".join(f"{c:>18.2f}" for c in cells))


if __name__ == "__main__":
    raise SystemExit(main())
