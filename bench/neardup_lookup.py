"""Latency and completeness of the catalogue's near-duplicate lookup (``db.find_near``).

    python bench/neardup_lookup.py [--sizes 100000,1000000] [--singles 200] [--batches 10]
                                   [--baseline-queries 20] [--copy-noise 0.02]
                                   [--alternative]

For each size: a throw-away stack (bench/_stack.py) holds N artworks with the clustered
synthetic embeddings of bench/similarity.py, uniformly random 64-bit pHashes and
``phash_bands = dedup.band_keys(h)``, under the migration's own indexes (GIN on the bands and
HNSW on the embeddings: ``find_near`` takes candidates from both). Then

* p50/p95 client-side latency of ``db.find_near`` for one query at a time (half near copies:
  a catalogued artwork's hash with 1..NEAR_DUP_MAX_DISTANCE bits flipped and its embedding
  plus a little noise, ``--copy-noise`` per dimension, as a re-encoded copy keeps its CNN
  embedding; half new artworks: a random hash and a new embedding of the same distribution),
  and for batches of 256 queries (the pipeline's way), per batch and per query. Each call runs
  in a transaction, as in the pipeline (``find_near`` uses SET LOCAL);
* completeness: every planted copy must be found (at its planted distance or closer), and
  every answer is compared with brute force over all N hashes in numpy (the closest hash
  within the threshold, ties by id). Uniformly random hashes collide by chance: at 1M rows
  a random hash has another within 12 bits about one time in five; the table says how many
  of those chance matches the lookup reports;
* the baseline the indexes replace, ``WHERE bit_count((phash # h)::bit(64)) <= d`` on a full
  scan, on the first ``--baseline-queries`` single queries, in the same run.

Goal (issue): flat, under 5 ms p50 at both sizes. ``--alternative`` also measures a
candidate design with a guarantee instead of the embedding heuristic (every hash within the
threshold via ``dedup.probe_keys``, through one btree expression index per band).
``bench/similarity.py --neardup`` runs the same measurements on the rows it loaded.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _stack  # noqa: E402
import psycopg  # noqa: E402

from artclf_core import db  # noqa: E402
from artclf_core.dedup import (  # noqa: E402
    BAND_BITS,
    N_BANDS,
    NEAR_DUP_MAX_DISTANCE,
    band_keys,
    probe_keys,
    to_signed64,
)

D = NEAR_DUP_MAX_DISTANCE
#: (connection, hashes, embeddings) -> {query index: (artwork id, distance)}
Lookup = Callable[[psycopg.Connection, list[int], np.ndarray], dict[int, tuple[int, int]]]

FULL_SCAN_SQL = """
    SELECT a.id, bit_count((a.phash # %(h)s)::bit(64))::int AS d
    FROM artclf.artworks AS a
    WHERE bit_count((a.phash # %(h)s)::bit(64)) <= %(d)s
    ORDER BY d, a.id
    LIMIT 1
"""


@dataclass
class NearDupResult:
    """Figures for one catalogue size and one lookup."""

    size: int
    lookup: str
    single_p50_ms: float
    single_p95_ms: float
    batch_p50_ms: float
    batch_p95_ms: float
    per_query_in_batch_ms: float
    full_scan_p50_ms: float
    speed_up: float
    planted: int
    planted_found: int
    planted_missed_over_3_bits: int
    chance_matches: int
    chance_found: int
    agree_brute_force: int
    answers: int
    mean_candidates: float
    singles: int
    batches: int
    plans: str = ""


# ---------------------------------------------------------------------------------- queries


@dataclass
class Queries:
    hashes: list[int]
    embeddings: np.ndarray  # (q, 128) float32
    flips: list[int]  # bits flipped for a planted copy, 0 for a new artwork


def make_queries(cat: _stack.Catalogue, fresh: np.ndarray, count: int,
                 rng: np.random.Generator, copy_noise: float) -> Queries:
    """``count`` queries, alternately a near copy of a catalogued artwork and a new one.

    A copy flips 1..D distinct bits of the original's hash (every other copy exactly D, the
    hardest case) and gets the original's embedding plus Gaussian noise; a new artwork gets
    a random hash and one of the ``fresh`` embeddings (same distribution, not catalogued).
    """
    hashes: list[int] = []
    embs = np.empty((count, cat.embeddings.shape[1]), dtype=np.float32)
    flips: list[int] = []
    for j in range(count):
        if j % 2 == 0:
            src = int(rng.integers(len(cat)))
            h = int(cat.phashes[src]) & ((1 << 64) - 1)
            k = D if j % 4 == 0 else int(rng.integers(1, D + 1))
            for bit in rng.choice(64, size=k, replace=False):
                h ^= 1 << int(bit)
            hashes.append(to_signed64(h))
            embs[j] = cat.embeddings[src] + copy_noise * rng.normal(size=embs.shape[1])
            flips.append(k)
        else:
            hashes.append(int(rng.integers(-(2**63), 2**63 - 1, dtype=np.int64, endpoint=True)))
            embs[j] = fresh[int(rng.integers(len(fresh)))]
            flips.append(0)
    return Queries(hashes, embs, flips)


def brute_force(phashes: np.ndarray, queries: list[int]) -> list[tuple[int, int] | None]:
    """The closest catalogued hash within D for each query (ties: smallest id), or None."""
    u = phashes.view(np.uint64)
    out: list[tuple[int, int] | None] = []
    for q in queries:
        dist = np.bitwise_count(u ^ np.uint64(q & ((1 << 64) - 1)))
        i = int(np.argmin(dist))  # first minimum = smallest id (row i is id i + 1)
        out.append((i + 1, int(dist[i])) if dist[i] <= D else None)
    return out


# ---------------------------------------------------------------------------------- lookups


def catalogue_lookup(conn: psycopg.Connection, hashes: list[int],
                     embs: np.ndarray) -> dict[int, tuple[int, int]]:
    """The pipeline's lookup, exactly as it calls it."""
    return db.find_near(conn, hashes, list(embs), D)


def catalogue_candidates(conn: psycopg.Connection, h: int) -> int:
    """Rows ``find_near`` checks for one query: k by embedding plus exact band matches."""
    same_band = conn.execute(
        "SELECT count(*) FROM artclf.artworks WHERE phash_bands && %s::int[]", (band_keys(h),)
    ).fetchone()[0]
    return db.NEAR_EMBEDDING_CANDIDATES + same_band


# A candidate design, measured with --alternative in the throw-away database only: every hash
# within D through dedup.probe_keys (the generalised pigeonhole guarantee, no reliance on the
# embedding), served by one btree expression index per band INCLUDE (phash, id), so that each
# band's probes are one index-only scan with ``= ANY(values)``. (The same probes through the
# GIN index cost ~30 ms at 100k rows, measured with this bench before find_near changed: GIN
# walks all ~1,100 probe entries for every row it returns.)

ALT_INDEX = "bench_phash_band{i}"


def _band_expr(i: int, alias: str = "") -> str:
    shift = BAND_BITS * (N_BANDS - 1 - i)
    return f"((({alias}phash >> {shift}) & {(1 << BAND_BITS) - 1})::int)"


def create_alternative(conn: psycopg.Connection) -> float:
    """Build the per-band expression indexes; return the seconds it took."""
    t0 = time.perf_counter()
    for i in range(N_BANDS):
        conn.execute(f"CREATE INDEX IF NOT EXISTS {ALT_INDEX.format(i=i)} ON artclf.artworks"
                     f" ({_band_expr(i)}) INCLUDE (phash, id)")
    conn.execute("VACUUM ANALYZE artclf.artworks")
    return time.perf_counter() - t0


def drop_alternative(conn: psycopg.Connection) -> None:
    for i in range(N_BANDS):
        conn.execute(f"DROP INDEX IF EXISTS artclf.{ALT_INDEX.format(i=i)}")


def alt_lookup(conn: psycopg.Connection, hashes: list[int],
               embs: np.ndarray) -> dict[int, tuple[int, int]]:
    """``find_near``'s contract through the per-band btree indexes (embeddings unused)."""
    mask = (1 << BAND_BITS) - 1
    per_band: list[list[str]] = [[] for _ in range(N_BANDS)]
    for h in hashes:
        split: list[list[int]] = [[] for _ in range(N_BANDS)]
        for key in probe_keys(h):
            split[key >> BAND_BITS].append(key & mask)
        for b in range(N_BANDS):
            per_band[b].append("{" + ",".join(map(str, split[b])) + "}")
    arms = " UNION ALL ".join(
        f"SELECT a.id, bit_count((a.phash # q.h)::bit(64))::int AS d FROM artclf.artworks a"
        f" WHERE {_band_expr(b, 'a.')} = ANY(q.p{b}::int[])" for b in range(N_BANDS))
    cols = ", ".join(f"p{b}" for b in range(N_BANDS))
    casts = ", ".join("%s::text[]" for _ in range(N_BANDS))
    rows = conn.execute(
        f"""
        SELECT q.i, m.id, m.d
        FROM unnest(%s::int[], %s::bigint[], {casts}) AS q(i, h, {cols})
        CROSS JOIN LATERAL (
            SELECT c.id, c.d FROM ({arms}) AS c
            WHERE c.d <= %s ORDER BY c.d, c.id LIMIT 1
        ) AS m
        """,
        (list(range(len(hashes))), list(hashes), *per_band, D),
    ).fetchall()
    return {i: (aid, d) for i, aid, d in rows}


def alt_candidates(conn: psycopg.Connection, h: int) -> int:
    return conn.execute(
        "SELECT count(*) FROM artclf.artworks WHERE phash_bands && %s::int[]", (probe_keys(h),)
    ).fetchone()[0]


# ---------------------------------------------------------------------------------- measure


def lookup_plans(stack, lookup: Lookup, qs: Queries) -> str:
    """Scan nodes of one single and one batched lookup (auto_explain, in a transaction)."""
    out = []
    for what, sel in (("1 query", slice(0, 1)), (f"{len(qs.hashes)} queries", slice(None))):
        def run(conn: psycopg.Connection, sel: slice = sel) -> None:
            with conn.transaction():
                lookup(conn, qs.hashes[sel], qs.embeddings[sel])
        text = "\n".join(m for m in _stack.logged_plans(stack, run) if "unnest" in m)
        ms = re.search(r"duration: ([\d.]+) ms", text)
        out.append(f"{what}: {_stack.scan_summary(text)}"
                   f" ({ms.group(1) if ms else '?'} ms under EXPLAIN ANALYZE)")
    return " | ".join(out)


def _timed(conn: psycopg.Connection, lookup: Lookup, hashes: Sequence[int],
           embs: np.ndarray) -> tuple[float, dict[int, tuple[int, int]]]:
    """One call in its own transaction; the rollback after it is not timed."""
    t0 = time.perf_counter()
    found = lookup(conn, list(hashes), embs)
    elapsed = time.perf_counter() - t0
    conn.rollback()
    return elapsed, found


def measure(url: str, cat: _stack.Catalogue, args: argparse.Namespace, stack=None,
            lookup: Lookup = catalogue_lookup, name: str = "db.find_near",
            candidates: Callable[[psycopg.Connection, int], int] = catalogue_candidates,
            ) -> NearDupResult:
    """All the figures for the catalogue loaded at ``url`` (ids 1..N).

    The queries depend only on the seed, so every lookup measured sees the very same ones.
    With ``stack`` the plans of one single and one batched call are logged as well.
    """
    n = len(cat)
    rng = np.random.default_rng(args.seed + 7)
    n_fresh = 20 + args.singles + 256 * args.batches
    fresh = _stack.synthetic_catalogue(n_fresh, seed=args.seed,
                                       point_seed=args.seed + 999).embeddings
    warm = make_queries(cat, fresh, 20, rng, args.copy_noise)
    singles = make_queries(cat, fresh, args.singles, rng, args.copy_noise)
    batches = [make_queries(cat, fresh, 256, rng, args.copy_noise)
               for _ in range(args.batches)]

    with db.connect(url) as conn:
        for j in range(len(warm.hashes)):
            _timed(conn, lookup, warm.hashes[j:j + 1], warm.embeddings[j:j + 1])
        lat, got = [], []
        for j in range(len(singles.hashes)):
            t, found = _timed(conn, lookup, singles.hashes[j:j + 1],
                              singles.embeddings[j:j + 1])
            lat.append(t)
            got.append(found.get(0))
        s50, s95 = _stack.percentiles(lat)
        _stack.log(f"{n:,} {name} single query: p50 {s50:.2f} ms, p95 {s95:.2f} ms")
        blat = []
        for qs in batches:
            t, found = _timed(conn, lookup, qs.hashes, qs.embeddings)
            blat.append(t)
            got += [found.get(i) for i in range(len(qs.hashes))]
        b50, b95 = _stack.percentiles(blat)
        _stack.log(f"{n:,} {name} batch of 256: p50 {b50:.1f} ms, p95 {b95:.1f} ms")

        m = min(args.baseline_queries, len(singles.hashes))
        flat, full_answers = [], []
        for h in singles.hashes[:m]:
            t0 = time.perf_counter()
            row = conn.execute(FULL_SCAN_SQL, {"h": h, "d": D}).fetchone()
            flat.append(time.perf_counter() - t0)
            full_answers.append(tuple(row) if row else None)
        conn.rollback()
        f50 = _stack.percentiles(flat)[0]
        idx50 = _stack.percentiles(lat[:m])[0]
        _stack.log(f"{n:,} full scan: p50 {f50:.1f} ms ({f50 / idx50:.0f}x {name} on the"
                   f" same {m} queries)")
        cands = float(np.mean([candidates(conn, h) for h in singles.hashes[:50]]))
        conn.rollback()

    # Completeness against brute force.
    all_hashes = singles.hashes + [h for qs in batches for h in qs.hashes]
    all_flips = singles.flips + [f for qs in batches for f in qs.flips]
    truth = brute_force(cat.phashes, all_hashes)
    if any(a != t for a, t in zip(full_answers, truth, strict=False)):
        raise RuntimeError("the full-scan baseline disagrees with numpy: the bench is wrong")
    planted = [(g, k) for g, k in zip(got, all_flips, strict=True) if k]
    found_planted = sum(1 for g, k in planted if g is not None and g[1] <= k)
    missed_far = sum(1 for g, k in planted if (g is None or g[1] > k) and k > 3)
    chance = [(g, t) for g, t, k in zip(got, truth, all_flips, strict=True)
              if not k and t is not None]
    chance_found = sum(1 for g, t in chance if g is not None)
    agree = sum(1 for g, t in zip(got, truth, strict=True) if g == t)
    _stack.log(f"{n:,} {name}: {found_planted}/{len(planted)} planted copies found;"
               f" {chance_found}/{len(chance)} chance matches of new artworks reported;"
               f" {agree}/{len(got)} answers equal to brute force")

    plans = lookup_plans(stack, lookup, batches[0]) if stack is not None else ""
    if plans:
        _stack.log(f"{n:,} {name} plans: {plans}")
    return NearDupResult(
        size=n, lookup=name, single_p50_ms=s50, single_p95_ms=s95, batch_p50_ms=b50,
        batch_p95_ms=b95, per_query_in_batch_ms=b50 / 256, full_scan_p50_ms=f50,
        speed_up=f50 / idx50, planted=len(planted), planted_found=found_planted,
        planted_missed_over_3_bits=missed_far, chance_matches=len(chance),
        chance_found=chance_found, agree_brute_force=agree, answers=len(got),
        mean_candidates=cands, singles=len(singles.hashes), batches=len(batches), plans=plans,
    )


# ---------------------------------------------------------------------------------- output


def layout() -> str:
    """The dedup and lookup parameters the figures were measured with."""
    return (f"NEAR_DUP_MAX_DISTANCE={D}; find_near: {db.NEAR_EMBEDDING_CANDIDATES} embedding"
            f" candidates at hnsw.ef_search={db.NEAR_EF_SEARCH} + rows sharing one of"
            f" {len(band_keys(0))} band keys exactly; --alternative probes"
            f" {len(probe_keys(0))} keys")


def table(results: list[NearDupResult]) -> str:
    """The summary table printed at the end (and pasted into docs/bench-similarity.md)."""
    head = ("| rows | lookup | single p50 ms | single p95 ms | batch-256 p50 ms (per query) |"
            " batch-256 p95 ms | full scan p50 ms | speed-up | planted copies found |"
            " chance matches reported | = brute force | candidates/query |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        lines.append(
            f"| {r.size:,} | {r.lookup} | {r.single_p50_ms:.2f} | {r.single_p95_ms:.2f} |"
            f" {r.batch_p50_ms:.1f} ({r.per_query_in_batch_ms:.3f}) | {r.batch_p95_ms:.1f} |"
            f" {r.full_scan_p50_ms:.1f} | {r.speed_up:.0f}x |"
            f" {r.planted_found}/{r.planted} | {r.chance_found}/{r.chance_matches} |"
            f" {r.agree_brute_force}/{r.answers} | {r.mean_candidates:,.0f} |"
        )
    return "\n".join(lines)


def report(result: NearDupResult) -> None:
    """Print one size's figures as soon as they are known."""
    print(table([result]), flush=True)
    if result.planted_missed_over_3_bits:
        print(f"  {result.planted_missed_over_3_bits} missed copies differ in > 3 bits (no"
              " exact band in common): only the embedding could have found them", flush=True)
    if result.plans:
        print(f"  plans: {result.plans}", flush=True)


def run_all(stack, url: str, cat: _stack.Catalogue, args: argparse.Namespace
            ) -> list[NearDupResult]:
    """The catalogue lookup, then (with --alternative) the candidate design, on one load."""
    results = [measure(url, cat, args, stack)]
    report(results[-1])
    if getattr(args, "alternative", False):
        with db.connect(url, autocommit=True) as conn:
            built = create_alternative(conn)
        _stack.log(f"per-band btree indexes built in {built:.1f}s")
        _stack.prewarm(stack, [f"artclf.{ALT_INDEX.format(i=i)}" for i in range(N_BANDS)])
        results.append(measure(url, cat, args, stack, alt_lookup,
                               "btree per band, all probes (candidate)", alt_candidates))
        with db.connect(url, autocommit=True) as conn:
            drop_alternative(conn)
        report(results[-1])
    return results


def add_options(ap: argparse.ArgumentParser) -> None:
    """Options shared with ``bench/similarity.py --neardup``."""
    ap.add_argument("--singles", type=int, default=200, help="single-query calls measured")
    ap.add_argument("--batches", type=int, default=10, help="batches of 256 queries measured")
    ap.add_argument("--baseline-queries", type=int, default=20,
                    help="full-scan baseline calls (each reads the whole table)")
    ap.add_argument("--copy-noise", type=float, default=0.02,
                    help="per-dimension noise added to a copy's embedding")
    ap.add_argument("--alternative", action="store_true",
                    help="also measure per-band btree indexes with all probe keys")


def main(argv: list[str] | None = None) -> int:
    """Parse options, run every size on one throw-away stack, print the summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000",
                    help="comma-separated catalogue sizes")
    add_options(ap)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]

    print(f"machine: {_stack.machine()}", flush=True)
    print(layout(), flush=True)
    results: list[NearDupResult] = []
    with _stack.throwaway_stack() as (stack, url):
        for n in sizes:
            cat = _stack.synthetic_catalogue(n, seed=args.seed)
            with db.connect(url, autocommit=True) as conn:
                _stack.load_catalogue(conn, cat)
            _stack.prewarm(stack, [f"artclf.{_stack.HNSW_INDEX}", f"artclf.{_stack.GIN_INDEX}",
                                   "artclf.artworks"])
            results += run_all(stack, url, cat, args)
    print(f"\nmachine at the end: {_stack.machine()}")
    print(layout() + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
