"""Latency and recall of ``artclf.similar_artworks`` on a large synthetic catalogue.

    python bench/similarity.py [--sizes 100000,1000000] [--queries 200]
                               [--ef-search 40,100] [--m 16 --ef-construction 64]
                               [--also-shared-buffers 256MB] [--neardup] [--json PATH]

For each size: a throw-away stack (bench/_stack.py) is loaded with N synthetic artworks,
the HNSW index is built exactly as ``sql/001_catalogue.sql`` defines it, and then

* p50/p95 client-side latency of ``SELECT * FROM artclf.similar_artworks(id)`` (k=5,
  same_label=true) and of ``similar_artworks(id, 5, false)``: sequential calls over one
  connection, after a warm-up that is not counted;
* recall@5 of both against exact search computed in numpy over all vectors (cosine,
  excluding the query, same label when asked);
* the same calls on a session with ``enable_indexscan=off``, i.e. the exact scan the index
  replaces, on the first ``--exact-queries`` queries, with the speed-up of the index.

The goal (issue): p50 under 5 ms at 1M rows with recall@5 >= 0.95. ``--ef-search`` measures
other values of the function's ``hnsw.ef_search`` on the same index (by ALTER FUNCTION in the
throw-away database; the migration is not touched), ``--m``/``--ef-construction`` build the
index with other parameters. Results go to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _stack  # noqa: E402
import neardup_lookup  # noqa: E402
import psycopg  # noqa: E402

from artclf_core import CLASSES
from artclf_core.catalogue import artworks, db

K = 5
NEAREST_SIGNATURE = "artclf._nearest(vector, integer, text, bigint)"
#: A returned neighbour counts as a hit when it is in the exact top-k, or when its distance
#: ties the exact k-th one within this tolerance (float32 rounding differs between pgvector
#: and numpy, and two neighbours at equal distance are equally right).
TIE_TOLERANCE = 1e-5
MODES = {True: "same_label=true", False: "same_label=false"}


@dataclass
class Result:
    """One measured configuration; the summary table is made of these."""

    size: int
    mode: str
    search: str  # "hnsw ef_search=100", "exact scan", ...
    p50_ms: float
    p95_ms: float
    recall: float
    queries: int
    short_results: int = 0
    #: Mean distance of the returned neighbours over that of the exact ones (1.0 = as close).
    distance_ratio: float = 1.0
    per_label_p50_ms: dict[str, float] = field(default_factory=dict)
    note: str = ""


# ---------------------------------------------------------------------------------- exact


def exact_neighbours(
    cat: _stack.Catalogue, qidx: np.ndarray, same_label: bool, k: int = K
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by cosine distance in numpy: (ids (q, k), their distances (q, k)).

    Computed from the float32 values stored in the database, in blocks of queries so that
    the (block x N) distance matrix stays small.
    """
    emb = cat.embeddings
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    ids = np.empty((len(qidx), k), dtype=np.int64)
    dists = np.empty((len(qidx), k), dtype=np.float64)
    for lo in range(0, len(qidx), 32):
        qb = qidx[lo : lo + 32]
        dist = 1.0 - unit[qb] @ unit.T
        dist[np.arange(len(qb)), qb] = np.inf
        if same_label:
            dist[cat.labels[None, :] != cat.labels[qb][:, None]] = np.inf
        top = np.argpartition(dist, k, axis=1)[:, :k]
        top_d = np.take_along_axis(dist, top, axis=1)
        order = np.argsort(top_d, axis=1)
        ids[lo : lo + len(qb)] = np.take_along_axis(top, order, axis=1) + 1
        dists[lo : lo + len(qb)] = np.take_along_axis(top_d, order, axis=1)
    return ids, dists


def recall_at_k(
    got: list[list[tuple[int, float]]], want: np.ndarray, dists: np.ndarray, k: int = K
) -> float:
    """Mean fraction of the exact top-k returned (ties at the k-th distance count)."""
    hits = 0
    for rows, exact, d_k in zip(got, want, dists[:, k - 1], strict=True):
        exact_set = set(exact.tolist())
        hits += sum(1 for aid, d in rows[:k] if aid in exact_set or d <= d_k + TIE_TOLERANCE)
    return hits / (k * len(got))


