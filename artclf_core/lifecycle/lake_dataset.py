"""The training data of a nightly retrain, read from the lake (step 1 of
:func:`artclf_core.lifecycle.retrain.retrain`).

Two folders come out of it, in the layouts the trainer reads from any local folder, so that
training from the lake and from ``artclf train --data DIR`` are the same code:

* :func:`export_training_set`: every catalogued artwork whose label is known (a
  ``training/<label>/`` drop, or a curator's ``artclf.confirm_label``), as
  ``<label>/<collection>__<name as dropped>``. The collection prefix makes each collection
  one *source*, held out, grouped and weighed as one in training, cross-validation and the
  gate; the curators' labels are listed beside them (:mod:`artclf_core.lifecycle.curator_labels`).
* :func:`export_unlabelled`: a fixed sample of each collection's uncurated artworks, as
  ``<collection>/<id>.<ext>``, for self-training.

:func:`data_fingerprint` names what a run learnt from, so that a night with nothing new
trains nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from artclf_core import CLASSES
from artclf_core.catalogue import db
from artclf_core.config import Settings
from artclf_core.lake import s3 as s3lib
from artclf_core.lifecycle import curator_labels

log = logging.getLogger("artclf.retrain")

#: Most uncurated artworks per collection the closed-form recipe self-trains on
#: (:mod:`artclf_core.lifecycle.self_training`): a fixed sample (by SHA-256) bounds the nightly
#: run's downloads and forward passes however large a collection grows.
UNLABELLED_PER_COLLECTION = 1000
#: ... and in all: many collections share this budget equally (:func:`unlabelled_quota`),
#: so that the nightly run stays well inside its 30 minutes on 2 cores however many
#: collections the lake holds. Measured (``bench/retrain.py``, 3,847 labelled images): 6.0
#: minutes, 11.8 with 9,831 uncurated artworks in 10 collections, i.e. about 0.6 minutes per
#: 1,000; 20,000 comes to about 18 minutes.
UNLABELLED_TOTAL = 20_000
#: ... but never fewer than this many per collection: the families of the model card's
#: self-training figures hold 4 to 526 pictures, so a collection's priors and pseudo-labels
#: are measured from about this size up (above 200 collections the total grows past
#: ``UNLABELLED_TOTAL``, by 0.6 minutes per 1,000).
UNLABELLED_MIN_PER_COLLECTION = 100


def unlabelled_quota(collections: int) -> int:
    """How many uncurated artworks of each collection a night self-trains on, when
    ``collections`` collections have some: an equal share of :data:`UNLABELLED_TOTAL`, at
    most :data:`UNLABELLED_PER_COLLECTION`, at least :data:`UNLABELLED_MIN_PER_COLLECTION`.
    A share is a prefix of the collection's SHA-256 order, so a smaller share is a subset of
    a larger one: a new collection shrinks the others' samples without changing them."""
    share = UNLABELLED_TOTAL // max(1, collections)
    return max(UNLABELLED_MIN_PER_COLLECTION, min(UNLABELLED_PER_COLLECTION, share))


def data_fingerprint(pairs: Sequence[tuple[str, str]]) -> str:
    """SHA-256 over the sorted ``(sha256, label)`` pairs of a training set: two runs with the
    same fingerprint trained on the same images with the same labels."""
    h = hashlib.sha256()
    for sha, label in sorted(pairs):
        h.update(f"{sha} {label}\n".encode())
    return h.hexdigest()


def labelled_artworks(conn) -> list[dict[str, Any]]:
    """Catalogued artworks with a known label (folder or curator), oldest first;
    ``labelled_at`` is when the label became known (the curator's confirmation, else the
    artwork's cataloguing)."""
    return db.fetch_dicts(
        conn,
        "SELECT id, bucket, key, curated_label AS label, source_key, sha256, collection,"
        " curated_by, coalesce(curated_at, created_at) AS labelled_at"
        " FROM artclf.artworks WHERE curated_label IS NOT NULL ORDER BY id",
    )


def _source(name: str, label: str) -> str:
    """The source the split holds out: the name's prefix before ``__``, else the class
    (the rule of :func:`artclf_core.lifecycle.dataset.scan_labelled_folder`)."""
    return name.split("__", 1)[0] if "__" in name else label


def _safe_collection(collection: str) -> str:
    """A collection name usable as a file-name source prefix: no ``/``, no ``__`` (the
    separator), no control characters, at most 100 bytes."""
    out = "".join(c if c.isprintable() and c != "/" else "_" for c in collection)
    while "__" in out:
        out = out.replace("__", "_")
    return out.encode()[:100].decode(errors="ignore").strip("_") or "collection"


def export_name(row: dict[str, Any]) -> str:
    """The file name an artwork is exported under: the name it was dropped with, prefixed
    with its collection (``<collection>__<name>``) so the collection is its *source*, held
    out, grouped and weighed as one in training, cross-validation and the gate. Without a
    collection the name is kept as dropped (its ``__`` prefix, else its class, is the
    source)."""
    name = s3lib.basename(row["source_key"]) or s3lib.basename(row["key"])
    coll = row.get("collection")
    if not coll:
        return name
    prefix = _safe_collection(coll)
    if name.startswith(prefix + "__"):
        return name
    return f"{prefix}__{name.replace('__', '_')}"


