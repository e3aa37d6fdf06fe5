"""The ``artclf_ingest`` DAG: it parses, and ``dag.test()`` runs it against the real stack.

Every ``dag.test()`` runs in a fresh Python process, with this file as the harness
(``python tests/test_dags.py RESULT.json [options]``), because:

* Airflow fixes its settings (``AIRFLOW_HOME``, the metadata database) when it is first
  imported, and other test modules import it with settings of their own;
* a test can then SIGKILL a task in the middle of a batch, and two runs can really overlap.

Each process gets its own copy of a metadata database migrated once per session (SQLite, as
in the embedded default; a copy is a file copy, a migration ten seconds). Connections are
Airflow's own ``AIRFLOW_CONN_ARTCLF_DB``/``_S3`` environment variables (set with monkeypatch,
inherited by the harness) pointing at the conftest ``stack``. Faults are injected by
replacing ``artclf_core.ingest.ingestor.Ingestor`` with a subclass before the run: the DAG imports
it when a task starts, so it gets the subclass. Nothing else is replaced.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imagegen
import pytest

from artclf_core.catalogue import db, registry
from artclf_core.lake import s3 as s3lib
from artclf_core.model.archs import ARCHS

ROOT = Path(__file__).resolve().parents[1]
DAGS = ROOT / "dags"
PLUGINS = ROOT / "plugins"
DAG_ID = "artclf_ingest"
#: Seconds one harness run may take (imports, model load, a few batches, retries).
RUN_TIMEOUT = 300


# --------------------------------------------------------------------------- parsing


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    """The repository's DAG folder, parsed as the DAG processor does (no examples)."""
    if "airflow" not in sys.modules and "AIRFLOW_HOME" not in os.environ:
        # Importing Airflow must not write into ~/airflow.
        os.environ["AIRFLOW_HOME"] = str(tmp_path_factory.mktemp("airflow-parse"))
    if str(PLUGINS) not in sys.path:
        sys.path.insert(0, str(PLUGINS))  # as Airflow does with its plugins folder
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS), safe_mode=False)


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {DAG_ID, "artclf_retrain", "artclf_reembed"} <= set(dagbag.dags)


def test_every_task_retries(dagbag):
    """A database or S3 blip must not fail a run that a second try would finish."""
    for dag_id in (DAG_ID, "artclf_retrain", "artclf_reembed"):
        for t in dagbag.dags[dag_id].tasks:
            assert t.retries >= 1, f"{dag_id}.{t.task_id} has no retries"


def test_retraining_and_reembedding_dags_shape(dagbag):
    retrain = dagbag.dags["artclf_retrain"]
    assert set(retrain.task_ids) == {"train_and_gate", "promoted", "announce_promotion"}
    assert retrain.catchup is False and retrain.max_active_runs == 1
    assert retrain.timetable.expression in ("@daily", "0 0 * * *")
    assert [o.name for o in retrain.get_task("announce_promotion").outlets] == ["artclf_models"]
    assert {"arch", "min_gain", "max_f1_drop", "force", "epochs"} == set(retrain.params.keys())
    # the trigger form offers exactly the architectures artclf_core builds
    assert retrain.params.get_param("arch").schema["enum"] == [None, *ARCHS]
    reembed = dagbag.dags["artclf_reembed"]
    assert [a.name for a in reembed.timetable.asset_condition.objects] == ["artclf_models"]
    assert reembed.max_active_runs == 1 and reembed.get_task("embed_batch").is_mapped
    assert reembed.get_task("embed_batch").retries >= 2
    for dag in (retrain, reembed):
        assert "artclf" in dag.tags and "rollback" in dag.doc_md
        for task in dag.tasks:
            assert task.python_callable.__doc__, task.task_id


PARSE_ONLY = """
import sys
sys.path.insert(0, sys.argv[1])
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[2], safe_mode=False)
assert not bag.import_errors, bag.import_errors
heavy = ("tensorflow", "keras", "artclf_core.ingest.ingestor", "great_expectations")
print(sorted(m for m in heavy if m in sys.modules))
"""


