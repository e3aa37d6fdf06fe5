"""The catalogue API (artclf_core.web) in-process, on the session's real stack.

Authentication here is a stand-in (a header naming user and role) so that the routes are
tested without Airflow; tests/test_airflow_stack.py runs the same app inside Airflow's API
server with Airflow's own auth and drives the page in a real browser.
"""

from __future__ import annotations

import io

import imagegen
import pytest
from fastapi import Header, HTTPException
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from PIL import Image

from artclf_core import CLASSES
from artclf_core.catalogue import db
from artclf_core.images import thumbnails
from artclf_core.images.decode import Limits
from artclf_core.ingest.ingestor import Ingestor
from artclf_core.lake import s3 as s3lib
from artclf_core.web.app import Access, Caller, create_app

N = 12
LIMITS = Limits(max_bytes=400_000)


def _caller(x_user: str | None) -> Caller:
    if not x_user:
        raise HTTPException(401, "Not authenticated")
    name, _, role = x_user.partition(":")
    return Caller(name=name, can_edit=role == "editor")


def reader(x_user: str | None = Header(default=None)) -> Caller:
    return _caller(x_user)


def editor(x_user: str | None = Header(default=None)) -> Caller:
    caller = _caller(x_user)
    if not caller.can_edit:
        raise HTTPException(403, "may not edit")
    return caller


VIEWER = {"X-User": "vera:viewer"}
EDITOR = {"X-User": "carla:editor"}


@pytest.fixture(scope="module")
def catalogue(stack, settings, model):
    """A small catalogue: N artworks, one exact duplicate, one quarantined object (the
    same reset as the ``clean`` fixture, once for the module)."""
    from conftest import reset

    client = s3lib.client(reset(settings))
    images = {
        f"incoming/web/art{i:02d}.jpg": imagegen.encode(imagegen.make_artwork(900 + i))
        for i in range(N)
    }
    images["incoming/web/again.jpg"] = images["incoming/web/art00.jpg"]
    images["incoming/web/notes.jpg"] = b"<html>not a picture</html>"
    for key, data in images.items():
        client.put_object(Bucket=settings.bucket, Key=key, Body=data)
    with Ingestor(settings, model=model, limits=LIMITS) as ingestor:
        summary = ingestor.ingest_prefix()
    assert (summary.catalogued, summary.duplicates, summary.quarantined) == (N, 1, 1)
    app = create_app(Access(reader=reader, editor=editor), lambda: settings, limits=LIMITS)
    return TestClient(app), settings, images


def test_no_route_answers_without_authentication(catalogue):
    client, _, _ = catalogue
    routes = [r for r in client.app.routes if isinstance(r, APIRoute)]
    assert len(routes) >= 13
    for route in routes:
        path = route.path.replace("{artwork_id}", "1").replace("{version}", "v")
        path = path.replace("{name}", "app.js")
        for method in route.methods:
            resp = client.request(method, path)
            assert resp.status_code == 401, (method, path, resp.status_code)


def test_an_app_with_an_unguarded_route_is_refused():
    from artclf_core.web import app as web

    def open_door() -> Caller:
        return Caller("anyone", True)

    original = web._require_auth_everywhere

    def build_with_extra(app, access):
        app.get("/api/leak")(lambda: {"secret": 1})
        original(app, access)

    web._require_auth_everywhere = build_with_extra
    try:
        with pytest.raises(RuntimeError, match="/api/leak has no authentication"):
            web.create_app(Access(reader=open_door, editor=open_door))
    finally:
        web._require_auth_everywhere = original


def test_artworks_are_listed_newest_first_with_keyset_pages(catalogue):
    client, _, _ = catalogue
    seen: list[int] = []
    before = None
    while True:
        params = {"limit": 5, **({"before_id": before} if before else {})}
        page = client.get("/api/artworks", params=params, headers=VIEWER).json()
        seen += [a["id"] for a in page["items"]]
        before = page["next_before_id"]
        if before is None:
            break
    assert len(seen) == N and seen == sorted(seen, reverse=True)
    label = client.get(f"/api/artworks/{seen[0]}", headers=VIEWER).json()["best_label"]
    only = client.get("/api/artworks", params={"label": label}, headers=VIEWER).json()["items"]
    assert only and all(a["best_label"] == label for a in only)
    sure = client.get("/api/artworks", params={"min_probability": 0.99}, headers=VIEWER).json()
    assert all(a["probability"] >= 0.99 for a in sure["items"])
    bad = client.get("/api/artworks", params={"label": "poster"}, headers=VIEWER)
    assert bad.status_code == 422 and "unknown label 'poster'" in bad.text


