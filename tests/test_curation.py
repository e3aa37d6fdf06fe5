"""Learning a collection from its curators: the collection of every artwork, ``artclf label
DIR``, curator labels reaching the retrain as their own family, and the gate's curator side
(real stack; fixture images made in code)."""

from __future__ import annotations

import json
from pathlib import Path

import imagegen
import numpy as np
import pytest

from artclf_core import CLASSES
from artclf_core.catalogue import db
from artclf_core.ingest import labelling
from artclf_core.ingest.ingestor import Ingestor
from artclf_core.lake import s3 as s3lib
from artclf_core.lifecycle import curator_labels, lake_dataset, promotion, retrain
from artclf_core.lifecycle.source_cv import source_family


@pytest.mark.parametrize(
    ("key", "collection"),
    [
        ("incoming/museumx/a.jpg", "museumx"),
        ("incoming/museumx/sub/a.jpg", "museumx"),
        ("incoming/a.jpg", None),
        ("incoming/rijks__a.jpg", "rijks"),
        ("training/painting/museumy/a.jpg", "museumy"),
        ("training/painting/painting0__01.png", "painting0"),
        ("training/painting/a.png", None),
        ("incoming/__a.jpg", None),
    ],
)
def test_collection_of_a_drop_key(settings, key: str, collection: str | None) -> None:
    with db.connect(settings.db_url) as conn:
        assert conn.execute("SELECT artclf.collection_of(%s)", (key,)).fetchone()[0] == collection


def _put(settings, key: str, seed: int) -> None:
    client = s3lib.client(settings)
    data = imagegen.encode(imagegen.make_artwork(seed), quality=90)
    client.put_object(Bucket=settings.bucket, Key=key, Body=data)


def _write(folder: Path, label: str, name: str, seed: int) -> Path:
    (folder / label).mkdir(parents=True, exist_ok=True)
    path = folder / label / name
    path.write_bytes(imagegen.encode(imagegen.make_artwork(seed), quality=90))
    return path


def _state(settings) -> tuple:
    with db.connect(settings.db_url) as conn:
        arts = conn.execute(
            "SELECT id, curated_label, curated_by, collection FROM artclf.artworks ORDER BY id"
        ).fetchall()
        reviews = conn.execute("SELECT count(*) FROM artclf.label_reviews").fetchone()[0]
        log = conn.execute("SELECT count(*) FROM artclf.ingest_log").fetchone()[0]
    keys = sorted(
        r.key
        for page in s3lib.iter_pages(s3lib.client(settings), settings.bucket, "")
        for r in page
    )
    return arts, reviews, log, keys


def test_label_refuses_a_folder_that_is_not_a_class_and_changes_nothing(
    clean, model, tmp_path, capsys
):
    _put(clean, "incoming/museumx/known.jpg", 1)
    with Ingestor(clean, model=model) as ing:
        ing.ingest_prefix("incoming/")
    folder = tmp_path / "museumx"
    _write(folder, "painting", "new.jpg", 2)
    _write(folder, "paintings", "typo.jpg", 3)  # not a class
    before = _state(clean)
    with pytest.raises(ValueError, match=r"paintings/ is not a class folder"):
        labelling.label_folder(clean, folder, curator="alice")
    assert _state(clean) == before