def distance_ratio(got: list[list[tuple[int, float]]], dists: np.ndarray) -> float:
    """How much farther the returned neighbours are than the exact ones, on average.

    Recall counts a miss whether the neighbour returned instead is almost as close or not;
    this says which: 1.01 means the returned five are 1 % farther than the best five.
    """
    ratios = [
        np.mean([d for _, d in rows]) / np.mean(exact)
        for rows, exact in zip(got, dists, strict=True)
        if rows
    ]
    return float(np.mean(ratios))


# ---------------------------------------------------------------------------------- timing


def timed_calls(
    url: str, ids: list[int], warmup: list[int], same_label: bool, options: str = ""
) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """Latency (s) and (artwork id, distance) rows of each call, one connection, in order.

    The statement is the one downstream tools run; psycopg prepares it after a few calls,
    as any client repeating a query does. A fresh connection per configuration, so that
    session settings and cached plans of one configuration never leak into another.
    """
    sql = (
        "SELECT * FROM artclf.similar_artworks(%s)"
        if same_label
        else "SELECT * FROM artclf.similar_artworks(%s, 5, false)"
    )
    latencies: list[float] = []
    rows_out: list[list[tuple[int, float]]] = []
    with psycopg.connect(url, autocommit=True, options=options) as conn:
        for aid in warmup:
            conn.execute(sql, (aid,)).fetchall()
        for aid in ids:
            t0 = time.perf_counter()
            rows = conn.execute(sql, (aid,)).fetchall()
            latencies.append(time.perf_counter() - t0)
            rows_out.append([(r[1], r[4]) for r in rows])
    return latencies, rows_out


def plan_scans(stack, artwork_id: int, same_label: bool, settings: list[str]) -> str:
    """How ``_nearest`` actually ran for one call: its scan nodes and filtered-out rows."""
    messages = _stack.logged_plans(
        stack,
        lambda conn: conn.execute(
            "SELECT * FROM artclf.similar_artworks(%s, 5, %s)", (artwork_id, same_label)
        ).fetchall(),
        tuple(settings),
    )
    inner = [m for m in messages if "candidates" in m or "embedding <=>" in m]
    return _stack.scan_summary("\n".join(inner or messages))


def nearest_ef_search(conn: psycopg.Connection) -> str:
    """The ``hnsw.ef_search`` the migrated ``_nearest`` function sets."""
    config = (
        conn.execute(
            "SELECT proconfig FROM pg_proc WHERE oid = %s::regprocedure", (NEAREST_SIGNATURE,)
        ).fetchone()[0]
        or []
    )
    return next((c.split("=", 1)[1] for c in config if c.startswith("hnsw.ef_search=")), "40")


def set_ef_search(url: str, ef: int | str) -> None:
    """Change the ``hnsw.ef_search`` the function sets, in the throw-away database only.

    pgvector's settings exist only once its library is loaded in the session; until then
    they are placeholders that only a superuser may attach to a function, hence the cast.
    """
    with db.connect(url, autocommit=True) as conn:
        conn.execute("SELECT '[1]'::vector")
        conn.execute(f"ALTER FUNCTION {NEAREST_SIGNATURE} SET hnsw.ef_search = {int(ef)}")