def test_dag_file_does_not_import_the_pipeline_at_parse_time(tmp_path):
    """The DAG processor re-parses every few seconds: no TensorFlow, no model at parse time."""
    out = subprocess.run(
        [sys.executable, "-c", PARSE_ONLY, str(PLUGINS), str(DAGS)],
        env=_airflow_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_dag_shape_retries_and_docs(dagbag):
    from airflow.sdk import Asset

    dag = dagbag.dags[DAG_ID]
    assert set(dag.task_ids) == {"plan", "ingest_batch", "report"}
    # Event-driven on the incoming asset, never on a clock, no catch-up.
    assets = list(dag.timetable.asset_condition.objects)
    assert [a.name for a in assets] == ["artclf_incoming"]
    assert isinstance(assets[0], Asset) and assets[0].watchers
    assert dag.catchup is False
    assert 2 <= dag.max_active_runs <= 4
    assert "artclf" in dag.tags
    # The operator's manual is on the DAG page.
    for words in ("retry_failed", "prefix", "artclf report --state failed", "Clear"):
        assert words in dag.doc_md
    assert set(dag.params.keys()) == {"prefix", "retry_failed", "batch_size"}
    assert dag.params["batch_size"] == 256 and dag.params["retry_failed"] is False
    # Batches fan out over workers, with retries and exponential backoff.
    ingest = dag.get_task("ingest_batch")
    assert ingest.is_mapped
    assert ingest.retries >= 2 and ingest.retry_exponential_backoff >= 2
    assert ingest.max_retry_delay is not None
    assert 1 <= ingest.max_active_tis_per_dag <= 4
    assert dag.get_task("plan").downstream_task_ids == {"ingest_batch", "report"}
    assert dag.get_task("report").trigger_rule == "all_done"
    for task in dag.tasks:  # each says what it is for
        assert task.python_callable.__doc__, task.task_id


def test_the_trigger_form_rejects_output_prefixes(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags[DAG_ID].params)
    params["prefix"] = "training/"
    params["prefix"] = "incoming/2024/"
    with pytest.raises(ParamValidationError):
        params["prefix"] = "catalog/"
    with pytest.raises(ParamValidationError):
        params["batch_size"] = 0


# --------------------------------------------------------------------------- dag.test()


@pytest.fixture(scope="session")
def migrated_airflow_home(tmp_path_factory) -> Path:
    """An AIRFLOW_HOME whose SQLite metadata database is migrated: the template every run
    copies."""
    home = tmp_path_factory.mktemp("airflow-template")
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=_airflow_env(home),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return home


def _airflow_env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AIRFLOW__") and k not in ("AIRFLOW_HOME", "AIRFLOW_CONFIG")
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "GX_ANALYTICS_ENABLED": "False",
        }
    )
    return env


@pytest.fixture
def lake(clean, stack, monkeypatch):
    """An empty catalogue and bucket, and the Airflow connections to them in the env."""
    from artclf_core.embedded.airflow_config import airflow_connections

    _, env = stack
    for key, value in airflow_connections(env).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ARTCLF_BUCKET", env["ARTCLF_BUCKET"])  # the asset's bucket, at parse
    monkeypatch.delenv("ARTCLF_MODEL", raising=False)
    return clean, s3lib.client(clean)


class Harness:
    """Starts ``dag.test()`` runs in subprocesses, each on its own copy of the metadata DB."""

    def __init__(self, template: Path, tmp: Path) -> None:
        self.template, self.tmp, self.n = template, tmp, 0

    def start(self, *args: str, **env: str) -> tuple[subprocess.Popen, Path, Path]:
        self.n += 1
        home = self.tmp / f"airflow-{self.n}"
        shutil.copytree(self.template, home)
        result, log = self.tmp / f"result-{self.n}.json", self.tmp / f"run-{self.n}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, __file__, str(result), *args],
                env={**_airflow_env(home), **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return proc, result, log

    def finish(self, proc: subprocess.Popen, result: Path, log: Path) -> dict | None:
        """The run's result (None when the process was killed), after it exited."""
        try:
            proc.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"dag.test() timed out:\n{_tail(log)}") from None
        if proc.returncode == -signal.SIGKILL:
            return None
        assert proc.returncode == 0 and result.exists(), _tail(log)
        return {**json.loads(result.read_text()), "log": str(log)}

    def run(self, *args: str, **env: str) -> dict:
        out = self.finish(*self.start(*args, **env))
        assert out is not None
        return out


def _tail(log: Path, n: int = 6000) -> str:
    return log.read_text(errors="replace")[-n:]


@pytest.fixture
def harness(migrated_airflow_home, tmp_path):
    return Harness(migrated_airflow_home, tmp_path)


def tis(result: dict, task_id: str) -> list[dict]:
    return sorted(
        (ti for ti in result["tis"] if ti["task_id"] == task_id), key=lambda t: t["map_index"]
    )


