"""End to end: objects in a real S3 bucket -> rows in a real PostgreSQL, with the real model.

Every object dropped must end in exactly one recorded state and one place in the lake:
catalogued (catalog/<label>/), duplicate of N (duplicates/), quarantined with a reason
(quarantine/), or failed and retryable (still in incoming/).
"""

from __future__ import annotations

import urllib.parse

import imagegen
import pytest

from artclf_core.catalogue import artworks, db, ingest_log, registry
from artclf_core.images.decode import Limits
from artclf_core.ingest.batch import CPU_STAGES, Summary
from artclf_core.ingest.ingestor import Ingestor
from artclf_core.lake import s3 as s3lib

#: Larger than every good fixture, smaller than imagegen's oversized file.
LIMITS = Limits(max_bytes=260_000)
N_GOOD = 24


def put(client, bucket: str, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)


def keys(client, bucket: str, prefix: str) -> list[str]:
    return [r.key for page in s3lib.iter_pages(client, bucket, prefix) for r in page]


def log_by_key(settings) -> dict[str, dict]:
    with db.connect(settings.db_url) as conn:
        rows = db.fetch_dicts(conn, "SELECT * FROM artclf.ingest_log ORDER BY id")
    return {r["key"]: r for r in rows}


def table_counts(settings) -> tuple[int, int]:
    with db.connect(settings.db_url) as conn:
        return (
            conn.execute("SELECT count(*) FROM artclf.artworks").fetchone()[0],
            conn.execute("SELECT count(*) FROM artclf.ingest_log").fetchone()[0],
        )


@pytest.fixture
def mixed_drop(clean, model):
    """A mixed batch: good images, exact and near copies, and every kind of bad input."""
    settings = clean
    client = s3lib.client(settings)
    good = {
        f"incoming/a/art{i:02d}.jpg": imagegen.encode(imagegen.make_artwork(i), quality=90)
        for i in range(N_GOOD)
    }
    exact = {
        "incoming/copies/exact_of_00.jpg": good["incoming/a/art00.jpg"],
        "incoming/copies/exact_of_01.jpg": good["incoming/a/art01.jpg"],
    }
    near = {
        f"incoming/copies/near_{name}.img": data
        for name, data in imagegen.near_copies(imagegen.make_artwork(2)).items()
    }
    bad = {f"incoming/bad/{name}.jpg": data for name, (data, _) in imagegen.bad_inputs().items()}
    put(client, settings.bucket, {**good, **exact, **near, **bad})
    return settings, client, good, exact, near, bad


