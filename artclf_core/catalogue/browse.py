"""Read the catalogue for people: the queries behind the HTTP API and the Artworks page.

Each function is one question a curator or ML owner asks (a page of artworks, one artwork
with its neighbours and duplicates, the review queue, the lake's health, the model versions)
answered from the SQL contract (``artclf.catalogue``, ``artclf.similar_artworks``,
``artclf.review_queue``, ...) with plain dicts that serialise to JSON as they are. Nothing
here writes except :func:`confirm_label`, which goes through ``artclf.confirm_label``.

Listing is keyset-paginated (``before_id``): a page costs the same at artwork 100,000 as at
artwork 100, and pages do not shift while new drops are catalogued.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from artclf_core import CLASSES
from artclf_core.catalogue import db
from artclf_core.images import thumbnails
from artclf_core.lake import s3 as s3lib
from artclf_core.model import plots

MAX_PAGE = 200
#: The review queue's length is counted up to this many (then reported as "10,000+").
COUNT_CAP = 10_000


@dataclass(frozen=True)
class ArtworkFilter:
    """What the catalogue grid filters on; every field optional."""

    label: str | None = None  # the best label: a curator's, else the active model's
    model_version: str | None = None  # the version that filed it
    min_probability: float | None = None
    max_probability: float | None = None
    dropped_after: datetime | None = None
    dropped_before: datetime | None = None
    collection: str | None = None  # the collection it came from (``artworks.collection``)

    def check(self) -> None:
        if self.label is not None and self.label not in CLASSES:
            raise ValueError(f"unknown label {self.label!r}; expected one of {', '.join(CLASSES)}")
        for name in ("min_probability", "max_probability"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie between 0 and 1, not {value}")


_ARTWORK_COLUMNS = (
    "id, location, key, best_label, label, probability, probabilities, model_version,"
    " curated_label, curated_by, curated_at, filed_label, filed_by, width, height, format,"
    " byte_size, sha256, source_key, created_at, collection"
)


def list_artworks(
    conn: Any, where: ArtworkFilter, *, before_id: int | None = None, limit: int = 60
) -> dict[str, Any]:
    """One page of the catalogue, newest first, and the cursor of the next page."""
    where.check()
    limit = max(1, min(limit, MAX_PAGE))
    rows = db.fetch_dicts(
        conn,
        f"SELECT {_ARTWORK_COLUMNS} FROM artclf.catalogue"
        " WHERE (%(before)s::bigint IS NULL OR id < %(before)s)"
        "   AND (%(label)s::text IS NULL OR best_label = %(label)s)"
        "   AND (%(version)s::text IS NULL OR filed_by = %(version)s)"
        "   AND (%(pmin)s::real IS NULL OR probability >= %(pmin)s)"
        "   AND (%(pmax)s::real IS NULL OR probability <= %(pmax)s)"
        "   AND (%(after_t)s::timestamptz IS NULL OR created_at >= %(after_t)s)"
        "   AND (%(before_t)s::timestamptz IS NULL OR created_at < %(before_t)s)"
        "   AND (%(collection)s::text IS NULL OR collection = %(collection)s)"
        " ORDER BY id DESC LIMIT %(limit)s",
        {
            "before": before_id,
            "label": where.label,
            "version": where.model_version,
            "pmin": where.min_probability,
            "pmax": where.max_probability,
            "after_t": where.dropped_after,
            "before_t": where.dropped_before,
            "collection": where.collection,
            "limit": limit + 1,
        },
    )
    conn.commit()
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": rows, "next_before_id": rows[-1]["id"] if more else None}


def artwork(conn: Any, artwork_id: int, *, k: int = 5) -> dict[str, Any] | None:
    """One artwork: its catalogue row, the drops that duplicate it, its label history and its
    k neighbours of the same label and of any label. ``None`` when there is no such id."""
    rows = db.fetch_dicts(
        conn, f"SELECT {_ARTWORK_COLUMNS} FROM artclf.catalogue WHERE id = %s", (artwork_id,)
    )
    if not rows:
        conn.commit()
        return None
    out = rows[0]
    out["duplicates"] = db.fetch_dicts(
        conn,
        "SELECT id AS log_id, key, final_key, duplicate_kind, distance, updated_at"
        " FROM artclf.ingest_log WHERE duplicate_of = %s ORDER BY id",
        (artwork_id,),
    )
    out["reviews"] = db.fetch_dicts(
        conn,
        "SELECT label, previous, predicted, curator, reviewed_at FROM artclf.label_reviews"
        " WHERE artwork_id = %s ORDER BY id",
        (artwork_id,),
    )
    for name, same in (("neighbours_same_label", True), ("neighbours_any_label", False)):
        out[name] = db.fetch_dicts(
            conn,
            "SELECT rank, artwork_id, location, label, distance"
            " FROM artclf.similar_artworks(%s, %s, %s)",
            (artwork_id, k, same),
        )
    conn.commit()
    return out


def artwork_object(conn: Any, artwork_id: int) -> dict[str, Any] | None:
    """Where an artwork's object lives (bucket, key, sha256): the only objects the API
    serves pictures of, so a request can never name an arbitrary key of the bucket."""
    rows = db.fetch_dicts(
        conn,
        "SELECT id, bucket, key, sha256, format FROM artclf.artworks WHERE id = %s",
        (artwork_id,),
    )
    conn.commit()
    return rows[0] if rows else None


def review_queue(conn: Any, *, limit: int = 60, collection: str | None = None) -> dict[str, Any]:
    """The least confident unconfirmed predictions of the active model (least sure first),
    of one ``collection`` or of all, the threshold, the queue's length (``total``, at most
    ``COUNT_CAP``; ``total_capped`` when longer) and ``reviewed``: how many of the model's
    predictions under the threshold a curator has labelled already."""
    limit = max(1, min(limit, MAX_PAGE))
    items = db.fetch_dicts(
        conn,
        "SELECT artwork_id, location, label, probability, probabilities, model_version,"
        " collection FROM artclf.review_queue(NULL, %s::text) LIMIT %s",
        (collection, limit),
    )
    # Counted up to COUNT_CAP: an exact count of a queue of 90,000 costs a scan of it on
    # every page view, and "10,000+" says as much to a curator.
    threshold, total = conn.execute(
        "SELECT artclf.review_threshold(),"
        " (SELECT count(*) FROM (SELECT 1 FROM artclf.review_queue(NULL, %s::text) LIMIT %s) AS q)",
        (collection, COUNT_CAP + 1),
    ).fetchone()
    # Progress: the active model's predictions under the threshold that a curator has
    # labelled since (they left the queue), out of those plus the queue ("12 of 57 reviewed").
    (reviewed,) = conn.execute(
        "SELECT count(*) FROM artclf.embeddings AS e JOIN artclf.artworks AS a"
        " ON a.id = e.artwork_id WHERE e.model_version = artclf.active_version()"
        " AND a.curated_by IS NOT NULL AND e.probability < artclf.review_threshold()"
        " AND (%(c)s::text IS NULL OR a.collection = %(c)s)",
        {"c": collection},
    ).fetchone()
    conn.commit()
    return {
        "threshold": threshold,
        "collection": collection,
        "total": min(total, COUNT_CAP),
        "total_capped": total > COUNT_CAP,
        "reviewed": reviewed,
        "items": items,
    }


def collections(conn: Any) -> list[dict[str, Any]]:
    """Each collection and its number of artworks, largest first: what the page's collection
    menus list. Read from the ``(collection, id)`` index (the query 21 ms at 100,000
    artworks, the request 47 ms: bench/browse.py); the view ``artclf.collections`` adds the
    curated and to-review counts, which cost a pass over the active model's embeddings (the
    query 193 ms), too slow for every view of the page. The queue of the collection picked
    gives its own figures."""
    rows = db.fetch_dicts(
        conn,
        "SELECT collection, count(*) AS artworks FROM artclf.artworks"
        " WHERE collection IS NOT NULL GROUP BY collection ORDER BY count(*) DESC, collection",
    )
    conn.commit()
    return rows


def confirm_label(conn: Any, artwork_id: int, label: str, curator: str) -> dict[str, Any]:
    """Confirm or correct a label (``artclf.confirm_label``), recorded under ``curator``."""
    if label not in CLASSES:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(CLASSES)}")
    conn.execute("SELECT artclf.confirm_label(%s, %s, %s)", (artwork_id, label, curator))
    conn.commit()
    row = db.fetch_dicts(
        conn,
        "SELECT id, best_label, label, curated_label, curated_by, curated_at"
        " FROM artclf.catalogue WHERE id = %s",
        (artwork_id,),
    )[0]
    conn.commit()
    return row


def _run_of(claimed_by: str | None) -> dict[str, str] | None:
    """The Airflow run that decided an object, from the claim signature it recorded the
    outcome under (``handled_by``: ``airflow:<dag_id>/<run_id>/...``, see
    dags/artclf_ingest.py); ``None`` for the CLI and the library."""
    if not claimed_by or not claimed_by.startswith("airflow:"):
        return None
    dag_id, _, rest = claimed_by[len("airflow:") :].partition("/")
    run_id = rest.split("/", 1)[0]
    return {"dag_id": dag_id, "run_id": run_id} if dag_id and run_id else None


def lake(conn: Any, *, limit: int = 100) -> dict[str, Any]:
    """Counts of objects by state and reason, and the latest quarantined and failed ones
    with their reason, message, attempts and the DAG run that handled them."""
    counts = db.fetch_dicts(
        conn,
        "SELECT state, reason, count(*) AS n FROM artclf.ingest_log"
        " GROUP BY state, reason ORDER BY state, reason NULLS FIRST",
    )
    problems = {}
    for state in ("quarantined", "failed"):
        rows = db.fetch_dicts(
            conn,
            "SELECT id AS log_id, bucket, key, final_key, reason, message, attempts,"
            " handled_by, updated_at FROM artclf.ingest_log WHERE state = %s"
            " ORDER BY id DESC LIMIT %s",
            (state, max(1, min(limit, MAX_PAGE))),
        )
        for row in rows:
            row["run"] = _run_of(row.pop("handled_by"))
        problems[state] = rows
    conn.commit()
    return {"counts": counts, **problems}


#: The parts of a version's metrics that its derived plots are drawn from
#: (:data:`artclf_core.model.plots.DERIVED`): the calibration with the precision/coverage curve,
#: and the k-shot curve.
_PLOT_METRICS = (
    "jsonb_build_object('kshot', metrics->'kshot', 'cross_validation',"
    " jsonb_build_object('calibration', metrics #> '{cross_validation,calibration}'))"
)


def models(conn: Any) -> list[dict[str, Any]]:
    """Every registered model version, newest first, with the gate's decision and plots
    (those it published, and ``derived_plots`` drawn on request from its metrics)."""
    rows = db.fetch_dicts(
        conn,
        "SELECT version, arch, status, is_active, created_at, activated_at, decision, plots,"
        " artifact, metrics->'cross_validation'->>'balanced_accuracy' AS cv_balanced_accuracy,"
        " metrics->>'review_threshold' AS review_threshold,"
        f" metrics->'collections' AS collections, {_PLOT_METRICS} AS plot_metrics"
        " FROM artclf.model_versions ORDER BY created_at DESC, version",
    )
    conn.commit()
    for row in rows:
        metrics = row.pop("plot_metrics")
        row["derived_plots"] = plots.derived_names(metrics)
        review = dict(metrics["cross_validation"]["calibration"] or {}).get("review")
        row["review"] = {k: v for k, v in review.items() if k != "curve"} if review else None
        row["kshot_mean"] = (metrics["kshot"] or {}).get("mean")
        for key in ("cv_balanced_accuracy", "review_threshold"):
            if row[key] is not None:
                row[key] = float(row[key])
    return rows


def retrain_runs(conn: Any, *, limit: int = 20) -> list[dict[str, Any]]:
    """The latest retraining runs, newest first (skipped ones too), with what they trained on,
    their verdict and the Airflow run that made them (``run``; ``None`` from the CLI)."""
    rows = db.fetch_dicts(
        conn,
        "SELECT id, started_at, finished_at, run_by, status, reason, version, compared_with,"
        " dataset, report_md, seconds FROM artclf.retrain_runs ORDER BY id DESC LIMIT %s",
        (limit,),
    )
    conn.commit()
    for row in rows:
        row["run"] = _run_of(row["run_by"])
    return rows


def model_metrics_for_plots(conn: Any, version: str) -> dict[str, Any] | None:
    """The parts of a version's metrics that :func:`artclf_core.model.plots.derived` draws from."""
    row = conn.execute(
        f"SELECT {_PLOT_METRICS} FROM artclf.model_versions WHERE version = %s",
        (version,),
    ).fetchone()
    conn.commit()
    return row[0] if row else None


def model_plot(conn: Any, version: str, name: str) -> str | None:
    """The ``s3://`` URL of one plot a model version recorded (its ``plots`` or the atlas
    next to it); ``None`` when the version recorded no such plot."""
    row = conn.execute(
        "SELECT plots->>%s FROM artclf.model_versions WHERE version = %s", (name, version)
    ).fetchone()
    conn.commit()
    return row[0] if row else None


def thumbnail(s3: Any, obj: dict[str, Any]) -> bytes:
    """The thumbnail of one catalogued artwork (``bucket``, ``key``, ``sha256``, ``id`` as
    :func:`artwork_object` returns them), made on first request."""
    key = thumbnails.thumbnail_key(obj["id"], obj["sha256"])
    try:
        return s3lib.get_bytes(s3, obj["bucket"], key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
            raise
    webp = thumbnails.render(s3lib.get_bytes(s3, obj["bucket"], obj["key"]))
    s3.put_object(
        Bucket=obj["bucket"],
        Key=key,
        Body=webp,
        ContentType="image/webp",
        Metadata={"artclf-artwork-id": str(obj["id"]), "artclf-source": obj["key"]},
    )
    return webp