def log_rows(settings) -> dict[str, dict]:
    with db.connect(settings.db_url) as conn:
        rows = db.fetch_dicts(conn, "SELECT * FROM artclf.ingest_log ORDER BY id")
    return {r["key"]: r for r in rows}


def artworks(settings) -> dict[str, dict]:
    with db.connect(settings.db_url) as conn:
        rows = db.fetch_dicts(conn, "SELECT id, key, source_key, label FROM artclf.artworks")
    return {r["source_key"]: r for r in rows}


def keys(client, bucket: str, prefix: str = "") -> list[str]:
    return sorted(r.key for page in s3lib.iter_pages(client, bucket, prefix) for r in page)


def put(client, bucket: str, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)


def art(seed: int) -> bytes:
    return imagegen.encode(imagegen.make_artwork(seed), quality=90)


BAD = ("html_named_jpg", "truncated_jpeg", "empty", "bomb_png_over_our_limit", "too_small_10x10")


def mixed_drop(seed: int) -> tuple[dict, dict, dict, dict]:
    """Good images, an exact and two near copies of them, and bad inputs of five kinds."""
    good = {f"incoming/a/art{seed + i}.jpg": art(seed + i) for i in range(6)}
    exact = {"incoming/copies/exact.jpg": good[f"incoming/a/art{seed}.jpg"]}
    copies = imagegen.near_copies(imagegen.make_artwork(seed + 1))
    near = {f"incoming/copies/near_{n}.img": copies[n] for n in ("jpeg_q60", "resize_50")}
    cases = imagegen.bad_inputs()
    bad = {f"incoming/bad/{n}.jpg": cases[n][0] for n in BAD}
    return good, exact, near, bad


def test_a_mixed_drop_lands_every_object_in_its_place_and_failures_are_visible(lake, harness):
    """Good, duplicate and bad images each end in their state and place; an object that fails
    for good is parked and fails the run, visibly; a retry_failed run takes it again, and a
    prefix run catalogues labelled images in place."""
    settings, client = lake
    bucket = settings.bucket
    good, exact, near, bad = mixed_drop(700)
    vanishing = "incoming/z/vanishing.jpg"
    put(client, bucket, {**good, **exact, **near, **bad, vanishing: art(750)})

    # One attempt per object, and the object is deleted between plan and ingest: it fails
    # (object_missing) and is parked at once.
    first = harness.run(
        "--conf",
        json.dumps({"batch_size": 4}),
        "--delete-before-ingest",
        vanishing,
        ARTCLF_MAX_ATTEMPTS="1",
    )
    assert first["state"] == "failed", _tail(Path(first["log"]))
    assert [t["state"] for t in tis(first, "plan")] == ["success"]
    batches = tis(first, "ingest_batch")
    assert len(batches) == 4 and {t["state"] for t in batches} == {"success"}
    assert all(t["try_number"] == 1 for t in batches)
    assert tis(first, "report")[0]["state"] == "failed"
    assert "1 object(s) failed" in Path(first["log"]).read_text()

    log = log_rows(settings)
    arts = artworks(settings)
    assert len(log) == len(good) + len(exact) + len(near) + len(bad) + 1
    # Mapped batches run in any order (in parallel, in production), so which member of a
    # group of copies is catalogued depends on timing; exactly one is, the rest point at it.
    groups = [
        ["incoming/a/art700.jpg", *exact],
        ["incoming/a/art701.jpg", *near],
        *[[key] for key in good if key not in ("incoming/a/art700.jpg", "incoming/a/art701.jpg")],
    ]
    for group in groups:
        originals = [k for k in group if log[k]["state"] == "catalogued"]
        assert len(originals) == 1, [(k, log[k]["state"]) for k in group]
        origin = arts[originals[0]]
        assert origin["key"] == log[originals[0]]["final_key"]
        assert origin["key"].startswith(f"catalog/{origin['label']}/")
        for key in group:
            assert log[key]["finalized"], key
            if key != originals[0]:
                assert log[key]["state"] == "duplicate", (key, log[key]["reason"])
                assert log[key]["duplicate_of"] == origin["id"], key
                assert log[key]["final_key"].startswith("duplicates/"), key
    cases = imagegen.bad_inputs()
    for name in BAD:
        row = log[f"incoming/bad/{name}.jpg"]
        assert (row["state"], row["reason"]) == ("quarantined", cases[name][1]), name
        assert row["final_key"].startswith("quarantine/")
    parked = log[vanishing]
    assert (parked["state"], parked["reason"]) == ("failed", "object_missing")
    assert parked["attempts"] == 1
    # The lake: every object once, in its place; nothing left in incoming/.
    assert keys(client, bucket, "incoming/") == []
    assert len(keys(client, bucket, "catalog/")) == len(groups)
    assert len(keys(client, bucket, "duplicates/")) == len(exact) + len(near)
    assert len(keys(client, bucket, "quarantine/")) == len(bad)

    # The operator fixes the cause (the object is back) and triggers with retry_failed, and
    # with prefix training/ for labelled images.
    put(client, bucket, {vanishing: art(750), "training/painting/t1.jpg": art(760)})
    second = harness.run(
        "--conf", json.dumps({"retry_failed": True, "prefix": "training/"}), ARTCLF_MAX_ATTEMPTS="1"
    )
    assert second["state"] == "success", _tail(Path(second["log"]))
    log = log_rows(settings)
    assert (log[vanishing]["state"], log[vanishing]["attempts"]) == ("catalogued", 2)
    assert log["training/painting/t1.jpg"]["state"] == "catalogued"
    assert artworks(settings)["training/painting/t1.jpg"]["key"] == "training/painting/t1.jpg"
    report = second["xcom"]["report"][0]
    assert report["states"] == {"catalogued": 2}
    assert keys(client, bucket, "incoming/") == []


