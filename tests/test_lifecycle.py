"""Model lifecycle against the real stack: versioned embeddings, the atomic switch, rollback,
the promotion gate, retraining from the lake, curation and the low-confidence review."""

from __future__ import annotations

import json

import imagegen
import numpy as np
import psycopg
import pytest

from artclf_core import CLASSES
from artclf_core.catalogue import db, registry
from artclf_core.ingest.ingestor import Ingestor
from artclf_core.lake import s3 as s3lib
from artclf_core.lifecycle import promotion, reembed, retrain
from artclf_core.lifecycle.metrics import classification_report

N_ART = 30
V2 = "cnn-test-v2"


def similar(settings, artwork_id: int) -> list[tuple[int, float]]:
    with db.connect(settings.db_url) as conn:
        rows = conn.execute(
            "SELECT artwork_id, distance FROM artclf.similar_artworks(%s, 5, false)",
            (artwork_id,),
        ).fetchall()
    return [(r[0], round(r[1], 5)) for r in rows]


def exact_top5(settings, version: str, artwork_id: int) -> list[int]:
    with db.connect(settings.db_url) as conn:
        rows = conn.execute(
            "SELECT artwork_id, embedding FROM artclf.embeddings WHERE model_version = %s",
            (version,),
        ).fetchall()
    ids = np.array([r[0] for r in rows])
    embs = np.stack([r[1].to_numpy() for r in rows]).astype(np.float64)
    unit = embs / np.linalg.norm(embs, axis=1, keepdims=True)
    q = unit[list(ids).index(artwork_id)]
    dist = 1 - unit @ q
    dist[ids == artwork_id] = np.inf
    return [int(i) for i in ids[np.argsort(dist, kind="stable")[:5]]]


def active(settings) -> str | None:
    with db.connect(settings.db_url) as conn:
        return registry.active_version(conn)


def put_images(settings, prefix: str, n: int, offset: int = 0) -> None:
    client = s3lib.client(settings)
    for i in range(offset, offset + n):
        data = imagegen.encode(imagegen.make_artwork(1000 + i), quality=90)
        client.put_object(Bucket=settings.bucket, Key=f"{prefix}art{i:03d}.jpg", Body=data)


@pytest.fixture
def catalogued(clean, model):
    """N_ART artworks catalogued with the shipped model (the active version)."""
    put_images(clean, "incoming/", N_ART)
    with Ingestor(clean, model=model) as ing:
        summary = ing.ingest_prefix("incoming/")
    assert summary.catalogued == N_ART, summary
    return clean


@pytest.fixture
def second_model(tmp_path):
    """Another model version, deterministic: the same architecture with other weights."""
    from artclf_core.model.artmodel import build_model, save_model

    return save_model(
        build_model(seed=7), tmp_path / "v2.keras", version=V2, classes=CLASSES, arch="cnn"
    )


def register(settings, path, version: str = V2, status: str = "promoted") -> None:
    with db.connect(settings.db_url) as conn:
        registry.register_model(
            conn, version=version, arch="cnn", classes=CLASSES, artifact=str(path), status=status
        )
        conn.commit()


def test_an_upgrade_that_replaces_the_default_file_keeps_the_active_model(
    catalogued, second_model, model, tmp_path
):
    """The shipped default is registered by its path; an upgrade puts another version at
    that path. The active version must still load (the copy kept at registration), and the
    new default moves in through the normal activation (re-embedding) path."""
    import shutil

    from artclf_core.catalogue import registry
    from artclf_core.model import files

    settings = catalogued
    installed = tmp_path / "site" / "default.keras"
    installed.parent.mkdir()
    shutil.copyfile(model.path, installed)
    old = registry.register(settings.db_url, installed)
    assert old == model.version
    with db.connect(settings.db_url) as conn:  # as if the catalogue began from that install
        conn.execute(
            "UPDATE artclf.model_versions SET artifact = %s WHERE version = %s",
            (str(installed), old),
        )
        conn.commit()
    shutil.copyfile(second_model, installed)  # the upgrade
    kept = registry.model_path(settings, old)
    assert files.read_metadata(kept)["version"] == old
    assert registry.model_path(settings) == kept  # still the active one
    assert registry.register(settings.db_url, installed) == V2
    reembed.reembed(settings, V2)
    assert active(settings) == V2


