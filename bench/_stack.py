"""Shared by the catalogue benchmarks: a throw-away stack and a fast synthetic bulk load.

Why a helper of its own: the benchmarks must measure the catalogue exactly as the migrations
define it (same tables, indexes and SQL functions), on a real PostgreSQL + pgvector started
by the project's own :class:`artclf_core.embedded.stack.Stack`, but they load up to a million rows,
which the pipeline's row-by-row-formatted ``artworks.insert_artworks`` was never meant to do fast.
So this module

* starts the product's throw-away stack (``embedded.stack.throwaway``) with durability off
  (``fsync=off``: the data is thrown away, and WAL flushes would only measure the disk);
* generates synthetic catalogues (clustered embeddings, imbalanced labels, random pHashes);
* loads them with binary ``COPY`` in chunks of 50,000 rows straight into
  ``artclf.artworks``, with the HNSW and GIN indexes dropped during the load and re-created
  afterwards from their own ``pg_get_indexdef`` (so exactly as the migration defines them),
  because building an index once is several times faster than growing it row by row.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from psycopg.adapt import Dumper  # noqa: E402
from psycopg.pq import Format  # noqa: E402

from artclf_core import CLASSES, EMBEDDING_DIM  # noqa: E402
from artclf_core.catalogue import registry  # noqa: E402
from artclf_core.embedded.stack import Stack, throwaway  # noqa: E402

#: Label shares of the synthetic catalogue, in ``CLASSES`` order: as imbalanced as the real
#: artworks (iconography is the rare class), so that ``same_label`` filters remove 69-96 % of
#: the neighbours an unfiltered HNSW scan would see.
LABEL_SHARES: dict[str, float] = {
    "drawings": 0.30,
    "engraving": 0.21,
    "iconography": 0.04,
    "painting": 0.31,
    "sculpture": 0.14,
}
MODEL_VERSION = "bench-model"
CHUNK = 50_000
#: The bench model's partition of artclf.embeddings and its HNSW index (fixed names, so the
#: benchmarks can prewarm and inspect them).
EMBEDDINGS_TABLE = "embeddings_bench"
HNSW_INDEX = "embeddings_bench_hnsw"
HNSW_DEF = (
    f"CREATE INDEX {HNSW_INDEX} ON artclf.{EMBEDDINGS_TABLE}"
    " USING hnsw (embedding vector_cosine_ops) WITH (m='16', ef_construction='128')"
)
GIN_INDEX = "artworks_phash_bands"

#: Server settings of the throw-away cluster. Durability is off (the data is disposable);
#: shared_buffers is large enough to keep a 1M-row HNSW index in PostgreSQL's own cache, as
#: any production server with this catalogue should be set up; autovacuum is off so that it
#: does not start on the freshly loaded table in the middle of a latency measurement (the
#: loader runs VACUUM ANALYZE itself).
PG_TUNING: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "2GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "autovacuum": "off",
}


def log(msg: str) -> None:
    """Progress on stderr with a timestamp, so stdout keeps only the results."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- stack


@contextlib.contextmanager
def throwaway_stack(shared_buffers: str | None = None) -> Iterator[tuple[Stack, str]]:
    """The product's throw-away stack (:func:`artclf_core.embedded.stack.throwaway`) with
    durability off; yields ``(stack, db_url)``."""
    tuning = dict(PG_TUNING)
    if shared_buffers:
        tuning["shared_buffers"] = shared_buffers
    t0 = time.perf_counter()
    with throwaway("artclf-bench", pg_tuning=tuning) as (stack, env):
        log(f"stack up in {time.perf_counter() - t0:.1f}s at {stack.home}")
        yield stack, env["ARTCLF_DB_URL"]


def restart(stack: Stack, **settings: str) -> str:
    """Restart PostgreSQL with changed settings (data kept); return the (new) database URL.

    Used to measure the same loaded catalogue under another ``shared_buffers``.
    """
    stack.pg_tuning = {**(stack.pg_tuning or {}), **settings}
    stack.postgres.stop()
    return stack.up()["ARTCLF_DB_URL"]


def superuser(stack: Stack) -> psycopg.Connection:
    """Superuser over the Unix socket: pg_prewarm and auto_explain need it."""
    return psycopg.connect(stack.postgres.superuser_dsn("artclf"), autocommit=True)


