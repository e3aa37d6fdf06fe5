"""Re-embedding throughput against ingest throughput, in one run.

    python bench/reembed.py [--data ../shared/data/artworks] [--limit N] [--rows 100000]

1. Starts a throw-away embedded stack; uploads the real images to ``incoming/``.
2. Baseline: ``Ingestor.ingest_prefix`` over them, in this process (the ingest throughput
   the goal compares with: validation, de-duplication, the model, Great Expectations, COPY,
   S3 moves).
3. Grows the catalogue to ``--rows`` artworks: extra rows pointing at the same real objects
   (distinct hashes), with embeddings of the active model, the way a large lake looks to the
   re-embedding code (one GET + decode + forward pass per row).
4. Registers a second version of the same architecture (other weights) and runs
   :func:`artclf_core.lifecycle.reembed.reembed`: every row embedded beside the old version, then
   the
   switch (HNSW build over the new partition + the one-transaction activation).

Prints images/s of both, the ratio, and the switch's cost. Numbers go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import _stack  # noqa: E402
from ingest import images, upload  # noqa: E402

from artclf_core import CLASSES  # noqa: E402
from artclf_core.catalogue import db, registry  # noqa: E402
from artclf_core.config import Settings, read_env_file  # noqa: E402
from artclf_core.lifecycle import reembed  # noqa: E402


def grow(settings: Settings, rows: int, version: str) -> int:
    """Add artworks until the catalogue has ``rows``, copying existing rows' objects and
    embeddings (server-side INSERT ... SELECT, so the copies cost no model time)."""
    with db.connect(settings.db_url) as conn:
        have = conn.execute("SELECT count(*) FROM artclf.artworks").fetchone()[0]
        need = rows - have
        if need <= 0:
            return have
        conn.execute(
            """
            WITH src AS (SELECT a.*, row_number() OVER (ORDER BY a.id) - 1 AS k
                         FROM artclf.artworks a),
                 gen AS (SELECT g, g %% (SELECT count(*) FROM src) AS k
                         FROM generate_series(1, %(need)s) AS g),
                 ins AS (
                INSERT INTO artclf.artworks (location, bucket, key, label, probability,
                    probabilities, model_version, sha256, phash, dhash, phash_bands, width,
                    height, format, byte_size, source_key)
                SELECT s.location || '#' || g, s.bucket, s.key, s.label,
                       s.probability, s.probabilities, s.model_version,
                       'e' || lpad(to_hex(g), 63, '0'), s.phash, s.dhash, s.phash_bands,
                       s.width, s.height, s.format, s.byte_size, s.source_key
                FROM gen JOIN src s USING (k) RETURNING id, location)
            INSERT INTO artclf.embeddings (model_version, artwork_id, label, probability,
                                           probabilities, embedding)
            SELECT e.model_version, ins.id, e.label, e.probability, e.probabilities, e.embedding
            FROM ins
            JOIN artclf.artworks o ON o.location = split_part(ins.location, '#', 1)
            JOIN artclf.embeddings e ON e.artwork_id = o.id AND e.model_version = %(v)s
            """,
            {"need": need, "v": version},
        )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE artclf.artworks")
        return conn.execute("SELECT count(*) FROM artclf.artworks").fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    parser.add_argument("--limit", type=int, help="use only the first N images")
    parser.add_argument("--rows", type=int, default=100_000, help="catalogue size re-embedded")
    args = parser.parse_args()

    from artclf_core.ingest.ingestor import Ingestor
    from artclf_core.model.artmodel import ArtModel, build_model, save_model

    files = images(args.data, args.limit)
    if not files:
        raise SystemExit(f"no images under {args.data}")
    with _stack.throwaway_stack() as (stack, _url), tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(read_env_file(stack.env_file), home=Path(tmp) / "none")
        upload(settings, files)
        _stack.log(f"uploaded {len(files)} images")

        model = ArtModel.load()
        with Ingestor(settings, model=model) as ing:
            t0 = time.perf_counter()
            summary = ing.ingest_prefix("incoming/")
            ingest_s = time.perf_counter() - t0
        ingest_rate = summary.seen / ingest_s
        _stack.log(f"ingest: {summary.seen} images in {ingest_s:.1f}s ({ingest_rate:.1f}/s)")

        total = grow(settings, args.rows, model.version)
        _stack.log(f"catalogue grown to {total:,} artworks")

        other = save_model(
            build_model(seed=11, arch=model.arch, image_size=model.image_size),
            Path(tmp) / "v2.keras",
            version=f"{model.version}-bench2",
            classes=CLASSES,
            arch=model.arch,
        )
        with db.connect(settings.db_url) as conn:
            registry.register_model(
                conn,
                version=f"{model.version}-bench2",
                arch=model.arch,
                classes=CLASSES,
                artifact=str(other),
                status="promoted",
            )
            conn.commit()

        def progress(done: int, n: int) -> None:
            if done % 10_000 < reembed.BATCH_SIZE or done == n:
                _stack.log(f"re-embedded {done:,}/{n:,}")

        t0 = time.perf_counter()
        result = reembed.reembed(settings, f"{model.version}-bench2", progress=progress)
        whole_s = time.perf_counter() - t0

    embed_rate = result["images_per_second"]
    print()
    print(f"model: {model.version} ({model.arch}, {model.image_size}px), cores: {os.cpu_count()}")
    print(
        f"ingest (baseline, same run): {summary.seen} images in {ingest_s:.1f} s"
        f" -> {ingest_rate:.1f} images/s"
    )
    print(
        f"re-embedding {result['embedded']:,} artworks: {result['embed_seconds']:.1f} s"
        f" -> {embed_rate:.1f} images/s ({embed_rate / ingest_rate:.2f}x ingest)"
    )
    print(
        f"switch: HNSW build {result['index_seconds']:.1f} s, {result['stragglers']} late"
        f" arrivals; whole re-embed + switch {whole_s:.1f} s"
        f" -> {result['embedded'] / whole_s:.1f} images/s incl. the switch"
        f" ({result['embedded'] / whole_s / ingest_rate:.2f}x ingest)"
    )


if __name__ == "__main__":
    main()