def test_mixed_batch_lands_every_object_in_its_place(mixed_drop, model):
    settings, client, good, exact, near, bad = mixed_drop
    with Ingestor(settings, model=model, limits=LIMITS) as ingestor:
        summary = ingestor.ingest_prefix("incoming/", batch_size=64)
    total = len(good) + len(exact) + len(near) + len(bad)
    assert summary.seen == total
    assert summary.failed == 0, summary.reasons
    assert summary.catalogued == len(good)
    assert summary.duplicates == len(exact) + len(near)
    assert summary.quarantined == len(bad)
    # The CPU account (issue 32): every stage a batch with new artworks goes through, in
    # seconds of the thread that ran it; as_dict carries it for the CLI's --json.
    assert set(summary.cpu) == set(CPU_STAGES), sorted(set(CPU_STAGES) - set(summary.cpu))
    assert all(v >= 0 for v in summary.cpu.values()) and summary.cpu["forward"] > 0
    assert list(summary.as_dict()["cpu"]) == [s for s in CPU_STAGES if s in summary.cpu]
    assert summary.cpu_line().startswith("CPU ms per object: claim ")

    log = log_by_key(settings)
    assert len(log) == total
    expected_reasons = {f"incoming/bad/{n}.jpg": r for n, (_, r) in imagegen.bad_inputs().items()}
    with db.connect(settings.db_url) as conn:
        artworks = {
            r["source_key"]: r
            for r in db.fetch_dicts(
                conn,
                "SELECT a.id, a.source_key, a.location, a.key, a.label, e.embedding,"
                " a.model_version, e.model_version AS embedded_by, a.sha256, a.width, a.height"
                " FROM artclf.artworks AS a"
                " LEFT JOIN artclf.embeddings AS e ON e.artwork_id = a.id",
            )
        }
    for key, row in log.items():
        assert row["finalized"], key
        if key in good:
            assert row["state"] == "catalogued"
            art = artworks[key]
            assert row["artwork_id"] == art["id"]
            assert art["key"] == row["final_key"]
            assert art["key"].startswith(f"catalog/{art['label']}/")
            assert art["model_version"] == art["embedded_by"] == model.version
            assert len(art["embedding"].to_numpy()) == 128
            assert (art["width"], art["height"]) == (320, 240)
        elif key in exact:
            origin = key.replace("copies/exact_of_", "a/art")
            assert row["state"] == "duplicate" and row["duplicate_kind"] == "exact"
            assert row["duplicate_of"] == artworks[origin]["id"]
            assert row["final_key"].startswith("duplicates/")
        elif key in near:
            assert row["state"] == "duplicate", (key, row["reason"])
            assert row["duplicate_of"] == artworks["incoming/a/art02.jpg"]["id"], key
            assert row["duplicate_kind"] in ("near", "exact")
        else:
            assert row["state"] == "quarantined"
            assert row["reason"] == expected_reasons[key], key
            assert row["message"]
            assert row["final_key"].startswith("quarantine/")

    # The lake: nothing left in incoming/, every object exactly once in its place.
    assert keys(client, settings.bucket, "incoming/") == []
    assert len(keys(client, settings.bucket, "catalog/")) == len(good)
    assert len(keys(client, settings.bucket, "duplicates/")) == len(exact) + len(near)
    assert len(keys(client, settings.bucket, "quarantine/")) == len(bad)
    # The trace travels with a quarantined object.
    qkey = log["incoming/bad/html_named_jpg.jpg"]["final_key"]
    meta = client.head_object(Bucket=settings.bucket, Key=qkey)["Metadata"]
    assert meta["artclf-state"] == "quarantined" and meta["artclf-reason"] == "not_an_image"


def test_rerun_is_a_no_op(mixed_drop, model):
    settings, client, *_ = mixed_drop
    with Ingestor(settings, model=model, limits=LIMITS) as ingestor:
        ingestor.ingest_prefix("incoming/")
        before = table_counts(settings)
        lake = sorted(keys(client, settings.bucket, ""))
        again = ingestor.ingest_prefix("incoming/")
    assert again.seen == 0 and again.processed == 0
    assert table_counts(settings) == before
    assert sorted(keys(client, settings.bucket, "")) == lake


def test_redrop_of_a_catalogued_image_is_an_exact_duplicate(clean, model):
    settings = clean
    client = s3lib.client(settings)
    data = imagegen.encode(imagegen.make_artwork(50))
    put(client, settings.bucket, {"incoming/a.jpg": data})
    with Ingestor(settings, model=model) as ingestor:
        assert ingestor.ingest_prefix().catalogued == 1
        put(client, settings.bucket, {"incoming/a.jpg": data})  # same key, same bytes, later
        second = ingestor.ingest_prefix()
    assert second.duplicates == 1
    states = sorted(r["state"] for r in log_by_key_rows(settings))
    assert states == ["catalogued", "duplicate"]


def log_by_key_rows(settings) -> list[dict]:
    with db.connect(settings.db_url) as conn:
        return db.fetch_dicts(conn, "SELECT * FROM artclf.ingest_log ORDER BY id")