def prewarm(stack: Stack, relations: list[str]) -> None:
    """Read relations into shared_buffers, as they are on a server that has been serving.

    Without it the first few hundred queries measure reads from the OS cache, not search.
    """
    with superuser(stack) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        for rel in relations:
            t0 = time.perf_counter()
            blocks = conn.execute("SELECT pg_prewarm(%s::regclass)", (rel,)).fetchone()[0]
            log(f"prewarmed {rel}: {blocks * 8 / 1024:.0f} MiB in {time.perf_counter() - t0:.1f}s")


def logged_plans(
    stack: Stack, run: Callable[[psycopg.Connection], object], settings: tuple[str, ...] = ()
) -> list[str]:
    """The EXPLAIN ANALYZE text of every statement ``run`` executes, nested ones included.

    Functions that are not inlined (the SQL contract's) hide their plans from EXPLAIN on the
    outer call; auto_explain logs them, and ``client_min_messages=log`` sends the log to us.
    """
    messages: list[str] = []
    with superuser(stack) as conn:
        conn.add_notice_handler(lambda diag: messages.append(diag.message_primary or ""))
        for stmt in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_nested_statements = on",
            "SET auto_explain.log_analyze = on",
            *settings,
        ):
            conn.execute(stmt)
        conn.execute("SET client_min_messages = log")
        run(conn)
    return messages


def scan_summary(plan_text: str) -> str:
    """The scan nodes of a plan and how many rows its filters threw away, on one line."""
    scans = re.findall(
        r"(Index Scan using \w+|Index Only Scan using \w+|Seq Scan on \w+"
        r"|Bitmap Heap Scan on \w+|Bitmap Index Scan on \w+)",
        plan_text,
    )
    removed = sum(int(x) for x in re.findall(r"Rows Removed by Filter: (\d+)", plan_text))
    scans = [s for s in scans if "artworks_pkey" not in s]
    return f"{', '.join(dict.fromkeys(scans)) or '?'}; rows removed by filter: {removed}"


# ---------------------------------------------------------------------------------- data


@dataclass
class Catalogue:
    """A synthetic catalogue held client-side; row ``i`` gets artwork id ``i + 1``."""

    embeddings: np.ndarray  # (n, 128) float32, exactly the values stored
    labels: np.ndarray  # (n,) int8 index into CLASSES
    phashes: np.ndarray  # (n,) int64, as stored in artworks.phash
    dhashes: np.ndarray  # (n,) int64, as stored in artworks.dhash

    def __len__(self) -> int:
        return len(self.labels)


def synthetic_catalogue(
    n: int,
    *,
    seed: int = 0,
    n_centres: int = 2000,
    latent_dim: int = 24,
    spread: float = 1.2,
    noise: float = 0.15,
    label_purity: float = 0.7,
    embeddings: bool = True,
    point_seed: int | None = None,
) -> Catalogue:
    """Clustered embeddings with imbalanced labels, and uniformly random 64-bit pHashes.

    Each of ``n_centres`` Gaussian centres in 128-d gets a low-dimensional subspace of its
    own (``latent_dim``); a point is centre + ``spread`` x a Gaussian in that subspace +
    isotropic noise. Real embeddings (the penultimate layer of a CNN) have a low intrinsic
    dimension; isotropic 128-d noise alone would make every point in a cluster equidistant
    from every other, a pathological case for any ANN index and for "exact top-5" itself.
    A centre has a label drawn with :data:`LABEL_SHARES`; its points keep it with
    probability ``label_purity`` and otherwise draw one again, so labels follow the
    clusters (as a classifier's embedding does) without being a function of them.
    The centre set does not depend on ``n``: a bigger catalogue is a denser one; and it
    depends on ``seed`` only, so ``point_seed`` draws new points of the same distribution
    (queries that are not in the catalogue).
    """
    rng = np.random.default_rng(seed if point_seed is None else point_seed)
    shares = np.array([LABEL_SHARES[c] for c in CLASSES])
    shares = shares / shares.sum()
    centre_rng = np.random.default_rng(10_000 + seed)
    centres = centre_rng.normal(size=(n_centres, EMBEDDING_DIM)).astype(np.float32)
    bases = (
        centre_rng.normal(size=(n_centres, latent_dim, EMBEDDING_DIM)) / np.sqrt(EMBEDDING_DIM)
    ).astype(np.float32)
    centre_label = centre_rng.choice(len(CLASSES), size=n_centres, p=shares).astype(np.int8)

    which = rng.integers(0, n_centres, size=n)
    labels = centre_label[which].copy()
    redraw = rng.random(n) >= label_purity
    labels[redraw] = rng.choice(len(CLASSES), size=int(redraw.sum()), p=shares)

    emb = np.empty((n if embeddings else 0, EMBEDDING_DIM), dtype=np.float32)
    if embeddings:
        step = 5_000
        for lo in range(0, n, step):
            c = which[lo : lo + step]
            z = rng.normal(size=(len(c), latent_dim)).astype(np.float32)
            emb[lo : lo + step] = (
                centres[c]
                + spread * np.einsum("nk,nkd->nd", z, bases[c])
                + noise * rng.normal(size=(len(c), EMBEDDING_DIM)).astype(np.float32)
            )
    phashes = balanced_hashes(n, rng)
    dhashes = rng.integers(
        np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=n, dtype=np.int64, endpoint=True
    )
    return Catalogue(emb, labels, phashes, dhashes)