def test_a_task_killed_mid_batch_loses_and_duplicates_nothing(lake, harness, tmp_path):
    """A task SIGKILLed after its catalogue commit, before the sources are deleted; then the
    next run, one of whose tasks raises before its commit and is retried by Airflow. In the
    end every object is catalogued once, in its place, and nothing is left behind."""
    settings, client = lake
    bucket = settings.bucket
    drop = {f"incoming/k/img{i:02d}.jpg": art(800 + i) for i in range(10)}
    put(client, bucket, drop)
    conf = json.dumps({"batch_size": 4})

    killed = harness.finish(
        *harness.start(
            "--conf", conf, "--crash", "kill-after-commit", "--flag", str(tmp_path / "k")
        )
    )
    assert killed is None, "the run was expected to be SIGKILLed"
    committed = json.loads((tmp_path / "k").read_text())
    assert len(committed) in (2, 4)  # batches of 4, 4 and 2, run in any order
    log = log_rows(settings)
    # Committed and copied to the catalogue, not yet removed from incoming/.
    assert sorted(r["id"] for r in log.values() if r["state"] == "catalogued") == sorted(committed)
    assert not any(r["finalized"] for r in log.values())
    assert len(keys(client, bucket, "incoming/")) == 10
    assert len(keys(client, bucket, "catalog/")) == len(committed)

    # The next run repairs the killed batch; one of its own tasks dies before its commit,
    # holding its claims: the retry takes them over at once (not after the 15-minute lease).
    retried = harness.run(
        "--conf", conf, "--crash", "raise-before-commit", "--flag", str(tmp_path / "r")
    )
    assert retried["state"] == "success", _tail(Path(retried["log"]))
    interrupted = set(json.loads((tmp_path / "r").read_text()))
    tries = sorted(t["try_number"] for t in tis(retried, "ingest_batch"))
    assert tries[-1] == 2 and tries[:-1] == [1] * (len(tries) - 1)  # one batch ran twice
    log = log_rows(settings)
    assert len(log) == 10
    assert all(r["state"] == "catalogued" and r["finalized"] for r in log.values())
    for row in log.values():  # claimed twice: by the try that died and by its retry
        assert row["attempts"] == (2 if row["id"] in interrupted else 1), row["key"]
    arts = artworks(settings)
    assert sorted(arts) == sorted(drop)  # one artwork per object, none twice
    assert keys(client, bucket, "incoming/") == []
    assert keys(client, bucket, "catalog/") == sorted(a["key"] for a in arts.values())


