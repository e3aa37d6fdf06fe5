"""Latency and completeness of the catalogue's near-duplicate lookup (``db.find_near``).

    python bench/neardup_lookup.py [--sizes 100000,1000000] [--singles 200] [--batches 10]
                                   [--baseline-queries 20]

For each size: a throw-away stack (bench/_stack.py) holds N artworks with uniformly random
64-bit pHashes and ``phash_bands = dedup.band_keys(h)`` under the migration's GIN index
(the HNSW index is left out: this lookup never touches embeddings, and building it would
cost minutes). Then

* p50/p95 client-side latency of ``db.find_near`` for one hash at a time (half near copies
  of a catalogued hash with 1..NEAR_DUP_MAX_DISTANCE bits flipped, half random hashes), and
  for batches of 256 hashes (the pipeline's way), per batch and per hash;
* every answer is checked against brute force over all N hashes in numpy: the same closest
  artwork (ties by id) within the threshold, and every planted copy found (the pigeonhole
  argument behind ``probe_keys`` promises recall 1.0);
* the baseline the GIN index replaces, ``WHERE bit_count((phash # h)::bit(64)) <= d`` on a
  full scan, on the first ``--baseline-queries`` single hashes, in the same run.

Goal (issue): flat, under 5 ms p50 at both sizes. ``bench/similarity.py --neardup`` runs the
same measurements on the rows it loaded for the similarity benchmark.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _stack  # noqa: E402
import psycopg  # noqa: E402

from artclf_core import db  # noqa: E402
from artclf_core.dedup import (  # noqa: E402
    NEAR_DUP_MAX_DISTANCE,
    band_keys,
    probe_keys,
    to_signed64,
)

D = NEAR_DUP_MAX_DISTANCE

FULL_SCAN_SQL = """
    SELECT a.id, bit_count((a.phash # %(h)s)::bit(64))::int AS d
    FROM artclf.artworks AS a
    WHERE bit_count((a.phash # %(h)s)::bit(64)) <= %(d)s
    ORDER BY d, a.id
    LIMIT 1
"""


@dataclass
class NearDupResult:
    """Figures for one catalogue size."""

    size: int
    single_p50_ms: float
    single_p95_ms: float
    batch_p50_ms: float
    batch_p95_ms: float
    per_hash_in_batch_ms: float
    full_scan_p50_ms: float
    full_scan_p95_ms: float
    speed_up: float
    planted: int
    planted_found: int
    mismatches: int
    mean_candidates: float
    probe_keys_ms: float
    singles: int
    batches: int
    batch_size: int
    plans: str = ""


def make_queries(
    phashes: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """``count`` query hashes, half near copies, half random; and their planted flips.

    A near copy takes a catalogued hash and flips 1..D distinct bits (every other one
    exactly D, the case the pigeonhole bound is tight for); ``flips[i]`` is 0 for a random
    query. The halves are interleaved so latency percentiles mix both kinds evenly.
    """
    queries: list[int] = []
    flips: list[int] = []
    for j in range(count):
        if j % 2 == 0:
            src = int(phashes[rng.integers(len(phashes))]) & ((1 << 64) - 1)
            k = D if j % 4 == 0 else int(rng.integers(1, D + 1))
            for bit in rng.choice(64, size=k, replace=False):
                src ^= 1 << int(bit)
            queries.append(to_signed64(src))
            flips.append(k)
        else:
            queries.append(int(rng.integers(-(2**63), 2**63 - 1, dtype=np.int64,
                                            endpoint=True)))
            flips.append(0)
    return queries, flips


def brute_force(phashes: np.ndarray, queries: list[int]) -> list[tuple[int, int] | None]:
    """The closest catalogued hash within D for each query (ties: smallest id), or None."""
    u = phashes.view(np.uint64)
    out: list[tuple[int, int] | None] = []
    for q in queries:
        dist = np.bitwise_count(u ^ np.uint64(q & ((1 << 64) - 1)))
        i = int(np.argmin(dist))  # first minimum = smallest id (row i is id i + 1)
        out.append((i + 1, int(dist[i])) if dist[i] <= D else None)
    return out


def candidates(conn: psycopg.Connection, probes: list[int]) -> int:
    """Rows the GIN probe fetches for one query (all sharing a band key with it).

    Asked from the database rather than recomputed here, so that it stays right whatever
    band layout artclf_core.dedup settles on.
    """
    return conn.execute(
        "SELECT count(*) FROM artclf.artworks WHERE phash_bands && %s::int[]", (probes,)
    ).fetchone()[0]


def layout() -> str:
    """The dedup parameters the figures were measured with (they may still change)."""
    return (f"NEAR_DUP_MAX_DISTANCE={D}, {len(band_keys(0))} band keys stored per hash,"
            f" {len(probe_keys(0))} probe keys per lookup")


def find_near_plans(stack, singles: list[int], batch: list[int]) -> str:
    """Scan nodes ``db.find_near`` used for one hash and for one batch (via auto_explain)."""
    out = []
    for what, hs in (("1 hash", singles[:1]), (f"{len(batch)} hashes", batch)):
        probes = [probe_keys(h) for h in hs]
        messages = _stack.logged_plans(stack, lambda c, hs=hs, p=probes: db.find_near(c, hs, p, D))
        text = "\n".join(m for m in messages if "phash_bands" in m)
        ms = re.search(r"duration: ([\d.]+) ms", text)
        out.append(f"{what}: {_stack.scan_summary(text)}"
                   f" ({ms.group(1) if ms else '?'} ms under EXPLAIN ANALYZE)")
    return " | ".join(out)


def measure(conn: psycopg.Connection, cat: _stack.Catalogue,
            args: argparse.Namespace, stack=None) -> NearDupResult:
    """All the figures for the catalogue loaded in ``conn``'s database (ids 1..N).

    With ``stack`` the plans of one single and one batched lookup are logged as well.
    """
    n = len(cat)
    rng = np.random.default_rng(args.seed + 7)
    warm, _ = make_queries(cat.phashes, 20, rng)
    singles, flips = make_queries(cat.phashes, args.singles, rng)
    batches = [make_queries(cat.phashes, 256, rng) for _ in range(args.batches)]

    t0 = time.perf_counter()
    probes = [probe_keys(h) for h in singles]
    probe_ms = (time.perf_counter() - t0) / len(singles) * 1000
    for h in warm:
        db.find_near(conn, [h], [probe_keys(h)], D)

    lat, got_single = [], []
    for h, p in zip(singles, probes, strict=True):
        t0 = time.perf_counter()
        got_single.append(db.find_near(conn, [h], [p], D).get(0))
        lat.append(time.perf_counter() - t0)
    s50, s95 = _stack.percentiles(lat)
    _stack.log(f"{n:,} single-hash find_near: p50 {s50:.2f} ms, p95 {s95:.2f} ms")

    blat, got_batch = [], []
    for qs, _ in batches:
        ps = [probe_keys(h) for h in qs]
        t0 = time.perf_counter()
        found = db.find_near(conn, qs, ps, D)
        blat.append(time.perf_counter() - t0)
        got_batch += [found.get(i) for i in range(len(qs))]
    b50, b95 = _stack.percentiles(blat)
    _stack.log(f"{n:,} batch of 256 find_near: p50 {b50:.1f} ms, p95 {b95:.1f} ms")

    # Correctness against brute force, and recall of the planted copies.
    all_queries = singles + [h for qs, _ in batches for h in qs]
    all_flips = flips + [f for _, fs in batches for f in fs]
    truth = brute_force(cat.phashes, all_queries)
    got = got_single + got_batch
    mismatches = sum(1 for g, t in zip(got, truth, strict=True) if g != t)
    planted = [(g, k) for g, k in zip(got, all_flips, strict=True) if k]
    found = sum(1 for g, k in planted if g is not None and g[1] <= k)
    _stack.log(f"{n:,} checked {len(got)} answers: {mismatches} differ from brute force,"
               f" {found}/{len(planted)} planted copies found")

    m = min(args.baseline_queries, len(singles))
    flat, full_answers = [], []
    for h in singles[:m]:
        t0 = time.perf_counter()
        row = conn.execute(FULL_SCAN_SQL, {"h": h, "d": D}).fetchone()
        flat.append(time.perf_counter() - t0)
        full_answers.append(tuple(row) if row else None)
    f50, f95 = _stack.percentiles(flat)
    mismatches += sum(1 for g, t in zip(full_answers, truth[:m], strict=True) if g != t)
    idx50 = _stack.percentiles(lat[:m])[0]
    _stack.log(f"{n:,} full scan: p50 {f50:.1f} ms, p95 {f95:.1f} ms"
               f" ({f50 / idx50:.0f}x the GIN lookup on the same {m} hashes)")

    cands = float(np.mean([candidates(conn, p) for p in probes[:50]]))
    plans = find_near_plans(stack, singles, batches[0][0]) if stack is not None else ""
    if plans:
        _stack.log(f"{n:,} find_near plans: {plans}")
    return NearDupResult(
        size=n, single_p50_ms=s50, single_p95_ms=s95, batch_p50_ms=b50, batch_p95_ms=b95,
        per_hash_in_batch_ms=b50 / 256, full_scan_p50_ms=f50, full_scan_p95_ms=f95,
        speed_up=f50 / idx50, planted=len(planted), planted_found=found,
        mismatches=mismatches, mean_candidates=cands, probe_keys_ms=probe_ms,
        singles=len(singles), batches=len(batches), batch_size=256, plans=plans,
    )


def table(results: list[NearDupResult]) -> str:
    """The summary table printed at the end (and pasted into docs/bench-similarity.md)."""
    head = ("| rows | single p50 ms | single p95 ms | batch-256 p50 ms (per hash) |"
            " batch-256 p95 ms | full scan p50 ms | speed-up | planted found |"
            " wrong answers | candidates/lookup |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        lines.append(
            f"| {r.size:,} | {r.single_p50_ms:.2f} | {r.single_p95_ms:.2f} |"
            f" {r.batch_p50_ms:.1f} ({r.per_hash_in_batch_ms:.3f}) | {r.batch_p95_ms:.1f} |"
            f" {r.full_scan_p50_ms:.1f} | {r.speed_up:.0f}x |"
            f" {r.planted_found}/{r.planted} | {r.mismatches} | {r.mean_candidates:,.0f} |"
        )
    return "\n".join(lines)


def report(result: NearDupResult) -> None:
    """Print one size's figures as soon as they are known."""
    print(layout(), flush=True)
    print(table([result]), flush=True)
    print(f"(probe_keys in Python: {result.probe_keys_ms:.3f} ms per hash, not in the"
          " latencies above)", flush=True)
    if result.plans:
        print(f"plans: {result.plans}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse options, run every size on one throw-away stack, print the summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000",
                    help="comma-separated catalogue sizes")
    ap.add_argument("--singles", type=int, default=200, help="single-hash calls measured")
    ap.add_argument("--batches", type=int, default=10, help="batches of 256 hashes measured")
    ap.add_argument("--baseline-queries", type=int, default=20,
                    help="full-scan baseline calls (each reads the whole table)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]

    print(f"machine: {_stack.machine()}", flush=True)
    results = []
    with _stack.throwaway_stack() as (stack, url):
        for n in sizes:
            cat = _stack.synthetic_catalogue(n, seed=args.seed, embeddings=False)
            with db.connect(url, autocommit=True) as conn:
                _stack.load_catalogue(conn, cat, hnsw=False)
            _stack.prewarm(stack, [f"artclf.{_stack.GIN_INDEX}", "artclf.artworks"])
            with db.connect(url, autocommit=True) as conn:
                results.append(measure(conn, cat, args, stack))
            report(results[-1])
    print(f"\nmachine at the end: {_stack.machine()}")
    print(layout() + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