def balanced_hashes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random 64-bit pHashes with exactly 32 one-bits, as int64.

    A real pHash compares 64 DCT coefficients with their median, so exactly half its bits
    are set (and distances between two pHashes are even); uniformly random words would
    not be pHashes.
    """
    out = np.empty(n, dtype=np.int64)
    step = 100_000
    base = np.zeros(64, dtype=bool)
    base[:32] = True
    for lo in range(0, n, step):
        m = min(step, n - lo)
        bits = rng.permuted(np.broadcast_to(base, (m, 64)), axis=1)
        packed = np.ascontiguousarray(np.packbits(bits, axis=1))
        out[lo : lo + m] = packed.view(">u8").ravel().astype(np.uint64).view(np.int64)
    return out


# ---------------------------------------------------------------------------------- loading


class _RawBinary(Dumper):
    """Passes pre-encoded binary COPY values through (vectors and jsonb built with numpy)."""

    format = Format.BINARY

    def dump(self, obj: bytes) -> bytes:
        return obj


def _raw_dumper(conn: psycopg.Connection, type_name: str) -> None:
    oid = conn.execute("SELECT %s::regtype::oid", (type_name,)).fetchone()[0]
    cls = type(f"_Raw_{type_name}", (_RawBinary,), {"oid": oid})
    marker = type(f"_Marker_{type_name}", (), {})  # a class of its own, only to carry the oid
    conn.adapters.register_dumper(marker, cls)


#: Column and wire type; bpchar has no psycopg binary dumper but its binary input is the
#: text bytes, so sha256 travels as text.
_COPY_COLS: list[tuple[str, str]] = [
    ("location", "text"),
    ("bucket", "text"),
    ("key", "text"),
    ("label", "text"),
    ("probability", "float4"),
    ("probabilities", "jsonb"),
    ("embedding", "vector"),
    ("model_version", "text"),
    ("sha256", "text"),
    ("phash", "int8"),
    ("dhash", "int8"),
    ("phash_bands", "int4[]"),
    ("width", "int4"),
    ("height", "int4"),
    ("format", "text"),
    ("byte_size", "int8"),
    ("source_key", "text"),
]


#: Columns left to their default or NULL.
_DEFAULTED = {
    "id",
    "source_etag",
    "curated_label",
    "curated_by",
    "curated_at",
    "created_at",
    "updated_at",
    "collection",  # the insert trigger takes it from source_key (sql/011_collections.sql)
    "fingerprint_version",  # default: the scheme ingestion writes (sql/012)
}


def _vector_payloads(emb: np.ndarray) -> list[bytes]:
    """pgvector's binary input (uint16 dim, uint16 0, big-endian float32s), one per row."""
    n, dim = emb.shape
    head = np.frombuffer(np.array([dim, 0], dtype=">u2").tobytes(), dtype=np.uint8)
    buf = np.empty((n, 4 + 4 * dim), dtype=np.uint8)
    buf[:, :4] = head
    buf[:, 4:] = np.ascontiguousarray(emb, dtype=">f4").view(np.uint8).reshape(n, 4 * dim)
    return [row.tobytes() for row in buf]