def test_two_overlapping_runs_process_each_object_exactly_once(lake, harness, tmp_path):
    """Both runs plan the same ids (a barrier holds each before its first batch until the
    other has planned too), then race over them: claims hand each object to one task."""
    settings, client = lake
    bucket = settings.bucket
    drop = {f"incoming/o/img{i:02d}.jpg": art(900 + i) for i in range(10)}
    put(client, bucket, drop)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    args = ("--conf", json.dumps({"batch_size": 3}), "--barrier", str(barrier))
    runs = [harness.start(*args), harness.start(*args)]
    results = [harness.finish(*r) for r in runs]
    for r in results:
        assert r is not None and r["state"] == "success", _tail(Path(r["log"]))
    planned = [sum(len(b) for b in r["xcom"]["plan"][0]) for r in results]
    assert planned == [len(drop), len(drop)]  # both runs planned every object

    done = [s for r in results for s in r["xcom"]["ingest_batch"]]
    assert sum(s["catalogued"] for s in done) == 10
    assert sum(s["duplicates"] + s["quarantined"] + s["failed"] for s in done) == 0
    assert sum(s["skipped"] for s in done) > 0  # they did meet
    log = log_rows(settings)
    assert len(log) == len(drop)
    assert all(r["attempts"] == 1 and r["finalized"] for r in log.values())
    assert len(artworks(settings)) == 10
    assert keys(client, bucket, "incoming/") == []
    assert len(keys(client, bucket, "catalog/")) == 10


def first_announcement(settings, timeout: float = 60.0):
    """The first announcement of the product's own watcher loop (what the Airflow trigger
    runs in the triggerer; each announcement becomes an asset event that starts
    ``artclf_ingest``), run here without Airflow."""
    import asyncio
    from contextlib import aclosing

    from artclf_core.ingest.events import IncomingWatcher

    watcher = IncomingWatcher(
        settings, name="test_dags", sweep_interval=0.5, training_sweep_interval=1.0
    )

    async def first():
        async with aclosing(watcher.watch()) as announcements:
            async for announcement in announcements:
                return announcement

    return asyncio.run(asyncio.wait_for(first(), timeout))