def test_label_a_folder_of_catalogued_and_new_pictures(clean, model, tmp_path):
    settings = clean
    # Two pictures are in the catalogue already (one dropped under a collection).
    _put(settings, "incoming/museumx/one.jpg", 11)
    _put(settings, "incoming/two.jpg", 12)
    with Ingestor(settings, model=model) as ing:
        assert ing.ingest_prefix("incoming/").catalogued == 2
    folder = tmp_path / "museumx"
    _write(folder, "painting", "one.jpg", 11)  # catalogued
    _write(folder, "sculpture", "two.jpg", 12)  # catalogued, no collection yet
    _write(folder, "engraving", "three.jpg", 13)  # new
    (folder / "engraving" / "notes.txt").write_text("not a picture")
    # A near copy (re-encoded) of one.jpg: it labels the artwork it copies.
    near = imagegen.encode(imagegen.make_artwork(11), quality=60)
    (folder / "painting" / "one-rescanned.jpg").write_bytes(near)
    summary = labelling.label_folder(settings, folder, curator="alice", model=model)
    assert summary.confirmed + summary.corrected == 3, summary
    assert summary.new == 1 and summary.skipped == ["engraving/notes.txt"]
    assert summary.via_duplicate == 1  # the rescan labels one.jpg's artwork
    assert not summary.not_labelled, summary.not_labelled
    with db.connect(settings.db_url) as conn:
        rows = db.fetch_dicts(
            conn,
            "SELECT source_key, curated_label, curated_by, collection FROM artclf.artworks"
            " ORDER BY source_key",
        )
    by_key = {r["source_key"]: r for r in rows}
    assert by_key["incoming/museumx/one.jpg"]["curated_label"] == "painting"
    assert by_key["incoming/two.jpg"]["curated_label"] == "sculpture"
    assert by_key["incoming/museumx/engraving/three.jpg"]["curated_label"] == "engraving"
    assert {r["curated_by"] for r in rows} == {"alice"}
    # The default collection is the drop prefix; a picture dropped without one keeps none.
    assert by_key["incoming/museumx/engraving/three.jpg"]["collection"] == "museumx"
    assert by_key["incoming/two.jpg"]["collection"] is None
    # Running it again changes nothing: no second review row, no second drop.
    before = _state(settings)
    again = labelling.label_folder(settings, folder, curator="alice", model=model)
    assert again.unchanged == 3 and again.confirmed + again.corrected == 0
    assert _state(settings) == before
    # An explicit collection is set on every labelled artwork.
    labelling.label_folder(settings, folder, curator="alice", collection="museumx", model=model)
    with db.connect(settings.db_url) as conn:
        assert {r[0] for r in conn.execute("SELECT collection FROM artclf.artworks")} == {"museumx"}


def test_label_command_refuses_with_exit_2(stack, clean, tmp_path):
    """The command: one line saying why, exit 2 (refused, as the README's table says)."""
    from test_cli import run

    _, env = stack
    folder = tmp_path / "c"
    _write(folder, "statues", "x.jpg", 5)
    bad = run(env, "label", str(folder))
    assert bad.returncode == 2, bad.stderr
    assert "statues/ is not a class folder" in bad.stderr and "Nothing was labelled" in bad.stderr
    missing = run(env, "label", str(tmp_path / "missing"))
    assert missing.returncode == 2 and "no such folder" in missing.stderr


def test_curator_labels_reach_the_retrain_as_their_own_family(clean, model, tmp_path):
    settings = clean
    client = s3lib.client(settings)
    for i in range(3):
        _put(settings, f"incoming/museumx/p{i}.jpg", 40 + i)
    client.put_object(
        Bucket=settings.bucket,
        Key="training/painting/shelf__p.png",
        Body=imagegen.labelled_png("painting", 1),
    )
    with Ingestor(settings, model=model) as ing:
        ing.ingest_prefix("incoming/")
        ing.ingest_prefix("training/")
    with db.connect(settings.db_url) as conn:
        ids = [
            r[0]
            for r in conn.execute("SELECT id FROM artclf.artworks WHERE collection = 'museumx'")
        ]
        for aid in ids:
            conn.execute("SELECT artclf.confirm_label(%s, 'painting', 'alice')", (aid,))
        conn.commit()
    out = lake_dataset.export_training_set(settings, tmp_path / "ds")
    names = sorted(p.name for p in (tmp_path / "ds" / "painting").iterdir())
    assert names == ["museumx__p0.jpg", "museumx__p1.jpg", "museumx__p2.jpg", "shelf__p.png"]
    assert out["per_source"] == {"museumx": 3, "shelf": 1}
    labels = curator_labels.read(tmp_path / "ds")
    assert sorted(labels) == [f"painting/museumx__p{i}.jpg" for i in range(3)]
    assert {lab.collection for lab in labels.values()} == {"museumx"}
    assert all(lab.curator == "alice" and lab.new for lab in labels.values())
    assert source_family("museumx") == "museumx"  # held out as one family