def index_definitions(conn: psycopg.Connection) -> dict[str, str]:
    """``CREATE INDEX`` statements of the artworks indexes as the database has them."""
    rows = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes"
        " WHERE schemaname = 'artclf' AND tablename IN ('artworks', %s)",
        (EMBEDDINGS_TABLE,),
    ).fetchall()
    return dict(rows)


def with_hnsw_params(indexdef: str, m: int | None, ef_construction: int | None) -> str:
    """The HNSW definition with other build parameters (for tuning runs only)."""
    if m is not None:
        indexdef = re.sub(r"\bm='?\d+'?", f"m='{m}'", indexdef)
    if ef_construction is not None:
        indexdef = re.sub(
            r"ef_construction='?\d+'?", f"ef_construction='{ef_construction}'", indexdef
        )
    return indexdef


def build_index(conn: psycopg.Connection, indexdef: str) -> float:
    """Create one index with the build memory the brief sets; return seconds taken."""
    conn.execute("SET maintenance_work_mem = '3GB'")
    conn.execute("SET max_parallel_maintenance_workers = 1")
    t0 = time.perf_counter()
    conn.execute(indexdef)
    return time.perf_counter() - t0


def load_catalogue(
    conn: psycopg.Connection,
    cat: Catalogue,
    *,
    hnsw: bool = True,
    hnsw_m: int | None = None,
    hnsw_ef_construction: int | None = None,
) -> dict[str, float]:
    """Empty ``artclf.artworks`` and load ``cat`` into it; return timings in seconds.

    ``conn`` must be autocommit. The HNSW and GIN indexes are dropped first and re-created
    after the load from their own definitions (``hnsw=False`` leaves the HNSW index out, for
    benchmarks that never search embeddings and should not pay minutes to build it).
    Afterwards ``VACUUM ANALYZE`` sets hint bits and statistics, so that the first measured
    queries neither write hint bits nor run on default estimates.
    """
    n = len(cat)
    defs = index_definitions(conn)
    hnsw_def = defs.get(HNSW_INDEX) or _saved_defs.get(HNSW_INDEX) or HNSW_DEF
    gin_def = defs.get(GIN_INDEX) or _saved_defs.get(GIN_INDEX)
    if not gin_def:
        raise RuntimeError("the artworks pHash index is missing and was never seen")
    _saved_defs.update({HNSW_INDEX: hnsw_def, GIN_INDEX: gin_def})
    conn.execute("TRUNCATE artclf.ingest_log, artclf.artworks RESTART IDENTITY CASCADE")
    conn.execute(f"DROP INDEX IF EXISTS artclf.{HNSW_INDEX}")
    conn.execute(f"DROP INDEX IF EXISTS artclf.{GIN_INDEX}")
    # The bench model's embeddings partition, under a fixed name, made before registering
    # (registration finds it by its bound); its index is built after the load.
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS artclf.{EMBEDDINGS_TABLE} PARTITION OF artclf.embeddings"
        f" FOR VALUES IN ('{MODEL_VERSION}')"
    )
    registry.register_model(
        conn, version=MODEL_VERSION, arch="synthetic", classes=CLASSES, artifact=None, activate=True
    )
    for name in conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'artclf' AND tablename = %s"
        " AND indexdef ILIKE '%%hnsw%%'",
        (EMBEDDINGS_TABLE,),
    ).fetchall():
        conn.execute(f"DROP INDEX artclf.{name[0]}")

    for type_name in ("vector", "jsonb"):
        _raw_dumper(conn, type_name)
    present = {
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'artclf' AND table_name = 'artworks'"
        ).fetchall()
    }
    # The schema is still moving: columns are copied only if the table has them.
    cols = [(c, t) for c, t in _COPY_COLS if c in present]
    if missing := [c for c in present - {c for c, _ in cols} if c not in _DEFAULTED]:
        raise RuntimeError(f"the loader does not fill artworks columns {missing}")
    probs = [
        b"\x01" + json.dumps({c: (0.9 if c == lab else 0.025) for c in CLASSES}).encode()
        for lab in CLASSES
    ]
    # Rows without embeddings of their own (near-duplicate benchmark) still get full-size
    # vectors: the column is NOT NULL, and the heap must have the real row width.
    has_emb = len(cat.embeddings) == n
    filler = np.random.default_rng(1).normal(size=(CHUNK, EMBEDDING_DIM)).astype(np.float32)

    t0 = time.perf_counter()
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        vecs = _vector_payloads(cat.embeddings[lo:hi] if has_emb else filler[: hi - lo])
        with conn.cursor().copy(
            f"COPY artclf.artworks ({', '.join(c for c, _ in cols)}) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types([t for _, t in cols])
            for j, i in enumerate(range(lo, hi)):
                li = int(cat.labels[i])
                label = CLASSES[li]
                h = int(cat.phashes[i])
                key = f"catalog/{label}/{i:08d}.jpg"
                value = {
                    "location": f"s3://artclf-bench/{key}",
                    "bucket": "artclf-bench",
                    "key": key,
                    "label": label,
                    "probability": 0.9,
                    "probabilities": probs[li],
                    "embedding": vecs[j],
                    "model_version": MODEL_VERSION,
                    "sha256": f"{i:064x}",
                    "phash": h,
                    "dhash": int(cat.dhashes[i]),
                    "phash_bands": _band_keys(h),
                    "width": 1024,
                    "height": 768,
                    "format": "JPEG",
                    "byte_size": 200_000,
                    "source_key": f"incoming/{i:08d}.jpg",
                }
                copy.write_row([value[c] for c, _ in cols])
        if (hi // CHUNK) % 5 == 0 or hi == n:
            rate = hi / (time.perf_counter() - t0)
            log(f"copied {hi:,}/{n:,} rows ({rate:,.0f} rows/s)")
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        vecs = _vector_payloads(cat.embeddings[lo:hi] if has_emb else filler[: hi - lo])
        with conn.cursor().copy(
            f"COPY artclf.{EMBEDDINGS_TABLE} (model_version, artwork_id, label, probability,"
            " probabilities, embedding) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["text", "int8", "text", "float4", "jsonb", "vector"])
            for j, i in enumerate(range(lo, hi)):
                li = int(cat.labels[i])
                copy.write_row([MODEL_VERSION, i + 1, CLASSES[li], 0.9, probs[li], vecs[j]])
    timings = {"copy_s": time.perf_counter() - t0}
    first, last, count = conn.execute(
        "SELECT min(id), max(id), count(*) FROM artclf.artworks"
    ).fetchone()
    if (first, last, count) != (1, n, n):
        raise RuntimeError(f"ids are not 1..{n}: {first}..{last}, {count} rows")

    timings["gin_build_s"] = build_index(conn, gin_def)
    log(f"GIN index on phash_bands built in {timings['gin_build_s']:.1f}s")
    if hnsw:
        definition = with_hnsw_params(hnsw_def, hnsw_m, hnsw_ef_construction)
        log(f"building: {definition}")
        timings["hnsw_build_s"] = build_index(conn, definition)
        size = conn.execute(
            f"SELECT pg_size_pretty(pg_relation_size('artclf.{HNSW_INDEX}'))"
        ).fetchone()[0]
        conn.execute(
            "UPDATE artclf.model_versions SET index_built = true WHERE version = %s",
            (MODEL_VERSION,),
        )
        log(f"HNSW index built in {timings['hnsw_build_s']:.1f}s ({size})")
        print(f"HNSW build ({n:,} rows): {timings['hnsw_build_s']:.1f}s, {size}", flush=True)
    t0 = time.perf_counter()
    conn.execute("VACUUM ANALYZE artclf.artworks")
    conn.execute(f"VACUUM ANALYZE artclf.{EMBEDDINGS_TABLE}")
    timings["vacuum_analyze_s"] = time.perf_counter() - t0
    return timings


#: Index definitions seen on the first load, for later loads in the same process.
_saved_defs: dict[str, str] = {}


def _band_keys(h: int) -> list[int]:
    from artclf_core.images.fingerprints import band_keys

    return band_keys(h)


# ---------------------------------------------------------------------------------- stats


def percentiles(samples_s: list[float]) -> tuple[float, float]:
    """(p50, p95) in milliseconds."""
    a = np.asarray(samples_s) * 1000.0
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))


def machine() -> str:
    """One line about where the figures come from (the cores are shared: say the load)."""
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} CPU cores, load average {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}"
        f" (1/5/15 min)"
    )