def measure_index(
    url: str,
    cat: _stack.Catalogue,
    ids: list[int],
    warmup: list[int],
    exact: dict[bool, tuple[np.ndarray, np.ndarray]],
    search: str,
    note: str = "",
) -> list[Result]:
    """Both modes through the HNSW index as the function is currently configured."""
    out = []
    for same_label in (True, False):
        lat, rows = timed_calls(url, ids, warmup, same_label)
        p50, p95 = _stack.percentiles(lat)
        want, dists = exact[same_label]
        per_label = {}
        if same_label:
            labels = cat.labels[np.asarray(ids) - 1]
            for li, name in enumerate(CLASSES):
                sel = [t for t, lab in zip(lat, labels, strict=True) if lab == li]
                if sel:
                    per_label[name] = round(_stack.percentiles(sel)[0], 2)
        res = Result(
            len(cat),
            MODES[same_label],
            search,
            p50,
            p95,
            recall_at_k(rows, want, dists),
            len(ids),
            short_results=sum(1 for r in rows if len(r) < K),
            distance_ratio=distance_ratio(rows, dists),
            per_label_p50_ms=per_label,
            note=note,
        )
        _stack.log(
            f"{res.size:,} {res.mode} {search}: p50 {p50:.2f} ms, p95 {p95:.2f} ms,"
            f" recall@5 {res.recall:.4f}, distance ratio {res.distance_ratio:.4f}"
            f" {per_label or ''}"
        )
        out.append(res)
    return out


# ---------------------------------------------------------------------------------- main


def bench_size(stack, url: str, n: int, args: argparse.Namespace) -> tuple[list[Result], str]:
    """Load one catalogue size and measure every configuration asked for on it.

    Returns the results and the database URL, which changes when the server is restarted
    (``--also-shared-buffers``: the embedded stack picks a free port on every start).
    """
    t0 = time.perf_counter()
    cat = _stack.synthetic_catalogue(
        n, seed=args.seed, latent_dim=args.latent_dim, label_purity=args.label_purity
    )
    _stack.log(f"generated {n:,} rows in {time.perf_counter() - t0:.1f}s")
    with db.connect(url, autocommit=True) as conn:
        timings = _stack.load_catalogue(
            conn, cat, hnsw_m=args.m, hnsw_ef_construction=args.ef_construction
        )
        migrated_ef = nearest_ef_search(conn)
        indexdef = _stack.index_definitions(conn)[_stack.HNSW_INDEX]
    _stack.prewarm(
        stack,
        [f"artclf.{_stack.HNSW_INDEX}", "artclf.artworks", f"artclf.{_stack.EMBEDDINGS_TABLE}"],
    )

    rng = np.random.default_rng(args.seed + 1)
    qidx = rng.choice(n, size=args.warmup + args.queries, replace=False)
    warm_ids = (qidx[: args.warmup] + 1).tolist()
    qidx = qidx[args.warmup :]
    ids = (qidx + 1).tolist()
    t0 = time.perf_counter()
    exact = {s: exact_neighbours(cat, qidx, s) for s in (True, False)}
    _stack.log(
        f"exact top-{K} in numpy for {len(ids)} queries x 2 modes: {time.perf_counter() - t0:.1f}s"
    )

    params = re.search(r"WITH \((.*)\)", indexdef)
    build = f"{params.group(1) if params else ''}, built in {timings['hnsw_build_s']:.0f}s"
    results: list[Result] = []
    for ef in args.ef_search or [migrated_ef]:
        set_ef_search(url, ef)
        note = build + ("" if str(ef) == migrated_ef else " (ef_search changed for this run)")
        results += measure_index(url, cat, ids, warm_ids, exact, f"hnsw ef_search={ef}", note)
    set_ef_search(url, migrated_ef)

    # How the rarest label and a common one ran (index scan, rows the label filter dropped).
    for same_label in (True, False):
        for li in (CLASSES.index("iconography"), CLASSES.index("painting")):
            aid = next((i for i in ids if cat.labels[i - 1] == li), None)
            if aid is None:  # a small --queries may hold no artwork of the rare label
                continue
            _stack.log(
                f"plan {MODES[same_label]} {CLASSES[li]} (id {aid}): "
                + plan_scans(stack, aid, same_label, [])
            )

    # Baseline: the exact scan the index replaces, on a prefix of the same queries.
    m = min(args.exact_queries, len(ids))
    for same_label in (True, False) if m else ():
        aid = ids[0]
        _stack.log(
            f"plan exact {MODES[same_label]}: "
            + plan_scans(stack, aid, same_label, ["SET enable_indexscan = off"])
        )
        lat, rows = timed_calls(
            url, ids[:m], warm_ids[:2], same_label, options="-c enable_indexscan=off"
        )
        want, dists = exact[same_label]
        p50, p95 = _stack.percentiles(lat)
        idx = next(
            (
                r
                for r in results
                if r.mode == MODES[same_label] and r.search == f"hnsw ef_search={migrated_ef}"
            ),
            next(r for r in results if r.mode == MODES[same_label]),
        )
        # Same queries through the index, for a like-for-like ratio.
        lat_idx, _ = timed_calls(url, ids[:m], warm_ids, same_label)
        ratio = p50 / _stack.percentiles(lat_idx)[0]
        res = Result(
            n,
            MODES[same_label],
            "exact scan (enable_indexscan=off)",
            p50,
            p95,
            recall_at_k(rows, want[:m], dists[:m]),
            m,
            short_results=sum(1 for r in rows if len(r) < K),
            note=f"{ratio:.0f}x slower than the index on the same {m} queries",
        )
        idx.note += f"; {ratio:.0f}x faster than exact scan"
        _stack.log(
            f"{n:,} {res.mode} exact: p50 {p50:.1f} ms, p95 {p95:.1f} ms,"
            f" recall {res.recall:.4f}, index speed-up {ratio:.0f}x"
        )
        results.append(res)

    for sb in args.also_shared_buffers:
        url2 = _stack.restart(stack, shared_buffers=sb)
        _stack.log(f"restarted with shared_buffers={sb}")
        results += measure_index(
            url2, cat, ids, warm_ids, exact, f"hnsw ef_search={migrated_ef}", f"shared_buffers={sb}"
        )
        url = _stack.restart(stack, shared_buffers=_stack.PG_TUNING["shared_buffers"])
        _stack.prewarm(
            stack,
            [f"artclf.{_stack.HNSW_INDEX}", "artclf.artworks", f"artclf.{_stack.EMBEDDINGS_TABLE}"],
        )

    if args.neardup:
        args.neardup_results += neardup_lookup.run_all(stack, url, cat, args)
    results.append(insert_cost(url, cat, args.seed))
    return results, url


