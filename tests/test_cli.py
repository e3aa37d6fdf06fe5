"""The `artclf` commands a user types, against the session's real stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import imagegen


def run(settings_env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "artclf_core.cli", *args],
        env={**os.environ, **settings_env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_drop_ingest_similar_report(stack, clean, tmp_path):
    _, env = stack
    folder = tmp_path / "my-collection"
    folder.mkdir()
    for i in range(8):
        imagegen.make_artwork(400 + i).save(folder / f"work{i}.jpg", quality=90)
    (folder / "notes.jpg").write_text("<html>not a picture</html>")

    dropped = run(env, "drop", str(folder))
    assert dropped.returncode == 0, dropped.stderr
    assert "dropped 9 file(s)" in dropped.stdout

    ingested = run(env, "ingest", "--json")
    assert ingested.returncode == 0, ingested.stderr
    assert "great_expectations" not in ingested.stderr, ingested.stderr  # no library chatter
    summary = json.loads(ingested.stdout)
    assert summary["catalogued"] == 8 and summary["quarantined"] == 1
    assert summary["reasons"] == {"not_an_image": 1}
    assert summary["cpu"]["forward"] > 0  # the CPU account, per stage (issue 32)

    report = run(env, "report", "--state", "quarantined")
    assert report.returncode == 0
    assert "not_an_image" in report.stdout and "my-collection/notes.jpg" in report.stdout

    # Plain `report`: counts by state and reason, then what needs attention, with a header
    # naming both ids (the README's promise).
    plain = run(env, "report").stdout.splitlines()
    assert plain[0].split() == ["state", "reason", "objects"]
    assert ["catalogued", "-", "8"] in [line.split() for line in plain]
    assert ["quarantined", "not_an_image", "1"] in [line.split() for line in plain]
    header = next(line for line in plain if line.split()[:2] == ["log", "artwork"])
    assert "[why]" in header
    assert any("my-collection/notes.jpg" in line and "[not_an_image]" in line for line in plain)

    # A duplicate's line says what it copies; -v adds the CPU account of the run, stage by
    # stage, and the embedded servers' share (this stack is the one the settings name).
    (folder / "again").mkdir()
    (folder / "again" / "work0-copy.jpg").write_bytes((folder / "work0.jpg").read_bytes())
    assert run(env, "drop", str(folder / "again")).returncode == 0
    verbose = run(env, "ingest", "-v")
    assert verbose.returncode == 0, verbose.stderr
    assert "CPU ms per object: claim " in verbose.stdout, verbose.stdout
    assert "ingest process" in verbose.stdout and "ms per object" in verbose.stdout
    dup = run(env, "report", "--state", "duplicate").stdout
    line = next(x for x in dup.splitlines() if "work0-copy.jpg" in x)
    log_id, artwork_id = line.split()[:2]
    assert f"[exact copy of artwork {artwork_id}" in line and log_id.isdigit(), line

    first_id = _first_artwork_id(env)
    similar = run(env, "similar", str(first_id), "-k", "3", "--any-label", "--json")
    assert similar.returncode == 0, similar.stderr
    rows = json.loads(similar.stdout)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert first_id not in [r["artwork_id"] for r in rows]

    missing = run(env, "similar", "999999")
    assert missing.returncode == 2 and "no artwork with id 999999" in missing.stderr


def test_refusals_exit_2_with_one_line(stack, tmp_path):
    """The README's table: 2 = refused (bad input), with one line saying why, for every
    command (0, 1 and 3 are checked by the tests around; 130/143 by tests/faults)."""
    _, env = stack
    cases = {
        ("similar", "999999"): "no artwork with id 999999",
        ("drop", str(tmp_path / "nothing")): "no such file or folder",
        ("models", "show", "no-such-version"): "no model version no-such-version",
        ("models", "activate"): "give a VERSION",
        ("label", str(tmp_path / "nothing")): "no such folder",
        ("label", "abc", "painting"): "is not an artwork id",
        ("label", "1", "paintings"): "unknown label",
    }
    for args, says in cases.items():
        out = run(env, *args)
        assert out.returncode == 2, (args, out.returncode, out.stderr[-2000:])
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], (args, out.stderr[-2000:])


def test_classify_answers_without_cataloguing(stack, clean, tmp_path):
    _, env = stack
    folder = tmp_path / "drop"
    folder.mkdir()
    for i in range(6):
        imagegen.make_artwork(700 + i).save(folder / f"w{i}.jpg", quality=90)
    assert run(env, "drop", str(folder)).returncode == 0
    assert run(env, "ingest").returncode == 0
    new = tmp_path / "new.png"
    imagegen.make_artwork(777).save(new)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"%PDF-1.7 not a picture")

    human = run(env, "classify", str(new), str(folder / "w2.jpg"), "-k", "3", "--any-label")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0].startswith(f"{new}: ") and "[" in lines[0]
    assert "  3 most similar, any label:" in human.stdout
    assert "rank   artwork  distance  label" in human.stdout
    assert "already catalogued as artwork" in human.stdout  # w2.jpg is in the lake
    # No library noise on a user command's output (LiteRT's XNNPACK line, TF's banners).
    assert "XNNPACK" not in human.stdout + human.stderr, human.stderr
    assert "oneDNN" not in human.stderr and "absl" not in human.stderr, human.stderr
    # A prediction under the model's own review threshold says so (made-up pictures are
    # far from the five classes: all under it).
    assert "low confidence, below 0." in human.stdout and "a curator should check" in human.stdout

    as_json = run(env, "classify", str(new), str(bad), str(tmp_path / "missing.jpg"), "--json")
    assert as_json.returncode == 1  # some pictures were rejected
    answers = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [a["name"] for a in answers] == [str(new), str(bad), str(tmp_path / "missing.jpg")]
    ok, rejected, missing = answers
    assert ok["label"] in ok["probabilities"] and 1 <= len(ok["neighbours"]) <= 5
    assert ok["low_confidence"] is (ok["probability"] < ok["review_threshold"])
    assert all(n["label"] == ok["label"] for n in ok["neighbours"])
    assert rejected["reason"] == "unsupported_format" and "PDF" in rejected["message"]
    assert missing["reason"] == "unreadable"

    import psycopg

    with psycopg.connect(env["ARTCLF_DB_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM artclf.artworks").fetchone()[0] == 6

    similar = run(env, "similar", str(_first_artwork_id(env)), "-k", "2")
    assert similar.stdout.splitlines()[0].startswith(f"artwork {_first_artwork_id(env)} (")
    assert "rank   artwork  distance  label" in similar.stdout


def _first_artwork_id(env: dict) -> int:
    import psycopg

    with psycopg.connect(env["ARTCLF_DB_URL"]) as conn:
        return conn.execute("SELECT min(id) FROM artclf.artworks").fetchone()[0]


def test_models_warm_prepares_the_inference_copy(stack, clean, tmp_path):
    """`artclf models warm` (run by `artclf up` while Airflow starts) leaves the active
    model's TFLite copy in the model cache, so the first drop does not convert it."""
    _, env = stack
    home = tmp_path / "home"
    warmed = run({**env, "ARTCLF_HOME": str(home)}, "models", "warm")
    assert warmed.returncode == 0, warmed.stderr
    assert "ready for inference (tflite)" in warmed.stdout
    assert len(list((home / "model-cache" / "tflite").glob("*.tflite"))) == 1