@pytest.mark.slow
def test_labelled_drops_are_catalogued_then_retrained_promoted_and_switched(lake, harness):
    """The ML owner's flow, end to end with dag.test(): labelled images dropped under
    training/<label>/ are queued by the product's watcher and catalogued by the ingest DAG
    it starts (no manual command); the nightly DAG trains on them, logs its progress,
    reports what it trained on and records its gate decision; the re-embedding DAG its
    promotion schedules makes the new version active with every artwork embedded."""
    from artclf_core import CLASSES

    settings, client = lake
    with db.connect(settings.db_url) as conn:
        conn.execute("TRUNCATE artclf.trigger_state")
        conn.commit()
    put(
        client,
        settings.bucket,
        {
            # Sources of their own per class: a held-out source is then a family that neither
            # model trained on, which is all the gate compares on.
            f"training/{label}/{label}{i % 2}__{i:02d}.png": imagegen.labelled_png(label, i)
            for label in CLASSES
            for i in range(6)
        },
    )
    announced = first_announcement(settings)
    assert announced.count == 6 * len(CLASSES) and "training/" in announced.prefixes
    ingested = harness.run("--dag", "artclf_ingest")  # the run that event starts
    assert ingested["state"] == "success", _tail(Path(ingested["log"]))
    with db.connect(settings.db_url) as conn:
        labels = dict(
            conn.execute(
                "SELECT curated_label, count(*) FROM artclf.artworks GROUP BY 1"
            ).fetchall()
        )
        old = registry.active_version(conn)
    assert labels == dict.fromkeys(CLASSES, 6)

    conf = json.dumps({"epochs": 2, "min_gain": -1.0, "max_f1_drop": 1.0})
    trained = harness.run("--dag", "artclf_retrain", "--conf", conf)
    assert trained["state"] == "success", _tail(Path(trained["log"]))
    summary = trained["xcom"]["train_and_gate"][0]
    assert summary["status"] == "promoted" and summary["compared_with"] == old
    assert summary["dataset"]["per_class"] == dict.fromkeys(CLASSES, 6)
    assert len(summary["dataset"]["per_source"]) == 2 * len(CLASSES)
    # Progress and the report are in the task log, not only in XCom.
    log = Path(trained["log"]).read_text(errors="replace")
    for line in ("exporting 30 labelled artwork(s)", "backbone features 30/30", "**PROMOTED**"):
        assert line in log, line
    with db.connect(settings.db_url) as conn:
        (run_by, status) = conn.execute(
            "SELECT run_by, status FROM artclf.retrain_runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert run_by == f"airflow:artclf_retrain/{trained['run_id']}" and status == "promoted"
    assert trained["xcom"]["announce_promotion"] == [summary["version"]]
    # The asset event would start artclf_reembed; dag.test() runs it here with the version.
    moved = harness.run(
        "--dag", "artclf_reembed", "--conf", json.dumps({"version": summary["version"]})
    )
    assert moved["state"] == "success", _tail(Path(moved["log"]))
    assert moved["xcom"]["switch"][0]["previous"] == old
    with db.connect(settings.db_url) as conn:
        assert registry.active_version(conn) == summary["version"]
        missing = conn.execute(
            "SELECT count(*) FROM artclf.missing_embeddings(%s)", (summary["version"],)
        ).fetchone()[0]
    assert missing == 0
    assert f"models/{summary['version']}/atlas.html" in keys(client, settings.bucket, "models/")
    # Nothing new: the next nightly run trains nothing and announces nothing.
    again = harness.run("--dag", "artclf_retrain", "--conf", conf)
    assert again["xcom"]["train_and_gate"][0]["status"] == "skipped"
    assert {t["task_id"]: t["state"] for t in again["tis"]}["announce_promotion"] == "skipped"


# --------------------------------------------------------------------------- the harness


def _harness(argv: list[str]) -> int:
    """Run the DAG once with ``dag.test()`` and write what happened to a JSON file."""
    import argparse
    from datetime import timedelta

    parser = argparse.ArgumentParser(description=_harness.__doc__)
    parser.add_argument("result")
    parser.add_argument("--conf", default="{}")
    parser.add_argument(
        "--crash", choices=["kill-after-commit", "raise-after-commit", "raise-before-commit"]
    )
    parser.add_argument("--flag", help="file that records the first crash (one per flag)")
    parser.add_argument("--barrier", help="folder where overlapping runs meet")
    parser.add_argument("--parties", type=int, default=2)
    parser.add_argument("--delete-before-ingest", metavar="KEY")
    parser.add_argument("--dag", default=DAG_ID)
    args = parser.parse_args(argv)

    from artclf_core.ingest import ingestor

    class FaultyIngestor(ingestor.Ingestor):
        """The real Ingestor, plus the faults this run asks for."""

        started = False

        def ingest_log_ids(self, ids, **kw):
            if not FaultyIngestor.started:
                FaultyIngestor.started = True
                if args.barrier:
                    _meet(Path(args.barrier), args.parties)
                if args.delete_before_ingest:
                    self.s3.delete_object(
                        Bucket=self.settings.bucket, Key=args.delete_before_ingest
                    )
            return super().ingest_log_ids(ids, **kw)

        def _first_crash(self, where: str, items) -> None:
            """Crash here once per flag file, which records the ids of the batch."""
            if not (args.crash or "").endswith(where) or not items:
                return
            flag = Path(args.flag)
            if flag.exists():
                return
            flag.write_text(json.dumps([it.row.id for it in items]))
            if args.crash.startswith("kill"):
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected crash {args.crash}")

        def _commit(self, batch, new_rows):
            self._first_crash("before-commit", batch.items)
            return super()._commit(batch, new_rows)

        def _delete_sources(self, moved):  # runs right after the commit
            self._first_crash("after-commit", moved)
            return super()._delete_sources(moved)

    ingestor.Ingestor = FaultyIngestor

    sys.path.insert(0, str(PLUGINS))
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS), safe_mode=False).dags[args.dag]
    for task in dag.tasks:  # retry after a second, not minutes, in tests
        task.retry_delay = timedelta(seconds=1)
    run = dag.test(run_conf=json.loads(args.conf))
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == args.dag,
                XComModel.run_id == run.run_id,
                XComModel.key == "return_value",
            )
        ).all()
        xcom: dict[str, list] = {}
        for row in sorted(rows, key=lambda r: (r.task_id, r.map_index)):
            xcom.setdefault(row.task_id, []).append(XComModel.deserialize_value(row))
        result = {
            "state": str(run.get_state()),
            "run_id": run.run_id,
            "tis": [
                {
                    "task_id": ti.task_id,
                    "map_index": ti.map_index,
                    "state": str(ti.state),
                    "try_number": ti.try_number,
                }
                for ti in run.get_task_instances(session=session)
            ],
            "xcom": xcom,
        }
    Path(args.result).write_text(json.dumps(result, default=str))
    return 0


def _meet(folder: Path, parties: int, timeout: float = 120.0) -> None:
    """Wait until ``parties`` processes have reached this point."""
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.iterdir())) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError("the other run never reached the barrier")
        time.sleep(0.05)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(_harness(sys.argv[1:]))