def test_reembedding_switches_atomically_resumes_and_rolls_back(catalogued, second_model, model):
    settings = catalogued
    v1 = model.version
    with db.connect(settings.db_url) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM artclf.artworks ORDER BY id")]
    probe = ids[:4]
    before = {i: similar(settings, i) for i in probe}
    assert all(len(r) == 5 for r in before.values())
    register(settings, second_model)

    # Re-embedding starts and is interrupted after its first batch.
    model2 = reembed.load_version(settings, V2)
    batches = reembed.plan(settings, V2, batch_size=10)
    assert [len(b) for b in batches] == [10, 10, 10]
    assert reembed.embed_ids(settings, model2, batches[0]) == 10
    assert active(settings) == v1
    assert {i: similar(settings, i) for i in probe} == before  # still the old version only
    with db.connect(settings.db_url) as conn:  # a half-done version cannot be switched to
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            conn.execute("SELECT artclf.activate_model(%s)", (V2,))

    # Resumed: only what is missing is embedded, every row exactly once, then the switch.
    result = reembed.reembed(settings, V2, batch_size=10)
    assert result["embedded"] == N_ART - 10 and result["previous"] == v1
    assert active(settings) == V2
    with db.connect(settings.db_url) as conn:
        counts = dict(
            conn.execute(
                "SELECT model_version, count(*) FROM artclf.embeddings GROUP BY 1"
            ).fetchall()
        )
    assert counts == {v1: N_ART, V2: N_ART}
    for i in probe:
        assert [a for a, _ in similar(settings, i)] == exact_top5(settings, V2, i)
    assert {i: similar(settings, i) for i in probe} != before

    # Rollback: the old version answers again, nothing recomputed.
    back = reembed.rollback(settings)
    assert back["version"] == v1 and back["stragglers"] == 0
    assert active(settings) == v1
    assert {i: similar(settings, i) for i in probe} == before

    # The inactive version can be dropped, the active one cannot.
    assert reembed.drop(settings, V2) is True
    with pytest.raises(psycopg.errors.ObjectInUse):
        reembed.drop(settings, v1)
    with db.connect(settings.db_url) as conn:
        status = conn.execute(
            "SELECT status FROM artclf.model_versions WHERE version = %s", (V2,)
        ).fetchone()[0]
        history = conn.execute(
            "SELECT version, previous FROM artclf.model_activations ORDER BY id"
        ).fetchall()
    assert status == "retired"
    assert history[-2:] == [(V2, v1), (v1, V2)]


