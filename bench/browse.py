"""Latency of the catalogue API (the Artworks page's requests) at 100,000 artworks.

    python bench/browse.py [--sizes 1000,100000] [--repeats 30] [--json PATH]

For each size a throw-away stack (bench/_stack.py) is loaded with N synthetic artworks (the
similarity benchmark's catalogue, with probabilities spread over 0.2-1.0 so the review queue
and confidence filters select something), one ``catalogued`` ingest_log row per artwork and
2 % quarantined drops. Then every request the page makes is sent through the real FastAPI
app in-process (``artclf_core.web.app``, authentication stubbed: Airflow's check is a JWT
validation, the same for every route) and timed end to end: p50 and p95 over ``--repeats``
calls after one warm-up call. The first size is the baseline: the last column is the ratio
of each p50 to the baseline's, i.e. how the request scales with the catalogue.

The figure that matters is the 100,000 row: the page is usable when every request answers
well under the ~100 ms a person notices. Thumbnails are not measured here (an S3 GET of a
kept WebP once made; the first view of each artwork pays one decode).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _stack  # noqa: E402

from artclf_core import CLASSES  # noqa: E402


def fill(db_url: str, n: int) -> None:
    """Load the synthetic catalogue and the ingest_log rows the lake page reads."""
    from artclf_core.catalogue import db

    with db.connect(db_url, autocommit=True) as conn:
        cat = _stack.synthetic_catalogue(n, seed=1)
        _stack.load_catalogue(conn, cat)
        conn.execute(
            f"UPDATE artclf.{_stack.EMBEDDINGS_TABLE}"
            " SET probability = 0.2 + 0.8 * ((artwork_id * 7919) % 1000) / 1000.0"
        )
        # 20 collections of n/20 and a small one of n/2000 (a museum's drop in a large lake).
        conn.execute(
            "UPDATE artclf.artworks SET collection = CASE WHEN id % 2000 = 0 THEN 'small'"
            " ELSE 'museum-' || (id % 20) END"
        )
        conn.execute(
            "INSERT INTO artclf.ingest_log (bucket, key, etag, size, state, artwork_id,"
            " final_key, finalized, handled_by)"
            " SELECT bucket, source_key, sha256, byte_size, 'catalogued', id, key, true,"
            "        'airflow:artclf_ingest/manual__bench/0' FROM artclf.artworks"
        )
        conn.execute(
            "INSERT INTO artclf.ingest_log (bucket, key, etag, size, state, reason, message,"
            " final_key, finalized, attempts, handled_by)"
            " SELECT 'artclf-bench', 'incoming/bad/' || g, md5(g::text), 10, 'quarantined',"
            "        'not_an_image', 'file is HTML, not an image', 'quarantine/' || g, true, 1,"
            "        'airflow:artclf_ingest/manual__bench/0'"
            " FROM generate_series(1, %s) AS g",
            (max(1, n // 50),),
        )
        conn.execute("VACUUM ANALYZE artclf.artworks")
        conn.execute("VACUUM ANALYZE artclf.ingest_log")
        conn.execute(f"VACUUM ANALYZE artclf.{_stack.EMBEDDINGS_TABLE}")


def requests(n: int) -> dict[str, str]:
    """The page's requests, by what a user does."""
    mid = n // 2
    return {
        "grid: first page (60)": "/api/artworks",
        "grid: label filter": "/api/artworks?label=iconography",
        "grid: confidence >= 0.95": "/api/artworks?min_probability=0.95",
        "grid: page deep in the catalogue": f"/api/artworks?before_id={mid}",
        "grid: label + confidence, deep": f"/api/artworks?label=sculpture&max_probability=0.5"
        f"&before_id={mid}",
        "artwork page (2 x top-5, duplicates)": f"/api/artworks/{mid}",
        "grid: one collection (of 20)": "/api/artworks?collection=museum-3",
        "grid: a small collection (n/2000)": "/api/artworks?collection=small",
        "review queue (60 + count)": "/api/review",
        "review queue of one collection (of 20)": "/api/review?collection=museum-3",
        "review queue of a small collection": "/api/review?collection=small",
        "collections (menus)": "/api/collections",
        "lake health": "/api/lake",
        "models": "/api/models",
    }


def measure(db_url: str, n: int, repeats: int) -> dict[str, tuple[float, float]]:
    from fastapi.testclient import TestClient

    from artclf_core.config import Settings
    from artclf_core.web.app import Access, Caller, create_app

    def anyone() -> Caller:
        return Caller("bench", False)

    settings = Settings(db_url=db_url, s3_endpoint=None, bucket="artclf-bench")
    client = TestClient(create_app(Access(reader=anyone, editor=anyone), lambda: settings))
    out = {}
    for name, path in requests(n).items():
        resp = client.get(path)
        assert resp.status_code == 200, (path, resp.text[:200])
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            client.get(path).raise_for_status()
            samples.append(time.perf_counter() - t0)
        out[name] = _stack.percentiles(samples)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="1000,100000")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[int, dict[str, tuple[float, float]]] = {}
    with _stack.throwaway_stack() as (_s, db_url):
        for n in sizes:
            _stack.log(f"loading {n} artworks")
            fill(db_url, n)
            results[n] = measure(db_url, n, args.repeats)
    base = results[sizes[0]]
    print(f"catalogue API latency (ms, p50 / p95 over {args.repeats} calls); {_stack.machine()}")
    print(f"labels: {', '.join(CLASSES)}; ratio = p50 / p50 at {sizes[0]} artworks")
    print(f"{'request':<40}" + "".join(f"{n:>18,}" for n in sizes) + f"{'ratio':>8}")
    for name in base:
        cells = "".join(f"{results[n][name][0]:>9.1f} /{results[n][name][1]:>6.1f}" for n in sizes)
        ratio = results[sizes[-1]][name][0] / base[name][0]
        print(f"{name:<40}{cells}{ratio:>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({str(n): r for n, r in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
