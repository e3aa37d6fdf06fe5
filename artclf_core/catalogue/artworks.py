"""The artworks table: bulk insert of a batch, and the de-duplication lookups against it
(exact by SHA-256, near by pHash bands confirmed by dHash and the embedding).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import psycopg

from artclf_core.catalogue import db, registry
from artclf_core.images.fingerprints import FINGERPRINT_VERSION

MIGRATION_LOCK = 0x61727463  # pg_advisory_lock key: "artc"
#: Columns of artclf.similar_artworks and artclf.similar_to_embedding, in order; also the
#: keys of a neighbour in JSON answers (CLI and API).
NEIGHBOUR_FIELDS = ("rank", "artwork_id", "location", "label", "distance")


def embedding_partition(conn: psycopg.Connection, version: str | None) -> str | None:
    """The qualified name of ``version``'s embedding partition; None when it has none (never
    embedded, or dropped). Finds it without creating it."""
    if version is None:
        return None
    return conn.execute("SELECT artclf._find_embedding_partition(%s)", (version,)).fetchone()[0]


def max_artwork_id(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT coalesce(max(id), 0) FROM artclf.artworks").fetchone()[0]


def artworks_after(conn: psycopg.Connection, after_id: int) -> list[tuple[int, str, int, int]]:
    """(id, sha256, phash, dhash) of artworks with ids above ``after_id``."""
    return conn.execute(
        "SELECT id, sha256, phash, dhash FROM artclf.artworks WHERE id > %s ORDER BY id",
        (after_id,),
    ).fetchall()


def find_exact(conn: psycopg.Connection, sha256s: Sequence[str]) -> dict[str, int]:
    """Catalogued artworks with these SHA-256 digests: {sha256: artwork id}."""
    if not sha256s:
        return {}
    rows = conn.execute(
        "SELECT sha256, id FROM artclf.artworks WHERE sha256 = ANY(%s::char(64)[])",
        (list(sha256s),),
    ).fetchall()
    return {sha: aid for sha, aid in rows}


#: Candidates taken from the embedding index per query (see :func:`find_near`).
NEAR_EMBEDDING_CANDIDATES = 16


#: HNSW search breadth for that lookup.
NEAR_EF_SEARCH = 40


def find_near(
    conn: psycopg.Connection,
    phashes: Sequence[int],
    dhashes: Sequence[int],
    embeddings: Sequence[np.ndarray],
    *,
    max_distance: int | None = None,
    max_dhash: int | None = None,
    bands: Sequence[Sequence[int]] | None = None,
    k: int = NEAR_EMBEDDING_CANDIDATES,
    model_version: str | None = None,
) -> dict[int, tuple[int, int]]:
    """For each query, the closest catalogued near duplicate: {query index: (id, distance)}.

    A near duplicate is within ``max_distance`` pHash bits AND ``max_dhash`` dHash bits
    (defaults: ``fingerprints.NEAR_DUP_MAX_DISTANCE`` / ``NEAR_DUP_MAX_DHASH``); the distance
    returned is the pHash one. Candidates come from two indexes, never from a scan, so the
    cost stays flat as the catalogue grows:

    * the ``k`` nearest artworks by embedding of ``model_version`` (default: the active one;
      the HNSW index of its partition, which similarity search uses anyway): a re-encoded,
      resized or slightly cropped copy keeps its CNN embedding almost exactly, so its
      original is among its nearest neighbours;
    * every artwork sharing one of the query's four 16-bit pHash bands exactly (the GIN index
      on ``phash_bands``): by the pigeonhole principle this alone finds every hash within
      3 bits, whatever the embedding says.

    Each candidate is then checked with the exact Hamming distances. Measured recall and
    latency: docs/fingerprints.md and docs/benchmarks.md.
    """
    from artclf_core.images import fingerprints

    if not phashes:
        return {}
    max_distance = fingerprints.NEAR_DUP_MAX_DISTANCE if max_distance is None else max_distance
    max_dhash = fingerprints.NEAR_DUP_MAX_DHASH if max_dhash is None else max_dhash
    bands = bands if bands is not None else [fingerprints.band_keys(h) for h in phashes]
    band_text = [db.int_array_text(b) for b in bands]
    emb_text = [db.vector_text(e) for e in embeddings]
    if model_version is None:
        model_version = registry.active_version(conn)
    # The version's own partition, named in the query: a "model_version = v" filter on the
    # parent lets the planner pick a key scan plus an exact sort of the whole partition while
    # its statistics lag behind a fast-growing catalogue (measured: 5 ms instead of 0.1 ms per
    # query at 800 rows); on the partition the HNSW index is the only ordered path.
    part = embedding_partition(conn, model_version)
    nearest = (
        f"SELECT v.artwork_id FROM {part} AS v ORDER BY v.embedding <=> q.e::vector LIMIT %(k)s"
        if part
        else "SELECT NULL::bigint AS artwork_id WHERE false"
    )
    # The classifier's embedding puts look-alikes of one kind close together, so take a few
    # more candidates than one would think (measured: k 5 -> 16 finds more cropped copies).
    # SET LOCAL ends with the transaction.
    conn.execute(f"SET LOCAL hnsw.ef_search = {max(int(k), NEAR_EF_SEARCH)}")
    # Candidates must come from the indexes whatever the statistics say. After a TRUNCATE or
    # while a new partition fills, the planner believes the tables hold ~100 rows and prefers
    # a sequential scan + sort of the whole partition per query, which it keeps doing as the
    # catalogue grows (measured: 5.9 s of de-duplication instead of 0.4 s for 1,576 images
    # ingested after a TRUNCATE). Off for this transaction only, so only an index path
    # remains for each candidate set (HNSW, GIN on the bands, the primary key for the join).
    conn.execute("SET LOCAL enable_seqscan = off")
    query = """
        SELECT q.i, m.id, m.d
        FROM unnest(%(i)s::int[], %(h)s::bigint[], %(g)s::bigint[], %(e)s::text[],
                    %(b)s::text[]) AS q(i, h, g, e, b)
        CROSS JOIN LATERAL (
            SELECT x.id, x.d
            FROM (
                SELECT c.id, bit_count((c.phash # q.h)::bit(64))::int AS d,
                       bit_count((c.dhash # q.g)::bit(64))::int AS e
                FROM (
                    (SELECT a.id, a.phash, a.dhash
                     FROM ({nearest}) AS n
                     JOIN artclf.artworks AS a ON a.id = n.artwork_id)
                    UNION
                    (SELECT a.id, a.phash, a.dhash FROM artclf.artworks AS a
                     WHERE a.phash_bands && q.b::int[])
                ) AS c
            ) AS x
            WHERE x.d <= %(d)s AND x.e <= %(dd)s
            ORDER BY x.d + x.e, x.d, x.id
            LIMIT 1
        ) AS m
        """.replace("{nearest}", nearest)
    rows = conn.execute(
        query,
        {
            "i": list(range(len(phashes))),
            "h": list(phashes),
            "g": list(dhashes),
            "e": emb_text,
            "b": band_text,
            "k": k,
            "d": max_distance,
            "dd": max_dhash,
        },
    ).fetchall()
    return {i: (aid, d) for i, aid, d in rows}


@dataclass
class ArtworkRow:
    bucket: str
    key: str
    label: str
    probability: float
    probabilities: dict[str, float]
    embedding: np.ndarray
    model_version: str
    sha256: str
    phash: int
    phash_bands: list[int]
    dhash: int
    width: int
    height: int
    format: str
    byte_size: int
    source_key: str
    source_etag: str | None
    curated_label: str | None = None
    #: The scheme ``phash`` and ``dhash`` were computed with (sql/012).
    fingerprint_version: int = FINGERPRINT_VERSION

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


_ART_COLS = [
    "location",
    "bucket",
    "key",
    "label",
    "probability",
    "probabilities",
    "model_version",
    "sha256",
    "phash",
    "phash_bands",
    "dhash",
    "width",
    "height",
    "format",
    "byte_size",
    "source_key",
    "source_etag",
    "curated_label",
    "fingerprint_version",
]


def insert_artworks(
    conn: psycopg.Connection, rows: Sequence[ArtworkRow]
) -> tuple[dict[str, int], dict[str, int]]:
    """Bulk-insert artworks (COPY into a temp table, then one INSERT ... ON CONFLICT).

    Returns ``(inserted, existing)``, both {sha256: id}: rows created now, and rows whose
    content was already catalogued (by a concurrent worker), which callers turn into exact
    duplicates. No commit: the caller commits artworks and log outcomes together.
    """
    if not rows:
        return {}, {}
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS _artworks_in ON COMMIT DELETE ROWS AS"
        f" SELECT {', '.join(_ART_COLS)} FROM artclf.artworks WITH NO DATA"
    )
    conn.execute("ALTER TABLE _artworks_in ADD COLUMN IF NOT EXISTS embedding vector(128)")
    cols = ", ".join([*_ART_COLS, "embedding"])
    with conn.cursor().copy(f"COPY _artworks_in ({cols}) FROM STDIN") as copy:
        for r in rows:
            copy.write_row(
                [
                    r.location,
                    r.bucket,
                    r.key,
                    r.label,
                    float(r.probability),
                    json.dumps({k: round(float(v), 6) for k, v in r.probabilities.items()}),
                    r.model_version,
                    r.sha256,
                    int(r.phash),
                    db.int_array_text(r.phash_bands),
                    int(r.dhash),
                    int(r.width),
                    int(r.height),
                    r.format,
                    int(r.byte_size),
                    r.source_key,
                    r.source_etag,
                    r.curated_label,
                    int(r.fingerprint_version),
                    db.vector_text(r.embedding),
                ]
            )
    inserted = dict(
        conn.execute(
            f"INSERT INTO artclf.artworks ({', '.join(_ART_COLS)})"
            f" SELECT {', '.join(_ART_COLS)} FROM _artworks_in"
            " ON CONFLICT DO NOTHING RETURNING sha256, id"
        ).fetchall()
    )
    if inserted:
        # Each new artwork's embedding goes to its model's partition (created on first use).
        conn.execute(
            "SELECT artclf.embedding_partition(v)"
            " FROM (SELECT DISTINCT model_version AS v FROM _artworks_in) AS d"
        )
        conn.execute(
            "INSERT INTO artclf.embeddings"
            " (model_version, artwork_id, label, probability, probabilities, embedding)"
            " SELECT i.model_version, a.id, i.label, i.probability, i.probabilities, i.embedding"
            " FROM _artworks_in AS i JOIN artclf.artworks AS a USING (sha256)"
            " WHERE a.id = ANY(%s) ON CONFLICT DO NOTHING",
            (list(inserted.values()),),
        )
    existing = {
        sha: aid
        for sha, aid in conn.execute(
            "SELECT a.sha256, a.id FROM artclf.artworks a JOIN _artworks_in i USING (sha256)"
        ).fetchall()
        if sha not in inserted
    }
    conn.execute("TRUNCATE _artworks_in")
    return inserted, existing
