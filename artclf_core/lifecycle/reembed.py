"""Moving the catalogue to another model version without a moment of mixed or empty search.

A promoted model is not used for search until its embeddings cover the whole catalogue:

1. :func:`plan` lists the artworks that have no row yet in the version's partition of
   ``artclf.embeddings`` and cuts them into batches (the re-embedding DAG maps one task over
   each; ``artclf reembed`` runs them in turn).
2. :func:`embed_ids` downloads, decodes and embeds one batch with one forward pass per chunk,
   and writes it with ``COPY`` + ``INSERT ... ON CONFLICT DO NOTHING``. Only missing rows are
   done, so a batch that dies midway and runs again, or two overlapping runs, write every row
   exactly once. Meanwhile similarity search keeps reading the active version's partition.
3. :func:`switch` builds the version's HNSW index (once, over the full partition: much faster
   than growing it row by row), then in ONE transaction, under the catalogue lock that
   ingestion commits take: embeds the few artworks catalogued since the plan, and calls
   ``artclf.activate_model``, which refuses unless the partition is complete. Readers see the
   old version up to the commit and the new one after it.

:func:`rollback` is :func:`switch` back to the previously active version, whose partition is
still there: only artworks catalogued since the switch are embedded, nothing else is
recomputed. :func:`drop` removes a version's partition for good.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg

from artclf_core.catalogue import artworks, db, registry
from artclf_core.config import Settings, default_home
from artclf_core.images.decode import decode_image
from artclf_core.images.model_input import to_model_input
from artclf_core.lake import s3 as s3lib

if TYPE_CHECKING:
    from artclf_core.model.artmodel import ArtModel

log = logging.getLogger("artclf.reembed")

#: Artworks per re-embedding batch (one mapped task each in the DAG).
BATCH_SIZE = 500
#: Images decoded and passed to the model at a time (bounds the memory of decoded pixels).
CHUNK = 64


class ReembedError(RuntimeError):
    """Some artworks could not be embedded (their object is missing or unreadable)."""


def load_version(settings: Settings, version: str) -> ArtModel:
    """Load the ``.keras`` file registered for ``version`` (downloaded from the lake once)."""
    from artclf_core.model.artmodel import ArtModel

    model = ArtModel.load(registry.model_path(settings, version))
    if model.version != version:
        raise ValueError(f"artifact of {version} holds model {model.version}")
    return model


def version_to_activate(
    settings: Settings, requested: str | None = None
) -> tuple[str | None, str | None]:
    """``(version to move to, active version)``: ``requested`` if given, else the newest
    ``promoted`` version that is not active (None when there is none)."""
    with db.connect(settings.db_url) as conn:
        version = requested
        if not version:
            row = conn.execute(
                "SELECT version FROM artclf.model_versions WHERE status = 'promoted'"
                " AND NOT is_active ORDER BY created_at DESC LIMIT 1"
            ).fetchone()
            version = row[0] if row else None
        return version, registry.active_version(conn)


def missing_ids(conn: psycopg.Connection, version: str, limit: int | None = None) -> list[int]:
    """Artwork ids that have no embedding of ``version`` yet, in id order."""
    sql = "SELECT id FROM artclf.missing_embeddings(%s) AS id"
    params: tuple = (version,)
    if limit is not None:
        sql += " LIMIT %s"
        params = (version, limit)
    return [r[0] for r in conn.execute(sql, params).fetchall()]


def plan(settings: Settings, version: str, batch_size: int = BATCH_SIZE) -> list[list[int]]:
    """Batches of the artworks still to embed with ``version`` (creates its partition)."""
    with db.connect(settings.db_url) as conn:
        conn.execute("SELECT artclf.embedding_partition(%s)", (version,))
        ids = missing_ids(conn, version)
        conn.commit()
    return [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]


@dataclass
class _Work:
    artwork_id: int
    pixels: np.ndarray | None = None
    error: str | None = None


def _fetch(objects: s3lib.DataPath, size: int, artwork_id: int, bucket: str, key: str) -> _Work:
    work = _Work(artwork_id)
    try:
        decoded = decode_image(objects.get(bucket, key)[0])
        work.pixels = to_model_input(decoded.image, size)
    except Exception as exc:  # noqa: BLE001 - reported per artwork, the batch goes on
        work.error = f"s3://{bucket}/{key}: {type(exc).__name__}: {exc}"
    return work


def embed_ids(
    settings: Settings,
    model: ArtModel,
    ids: Sequence[int],
    *,
    conn: psycopg.Connection | None = None,
    objects: s3lib.DataPath | None = None,
    workers: int = 8,
) -> int:
    """Embed the artworks ``ids`` that ``model.version`` lacks; return how many were written.

    With ``conn`` the rows are written in the caller's transaction (used by :func:`switch`
    under the catalogue lock), otherwise committed here. Raises :class:`ReembedError` after
    writing the others if some objects could not be read.
    """
    own = conn is None
    conn = conn or db.connect(settings.db_url)
    objects = objects or s3lib.DataPath(settings)  # the ingest's GET: a quarter of boto3's CPU
    try:
        rows = conn.execute(
            "SELECT a.id, a.bucket, a.key FROM artclf.artworks AS a"
            " WHERE a.id = ANY(%s) AND NOT EXISTS (SELECT 1 FROM artclf.embeddings AS e"
            "   WHERE e.model_version = %s AND e.artwork_id = a.id) ORDER BY a.id",
            (list(ids), model.version),
        ).fetchall()
        errors: list[str] = []
        written = 0
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="artclf-re") as pool:
            futures = [pool.submit(_fetch, objects, model.image_size, *r) for r in rows]
            for start in range(0, len(futures), CHUNK):
                works = [f.result() for f in futures[start : start + CHUNK]]
                errors += [w.error for w in works if w.error]
                good = [w for w in works if w.pixels is not None]
                if good:
                    written += _write(conn, model, good)
        if own:
            conn.commit()
        if errors:
            raise ReembedError(
                f"{len(errors)} of {len(rows)} artworks could not be embedded with "
                f"{model.version}: " + "; ".join(errors[:5])
            )
        return written
    finally:
        if own:
            conn.close()


def _write(conn: psycopg.Connection, model: ArtModel, works: list[_Work]) -> int:
    probs, embs = model.predict(np.stack([w.pixels for w in works]))
    classes = model.classes
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS _embeddings_in (model_version text,"
        " artwork_id bigint, label text, probability real, probabilities jsonb,"
        " embedding vector(128)) ON COMMIT DELETE ROWS"
    )
    cols = "model_version, artwork_id, label, probability, probabilities, embedding"
    with conn.cursor().copy(f"COPY _embeddings_in ({cols}) FROM STDIN") as copy:
        for w, p, e in zip(works, probs, embs, strict=True):
            top = int(np.argmax(p))
            copy.write_row(
                [
                    model.version,
                    w.artwork_id,
                    classes[top],
                    float(p[top]),
                    db.json_text({c: round(float(v), 6) for c, v in zip(classes, p, strict=True)}),
                    db.vector_text(e),
                ]
            )
    n = conn.execute(
        f"INSERT INTO artclf.embeddings ({cols}) SELECT {cols} FROM _embeddings_in"
        " ON CONFLICT DO NOTHING"
    ).rowcount
    conn.execute("TRUNCATE _embeddings_in")
    return n


def switch(
    settings: Settings,
    version: str,
    *,
    model: ArtModel | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Make ``version`` the active one atomically (see the module docstring).

    Returns ``{"version", "previous", "stragglers", "index_seconds"}``.
    """
    started = time.perf_counter()
    with db.connect(settings.db_url) as conn:
        conn.execute("SELECT artclf.build_embedding_index(%s)", (version,))
        conn.commit()
    index_seconds = time.perf_counter() - started
    with db.connect(settings.db_url) as conn:
        with conn.transaction():
            db.lock_catalogue(conn)
            stragglers = missing_ids(conn, version)
            if stragglers:
                model = model or load_version(settings, version)
                embed_ids(settings, model, stragglers, conn=conn)
            previous = conn.execute(
                "SELECT artclf.activate_model(%s, %s)", (version, reason)
            ).fetchone()[0]
    log.info(
        "active model: %s (was %s); %d artwork(s) embedded at the switch",
        version,
        previous,
        len(stragglers),
    )
    return {
        "version": version,
        "previous": previous,
        "stragglers": len(stragglers),
        "index_seconds": round(index_seconds, 2),
    }