def test_collection_cv_never_scores_an_image_it_trained_on():
    """Images that only memorisation could get right (each its own random point): in-sample
    a flexible head gets them all, out of fold it is at chance, so no gain is claimed."""
    rng = np.random.default_rng(0)
    n_other, n_cur, d = 200, 40, 60
    y_other = np.arange(n_other) % 5
    centres = rng.normal(0, 3, (5, d))
    x_other = centres[y_other] + rng.normal(0, 1, (n_other, d))
    x_cur = rng.normal(0, 1, (n_cur, d))
    y_cur = rng.integers(0, 5, n_cur)
    x = np.vstack([x_other, x_cur])
    y = np.concatenate([y_other, y_cur])
    sources = ["shared"] * n_other + ["museumx"] * n_cur
    curated = np.array([False] * n_other + [True] * n_cur)
    keys = [f"k{i}" for i in range(len(y))]
    report, oof = curator_labels.collection_cv(
        x, y, sources, curated, keys, classes=CLASSES, lam=1e-6, boost=np.where(curated, 50, 1)
    )
    assert set(oof) == set(np.flatnonzero(curated))
    assert report["museumx"]["folds"] == 5
    assert report["museumx"]["balanced_accuracy"] < 0.5  # chance is 0.2
    # Augmented views (views, N, D) only add training rows: the same images are scored.
    _, oof_views = curator_labels.collection_cv(
        np.stack([x, x + rng.normal(0, 0.5, x.shape)]),
        y,
        sources,
        curated,
        keys,
        classes=CLASSES,
        lam=1e-6,
        boost=np.where(curated, 50, 1),
    )
    assert set(oof_views) == set(oof)


def _report(ba: float, f1: float = 0.7) -> dict:
    return {
        "accuracy": ba,
        "balanced_accuracy": ba,
        "per_class": {c: {"f1": f1} for c in CLASSES},
        "n": 50,
    }


def test_the_gate_refuses_a_candidate_that_only_wins_where_it_trained():
    policy = promotion.GatePolicy()
    held = promotion.decide(_report(0.60), _report(0.60), policy)  # no gain on unseen families
    # The curator side, out of fold: no better than the active model.
    same = promotion.collection_evidence(
        [0, 1, 2, 3], [0, 1, 0, 0], [0, 1, 0, 0], ["museumx"] * 4, CLASSES
    )
    refused = promotion.with_collections(held, same, policy)
    assert not refused.promote and "no side gains" in refused.summary()
    # No new curator labels and no unseen family: nothing to judge on, refused.
    assert not promotion.with_collections(None, None, policy).promote
    # Out of fold better on the curators' collection, no worse elsewhere: promoted, and both
    # sides are recorded.
    better = promotion.collection_evidence(
        [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 0, 0], ["museumx"] * 4, CLASSES
    )
    promoted = promotion.with_collections(held, better, policy)
    assert promoted.promote, promoted.summary()
    assert promoted.as_dict()["collections"]["per_collection"]["museumx"]["candidate"] == 1.0
    assert "held-out families" in promoted.summary()
    # Better on the collection but worse on the unseen families: refused.
    worse = promotion.decide(_report(0.50), _report(0.60), policy)
    assert not promotion.with_collections(worse, better, policy).promote
    json.dumps(promoted.as_dict())


