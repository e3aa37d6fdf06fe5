"""De-duplication as users get it: real images through the real pipeline and catalogue lookup.

    python bench/dedup_pipeline.py [--data ../shared/data/artworks] [--copies-per-image 5]

1. Catalogues every shared image with ``artclf ingest`` (real S3, real PostgreSQL, model).
   Distinct artworks that the pipeline folds into another one are false positives.
2. Drops transformed copies of every image (the transforms of bench/dedup_quality.py:
   re-encode JPEG q60-95, resize 50-150%, crop up to 5%, PNG/JPEG conversion, combinations)
   and ingests them: a copy recorded as a duplicate of its own original is a true positive,
   a copy recorded against another artwork a false positive, a copy catalogued as new a miss.

Prints precision and recall of the whole thing (pHash threshold + catalogue lookup:
embedding HNSW candidates + exact pHash bands, see artclf_core/catalogue/db.py find_near), by kind.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from dedup_quality import KINDS, make_copy  # noqa: E402

from artclf_core.catalogue import db  # noqa: E402
from artclf_core.config import Settings  # noqa: E402
from artclf_core.embedded.stack import throwaway  # noqa: E402
from artclf_core.ingest.ingestor import Ingestor  # noqa: E402
from artclf_core.lake import s3 as s3lib  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    suffixes = (".jpg", ".jpeg", ".png", ".webp")
    files = sorted(p for p in args.data.glob("*/*") if p.suffix.lower() in suffixes)
    files = files[: args.limit] if args.limit else files
    rng = np.random.default_rng(args.seed)
    with throwaway("dedup", pg_tuning={"fsync": "off"}) as (stack, env):
        settings = Settings.from_env(env, home=stack.home / "none")
        client = s3lib.client(settings)
        originals = {}
        for i, p in enumerate(files):
            key = f"incoming/orig/{i:05d}{p.suffix.lower()}"
            client.put_object(Bucket=settings.bucket, Key=key, Body=p.read_bytes())
            originals[key] = i
        with Ingestor(settings) as ingestor:
            t0 = time.perf_counter()
            first = ingestor.ingest_prefix()
            print(f"pass 1: {first.line()}")
            with db.connect(settings.db_url) as conn:
                log1 = conn.execute(
                    "SELECT l.key, l.state, l.duplicate_kind, l.duplicate_of,"
                    " coalesce(a.source_key, '') FROM artclf.ingest_log l"
                    " LEFT JOIN artclf.artworks a ON a.id = l.duplicate_of"
                ).fetchall()
                artwork_of = dict(
                    conn.execute("SELECT source_key, id FROM artclf.artworks").fetchall()
                )
            folded = [(k, kind, src) for k, state, kind, _, src in log1 if state == "duplicate"]
            # Every original maps to the artwork that stands for it (itself, or what it
            # was folded into).
            stands_for = {k: artwork_of.get(k) for k in originals}
            for k, _, src in folded:
                stands_for[k] = artwork_of[src]

            copies: dict[str, tuple[str, str]] = {}
            for key, i in originals.items():
                with Image.open(files[i]) as im:
                    src_fmt = im.format
                    img = ImageOps.exif_transpose(im).convert("RGB")
                for kind in KINDS:
                    data, _cut = make_copy(kind, img, src_fmt, rng)
                    ckey = f"incoming/copy/{i:05d}-{kind}.img"
                    client.put_object(Bucket=settings.bucket, Key=ckey, Body=data)
                    copies[ckey] = (key, kind)
            second = ingestor.ingest_prefix()
            print(f"pass 2: {second.line()}")
            elapsed = time.perf_counter() - t0
        with db.connect(settings.db_url) as conn:
            log2 = {
                k: (state, dup)
                for k, state, dup in conn.execute(
                    "SELECT key, state, duplicate_of FROM artclf.ingest_log"
                    " WHERE key LIKE 'incoming/copy/%'"
                ).fetchall()
            }

    tp, fp, miss = Counter(), Counter(), Counter()
    for ckey, (okey, kind) in copies.items():
        state, dup = log2[ckey]
        if state == "duplicate" and dup == stands_for[okey]:
            tp[kind] += 1
        elif state == "duplicate":
            fp[kind] += 1
        else:
            miss[kind] += 1
    print()
    print(f"{len(files)} originals, {len(copies)} copies, {elapsed:.0f} s in the pipeline")
    print(
        f"pass 1 folded {len(folded)} originals into others (exact pairs in the data "
        f"and false positives): {Counter(k for _, k, _ in folded)}"
    )
    print(f"{'kind':<16}{'copies':>8}{'found':>8}{'wrong':>8}{'missed':>8}{'recall':>9}")
    for kind in KINDS:
        n = tp[kind] + fp[kind] + miss[kind]
        print(f"{kind:<16}{n:>8}{tp[kind]:>8}{fp[kind]:>8}{miss[kind]:>8}{tp[kind] / n:>9.4f}")
    near_folds = sum(1 for _, k, _ in folded if k == "near")
    n_tp, n_fp = sum(tp.values()), sum(fp.values()) + near_folds
    print(
        f"precision {n_tp / (n_tp + n_fp):.4f} (false positives: {sum(fp.values())} copies"
        f" matched to another artwork + {near_folds} distinct originals folded as near"
        " copies; exact byte-identical originals are true duplicates)"
    )
    print(f"recall    {n_tp / len(copies):.4f}")


if __name__ == "__main__":
    main()