def reembed(
    settings: Settings,
    version: str,
    *,
    batch_size: int = BATCH_SIZE,
    activate: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Embed the whole catalogue with ``version`` and (by default) switch to it."""
    started = time.perf_counter()
    model = load_version(settings, version)
    batches = plan(settings, version, batch_size)
    total = sum(len(b) for b in batches)
    done = 0
    objects = s3lib.DataPath(settings)
    for batch in batches:
        embed_ids(settings, model, batch, objects=objects)
        done += len(batch)
        if progress:
            progress(done, total)
    embed_seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "version": version,
        "embedded": total,
        "embed_seconds": round(embed_seconds, 2),
        "images_per_second": round(total / embed_seconds, 1) if total else None,
    }
    if activate:
        result.update(switch(settings, version, model=model, reason="re-embedded"))
    return result


def previous_version(conn: psycopg.Connection) -> str | None:
    """The version that was active before the current one (what a rollback returns to)."""
    row = conn.execute(
        "SELECT previous FROM artclf.model_activations"
        " WHERE version = artclf.active_version() ORDER BY id DESC LIMIT 1"
    ).fetchone()
    return row[0] if row else None


def rollback(settings: Settings, *, reason: str = "rollback") -> dict[str, Any]:
    """Switch back to the previously active version without recomputing its embeddings."""
    with db.connect(settings.db_url) as conn:
        target = previous_version(conn)
        part = artworks.embedding_partition(conn, target)
    if target is None:
        raise LookupError("no earlier active version to roll back to")
    if part is None:
        raise LookupError(f"the embeddings of {target} were dropped; re-embed it instead")
    return switch(settings, target, reason=reason)


def drop(settings: Settings, version: str) -> bool:
    """Drop ``version``'s embeddings (refused for the active version)."""
    with db.connect(settings.db_url) as conn:
        dropped = conn.execute("SELECT artclf.drop_embeddings(%s)", (version,)).fetchone()[0]
        conn.commit()
    return bool(dropped)


def write_version_atlas(
    settings: Settings,
    version: str | None = None,
    out_path: str | os.PathLike[str] | None = None,
    *,
    upload: bool = True,
    max_points: int = 20_000,
) -> dict[str, Any]:
    """The embedding atlas of one version's catalogue embeddings (default: the active one).

    Written to ``out_path`` (default ``$ARTCLF_HOME/atlas/<version>.html``) and, with
    ``upload``, next to the model in the lake: ``s3://<bucket>/models/<version>/atlas.html``,
    recorded among the version's ``plots`` (``atlas.html``).
    """
    from artclf_core.catalogue import atlas

    with db.connect(settings.db_url) as conn:
        version = version or registry.active_version(conn)
        if version is None:
            raise LookupError("no active model version and none given")
        rows = conn.execute(
            "SELECT e.artwork_id, e.label, e.probability, e.embedding, a.key,"
            " a.curated_label FROM artclf.embeddings AS e"
            " JOIN artclf.artworks AS a ON a.id = e.artwork_id"
            " WHERE e.model_version = %s ORDER BY e.artwork_id",
            (version,),
        ).fetchall()
    if out_path is None:
        out_path = default_home() / "atlas" / f"{version}.html"
    embs = (
        np.stack([np.asarray(r[3].to_numpy(), dtype=np.float32) for r in rows])
        if rows
        else np.zeros((0, 128), np.float32)
    )
    labels = [r[1] for r in rows]
    hover = [
        f"#{r[0]} {r[4]}\n{r[1]} p={r[2]:.2f}" + (f" (curated: {r[5]})" if r[5] else "")
        for r in rows
    ]
    summary = atlas.write_atlas(
        out_path,
        embs,
        labels,
        hover,
        title=f"artclf embedding atlas: {version}",
        subtitle=f"{len(rows)} catalogued artworks, coloured by this model's label",
        max_points=max_points,
    )
    if upload:
        key = f"models/{version}/atlas.html"
        s3lib.client(settings).upload_file(
            str(out_path), settings.bucket, key, ExtraArgs={"ContentType": "text/html"}
        )
        summary["uri"] = f"s3://{settings.bucket}/{key}"
        # Listed with the version's plots, so the Models page and API link to it.
        with db.connect(settings.db_url) as conn:
            conn.execute(
                "UPDATE artclf.model_versions SET plots = coalesce(plots, '{}'::jsonb)"
                " || jsonb_build_object('atlas.html', %s::text) WHERE version = %s",
                (summary["uri"], version),
            )
            conn.commit()
    return summary