def test_an_unreachable_service_is_named_in_one_sentence_not_a_traceback(stack, tmp_path):
    """Exit 3 and what became of the objects, for PostgreSQL and for S3 (README "Exit codes")."""
    from artclf_core.embedded.procs import pick_port

    _, env = stack
    closed = pick_port(None)
    cases = {
        "PostgreSQL": {"ARTCLF_DB_URL": f"postgresql://artclf:x@127.0.0.1:{closed}/artclf"},
        "S3": {"ARTCLF_S3_ENDPOINT": f"http://127.0.0.1:{closed}"},
    }
    for service, broken in cases.items():
        out = run({**env, **broken, "ARTCLF_HOME": str(tmp_path)}, "ingest")
        assert out.returncode == 3, (service, out.stderr[-3000:])
        assert f"artclf ingest: {service} is unreachable" in out.stderr, out.stderr[-3000:]
        assert "Nothing is lost" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_native_noise_is_dropped_and_everything_else_kept():
    """The stderr filter of every command drops only the known native INFO lines."""
    code = (
        "import os, sys\n"
        "from artclf_core.native_logs import filter_stderr\n"
        "filter_stderr()\n"
        "os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
        "os.write(2, b'I0000 00:00:1796594955.879717   11529 port.cc:153] oneDNN custom ops\\n')\n"
        "os.write(2, b'E0000 00:00:1.0   1 x.cc:1] a real native error\\n')\n"
        "print('python says', file=sys.stderr)\n"
        "print('the answer')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "the answer\n"
    assert out.stderr.splitlines() == [
        "E0000 00:00:1.0   1 x.cc:1] a real native error",
        "python says",
    ]