def test_ingestion_follows_a_switch_and_the_switch_embeds_late_arrivals(
    catalogued, second_model, model
):
    settings = catalogued
    register(settings, second_model)
    reembed.reembed(settings, V2, activate=False)
    # An artwork catalogued after the plan, with the old model, before the switch...
    put_images(settings, "incoming/late/", 1, offset=500)
    with Ingestor(settings, model=model) as ing:
        assert ing.ingest_prefix("incoming/").catalogued == 1
    # ...is embedded by the switch itself, under the catalogue lock.
    assert reembed.switch(settings, V2)["stragglers"] == 1
    # A worker that follows the registry loads the new model for what comes next.
    put_images(settings, "incoming/after/", 2, offset=600)
    with Ingestor(settings) as ing:
        assert ing.model.version == V2
        assert ing.ingest_prefix("incoming/").catalogued == 2
    with db.connect(settings.db_url) as conn:
        missing = conn.execute(
            "SELECT count(*) FROM artclf.missing_embeddings(%s)", (V2,)
        ).fetchone()[0]
        filed = conn.execute(
            "SELECT model_version, count(*) FROM artclf.artworks GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert missing == 0
    assert dict(filed) == {model.version: N_ART + 1, V2: 2}


def test_pictures_of_none_of_the_five_classes_land_in_review(clean, model):
    """A page of text, a building and a person are catalogued (they are valid images) but
    below the active model's own calibrated threshold, so they wait for a curator."""
    client = s3lib.client(clean)
    pictures = imagegen.out_of_class()
    for name, img in pictures.items():
        client.put_object(
            Bucket=clean.bucket, Key=f"incoming/{name}.jpg", Body=imagegen.encode(img)
        )
    with Ingestor(clean, model=model) as ing:
        assert ing.ingest_prefix("incoming/").catalogued == len(pictures)
    with db.connect(clean.db_url) as conn:
        threshold = conn.execute("SELECT artclf.review_threshold()").fetchone()[0]
        queued = conn.execute("SELECT location, probability FROM artclf.review_queue()").fetchall()
    assert threshold == pytest.approx(model.metrics["review_threshold"], abs=1e-6)
    assert len(queued) == len(pictures), queued
    assert all(p < threshold for _, p in queued)


def test_curators_confirm_labels_and_review_low_confidence(catalogued):
    settings = catalogued
    with db.connect(settings.db_url) as conn:
        queue = conn.execute("SELECT artwork_id FROM artclf.review_queue(1.01)").fetchall()
        assert len(queue) == N_ART  # every uncurated prediction is below 101 %
        default_queue = conn.execute("SELECT count(*) FROM artclf.review_queue()").fetchone()[0]
        assert default_queue <= N_ART
        target = queue[0][0]
        conn.execute("SELECT artclf.confirm_label(%s, 'painting', 'alice')", (target,))
        conn.execute("SELECT artclf.confirm_label(%s, 'sculpture', 'bob')", (target,))
        conn.commit()
        queue2 = [r[0] for r in conn.execute("SELECT artwork_id FROM artclf.review_queue(1.01)")]
        assert target not in queue2 and len(queue2) == N_ART - 1
        art = db.fetch_dicts(
            conn, "SELECT curated_label, curated_by FROM artclf.artworks WHERE id = %s", (target,)
        )[0]
        assert art == {"curated_label": "sculpture", "curated_by": "bob"}
        reviews = conn.execute(
            "SELECT label, previous, curator, predicted IS NOT NULL FROM artclf.label_reviews"
            " WHERE artwork_id = %s ORDER BY id",
            (target,),
        ).fetchall()
        assert reviews == [
            ("painting", None, "alice", True),
            ("sculpture", "painting", "bob", True),
        ]
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown label"):
            conn.execute("SELECT artclf.confirm_label(%s, 'paintings', 'x')", (target,))
        conn.rollback()
        with pytest.raises(psycopg.errors.NoDataFound):
            conn.execute("SELECT artclf.confirm_label(-1, 'painting', 'x')")


def test_atlas_of_the_active_version(catalogued, tmp_path):
    summary = reembed.write_version_atlas(catalogued, out_path=tmp_path / "atlas.html")
    assert summary["n_points"] == N_ART
    page = (tmp_path / "atlas.html").read_text()
    assert "http://" not in page and "https://" not in page
    client = s3lib.client(catalogued)
    key = summary["uri"].split("/", 3)[3]
    assert client.head_object(Bucket=catalogued.bucket, Key=key)["ContentLength"] > 1000


# --------------------------------------------------------------------------- the gate


def _report(y_true, y_pred):
    return classification_report(y_true, y_pred, CLASSES)


def test_gate_promotes_a_clearly_better_model_and_refuses_a_worse_one():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 20)
    perfect = _report(y, y)
    noisy = y.copy()
    flip = rng.random(len(y)) < 0.3
    noisy[flip] = rng.integers(0, 5, flip.sum())
    worse = _report(y, noisy)
    assert promotion.decide(perfect, worse).promote
    refused = promotion.decide(worse, perfect)
    assert not refused.promote
    assert any("balanced accuracy" in r and "<" in r for r in refused.reasons)
    # Better on average but one class collapses: refused by the per-class F1 guard.
    lopsided = y.copy()
    lopsided[y == 2] = 3
    slightly = y.copy()
    slightly[::7] = (slightly[::7] + 1) % 5
    policy = promotion.GatePolicy(min_gain=-1.0, max_f1_drop=0.05)
    verdict = promotion.decide(_report(y, lopsided), _report(y, slightly), policy)
    assert not verdict.promote
    assert any("F1 of iconography drops" in r for r in verdict.reasons)
    # No model to beat: promoted; nothing to judge on: refused.
    assert promotion.decide(worse, None).promote
    assert not promotion.decide(_report([], []), perfect).promote
    json.dumps(verdict.as_dict())  # stored as jsonb


