"""Latency and completeness of the catalogue's near-duplicate lookup (``artworks.find_near``).

    python bench/neardup_lookup.py [--sizes 100000,1000000] [--singles 200] [--batches 10]
                                   [--baseline-queries 20] [--copy-noise 0.02]
                                   [--alternative]

For each size: a throw-away stack (bench/_stack.py) holds N artworks with the clustered
synthetic embeddings of bench/similarity.py, random pHashes with exactly 32 one-bits (as
real ones), ``phash_bands = dedup.band_keys(h)`` and random dHashes, under the migration's own
indexes (GIN on the bands and HNSW on the embeddings: ``find_near`` takes candidates from
both). Then

* p50/p95 client-side latency of ``artworks.find_near`` for one query at a time (half near copies:
  a catalogued artwork's pHash with an even number of bits up to NEAR_DUP_MAX_DISTANCE
  flipped, its dHash with up to NEAR_DUP_MAX_DHASH, and its embedding plus a little noise,
  ``--copy-noise`` per dimension, as a re-encoded copy keeps its CNN embedding; half new
  artworks: random hashes and a new embedding of the same distribution), and for batches of
  256 queries (the pipeline's way), per batch and per query. Each call runs in a
  transaction, as in the pipeline (``find_near`` uses SET LOCAL);
* completeness: every planted copy must be found (at its planted distance or closer), and
  every answer is compared with brute force over all N hashes in numpy (the closest pHash
  within the thresholds of both hashes, ties by id). For a missed copy the bench checks
  whether its original was the query's exact nearest embedding (then the HNSW search, not
  the embedding, lost it);
* the baseline the indexes replace, the same distance conditions on a full scan, on the
  first ``--baseline-queries`` single queries, in the same run.

Goal (issue): flat, under 5 ms p50 at both sizes. ``--near-ef-search`` sweeps the HNSW
breadth of ``find_near``; ``--alternative`` also measures a candidate design with a guarantee
instead of the embedding heuristic (every pHash within the threshold by multi-index
hashing, through one btree expression index per band).
``bench/similarity.py --neardup`` runs the same measurements on the rows it loaded.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _stack  # noqa: E402
import psycopg  # noqa: E402

from artclf_core.catalogue import artworks, db  # noqa: E402
from artclf_core.images.fingerprints import (
    BAND_BITS,
    N_BANDS,
    NEAR_DUP_MAX_DHASH,
    NEAR_DUP_MAX_DISTANCE,
    band_keys,
    to_signed64,
)

D = NEAR_DUP_MAX_DISTANCE
DD = NEAR_DUP_MAX_DHASH
_U64 = (1 << 64) - 1
#: (connection, queries) -> {query index: (artwork id, pHash distance)}
Lookup = Callable[[psycopg.Connection, "Queries"], dict[int, tuple[int, int]]]

FULL_SCAN_SQL = """
    SELECT a.id, bit_count((a.phash # %(h)s)::bit(64))::int AS d
    FROM artclf.artworks AS a
    WHERE bit_count((a.phash # %(h)s)::bit(64)) <= %(d)s
      AND bit_count((a.dhash # %(g)s)::bit(64)) <= %(dd)s
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
    #: Of the missed copies, those whose original is the exact nearest embedding of the
    #: query: the HNSW search, not the embedding, lost them.
    missed_original_is_nearest: int
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
    hashes: list[int]  # pHashes
    dhashes: list[int]
    embeddings: np.ndarray  # (q, 128) float32
    flips: list[int]  # pHash bits flipped for a planted copy, 0 for a new artwork
    sources: list[int]  # row of the original for a planted copy, -1 for a new artwork

    def __getitem__(self, sel: slice) -> Queries:
        return Queries(
            self.hashes[sel],
            self.dhashes[sel],
            self.embeddings[sel],
            self.flips[sel],
            self.sources[sel],
        )

    def __len__(self) -> int:
        return len(self.hashes)

    @staticmethod
    def concat(parts: list[Queries]) -> Queries:
        return Queries(
            [h for p in parts for h in p.hashes],
            [g for p in parts for g in p.dhashes],
            np.concatenate([p.embeddings for p in parts]),
            [f for p in parts for f in p.flips],
            [x for p in parts for x in p.sources],
        )


def _flip_balanced(h: int, k: int, rng: np.random.Generator) -> int:
    """Flip ``k`` bits of a pHash keeping 32 ones: k/2 ones off, k/2 zeros on (k even)."""
    u = h & _U64
    ones = [b for b in range(64) if u >> b & 1]
    zeros = [b for b in range(64) if not u >> b & 1]
    for b in list(rng.choice(ones, k // 2, replace=False)) + list(
        rng.choice(zeros, k // 2, replace=False)
    ):
        u ^= 1 << int(b)
    return to_signed64(u)


def make_queries(
    cat: _stack.Catalogue,
    fresh: np.ndarray,
    count: int,
    rng: np.random.Generator,
    copy_noise: float,
) -> Queries:
    """``count`` queries, alternately a near copy of a catalogued artwork and a new one.

    A copy flips an even number 2..D of its original's pHash bits (pHash distances are even;
    every other copy at the largest, the hardest case), 0..DD bits of its dHash, and gets the
    original's embedding plus Gaussian noise; a new artwork gets random hashes and one of the
    ``fresh`` embeddings (same distribution, not catalogued).
    """
    q = Queries([], [], np.empty((count, cat.embeddings.shape[1]), dtype=np.float32), [], [])
    k_max = D - D % 2
    for j in range(count):
        if j % 2 == 0:
            src = int(rng.integers(len(cat)))
            k = k_max if j % 4 == 0 else 2 * int(rng.integers(1, k_max // 2 + 1))
            q.hashes.append(_flip_balanced(int(cat.phashes[src]), k, rng))
            g = int(cat.dhashes[src]) & _U64
            for b in rng.choice(64, size=int(rng.integers(0, DD + 1)), replace=False):
                g ^= 1 << int(b)
            q.dhashes.append(to_signed64(g))
            noise = copy_noise * rng.normal(size=q.embeddings.shape[1])
            q.embeddings[j] = cat.embeddings[src] + noise
            q.flips.append(k)
            q.sources.append(src)
        else:
            q.hashes.append(int(_stack.balanced_hashes(1, rng)[0]))
            q.dhashes.append(int(rng.integers(-(2**63), 2**63 - 1, dtype=np.int64, endpoint=True)))
            q.embeddings[j] = fresh[int(rng.integers(len(fresh)))]
            q.flips.append(0)
            q.sources.append(-1)
    return q


def brute_force(cat: _stack.Catalogue, qs: Queries) -> list[tuple[int, int] | None]:
    """For each query the catalogued artwork within D pHash and DD dHash bits with the
    smallest pHash distance (ties: smallest id), or None."""
    u = cat.phashes.view(np.uint64)
    v = cat.dhashes.view(np.uint64)
    out: list[tuple[int, int] | None] = []
    for h, g in zip(qs.hashes, qs.dhashes, strict=True):
        dist = np.bitwise_count(u ^ np.uint64(h & _U64)).astype(np.int16)
        dist[np.bitwise_count(v ^ np.uint64(g & _U64)) > DD] = 99
        i = int(np.argmin(dist))  # first minimum = smallest id (row i is id i + 1)
        out.append((i + 1, int(dist[i])) if dist[i] <= D else None)
    return out


def original_is_nearest(cat: _stack.Catalogue, embs: np.ndarray, sources: list[int]) -> int:
    """How many queries have their original as exact nearest catalogued embedding (cosine)."""
    if not sources:
        return 0
    unit = cat.embeddings / np.linalg.norm(cat.embeddings, axis=1, keepdims=True)
    q = embs / np.linalg.norm(embs, axis=1, keepdims=True)
    nearest = np.argmax(q @ unit.T, axis=1)
    return int(sum(int(a) == b for a, b in zip(nearest, sources, strict=True)))


# ---------------------------------------------------------------------------------- lookups


def catalogue_lookup(conn: psycopg.Connection, qs: Queries) -> dict[int, tuple[int, int]]:
    """The pipeline's lookup, exactly as it calls it."""
    return artworks.find_near(conn, qs.hashes, qs.dhashes, list(qs.embeddings))


def catalogue_candidates(conn: psycopg.Connection, h: int) -> int:
    """Rows ``find_near`` checks for one query: k by embedding plus exact band matches."""
    same_band = conn.execute(
        "SELECT count(*) FROM artclf.artworks WHERE phash_bands && %s::int[]", (band_keys(h),)
    ).fetchone()[0]
    return artworks.NEAR_EMBEDDING_CANDIDATES + same_band


# A candidate design, measured with --alternative in the throw-away database only: every hash
# within D pHash bits by multi-index hashing (generalised pigeonhole: band i probed at radius
# r_i with sum(r_i + 1) > D; no reliance on the embedding), served by one btree expression
# index per band INCLUDE (phash, dhash, id), so that each band's probes are one index-only
# scan with ``= ANY(values)``. (The same probes through the GIN index cost ~30 ms at 100k
# rows, measured with this bench before find_near changed: GIN walks all of its ~1,100 probe
# entries for every row it returns.)

ALT_INDEX = "bench_phash_band{i}"


def probe_radii(d: int = D) -> list[int]:
    """Per-band radii with sum(r_i + 1) > d, spread as evenly as possible."""
    base, extra = divmod(d + 1, N_BANDS)
    return [base + (i >= N_BANDS - extra) - 1 for i in range(N_BANDS)]


@lru_cache(maxsize=8)
def _ball(radius: int) -> tuple[int, ...]:
    masks = [0] if radius >= 0 else []
    for r in range(1, radius + 1):
        masks += [sum(1 << p for p in c) for c in combinations(range(BAND_BITS), r)]
    return tuple(masks)


def probes_by_band(h: int) -> list[list[int]]:
    """For each band, every value within its radius of ``h``'s value in that band."""
    u = h & _U64
    mask = (1 << BAND_BITS) - 1
    out = []
    for i, r in enumerate(probe_radii()):
        v = (u >> (BAND_BITS * (N_BANDS - 1 - i))) & mask
        out.append([v ^ m for m in _ball(r)])
    return out


def _band_expr(i: int, alias: str = "") -> str:
    shift = BAND_BITS * (N_BANDS - 1 - i)
    return f"((({alias}phash >> {shift}) & {(1 << BAND_BITS) - 1})::int)"


def create_alternative(conn: psycopg.Connection) -> float:
    """Build the per-band expression indexes; return the seconds it took."""
    t0 = time.perf_counter()
    for i in range(N_BANDS):
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {ALT_INDEX.format(i=i)} ON artclf.artworks"
            f" ({_band_expr(i)}) INCLUDE (phash, dhash, id)"
        )
    conn.execute("VACUUM ANALYZE artclf.artworks")
    return time.perf_counter() - t0


def drop_alternative(conn: psycopg.Connection) -> None:
    for i in range(N_BANDS):
        conn.execute(f"DROP INDEX IF EXISTS artclf.{ALT_INDEX.format(i=i)}")


def alt_lookup(conn: psycopg.Connection, qs: Queries) -> dict[int, tuple[int, int]]:
    """``find_near``'s contract through the per-band btree indexes (embeddings unused)."""
    per_band: list[list[str]] = [[] for _ in range(N_BANDS)]
    for h in qs.hashes:
        for b, values in enumerate(probes_by_band(h)):
            per_band[b].append("{" + ",".join(map(str, values)) + "}")
    arms = " UNION ALL ".join(
        f"SELECT a.id, bit_count((a.phash # q.h)::bit(64))::int AS d FROM artclf.artworks a"
        f" WHERE {_band_expr(b, 'a.')} = ANY(q.p{b}::int[])"
        f" AND bit_count((a.dhash # q.g)::bit(64)) <= %(dd)s"
        for b in range(N_BANDS)
    )
    cols = ", ".join(f"p{b}" for b in range(N_BANDS))
    casts = ", ".join(f"%(p{b})s::text[]" for b in range(N_BANDS))
    rows = conn.execute(
        f"""
        SELECT q.i, m.id, m.d
        FROM unnest(%(i)s::int[], %(h)s::bigint[], %(g)s::bigint[], {casts})
            AS q(i, h, g, {cols})
        CROSS JOIN LATERAL (
            SELECT c.id, c.d FROM ({arms}) AS c
            WHERE c.d <= %(d)s ORDER BY c.d, c.id LIMIT 1
        ) AS m
        """,
        {
            "i": list(range(len(qs))),
            "h": qs.hashes,
            "g": qs.dhashes,
            "d": D,
            "dd": DD,
            **{f"p{b}": per_band[b] for b in range(N_BANDS)},
        },
    ).fetchall()
    return {i: (aid, d) for i, aid, d in rows}


def alt_candidates(conn: psycopg.Connection, h: int) -> int:
    keys = [(b << BAND_BITS) | v for b, vs in enumerate(probes_by_band(h)) for v in vs]
    return conn.execute(
        "SELECT count(*) FROM artclf.artworks WHERE phash_bands && %s::int[]", (keys,)
    ).fetchone()[0]


# ---------------------------------------------------------------------------------- measure


def lookup_plans(stack, lookup: Lookup, qs: Queries) -> str:
    """Scan nodes of one single and one batched lookup (auto_explain, in a transaction)."""
    out = []
    for what, sel in (("1 query", slice(0, 1)), (f"{len(qs)} queries", slice(None))):

        def run(conn: psycopg.Connection, sel: slice = sel) -> None:
            with conn.transaction():
                lookup(conn, qs[sel])

        text = "\n".join(m for m in _stack.logged_plans(stack, run) if "unnest" in m)
        ms = re.search(r"duration: ([\d.]+) ms", text)
        out.append(
            f"{what}: {_stack.scan_summary(text)}"
            f" ({ms.group(1) if ms else '?'} ms under EXPLAIN ANALYZE)"
        )
    return " | ".join(out)


def _timed(
    conn: psycopg.Connection, lookup: Lookup, qs: Queries
) -> tuple[float, dict[int, tuple[int, int]]]:
    """One call in its own transaction; the rollback after it is not timed."""
    t0 = time.perf_counter()
    found = lookup(conn, qs)
    elapsed = time.perf_counter() - t0
    conn.rollback()
    return elapsed, found


def measure(
    url: str,
    cat: _stack.Catalogue,
    args: argparse.Namespace,
    stack=None,
    lookup: Lookup = catalogue_lookup,
    name: str = "artworks.find_near",
    candidates: Callable[[psycopg.Connection, int], int] = catalogue_candidates,
) -> NearDupResult:
    """All the figures for the catalogue loaded at ``url`` (ids 1..N).

    The queries depend only on the seed, so every lookup measured sees the very same ones.
    With ``stack`` the plans of one single and one batched call are logged as well.
    """
    n = len(cat)
    rng = np.random.default_rng(args.seed + 7)
    n_fresh = 20 + args.singles + 256 * args.batches
    fresh = _stack.synthetic_catalogue(
        n_fresh, seed=args.seed, point_seed=args.seed + 999
    ).embeddings
    warm = make_queries(cat, fresh, 20, rng, args.copy_noise)
    singles = make_queries(cat, fresh, args.singles, rng, args.copy_noise)
    batches = [make_queries(cat, fresh, 256, rng, args.copy_noise) for _ in range(args.batches)]

    with db.connect(url) as conn:
        for j in range(len(warm)):
            _timed(conn, lookup, warm[j : j + 1])
        lat, got = [], []
        for j in range(len(singles)):
            t, found = _timed(conn, lookup, singles[j : j + 1])
            lat.append(t)
            got.append(found.get(0))
        s50, s95 = _stack.percentiles(lat)
        _stack.log(f"{n:,} {name} single query: p50 {s50:.2f} ms, p95 {s95:.2f} ms")
        blat = []
        for qs in batches:
            t, found = _timed(conn, lookup, qs)
            blat.append(t)
            got += [found.get(i) for i in range(len(qs))]
        b50, b95 = _stack.percentiles(blat)
        _stack.log(f"{n:,} {name} batch of 256: p50 {b50:.1f} ms, p95 {b95:.1f} ms")

        m = min(args.baseline_queries, len(singles))
        flat, full_answers = [], []
        for h, g in zip(singles.hashes[:m], singles.dhashes[:m], strict=True):
            t0 = time.perf_counter()
            row = conn.execute(FULL_SCAN_SQL, {"h": h, "g": g, "d": D, "dd": DD}).fetchone()
            flat.append(time.perf_counter() - t0)
            full_answers.append(tuple(row) if row else None)
        conn.rollback()
        f50 = _stack.percentiles(flat)[0]
        idx50 = _stack.percentiles(lat[:m])[0]
        _stack.log(
            f"{n:,} full scan: p50 {f50:.1f} ms ({f50 / idx50:.0f}x {name} on the same {m} queries)"
        )
        cands = float(np.mean([candidates(conn, h) for h in singles.hashes[:50]]))
        conn.rollback()

    # Completeness against brute force.
    every = Queries.concat([singles, *batches])
    truth = brute_force(cat, every)
    if any(a != t for a, t in zip(full_answers, truth, strict=False)):
        raise RuntimeError("the full-scan baseline disagrees with numpy: the bench is wrong")
    missed_rows = [
        j
        for j, (g, k) in enumerate(zip(got, every.flips, strict=True))
        if k and (g is None or g[1] > k)
    ]
    planted = sum(1 for k in every.flips if k)
    missed_far = sum(1 for j in missed_rows if every.flips[j] > 3)
    nearest = original_is_nearest(
        cat, every.embeddings[missed_rows], [every.sources[j] for j in missed_rows]
    )
    chance = [
        (g, t) for g, t, k in zip(got, truth, every.flips, strict=True) if not k and t is not None
    ]
    chance_found = sum(1 for g, t in chance if g is not None)
    agree = sum(1 for g, t in zip(got, truth, strict=True) if g == t)
    _stack.log(
        f"{n:,} {name}: {planted - len(missed_rows)}/{planted} planted copies found;"
        f" {chance_found}/{len(chance)} chance matches of new artworks reported;"
        f" {agree}/{len(got)} answers equal to brute force"
    )

    plans = lookup_plans(stack, lookup, batches[0]) if stack is not None else ""
    if plans:
        _stack.log(f"{n:,} {name} plans: {plans}")
    return NearDupResult(
        size=n,
        lookup=name,
        single_p50_ms=s50,
        single_p95_ms=s95,
        batch_p50_ms=b50,
        batch_p95_ms=b95,
        per_query_in_batch_ms=b50 / 256,
        full_scan_p50_ms=f50,
        speed_up=f50 / idx50,
        planted=planted,
        planted_found=planted - len(missed_rows),
        planted_missed_over_3_bits=missed_far,
        missed_original_is_nearest=nearest,
        chance_matches=len(chance),
        chance_found=chance_found,
        agree_brute_force=agree,
        answers=len(got),
        mean_candidates=cands,
        singles=len(singles),
        batches=len(batches),
        plans=plans,
    )


# ---------------------------------------------------------------------------------- output


def layout() -> str:
    """The dedup and lookup parameters the figures were measured with."""
    return (
        f"near duplicate: pHash <= {D} and dHash <= {DD} bits; find_near:"
        f" {artworks.NEAR_EMBEDDING_CANDIDATES} embedding candidates at hnsw.ef_search="
        f"{artworks.NEAR_EF_SEARCH} + rows sharing one of {len(band_keys(0))} pHash band keys"
        f" exactly; --alternative probes radii {probe_radii()}"
        f" ({sum(len(v) for v in probes_by_band(0))} values)"
    )


def table(results: list[NearDupResult]) -> str:
    """The summary table printed at the end (and pasted into docs/bench-similarity.md)."""
    head = (
        "| rows | lookup | single p50 ms | single p95 ms | batch-256 p50 ms (per query) |"
        " batch-256 p95 ms | full scan p50 ms | speed-up | planted copies found |"
        " chance matches reported | = brute force | candidates/query |"
    )
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
        print(
            f"  {result.planted_missed_over_3_bits} missed copies differ in > 3 bits (no"
            " exact band in common): only the embedding could have found them; for"
            f" {result.missed_original_is_nearest} of them the original is the query's"
            " exact nearest embedding (the HNSW search missed it)",
            flush=True,
        )
    if result.plans:
        print(f"  plans: {result.plans}", flush=True)


def run_all(
    stack, url: str, cat: _stack.Catalogue, args: argparse.Namespace
) -> list[NearDupResult]:
    """The catalogue lookup, then (with --alternative) the candidate design, on one load."""
    results = []
    default_ef = artworks.NEAR_EF_SEARCH
    try:
        for ef in getattr(args, "near_ef_search", None) or [default_ef]:
            # find_near reads the module constant at call time: a sweep needs no code change.
            artworks.NEAR_EF_SEARCH = ef
            name = "artworks.find_near" + ("" if ef == default_ef else f" (ef_search={ef})")
            results.append(measure(url, cat, args, stack, name=name))
            report(results[-1])
    finally:
        artworks.NEAR_EF_SEARCH = default_ef
    if getattr(args, "alternative", False):
        with db.connect(url, autocommit=True) as conn:
            built = create_alternative(conn)
        _stack.log(f"per-band btree indexes built in {built:.1f}s")
        _stack.prewarm(stack, [f"artclf.{ALT_INDEX.format(i=i)}" for i in range(N_BANDS)])
        results.append(
            measure(
                url,
                cat,
                args,
                stack,
                alt_lookup,
                "btree per band, all probes (candidate)",
                alt_candidates,
            )
        )
        with db.connect(url, autocommit=True) as conn:
            drop_alternative(conn)
        report(results[-1])
    return results


def add_options(ap: argparse.ArgumentParser) -> None:
    """Options shared with ``bench/similarity.py --neardup``."""
    ap.add_argument("--singles", type=int, default=200, help="single-query calls measured")
    ap.add_argument("--batches", type=int, default=10, help="batches of 256 queries measured")
    ap.add_argument(
        "--baseline-queries",
        type=int,
        default=20,
        help="full-scan baseline calls (each reads the whole table)",
    )
    ap.add_argument(
        "--copy-noise",
        type=float,
        default=0.02,
        help="per-dimension noise added to a copy's embedding",
    )
    ap.add_argument(
        "--alternative",
        action="store_true",
        help="also measure per-band btree indexes with all probe keys",
    )
    ap.add_argument(
        "--near-ef-search",
        default="",
        help="comma-separated hnsw.ef_search values to measure find_near with"
        " (default: artworks.NEAR_EF_SEARCH)",
    )


def parse_options(args: argparse.Namespace) -> None:
    """Turn the comma-separated options of :func:`add_options` into lists."""
    if isinstance(args.near_ef_search, str):
        args.near_ef_search = [int(x) for x in args.near_ef_search.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    """Parse options, run every size on one throw-away stack, print the summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated catalogue sizes")
    add_options(ap)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    parse_options(args)

    print(f"machine: {_stack.machine()}", flush=True)
    print(layout(), flush=True)
    results: list[NearDupResult] = []
    with _stack.throwaway_stack() as (stack, url):
        for n in sizes:
            cat = _stack.synthetic_catalogue(n, seed=args.seed)
            with db.connect(url, autocommit=True) as conn:
                _stack.load_catalogue(conn, cat)
            _stack.prewarm(
                stack,
                [f"artclf.{_stack.HNSW_INDEX}", f"artclf.{_stack.GIN_INDEX}", "artclf.artworks"],
            )
            results += run_all(stack, url, cat, args)
    print(f"\nmachine at the end: {_stack.machine()}")
    print(layout() + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