def insert_cost(
    url: str, cat: _stack.Catalogue, seed: int, batches: int = 10, batch: int = 100
) -> Result:
    """What the index costs the pipeline: ``artworks.insert_artworks`` of new rows, per batch.

    Every catalogued artwork is inserted into the HNSW index as it arrives, at the
    index's ef_construction; this is measured on the full catalogue (rolled back after).
    """
    new = _stack.synthetic_catalogue(batches * batch, seed=seed, point_seed=seed + 555)
    rows = []
    for j in range(len(new)):
        label = CLASSES[int(new.labels[j])]
        key = f"catalog/{label}/new-{j:06d}.jpg"
        rows.append(
            artworks.ArtworkRow(
                bucket="artclf-bench",
                key=key,
                label=label,
                probability=0.9,
                probabilities={c: (0.9 if c == label else 0.025) for c in CLASSES},
                embedding=new.embeddings[j],
                model_version=_stack.MODEL_VERSION,
                sha256=f"{len(cat) + j:064x}",
                phash=int(new.phashes[j]),
                phash_bands=_stack._band_keys(int(new.phashes[j])),
                dhash=int(new.dhashes[j]),
                width=1024,
                height=768,
                format="JPEG",
                byte_size=200_000,
                source_key=f"incoming/new-{j:06d}.jpg",
                source_etag=None,
            )
        )
    lat = []
    with db.connect(url) as conn:
        for lo in range(0, len(rows), batch):
            t0 = time.perf_counter()
            inserted, _ = artworks.insert_artworks(conn, rows[lo : lo + batch])
            lat.append(time.perf_counter() - t0)
            assert len(inserted) == batch
        conn.rollback()
    p50, p95 = _stack.percentiles(lat)
    _stack.log(
        f"{len(cat):,} insert_artworks of {batch} rows: p50 {p50:.0f} ms ({p50 / batch:.2f} ms/row)"
    )
    return Result(
        len(cat),
        f"insert {batch} rows",
        "artworks.insert_artworks",
        p50,
        p95,
        float("nan"),
        batches,
        distance_ratio=float("nan"),
        note=f"{p50 / batch:.2f} ms per row; rolled back",
    )