def test_failed_batch_is_not_committed_and_is_retried(clean, model):
    """A batch that fails its quality checks writes no artwork; the objects stay in
    incoming/ as failed (retryable) and the next run catalogues them."""
    from artclf_core.ingest.quality import QualityResult

    settings = clean
    client = s3lib.client(settings)
    put(
        client,
        settings.bucket,
        {
            f"incoming/r{i}.png": imagegen.encode(imagegen.make_artwork(100 + i), "PNG")
            for i in range(5)
        },
    )
    put(client, settings.bucket, {"incoming/bad.jpg": b"<html></html>"})

    def reject(rows):
        return QualityResult(False, ["expect_something(label): unexpected ['x']"])

    with Ingestor(settings, model=model, validate=reject) as ingestor:
        first = ingestor.ingest_prefix()
    assert first.failed == 5 and first.quarantined == 1 and first.catalogued == 0
    assert table_counts(settings)[0] == 0
    assert len(keys(client, settings.bucket, "incoming/")) == 5
    assert keys(client, settings.bucket, "catalog/") == []  # uncommitted copies removed
    failed = [r for r in log_by_key_rows(settings) if r["state"] == "failed"]
    assert {r["reason"] for r in failed} == {"quality_check_failed"}
    assert all(r["attempts"] == 1 for r in failed)

    with Ingestor(settings, model=model) as ingestor:
        second = ingestor.ingest_prefix()
    assert second.catalogued == 5 and second.seen == 5
    assert keys(client, settings.bucket, "incoming/") == []
    assert all(
        r["attempts"] == 2 for r in log_by_key_rows(settings) if r["key"] != "incoming/bad.jpg"
    )


def test_failed_objects_are_parked_after_max_attempts(clean, model):
    from artclf_core.ingest.quality import QualityResult

    settings = clean.with_(max_attempts=2)
    client = s3lib.client(settings)
    put(
        client,
        settings.bucket,
        {"incoming/p.png": imagegen.encode(imagegen.make_artwork(7), "PNG")},
    )
    with Ingestor(
        settings, model=model, validate=lambda rows: QualityResult(False, ["nope"])
    ) as ingestor:
        assert ingestor.ingest_prefix().failed == 1
        assert ingestor.ingest_prefix().failed == 1
        parked = ingestor.ingest_prefix()
        assert parked.failed == 0 and parked.skipped == 1
    with Ingestor(settings, model=model) as ingestor:
        assert ingestor.ingest_prefix(retry_failed=True).catalogued == 1


def test_crash_between_commit_and_delete_is_repaired(clean, model):
    """Kill the run after the catalogue commit, before the sources are deleted: the next run
    finishes the moves and writes nothing twice."""
    settings = clean
    client = s3lib.client(settings)
    put(
        client,
        settings.bucket,
        {f"incoming/c{i}.jpg": imagegen.encode(imagegen.make_artwork(200 + i)) for i in range(6)},
    )

    class Crash(Exception):
        pass

    class CrashingIngestor(Ingestor):
        def _delete_sources(self, moved):
            raise Crash()

    # Two batches of 3: the crash hits the first while the second is claimed and downloading.
    with CrashingIngestor(settings, model=model) as ingestor, pytest.raises(Crash):
        ingestor.ingest_prefix(batch_size=3)
    assert table_counts(settings) == (3, 6)
    assert len(keys(client, settings.bucket, "incoming/")) == 6  # copied, not yet deleted
    with Ingestor(settings, model=model) as ingestor:  # no lease to wait for
        summary = ingestor.ingest_prefix(batch_size=3)
    assert summary.repaired == 3 and summary.catalogued == 3
    assert table_counts(settings) == (6, 6)
    assert keys(client, settings.bucket, "incoming/") == []
    assert len(keys(client, settings.bucket, "catalog/")) == 6
    assert all(r["finalized"] for r in log_by_key_rows(settings))


def test_training_images_are_catalogued_in_place_with_their_label(clean, model):
    settings = clean
    client = s3lib.client(settings)
    put(
        client,
        settings.bucket,
        {
            "training/painting/t1.jpg": imagegen.encode(imagegen.make_artwork(300)),
            "training/sculpture/t2.jpg": imagegen.encode(imagegen.make_artwork(301)),
            "training/sculpture/broken.jpg": b"",
            # A label folder that is not a class, and no folder at all: quarantined, said why.
            "training/paintings/typo.jpg": imagegen.encode(imagegen.make_artwork(302)),
            "training/loose.jpg": imagegen.encode(imagegen.make_artwork(303)),
        },
    )
    with Ingestor(settings, model=model) as ingestor:
        summary = ingestor.ingest_prefix("training/")
        assert ingestor.ingest_prefix("training/").processed == 0
    assert summary.catalogued == 2 and summary.quarantined == 3
    assert summary.reasons == {"empty": 1, "unknown_label": 2}
    log = {r["key"]: r for r in log_by_key_rows(settings)}
    assert "'paintings' is not one" in log["training/paintings/typo.jpg"]["message"]
    assert "no label folder" in log["training/loose.jpg"]["message"]
    assert all(log[k]["final_key"] == k for k in log)  # each stays where it was dropped
    with db.connect(settings.db_url) as conn:
        rows = dict(conn.execute("SELECT key, curated_label FROM artclf.artworks").fetchall())
    assert rows == {
        "training/painting/t1.jpg": "painting",
        "training/sculpture/t2.jpg": "sculpture",
    }
    assert len(keys(client, settings.bucket, "training/")) == 5  # nothing moved