@pytest.mark.slow
def test_retraining_learns_a_curator_collection_and_the_gate_records_both_sides(
    clean, model, tmp_path
):
    """Labelled drops plus a museum's curator labels: the nightly retrain trains on the
    collection as its own source and the gate weighs the labels the active model never saw
    (out of fold for the candidate) beside the held-out families, and records both; a second
    collection nobody labelled is learnt from its own images (self-training) and recorded."""
    settings = clean
    client = s3lib.client(settings)
    for label in CLASSES:
        for i in range(8):
            client.put_object(
                Bucket=settings.bucket,
                Key=f"training/{label}/{label}{i % 2}__{i:02d}.png",
                Body=imagegen.labelled_png(label, i),
            )
    for i in range(10):
        _put(settings, f"incoming/museumx/m{i:02d}.jpg", 500 + i)
    for i in range(6):
        _put(settings, f"incoming/museumz/z{i:02d}.jpg", 600 + i)
    with Ingestor(settings, model=model) as ing:
        ing.ingest_prefix("training/")
        ing.ingest_prefix("incoming/")
    with db.connect(settings.db_url) as conn:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM artclf.artworks WHERE collection = 'museumx' ORDER BY id"
            )
        ]
        for n, aid in enumerate(ids):  # the curator: two classes, alternating
            label = ("painting", "sculpture")[n % 2]
            conn.execute("SELECT artclf.confirm_label(%s, %s, 'alice')", (aid, label))
        conn.commit()
    out = retrain.retrain(settings, work_dir=tmp_path / "r")
    assert out["dataset"]["per_source"]["museumx"] == 10
    decision = out["decision"]
    evidence = decision["collections"]
    assert evidence is not None and evidence["n"] == 10, decision
    assert set(evidence["per_collection"]) == {"museumx"}
    assert any("curator collections" in r for r in decision["reasons"])
    with db.connect(settings.db_url) as conn:
        (metrics,) = conn.execute(
            "SELECT metrics->'collections' FROM artclf.model_versions WHERE version = %s",
            (out["version"],),
        ).fetchone()
    assert metrics["museumx"]["n"] == 10 and metrics["museumx"]["folds"] == 5
    # museumz, catalogued but never labelled: exported beside the labelled set and self-trained
    # on (its labels never asked for); its images are not labelled data.
    assert out["dataset"]["unlabelled"] == {"n": 6, "per_collection": {"museumz": 6}}
    assert "museumz" not in out["dataset"]["per_source"]
    assert "**Uncurated artworks self-trained on**: 6 of 1 collection(s)" in out["report_md"]
    assert "| museumz | 6 |" in out["report_md"]  # with its make-up as the candidate reads it
    assert "validation:" not in out["report_md"]
    with db.connect(settings.db_url) as conn:
        (adapted,) = conn.execute(
            "SELECT metrics->'self_training' FROM artclf.model_versions WHERE version = %s",
            (out["version"],),
        ).fetchone()
    assert adapted["collections"]["museumz"]["images"] == 6
    # its class make-up as the candidate reads it (label_shift's EM priors), shown to owners
    assert abs(sum(adapted["collections"]["museumz"]["priors"].values()) - 1) < 1e-3
    assert adapted["label_shift"] is True
    assert len(adapted["pseudo_labels_per_round"]) >= 1
    assert adapted["cross_validation"]["folds"] >= 2
    # The sample a night self-trains on: the first of each collection by SHA-256, so a
    # smaller share is a prefix of a larger one.
    with db.connect(settings.db_url) as conn:
        six = lake_dataset.unlabelled_artworks(conn)
        three = lake_dataset.unlabelled_artworks(conn, per_collection=3)
    assert len(six) == 6 and {r["collection"] for r in six} == {"museumz"}
    assert sorted(r["sha256"] for r in three) == sorted(r["sha256"] for r in six)[:3]


@pytest.mark.parametrize(
    ("collections", "each"),
    [(0, 1000), (1, 1000), (20, 1000), (40, 500), (200, 100), (1000, 100)],
)
def test_many_collections_share_the_nightly_self_training_budget(collections, each):
    """An equal share of 20,000 uncurated artworks, between 100 and 1,000 per collection:
    the nightly run stays near 18 minutes on 2 cores however many collections the lake has
    (bench/retrain.py: about 0.6 minutes per 1,000)."""
    assert lake_dataset.unlabelled_quota(collections) == each
