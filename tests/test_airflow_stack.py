"""``artclf up`` / ``artclf down``: the whole product started and stopped by one command.

A real ``airflow standalone`` on the real embedded stack, in a temporary ARTCLF_HOME: it
serves its health endpoint, listens on loopback only, logs in with the generated password,
catalogues a drop by itself (asset watcher -> DAG run), and ``artclf down`` leaves no process
of it behind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import browser
import imagegen
import pytest

from artclf_core.catalogue import db
from artclf_core.config import Settings, read_env_file
from artclf_core.embedded.airflow import EmbeddedAirflow
from artclf_core.embedded.airflow_config import DAG_ID
from artclf_core.embedded.procs import pid_alive, read_pid
from artclf_core.lake import s3 as s3lib

pytestmark = pytest.mark.slow


def artclf(*args: str, home: Path, timeout: float) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: no stack settings inherited from the test session."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ARTCLF_", "AIRFLOW", "AWS_")) or k == "ARTCLF_MODEL"
    }
    env["ARTCLF_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "artclf_core.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def request(url: str, *, token: str | None = None, body: dict | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=10) as resp:
        return json.loads(resp.read())


def status_of(url: str, *, token: str | None = None, body: dict | None = None) -> int:
    """The HTTP status of a request (redirects not followed)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        request_opener = urllib.request.build_opener(NoRedirect)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        with request_opener.open(urllib.request.Request(url, data, headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def challenge_of(url: str, *, token: str | None = None) -> str | None:
    """The ``WWW-Authenticate`` header of a refused request."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30):
            return None
    except urllib.error.HTTPError as exc:
        return exc.headers.get("WWW-Authenticate")


def token_for(url: str, user: str, password: str) -> str:
    body = {"username": user, "password": password}
    return request(url + "/auth/token", body=body)["access_token"]


def wait_for(check, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last = exc
        time.sleep(interval)
    raise AssertionError(f"{what} within {timeout:.0f} s; last: {last!r}")


def listening_addresses(pids: list[int]) -> set[str]:
    """``address:port`` of every TCP socket in LISTEN state that one of ``pids`` holds."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            hexaddr, hexport = fields[1].split(":")
            if width == 8:
                addr = ".".join(str(int(hexaddr[i : i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                addr = "ipv6:" + hexaddr
            found.add(f"{addr}:{int(hexport, 16)}")
    return found


def test_artclf_up_runs_everything_and_down_leaves_nothing(tmp_path):
    home = tmp_path / "state"
    started = time.monotonic()
    up = artclf("up", home=home, timeout=420)
    assert up.returncode == 0, up.stdout + up.stderr
    up_seconds = time.monotonic() - started
    airflow = EmbeddedAirflow(home)
    info = airflow.info()
    pids = airflow.processes()
    leader = airflow.leader()
    pg_pid = read_pid(home / "pg" / "data" / "postmaster.pid")
    weed_pid = read_pid(home / "s3" / "weed.pid")
    try:
        # What `artclf up` prints: where Airflow is and how to log in, the bucket and its
        # credentials, how to get the settings and what to do next.
        env = read_env_file(home / "stack.env")
        for text in (
            info["AIRFLOW_URL"],
            f"login admin / {info['AIRFLOW_PASSWORD']}",
            env["ARTCLF_S3_ENDPOINT"],
            env["AWS_ACCESS_KEY_ID"],
            env["AWS_SECRET_ACCESS_KEY"],
            'eval "$(artclf stack env)"',
            "artclf drop",
            "artclf similar",
        ):
            assert text in up.stdout, text
        assert info["AIRFLOW_URL"].startswith("http://127.0.0.1:")

        # Every component healthy; every listener of the instance on loopback.
        health = request(info["AIRFLOW_URL"] + "/api/v2/monitor/health")
        for component in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
            assert health[component]["status"] == "healthy", health
        listeners = listening_addresses(pids)
        assert listeners, "the api-server listens somewhere"
        assert all(a.startswith("127.0.0.1:") for a in listeners), listeners
        # Secrets are for the owner only.
        for name in ("passwords.json", "secrets.json", "airflow.cfg"):
            assert oct((home / "airflow" / name).stat().st_mode)[-3:] == "600", name

        # The generated login works, and the DAG is there, active, on its asset.
        token = request(
            info["AIRFLOW_URL"] + "/auth/token",
            body={"username": "admin", "password": info["AIRFLOW_PASSWORD"]},
        )["access_token"]
        api = info["AIRFLOW_URL"] + "/api/v2"
        dag = wait_for(
            lambda: request(f"{api}/dags/{DAG_ID}", token=token), 90, "the DAG is parsed"
        )
        assert dag["is_paused"] is False

        # The product: drop images, they are catalogued by an asset-triggered run.
        s3 = s3lib.client(Settings.from_env(env))
        for i in range(N_UP):
            s3.put_object(
                Bucket=env["ARTCLF_BUCKET"],
                Key=f"incoming/up/art{i}.jpg",
                Body=imagegen.encode(imagegen.make_artwork(600 + i)),
            )
        s3.put_object(Bucket=env["ARTCLF_BUCKET"], Key="incoming/up/notes.jpg", Body=b"<p>x</p>")

        def catalogued() -> bool:
            with db.connect(env["ARTCLF_DB_URL"]) as conn:
                states = conn.execute(
                    "SELECT state, finalized FROM artclf.ingest_log WHERE key LIKE 'incoming/up/%'"
                    " ORDER BY key = 'incoming/up/notes.jpg', key"
                ).fetchall()
            done = [("catalogued", True)] * N_UP + [("quarantined", True)]
            return states == done

        wait_for(catalogued, 240, "the drop is catalogued", interval=2.0)

        runs = request(f"{api}/dags/{DAG_ID}/dagRuns", token=token)["dag_runs"]
        assert any(r["run_type"] == "asset_triggered" for r in runs), runs

        # The catalogue API and the Artworks page, inside Airflow, behind Airflow's auth.
        viewer = token_for(info["AIRFLOW_URL"], "viewer", airflow.password("viewer"))
        check_catalogue_api(info["AIRFLOW_URL"], token, viewer, {r["dag_run_id"] for r in runs})
        check_artworks_page(info["AIRFLOW_URL"], token)

        # Labelled drops too, with no command: the trigger sweeps training/ (every 30 s
        # here); one in a folder that is not a class is quarantined in place, said why.
        labelled = {
            "training/painting/up__p.jpg": imagegen.encode(imagegen.make_artwork(690)),
            "training/paintings/up__typo.jpg": imagegen.encode(imagegen.make_artwork(691)),
        }
        for key, body in labelled.items():
            s3.put_object(Bucket=env["ARTCLF_BUCKET"], Key=key, Body=body)

        def labelled_done() -> bool:
            with db.connect(env["ARTCLF_DB_URL"]) as conn:
                states = conn.execute(
                    "SELECT state, reason, finalized FROM artclf.ingest_log"
                    " WHERE key ^@ 'training/' ORDER BY key"
                ).fetchall()
            return states == [("catalogued", None, True), ("quarantined", "unknown_label", True)]

        wait_for(labelled_done, 240, "the labelled drop is catalogued", interval=2.0)

        # The nightly retraining, triggered by hand: too few labelled images, so it trains
        # nothing, and says so where the operator looks (the Models page, below).
        retrain_run = request(
            f"{api}/dags/artclf_retrain/dagRuns", token=token, body={"logical_date": None}
        )["dag_run_id"]

        def retrained() -> bool:
            state = request(f"{api}/dags/artclf_retrain/dagRuns/{retrain_run}", token=token)[
                "state"
            ]
            assert state not in ("failed",), state
            return state == "success"

        wait_for(retrained, 240, "the retraining run ends", interval=3.0)
        with browser.browser() as b:
            context = b.new_context()
            context.add_cookies([{"name": "_token", "value": token, "url": info["AIRFLOW_URL"]}])
            page = context.new_page()
            page.goto(info["AIRFLOW_URL"] + "/artclf/#/models")
            shown = page.locator("#retrain-runs").inner_text()
            assert "nothing trained: fewer than 4 labelled images" in shown, shown
            assert retrain_run in shown  # links to the Airflow run

        # A second `up` starts nothing and prints the same information.
        again = artclf("up", home=home, timeout=120)
        assert again.returncode == 0, again.stderr
        assert "already up" in again.stdout
        assert f"login admin / {info['AIRFLOW_PASSWORD']}" in again.stdout
        assert airflow.leader() == leader
        assert set(airflow.processes()) >= {leader[0]}
    finally:
        everything = set(pids) | set(airflow.processes())
        down = artclf("down", home=home, timeout=180)
    assert down.returncode == 0, down.stderr
    # Nothing left: not one process of the instance (whatever group it moved to), nor of
    # the standalone's session, nor the stack's servers.
    assert airflow.processes() == []
    assert not [p for p in everything if pid_alive(p)]
    assert not [p for p in _session(leader[0]) if pid_alive(p)]
    assert not pid_alive(pg_pid) and not pid_alive(weed_pid)
    assert not airflow.is_running()
    print(f"artclf up took {up_seconds:.0f} s", file=sys.stderr)


N_UP = 3


def check_catalogue_api(url: str, admin: str, viewer: str, run_ids: set[str]) -> None:
    """Every route refuses anonymous callers; a viewer reads but may not change labels; the
    nav lists the Artworks page; the lake links a quarantined object to its DAG run."""
    base = url + "/artclf"
    for path in (
        "/",
        "/static/app.js",
        "/api/openapi.json",
        "/api/artworks",
        "/api/review",
        "/api/artworks/1",
        "/api/artworks/1/thumbnail",
        "/api/artworks/1/image",
        "/api/lake",
        "/api/models",
        "/api/retrain-runs",
        "/api/whoami",
        "/api/models/v/plots/p.png",
    ):
        expected = 303 if path == "/" else 401  # the page sends a browser to the login
        assert status_of(base + path) == expected, path
        assert status_of(base + path, token="not-a-token") == expected, path
    # RFC 6750: who the caller is, unknown: 401 with the challenge; 403 only for a known
    # user without the right (the viewer's label change below).
    assert challenge_of(base + "/api/artworks") == "Bearer"
    assert challenge_of(base + "/api/artworks", token="not-a-token") == (
        'Bearer error="invalid_token"'
    )
    assert status_of(base + "/api/review/1", body={"label": "painting"}) == 401
    assert status_of(base + "/api/classify", body={}) == 401

    assert request(base + "/api/whoami", token=viewer) == {"user": "viewer", "can_edit": False}
    items = request(base + "/api/artworks", token=viewer)["items"]
    assert len(items) == N_UP
    target = items[0]
    other = "sculpture" if target["label"] != "sculpture" else "painting"
    change = f"{base}/api/review/{target['id']}"
    assert status_of(change, token=viewer, body={"label": other}) == 403
    assert request(change, token=admin, body={"label": other})["curated_by"] == "admin"

    lake = request(base + "/api/lake", token=viewer)
    (quarantined,) = lake["quarantined"]
    assert quarantined["reason"] == "not_an_image" and quarantined["run"]["run_id"] in run_ids
    plugins = request(url + "/api/v2/plugins", token=viewer)["plugins"]
    views = [v for p in plugins for v in p["external_views"]]
    assert any(
        (v["name"], v["href"], v["destination"]) == ("Artworks", "/artclf/", "nav") for v in views
    ), views


def no_null_text(page, view: str) -> None:
    """A view never shows JavaScript's ``null`` or ``undefined`` as text."""
    shown = page.locator("#view").inner_text()
    assert not re.search(r"\b(null|undefined|NaN)\b", shown), (view, shown[:500])


def check_artworks_page(url: str, admin: str) -> None:
    """The page in a real browser, inside the Airflow UI's session: grid, an artwork and its
    neighbours, search by image, the review queue, the lake and the models."""
    with browser.browser() as b:
        context = b.new_context()
        context.add_cookies([{"name": "_token", "value": admin, "url": url}])
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url + "/artclf/")
        page.wait_for_selector(".card img")
        assert page.locator("#grid .card").count() == N_UP
        page.locator("#grid .card").first.click()
        page.locator("#any-label").check()  # every other artwork, whatever its label
        page.wait_for_function(
            f"document.querySelectorAll('#neighbours .card').length == {N_UP - 1}"
        )
        assert "Curated: " in page.locator("#curation").inner_text()  # changed above
        no_null_text(page, "artwork")

        page.goto(url + "/artclf/#/search")
        picture = imagegen.encode(imagegen.make_artwork(650))
        page.set_input_files(
            "#file", files=[{"name": "q.jpg", "mimeType": "image/jpeg", "buffer": picture}]
        )
        page.wait_for_selector("#answer", timeout=120_000)  # TensorFlow loads on first use
        assert "%" in page.locator("#answer").inner_text()
        assert page.locator("#result .card").count() >= 1
        # The uploaded picture is shown beside its answer.
        page.wait_for_function("document.querySelector('#query-picture')?.naturalWidth > 0")
        no_null_text(page, "search")

        for view, selector, text in (
            ("lake", "#counts", "not_an_image"),
            ("models", "#models", "(active)"),
            ("models", "#plot-review figcaption", "to review"),
            ("models", "#plot-kshot figcaption", "k=10"),
            ("review", "h1", "Review"),
            ("review", "#review-count", "reviewed"),
            # One collection at a time: the drop prefix incoming/up/ is collection "up".
            ("artworks?collection=up", "#collection", f"up ({N_UP})"),
            ("review?collection=up", "h1", "Review: up"),
            ("review?collection=up", "#collection", f"up ({N_UP})"),
        ):
            page.goto(f"{url}/artclf/#/{view}")
            page.wait_for_selector(selector)
            assert text in page.locator(selector).inner_text(), view
            no_null_text(page, view)
        # The active model's precision/coverage and k-shot plots are drawn (from its metrics).
        page.goto(f"{url}/artclf/#/models")
        for fig in ("#plot-review img", "#plot-kshot img"):
            page.wait_for_function(f"document.querySelector('{fig}')?.naturalWidth > 0")
        # The nav entry opens the same page inside the Airflow UI.
        page.goto(url + "/plugin/artworks")
        page.wait_for_selector("iframe")
        frame = page.frame_locator("iframe")
        frame.locator(".card").first.wait_for()
        assert errors == [], errors


def _session(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-s", str(sid), "-o", "pid="], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]