def test_odd_but_valid_images_are_accepted(clean, model):
    settings = clean
    client = s3lib.client(settings)
    odd = {f"incoming/odd/{n}": d for n, d in imagegen.odd_but_good().items()}
    put(client, settings.bucket, odd)
    with Ingestor(settings, model=model) as ingestor:
        summary = ingestor.ingest_prefix()
    assert summary.quarantined == 0 and summary.failed == 0, summary.reasons
    assert summary.catalogued + summary.duplicates == len(odd)


def test_ingest_refuses_output_prefixes(settings, model):
    with Ingestor(settings, model=model) as ingestor, pytest.raises(ValueError, match="incoming"):
        ingestor.ingest_prefix("catalog/")


def test_summary_line():
    s = Summary(seen=3, catalogued=1, duplicates=1, quarantined=1, seconds=1.0)
    assert "catalogued 1 / duplicates 1 / quarantined 1 / failed 0" in s.line()


def test_sweep_then_ingest_queued_ids(clean, model):
    """The event-driven path: a sweep queues objects, workers process queued ids."""
    from artclf_core.ingest.queue import sweep

    settings = clean
    client = s3lib.client(settings)
    put(
        client,
        settings.bucket,
        {f"incoming/q{i}.jpg": imagegen.encode(imagegen.make_artwork(500 + i)) for i in range(6)},
    )
    with db.connect(settings.db_url) as conn:
        assert sweep(client, conn, settings.bucket) == 6
        assert sweep(client, conn, settings.bucket) == 6  # idempotent: still 6 waiting
        ids = ingest_log.open_ids(conn, max_attempts=3)
    assert len(ids) == 6
    with Ingestor(settings, model=model) as ingestor:
        first = ingestor.ingest_log_ids(ids[:3])
        second = ingestor.ingest_log_ids(ids)  # overlapping: the first three are done
    assert first.catalogued == 3 and second.catalogued == 3 and second.skipped == 3
    with db.connect(settings.db_url) as conn:
        assert ingest_log.open_ids(conn, max_attempts=3) == []
        assert sweep(client, conn, settings.bucket) == 0


def test_concurrent_workers_do_not_catalogue_a_copy_twice(clean, model):
    """Worker B de-duplicates its copy against a catalogue that does not have the original
    yet; worker A commits the original before B commits. B must not catalogue the copy."""
    settings = clean
    client = s3lib.client(settings)
    original = imagegen.make_artwork(600)
    put(
        client,
        settings.bucket,
        {
            "incoming/a.jpg": imagegen.encode(original, quality=90),
            "incoming/b.jpg": imagegen.near_copies(original)["resize_150"],
        },
    )
    refs = {
        r.key: r for page in s3lib.iter_pages(client, settings.bucket, "incoming/") for r in page
    }

    class SlowWorker(Ingestor):
        def _commit(self, batch, new_rows):
            with Ingestor(settings, model=model) as other:
                assert other.ingest_objects([refs["incoming/a.jpg"]]).catalogued == 1
            super()._commit(batch, new_rows)

    with SlowWorker(settings, model=model) as b:
        first = b.ingest_objects([refs["incoming/b.jpg"]])
    assert first.catalogued == 0 and first.duplicates == 1
    assert table_counts(settings) == (1, 2)
    rows = {r["key"]: r for r in log_by_key_rows(settings)}
    assert rows["incoming/b.jpg"]["state"] == "duplicate"
    assert rows["incoming/b.jpg"]["duplicate_of"] == rows["incoming/a.jpg"]["artwork_id"]
    assert all(r["finalized"] for r in rows.values())
    # Every object once, in its place: B's early catalog/ copy was removed.
    assert keys(client, settings.bucket, "incoming/") == []
    assert len(keys(client, settings.bucket, "catalog/")) == 1
    assert keys(client, settings.bucket, "duplicates/") == [rows["incoming/b.jpg"]["final_key"]]