# --------------------------------------------------------------------------- retraining


@pytest.mark.slow
def test_retraining_from_the_lake_gates_publishes_and_skips_unchanged_data(clean, model, tmp_path):
    settings = clean
    client = s3lib.client(settings)
    for label in CLASSES:
        for i in range(8):
            source = f"{label}{i % 2}"  # one family per source (promotion.unseen_by)
            client.put_object(
                Bucket=settings.bucket,
                Key=f"training/{label}/{source}__{i:02d}.png",
                Body=imagegen.labelled_png(label, i),
            )
    with Ingestor(settings, model=model) as ing:
        summary = ing.ingest_prefix("training/")
    assert summary.catalogued == 8 * len(CLASSES), summary

    # A gate nobody can pass: the candidate is published and registered as rejected.
    refused = retrain.retrain(
        settings,
        work_dir=tmp_path / "a",
        epochs=2,
        policy=promotion.GatePolicy(min_gain=1.0),
    )
    assert refused["status"] == "rejected" and refused["compared_with"] == model.version
    assert any("gain" in r for r in refused["reasons"])
    # What it trained on: per class, per source (the name before "__"), new since the active.
    dataset = refused["dataset"]
    assert dataset["per_class"] == dict.fromkeys(CLASSES, 8)
    assert dataset["per_source"] == {f"{c}{k}": 4 for c in CLASSES for k in (0, 1)}
    assert dataset["new_since_active"]["n"] == 40  # all labelled after the default was registered
    assert "**REJECTED**" in refused["report_md"] and "| painting | 8 |" in refused["report_md"]
    prefix = f"models/{refused['version']}/"
    names = {
        r.key[len(prefix) :]
        for page in s3lib.iter_pages(client, settings.bucket, prefix)
        for r in page
    }
    # No training_curves.png: the default recipe is closed-form, it has no epochs.
    assert {"model.keras", "report.json", "confusion.png", "confusion_active.png"} <= names
    report = json.loads(
        client.get_object(Bucket=settings.bucket, Key=prefix + "report.json")["Body"].read()
    )
    assert (
        report["decision"]["promote"] is False and report["active"]["n"] == report["candidate"]["n"]
    )
    assert active(settings) == model.version

    # A gate that any valid model passes: promoted, then re-embedded and switched in.
    promoted = retrain.retrain(
        settings,
        work_dir=tmp_path / "b",
        epochs=2,
        policy=promotion.GatePolicy(min_gain=-1.0, max_f1_drop=1.0),
        force=True,
    )
    assert promoted["status"] == "promoted"
    with db.connect(settings.db_url) as conn:
        rec = db.fetch_dicts(
            conn,
            "SELECT status, decision, plots, data_fingerprint, artifact"
            " FROM artclf.model_versions WHERE version = %s",
            (promoted["version"],),
        )[0]
    assert rec["status"] == "promoted" and rec["decision"]["promote"] is True
    assert rec["data_fingerprint"] == promoted["dataset"]["fingerprint"]
    assert rec["artifact"].startswith(f"s3://{settings.bucket}/models/")
    reembed.reembed(settings, promoted["version"])
    assert active(settings) == promoted["version"]

    # Nothing new in the lake: the next nightly run trains nothing.
    again = retrain.retrain(settings, work_dir=tmp_path / "c", epochs=2)
    assert again["status"] == "skipped" and "unchanged" in again["reason"]
    assert again["dataset"]["new_since_active"]["n"] == 0
    assert again["report_md"].startswith("**Nothing trained**: labelled data unchanged")
    # Every run is on record, skipped ones too, for SQL and the Models page.
    with db.connect(settings.db_url) as conn:
        runs = db.fetch_dicts(
            conn, "SELECT status, version, run_by FROM artclf.retrain_runs ORDER BY id"
        )
    assert [r["status"] for r in runs] == ["rejected", "promoted", "skipped"]
    assert runs[0]["version"] == refused["version"] and runs[2]["version"] is None
    assert runs[0]["run_by"].startswith("cli:")