def summary(results: list[Result]) -> str:
    """The clean table printed at the end (and pasted into docs/bench-similarity.md)."""
    head = (
        f"| {'rows':>9} | {'mode':<16} | {'search':<33} | {'p50 ms':>7} | {'p95 ms':>7} |"
        f" {'recall@5':>8} | {'dist/exact':>10} | {'queries':>7} | notes"
    )
    lines = [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|---"]
    for r in results:
        note = r.note + (f"; {r.short_results} calls returned < 5 rows" if r.short_results else "")
        if r.per_label_p50_ms:
            note += "; p50 by label: " + ", ".join(
                f"{k} {v}" for k, v in r.per_label_p50_ms.items()
            )
        lines.append(
            f"| {r.size:>9,} | {r.mode:<16} | {r.search:<33} | {r.p50_ms:>7.2f} |"
            f" {r.p95_ms:>7.2f} | {r.recall:>8.4f} | {r.distance_ratio:>10.4f} |"
            f" {r.queries:>7} | {note}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse options, run every size on one throw-away stack, print the summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated catalogue sizes")
    ap.add_argument("--queries", type=int, default=200, help="measured calls per mode")
    ap.add_argument("--warmup", type=int, default=20, help="uncounted calls before measuring")
    ap.add_argument(
        "--exact-queries",
        type=int,
        default=50,
        help="calls measured with the exact scan (each is a full table scan)",
    )
    ap.add_argument(
        "--ef-search",
        default="",
        help="comma-separated hnsw.ef_search values to measure (default: the function's own)",
    )
    ap.add_argument("--m", type=int, default=None, help="build the HNSW index with this m")
    ap.add_argument(
        "--ef-construction",
        type=int,
        default=None,
        help="build the HNSW index with this ef_construction",
    )
    ap.add_argument(
        "--also-shared-buffers",
        default="",
        help="comma-separated shared_buffers values to re-measure with",
    )
    ap.add_argument(
        "--neardup",
        action="store_true",
        help="also run bench/neardup_lookup.py's measurements on the same rows",
    )
    neardup_lookup.add_options(ap.add_argument_group("with --neardup"))
    ap.add_argument(
        "--latent-dim",
        type=int,
        default=24,
        help="intrinsic dimension of a cluster (128 = isotropic, the hard case)",
    )
    ap.add_argument(
        "--label-purity",
        type=float,
        default=0.7,
        help="chance a point keeps its cluster's label (lower: label filters"
        " remove more neighbours)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    args.ef_search = [int(x) for x in args.ef_search.split(",") if x]
    args.also_shared_buffers = [x for x in args.also_shared_buffers.split(",") if x]
    sizes = [int(x) for x in args.sizes.split(",") if x]
    neardup_lookup.parse_options(args)
    args.neardup_results = []

    print(f"machine: {_stack.machine()}", flush=True)
    print(f"data: {args.latent_dim}-d clusters, label purity {args.label_purity}", flush=True)
    results: list[Result] = []
    t_start = time.perf_counter()
    with _stack.throwaway_stack() as (stack, url):
        for n in sizes:
            t0 = time.perf_counter()
            measured, url = bench_size(stack, url, n, args)
            results += measured
            print(f"{n:,} rows: {time.perf_counter() - t0:.0f}s in all", flush=True)
    print(f"\nmachine at the end: {_stack.machine()}; total {time.perf_counter() - t_start:.0f}s")
    print("\n" + summary(results))
    if args.neardup_results:
        print("\n" + neardup_lookup.layout() + "\n")
        print(neardup_lookup.table(args.neardup_results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