def test_near_duplicate_lookup_keeps_to_the_indexes_after_a_truncate(clean):
    """Statistics from a full catalogue, then TRUNCATE (as an operator emptying a test lake
    does) and a few new rows: the planner believes the tables are tiny and, unless told
    otherwise, sorts the whole embeddings partition for every query, a cost that grows with
    the catalogue. The lookup must take its candidates from the HNSW, GIN and primary-key
    indexes whatever the statistics say."""
    import numpy as np
    from catalogue_rows import artwork_row

    from artclf_core import CLASSES

    rng = np.random.default_rng(3)

    def rows(n: int, offset: int) -> list[artworks.ArtworkRow]:
        return [
            artwork_row(
                offset + i,
                label=CLASSES[i % len(CLASSES)],
                embedding=rng.normal(size=128),
                phash=int(rng.integers(-(2**63), 2**63 - 1)),
            )
            for i in range(n)
        ]

    plans: list[str] = []
    with db.connect(clean.db_url) as conn:
        registry.register_model(
            conn, version="test-model", arch="cnn", classes=CLASSES, artifact=None, activate=True
        )
        artworks.insert_artworks(conn, rows(2000, 0))
        conn.commit()
        conn.execute("ANALYZE artclf.artworks")
        conn.execute("ANALYZE artclf.embeddings")
        conn.execute("TRUNCATE artclf.artworks CASCADE")
        new = rows(40, 10_000)
        artworks.insert_artworks(conn, new)
        conn.commit()
        execute = conn.execute

        def explaining(query, params=None, **kw):
            if isinstance(query, str) and "CROSS JOIN LATERAL" in query:
                plan = execute("EXPLAIN " + query, params).fetchall()
                plans.append("\n".join(r[0] for r in plan))
            return execute(query, params, **kw)

        conn.execute = explaining
        found = artworks.find_near(
            conn,
            [r.phash for r in new[:8]],
            [r.dhash for r in new[:8]],
            [r.embedding for r in new[:8]],
            model_version="test-model",
        )
        conn.rollback()
    assert sorted(found) == list(range(8))  # each row finds itself
    assert plans and "Seq Scan" not in plans[0], plans


def test_names_too_long_for_the_lake_are_shortened_not_parked(clean, model):
    """A name the store accepts under incoming/ but not behind catalog/<label>/<hash>- is
    catalogued under a deterministic shorter key; its copy and a bad file with the same kind
    of name land in duplicates/ and quarantine/ the same way. Nothing fails or is parked."""
    settings = clean
    client = s3lib.client(settings)
    long_name = "Ç" * 60 + "x" * 118 + ".jpeg"  # 243 bytes: fits incoming/, not catalog/
    data = imagegen.encode(imagegen.make_artwork(51))
    objects = {
        f"incoming/long/{long_name}": data,
        f"incoming/copy/{long_name}": data,
        f"incoming/bad/{long_name}": b"<html>no</html>",
    }
    put(client, settings.bucket, objects)
    with Ingestor(settings, model=model) as ingestor:
        summary = ingestor.ingest_prefix()
    assert (summary.catalogued, summary.duplicates, summary.quarantined, summary.failed) == (
        1,
        1,
        1,
        0,
    )
    rows = log_by_key_rows(settings)
    assert all(r["finalized"] for r in rows)
    for row in rows:
        final = row["final_key"]
        assert len(final.rsplit("/", 1)[1].encode()) <= s3lib.MAX_PART_BYTES, final
        assert final.endswith(".jpeg")
        # Only the catalogue's 17-byte prefix pushes this name over; "<log id>-" does not.
        assert ("~" in final) == final.startswith("catalog/"), final
        head = client.head_object(Bucket=settings.bucket, Key=final)
        # S3 metadata is ASCII: the trace percent-encodes the key.
        assert urllib.parse.unquote(head["Metadata"]["artclf-source-key"]) == row["key"]
    assert keys(client, settings.bucket, "incoming/") == []