def test_one_artwork_with_duplicates_and_neighbours(catalogue):
    client, settings, _ = catalogue
    with db.connect(settings.db_url) as conn:
        first, dropped = conn.execute(
            "SELECT artwork_id, key FROM artclf.ingest_log WHERE state = 'catalogued'"
            " AND key IN ('incoming/web/art00.jpg', 'incoming/web/again.jpg')"
        ).fetchone()
    copy = ({"incoming/web/art00.jpg", "incoming/web/again.jpg"} - {dropped}).pop()
    a = client.get(f"/api/artworks/{first}", headers=VIEWER).json()
    assert set(a["probabilities"]) == set(CLASSES)
    assert a["location"].startswith(f"s3://{settings.bucket}/catalog/{a['filed_label']}/")
    assert [d["key"] for d in a["duplicates"]] == [copy]
    assert a["duplicates"][0]["duplicate_kind"] == "exact"
    same, anyl = a["neighbours_same_label"], a["neighbours_any_label"]
    assert all(n["label"] == a["label"] for n in same)
    assert len(anyl) == 5 and first not in [n["artwork_id"] for n in anyl]
    assert client.get("/api/artworks/999999", headers=VIEWER).status_code == 404


def test_thumbnails_are_small_webp_kept_in_the_lake_and_cacheable(catalogue):
    client, settings, _ = catalogue
    first = client.get("/api/artworks", params={"limit": 1}, headers=VIEWER).json()["items"][0]
    resp = client.get(f"/api/artworks/{first['id']}/thumbnail", headers=VIEWER)
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/webp"
    assert "immutable" in resp.headers["cache-control"]
    img = Image.open(io.BytesIO(resp.content))
    assert img.format == "WEBP" and max(img.size) == thumbnails.SIZE
    key = thumbnails.thumbnail_key(first["id"], first["sha256"])
    kept = s3lib.get_bytes(s3lib.client(settings), settings.bucket, key)
    assert kept == resp.content
    again = client.get(
        f"/api/artworks/{first['id']}/thumbnail",
        headers={**VIEWER, "If-None-Match": resp.headers["etag"]},
    )
    assert again.status_code == 304
    full = client.get(f"/api/artworks/{first['id']}/image", headers=VIEWER)
    assert full.headers["content-type"] == "image/jpeg" and len(full.content) > len(kept)
    # Only catalogued artworks by id: no key of the bucket can be named.
    assert client.get("/api/artworks/0/thumbnail", headers=VIEWER).status_code == 404
    assert client.get("/api/artworks/..%2Fincoming/thumbnail", headers=VIEWER).status_code in (
        404,
        422,
    )


def test_classify_an_upload_without_cataloguing_it(catalogue):
    client, settings, images = catalogue
    with db.connect(settings.db_url) as conn:
        before = conn.execute("SELECT count(*) FROM artclf.artworks").fetchone()[0]
    new = imagegen.encode(imagegen.make_artwork(950))
    resp = client.post(
        "/api/classify", files={"image": ("new.jpg", new, "image/jpeg")}, headers=VIEWER
    )
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["label"] in CLASSES
    assert abs(sum(answer["probabilities"].values()) - 1) < 1e-3
    assert len(answer["neighbours"]) >= 1
    assert all(n["label"] == answer["label"] for n in answer["neighbours"])
    assert "catalogued_as" not in answer
    known = client.post(
        "/api/classify",
        params={"any_label": True, "k": 3},
        files={"image": ("x.jpg", images["incoming/web/art03.jpg"], "image/jpeg")},
        headers=VIEWER,
    ).json()
    assert known["catalogued_as"] > 0 and len(known["neighbours"]) == 3
    assert known["neighbours"][0]["artwork_id"] == known["catalogued_as"]
    bad = client.post(
        "/api/classify",
        files={"image": ("n.jpg", b"<html>no</html>", "image/jpeg")},
        headers=VIEWER,
    )
    assert bad.status_code == 422 and bad.json()["detail"]["reason"] == "not_an_image"
    big = client.post(
        "/api/classify",
        files={"image": ("b.jpg", b"\xff" * (LIMITS.max_bytes + 1))},
        headers=VIEWER,
    )
    assert big.status_code == 413
    with db.connect(settings.db_url) as conn:
        assert conn.execute("SELECT count(*) FROM artclf.artworks").fetchone()[0] == before


def test_review_needs_the_edit_role_and_records_the_curator(catalogue):
    client, settings, _ = catalogue
    queue = client.get("/api/review", headers=VIEWER).json()
    assert {"threshold", "total", "reviewed", "items"} <= set(queue)
    probs = [r["probability"] for r in queue["items"]]
    assert probs == sorted(probs)  # least sure first
    target = client.get("/api/artworks", params={"limit": 1}, headers=VIEWER).json()["items"][0]
    other = next(c for c in CLASSES if c != target["label"])
    denied = client.post(f"/api/review/{target['id']}", json={"label": other}, headers=VIEWER)
    assert denied.status_code == 403
    unknown = client.post(f"/api/review/{target['id']}", json={"label": "poster"}, headers=EDITOR)
    assert unknown.status_code == 422
    missing = client.post("/api/review/999999", json={"label": other}, headers=EDITOR)
    assert missing.status_code == 404
    done = client.post(f"/api/review/{target['id']}", json={"label": other}, headers=EDITOR)
    assert done.status_code == 200, done.text
    assert done.json()["curated_label"] == other and done.json()["curated_by"] == "carla"
    with db.connect(settings.db_url) as conn:
        row = conn.execute(
            "SELECT label, curator, predicted FROM artclf.label_reviews WHERE artwork_id = %s",
            (target["id"],),
        ).fetchone()
    assert row == (other, "carla", target["label"])
    # Progress counts the curator's label if the model was unsure of that artwork.
    after = client.get("/api/review", headers=VIEWER).json()
    unsure = target["probability"] < queue["threshold"]
    assert after["reviewed"] == queue["reviewed"] + unsure
    assert after["total"] == queue["total"] - unsure
    assert client.get("/api/whoami", headers=EDITOR).json() == {"user": "carla", "can_edit": True}