def describe_training_set(
    rows: Sequence[dict[str, Any]], names: Sequence[str], active: dict[str, Any] | None
) -> dict[str, Any]:
    """What a retraining would learn from: counts per class and per source, and what is new
    since the active model was registered (labels that became known after it)."""
    since = active["created_at"] if active else None
    new = [r for r in rows if since is None or r["labelled_at"] > since]
    labels = [r["label"] for r in rows]
    return {
        "n": len(rows),
        "per_class": {c: n for c in CLASSES if (n := sum(r["label"] == c for r in rows))},
        "per_source": dict(sorted(Counter(map(_source, names, labels)).items())),
        "new_since_active": {
            "since": since.isoformat() if since else None,
            "n": len(new),
            "per_class": dict(Counter(r["label"] for r in new)),
        },
        "fingerprint": data_fingerprint([(r["sha256"], r["label"]) for r in rows]),
    }


def export_training_set(
    settings: Settings, out_dir: str | os.PathLike[str], active: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Download the lake's labelled artworks to ``out_dir/<label>/<name as dropped>``.

    The folder layout is the one ``artclf train`` reads, so training from the lake and from a
    local folder are the same code. Returns :func:`describe_training_set` plus ``"dir"``.
    """
    out = Path(out_dir)
    started = time.perf_counter()
    with db.connect(settings.db_url) as conn:
        rows = labelled_artworks(conn)
    log.info("exporting %d labelled artwork(s) from the lake to %s", len(rows), out)
    if out.exists():
        shutil.rmtree(out)
    for label in CLASSES:
        (out / label).mkdir(parents=True, exist_ok=True)

    # The drop's file name is kept (its prefix before ``__`` is the source the split holds
    # out, as in a local training folder); a second artwork of the same name gets its id.
    names: dict[tuple[str, str], int] = Counter()
    jobs = []
    for r in rows:
        name = export_name(r)
        if names[(r["label"], name)]:
            stem, dot, ext = name.rpartition(".")
            name = f"{stem}-{r['id']}.{ext}" if dot else f"{name}-{r['id']}"
        names[(r["label"], name)] += 1
        jobs.append((r, out / r["label"] / name))
    _download(settings, jobs)
    log.info("downloaded %d image(s) in %.1f s", len(jobs), time.perf_counter() - started)
    since = active["created_at"] if active else None
    curator_labels.write(
        out,
        [
            curator_labels.Label(
                path=f"{r['label']}/{path.name}",
                collection=r["collection"],
                curator=r["curated_by"],
                new=since is None or r["labelled_at"] > since,
            )
            for r, path in jobs
            if r["curated_by"]
        ],
    )
    return {
        **describe_training_set(rows, [path.name for _, path in jobs], active),
        "dir": str(out),
    }


def _download(settings: Settings, jobs: Sequence[tuple[dict[str, Any], Path]]) -> None:
    """Download each ``(artwork row, path)`` of ``jobs``, eight at a time."""
    client = s3lib.client(settings, max_pool=20)

    def fetch(job: tuple[dict[str, Any], Path]) -> None:
        r, path = job
        client.download_file(r["bucket"], r["key"], str(path))

    with ThreadPoolExecutor(max_workers=8) as pool:
        for done, _ in enumerate(pool.map(fetch, jobs), 1):
            if done % 500 == 0:
                log.info("downloaded %d/%d", done, len(jobs))


def unlabelled_artworks(conn, per_collection: int | None = None) -> list[dict]:
    """Catalogued artworks no one has labelled, at most ``per_collection`` of each collection
    (default: :func:`unlabelled_quota` of the collections that have some; the same ones from
    night to night: the first by SHA-256), oldest first. Artworks without a collection count
    as one."""
    if per_collection is None:
        (collections,) = conn.execute(
            "SELECT count(*) FROM (SELECT DISTINCT collection FROM artclf.artworks"
            " WHERE curated_label IS NULL) AS c"
        ).fetchone()
        per_collection = unlabelled_quota(collections)
    return db.fetch_dicts(
        conn,
        "SELECT id, bucket, key, source_key, sha256, collection FROM ("
        " SELECT id, bucket, key, source_key, sha256, collection, row_number() OVER"
        " (PARTITION BY collection ORDER BY sha256) AS n"
        " FROM artclf.artworks WHERE curated_label IS NULL) AS a"
        " WHERE n <= %s ORDER BY id",
        (per_collection,),
    )


def export_unlabelled(settings: Settings, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Download the catalogue's uncurated artworks to ``out_dir/<collection>/<id>.<ext>``
    (:func:`unlabelled_artworks`; artworks without a collection under ``uncollected``), the
    folder :func:`artclf_core.lifecycle.dataset.scan_unlabelled_folder` reads. Returns ``{"n",
    "per_collection", "sha256" (sorted), "dir"}``."""
    out = Path(out_dir)
    with db.connect(settings.db_url) as conn:
        rows = unlabelled_artworks(conn)
    if out.exists():
        shutil.rmtree(out)
    jobs = []
    for r in rows:
        folder = out / _safe_collection(r["collection"] or "uncollected")
        folder.mkdir(parents=True, exist_ok=True)
        ext = Path(s3lib.basename(r["key"])).suffix or ".img"
        jobs.append((r, folder / f"{r['id']}{ext}"))
    _download(settings, jobs)
    log.info("exported %d uncurated artwork(s) for self-training", len(jobs))
    return {
        "n": len(rows),
        "per_collection": dict(sorted(Counter(p.parent.name for _, p in jobs).items())),
        "sha256": sorted(r["sha256"] for r in rows),
        "dir": str(out),
    }
