"""The SQL contract: artclf.similar_artworks / similar_to_embedding on a real pgvector."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from catalogue_rows import artwork_row

from artclf_core import CLASSES
from artclf_core.catalogue import artworks, db, registry

N = 1500


def _rows(n: int, seed: int = 7) -> list[artworks.ArtworkRow]:
    rng = np.random.default_rng(seed)
    # Clustered vectors (like a real embedding) so that neighbours are meaningful.
    centres = rng.normal(size=(20, 128))
    rows = []
    for i in range(n):
        emb = centres[i % 20] + 0.6 * rng.normal(size=128)
        label = CLASSES[(i * 7 + i // 3) % len(CLASSES)]
        rows.append(
            artwork_row(
                i,
                label=label,
                embedding=emb,
                bucket="b",
                phash=int(rng.integers(-(2**63), 2**63 - 1)),
                width=100,
                height=100,
                byte_size=1000,
            )
        )
    return rows


@pytest.fixture(scope="module")
def catalogue(stack, settings):
    with db.connect(settings.db_url) as conn:
        conn.execute("TRUNCATE artclf.ingest_log, artclf.artworks, artclf.model_versions CASCADE")
        registry.register_model(
            conn, version="test-model", arch="cnn", classes=CLASSES, artifact=None, activate=True
        )
        rows = _rows(N)
        inserted, existing = artworks.insert_artworks(conn, rows)
        conn.commit()
        assert len(inserted) == N and not existing
        got = conn.execute(
            "SELECT artwork_id, label, embedding FROM artclf.embeddings"
            " WHERE model_version = 'test-model' ORDER BY artwork_id"
        ).fetchall()
    ids = np.array([r[0] for r in got])
    labels = np.array([r[1] for r in got])
    embs = np.stack([np.asarray(r[2].to_numpy(), dtype=np.float64) for r in got])
    return ids, labels, embs


def _exact(ids, labels, embs, q, k, label=None, exclude=None):
    unit = embs / np.linalg.norm(embs, axis=1, keepdims=True)
    dist = 1.0 - unit @ (q / np.linalg.norm(q))
    mask = np.ones(len(ids), bool)
    if label is not None:
        mask &= labels == label
    if exclude is not None:
        mask &= ids != exclude
    order = np.argsort(np.where(mask, dist, np.inf), kind="stable")[:k]
    return ids[order], dist[order]


def test_similar_artworks_returns_k_excludes_query_and_respects_label(settings, catalogue):
    ids, labels, embs = catalogue
    with db.connect(settings.db_url) as conn:
        for qi in range(0, N, 97):
            qid, qlabel = int(ids[qi]), labels[qi]
            rows = conn.execute(
                "SELECT rank, artwork_id, location, label, distance"
                " FROM artclf.similar_artworks(%s)",
                (qid,),
            ).fetchall()
            assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
            assert qid not in [r[1] for r in rows]
            assert all(r[3] == qlabel for r in rows)
            assert [r[4] for r in rows] == sorted(r[4] for r in rows)
            rows_any = conn.execute(
                "SELECT artwork_id, label FROM artclf.similar_artworks(%s, 8, false)", (qid,)
            ).fetchall()
            assert len(rows_any) == 8 and qid not in [r[0] for r in rows_any]


def test_similar_artworks_agrees_with_exact_search(settings, catalogue):
    ids, labels, embs = catalogue
    hits = total = 0
    with db.connect(settings.db_url) as conn:
        for qi in range(0, N, 31):
            qid = int(ids[qi])
            for same in (True, False):
                want, want_d = _exact(
                    ids, labels, embs, embs[qi], 5, labels[qi] if same else None, qid
                )
                rows = conn.execute(
                    "SELECT artwork_id, distance FROM artclf.similar_artworks(%s, 5, %s)",
                    (qid, same),
                ).fetchall()
                got = [r[0] for r in rows]
                hits += len(set(got) & set(want.tolist()))
                total += 5
                # Distances are true cosine distances, whatever the index did.
                for aid, d in rows:
                    j = int(np.searchsorted(ids, aid))
                    u, v = embs[j], embs[qi]
                    assert d == pytest.approx(
                        1 - u @ v / np.linalg.norm(u) / np.linalg.norm(v), abs=1e-5
                    )
    assert hits / total >= 0.95, f"recall@5 {hits / total:.3f} against exact search"


def test_same_label_still_returns_k_for_a_rare_label(settings, catalogue):
    """A filtered HNSW scan without iterative scans returns fewer rows than asked."""
    ids, labels, embs = catalogue
    with db.connect(settings.db_url) as conn:
        rare = conn.execute(
            "SELECT label FROM artclf.artworks GROUP BY label ORDER BY count(*) LIMIT 1"
        ).fetchone()[0]
        n_rare = int((labels == rare).sum())
        qid = int(ids[labels == rare][0])
        k = min(150, n_rare - 1)
        rows = conn.execute(
            "SELECT artwork_id, label FROM artclf.similar_artworks(%s, %s)", (qid, k)
        ).fetchall()
        assert len(rows) == k and {r[1] for r in rows} == {rare}


def test_similar_to_embedding(settings, catalogue):
    ids, labels, embs = catalogue
    q = embs[5] + 0.01
    with db.connect(settings.db_url) as conn:
        rows = conn.execute(
            "SELECT artwork_id, label FROM artclf.similar_to_embedding(%s::vector, 5, %s)",
            (str(q.astype(np.float32).tolist()), labels[5]),
        ).fetchall()
        assert len(rows) == 5 and rows[0][0] == int(ids[5])
        assert {r[1] for r in rows} == {labels[5]}
        rows = conn.execute(
            "SELECT count(*) FROM artclf.similar_to_embedding(%s::vector)",
            (str(q.astype(np.float32).tolist()),),
        ).fetchone()
        assert rows[0] == 5


def test_reader_role_reads_but_cannot_write(stack, catalogue):
    _, env = stack
    with psycopg.connect(env["ARTCLF_READER_DB_URL"]) as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM artclf.similar_artworks("
                "(SELECT min(id) FROM artclf.artworks))"
            ).fetchone()[0]
            == 5
        )
        for statement in (
            "DELETE FROM artclf.artworks",
            "UPDATE artclf.artworks SET label = 'painting'",
            "INSERT INTO artclf.model_versions (version, arch, classes) VALUES ('x', 'y', '{}')",
            "CREATE TABLE artclf.evil (x int)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()