def test_a_curator_takes_one_collection_at_a_time(catalogue):
    """The grid, the review queue and its progress narrowed to one collection (the drop
    prefix, ``artworks.collection``); ``/api/collections`` lists them for the page's menus
    and the view ``artclf.collections`` counts each one's curated and to-review artworks."""
    client, settings, _ = catalogue
    with db.connect(settings.db_url) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM artclf.artworks ORDER BY id")]
        moved = ids[:3]
        conn.execute("SELECT artclf.set_collection(%s, 'museum a')", (moved,))
        conn.commit()
        try:
            listed = client.get("/api/collections", headers=VIEWER).json()
            assert listed == [
                {"collection": "web", "artworks": N - 3},
                {"collection": "museum a", "artworks": 3},
            ]
            grid = client.get(
                "/api/artworks", params={"collection": "museum a"}, headers=VIEWER
            ).json()
            assert [a["id"] for a in grid["items"]] == moved[::-1]
            assert {a["collection"] for a in grid["items"]} == {"museum a"}
            whole = client.get("/api/review", headers=VIEWER).json()
            view = db.fetch_dicts(conn, "SELECT * FROM artclf.collections")
            conn.commit()
            assert [(c["collection"], c["artworks"]) for c in view] == [
                (c["collection"], c["artworks"]) for c in listed
            ]
            totals = 0
            for c in view:
                mine = client.get(
                    "/api/review", params={"collection": c["collection"]}, headers=VIEWER
                ).json()
                assert mine["collection"] == c["collection"]
                assert mine["total"] == c["to_review"] == len(mine["items"])
                assert {r["collection"] for r in mine["items"]} <= {c["collection"]}
                assert mine["reviewed"] <= c["curated"]
                totals += mine["total"]
            assert totals == whole["total"]
            # The SQL function itself: every uncurated artwork of the collection is queued.
            queued = conn.execute(
                "SELECT artwork_id, collection FROM artclf.review_queue(1.01, 'museum a')"
            ).fetchall()
            assert sorted(queued) == [(i, "museum a") for i in moved]
            none = client.get("/api/review", params={"collection": "nowhere"}, headers=VIEWER)
            assert none.json()["items"] == [] and none.json()["total"] == 0
            empty = client.get("/api/artworks", params={"collection": "nowhere"}, headers=VIEWER)
            assert empty.json()["items"] == []
        finally:
            conn.execute("SELECT artclf.set_collection(%s, 'web')", (moved,))
            conn.commit()


def test_lake_models_schema_and_page(catalogue, tmp_path):
    client, settings, _ = catalogue
    lake = client.get("/api/lake", headers=VIEWER).json()
    counts = {(c["state"], c["reason"]): c["n"] for c in lake["counts"]}
    assert counts[("catalogued", None)] == N and counts[("quarantined", "not_an_image")] == 1
    (q,) = lake["quarantined"]
    assert q["key"] == "incoming/web/notes.jpg" and q["final_key"].startswith("quarantine/")
    assert q["run"] is None  # ingested by the library, not by a DAG run
    from artclf_core.lifecycle import reembed

    reembed.write_version_atlas(settings, out_path=tmp_path / "atlas.html")
    models = client.get("/api/models", headers=VIEWER).json()
    assert [m["is_active"] for m in models].count(True) == 1
    (active,) = [m for m in models if m["is_active"]]
    assert set(active["plots"]) == {"atlas.html"}
    # Drawn from the shipped model's own metrics: precision against coverage, k-shot curve.
    assert set(active["derived_plots"]) == {"review.png", "kshot.png"}
    for name in active["derived_plots"]:
        png = client.get(f"/api/models/{active['version']}/plots/{name}", headers=VIEWER)
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG"), name
    assert active["review"]["threshold"] == pytest.approx(active["review_threshold"])
    atlas = client.get(f"/api/models/{active['version']}/plots/atlas.html", headers=VIEWER)
    assert atlas.status_code == 200 and atlas.headers["content-type"].startswith("text/html")
    unknown = client.get(f"/api/models/{active['version']}/plots/..%2Fsecrets", headers=VIEWER)
    assert unknown.status_code == 404
    schema = client.get("/api/openapi.json", headers=VIEWER).json()
    assert "/api/classify" in schema["paths"] and "/api/artworks/{artwork_id}" in schema["paths"]
    page = client.get("/", headers=VIEWER)
    assert page.status_code == 200 and "static/app.js" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere
    assert client.get("/static/app.js", headers=VIEWER).status_code == 200
    assert client.get("/static/index.html", headers=VIEWER).status_code == 404