def test_fit_key_is_deterministic_and_keeps_short_names():
    assert s3lib.fit_key("catalog/painting/", "ab-", "plate 12.jpg") == (
        "catalog/painting/ab-plate 12.jpg"
    )
    a = s3lib.fit_key("catalog/painting/", "0" * 16 + "-", "é" * 200 + "-a.tif")
    b = s3lib.fit_key("catalog/painting/", "0" * 16 + "-", "é" * 200 + "-b.tif")
    assert a != b and a.endswith(".tif")
    assert a == s3lib.fit_key("catalog/painting/", "0" * 16 + "-", "é" * 200 + "-a.tif")
    assert len(a.rsplit("/", 1)[1].encode()) <= 255
    a.encode().decode("utf-8")  # cut on a character boundary
    deep = s3lib.fit_key("quarantine/" + "d/" * 450, "7-", "n" * 200 + ".png")
    assert len(deep.encode()) <= s3lib.MAX_KEY_BYTES


#: Every ASCII control character, DEL and a lone "%": S3 (and SeaweedFS) accept most of them
#: in a key, obstore's path parser refuses them (issue 30).
ODD_CHARACTERS = [chr(c) for c in range(0x20)] + ["\x7f", "%"]


def test_keys_with_control_characters_and_a_lone_percent_reach_a_final_state(clean, model):
    """Each key the store accepts is catalogued (a distinct picture each) or, under
    training/<label>/, catalogued in place; none is parked as failed for a reason that no
    retry can fix. Keys the store itself refuses cannot be dropped and are not in the log."""
    settings = clean
    client = s3lib.client(settings)
    accepted: dict[str, str] = {}
    refused: list[str] = []
    for i, ch in enumerate(ODD_CHARACTERS):
        for prefix in ("incoming/odd/", "training/painting/odd/"):
            key = f"{prefix}a{ch}b{i:02d}.jpg"
            seed = 7000 + 2 * i + prefix.startswith("training")
            try:
                client.put_object(
                    Bucket=settings.bucket,
                    Key=key,
                    Body=imagegen.encode(imagegen.make_artwork(seed)),
                )
            except Exception:  # noqa: BLE001 - the store's refusal: nothing was dropped
                refused.append(repr(ch))
                continue
            accepted[key] = prefix
    assert accepted, "the store accepted none of the keys"
    with Ingestor(settings, model=model) as ing:
        first = ing.ingest_prefix("incoming/")
        second = ing.ingest_prefix("training/")
    assert first.failed == 0 and second.failed == 0, (first.reasons, second.reasons)
    with db.connect(settings.db_url) as conn:
        rows = dict(conn.execute("SELECT key, state FROM artclf.ingest_log").fetchall())
    for key in accepted:
        assert rows.get(key) == "catalogued", (repr(key), rows.get(key))
    assert keys(client, settings.bucket, "incoming/") == []
    # Each moved object is at its final key with its trace; training/ objects stay in place.
    with db.connect(settings.db_url) as conn:
        finals = [r[0] for r in conn.execute("SELECT key FROM artclf.artworks")]
    assert len(finals) == len(accepted)
    for final in finals:
        meta = client.head_object(Bucket=settings.bucket, Key=final)["Metadata"]
        assert final.startswith("training/") or "artclf-source-key" in meta, repr(final)
    print(f"accepted {len(accepted)} keys, the store refused {len(refused)}: {refused}")


def test_obstore_safe_keys():
    assert s3lib.obstore_safe("incoming/a b é.jpg")
    for key in (
        "incoming/a\tb.jpg",
        "incoming/a%41.jpg",
        "incoming//a.jpg",
        "incoming/./a",
        "incoming/a\x7f.jpg",
        "incoming/a\x00.jpg",
    ):
        assert not s3lib.obstore_safe(key), repr(key)
