"""Event-driven ingestion through Airflow: drop-to-row latency, the S3KeySensor baseline, and
sustained throughput, all against the real product (``artclf up``) in a throw-away home.

    python bench/airflow_bench.py [--mode all|latency|throughput] [--drops 20]
        [--baseline-drops 5] [--total 2000] [--data /work/shared/data/artworks] [--keep]
        [--executor local|celery] [--manifest bench/manifests/ingest-sources-2000.tsv]

1. ``artclf up`` in a temporary ``ARTCLF_HOME`` with ``ARTCLF_AIRFLOW_EXTRA_DAGS`` naming
   ``bench/dags/s3_sensor_baseline.py`` (loaded paused; never shipped in ``dags/``).
2. latency: one warm-up drop, then ``--drops`` drops one at a time: PUT one real image (boto3,
   bytes read from the shared data set, never copied into the repo) under ``incoming/lat/``,
   poll PostgreSQL every 50 ms until its ``artclf.artworks`` row (by ``source_key``) is there
   (or its ingest-log row is final: duplicate/quarantined/failed), then wait for the DAG run to
   end. The run that handled it is read from the ingest-log claim (``claimed_by`` names the run
   while the row is processing) and its timings from Airflow's REST API: the breakdown.
3. baseline: ``artclf_ingest`` paused, ``s3_sensor_baseline`` unpaused (``@continuous``,
   ``S3KeySensor`` with the default 60 s poke on ``incoming/*``, then ``Ingestor``);
   ``--baseline-drops`` drops, each after a random 0-60 s pause so that drops land at random
   phases of the poke; then paused again and ``artclf_ingest`` unpaused.
4. throughput: catalogue and bucket emptied; ``--total`` objects (every shared image plus
   JPEG-q80 re-encodings, made in memory, of a seeded sample: those end as duplicates) PUT by
   8 threads; timed from the first PUT until every one is final in ``artclf.ingest_log``.
   DAG runs, mapped ``ingest_batch`` tasks (and tries) from the REST API; RSS of every process
   of the Airflow instance sampled every 0.5 s. Then the same objects again, emptied first and
   with ``artclf_ingest`` paused, through plain ``artclf ingest`` (the CLI, no Airflow).

Results go to stdout (progress on stderr); numbers and their reading are in
docs/bench-airflow.md. The machine's load average is printed with them: cores may be shared.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import boto3  # noqa: E402
import psutil  # noqa: E402
import psycopg  # noqa: E402
from botocore.config import Config  # noqa: E402

from artclf_core.config import read_env_file  # noqa: E402
from artclf_core.embedded.airflow import EmbeddedAirflow  # noqa: E402
from artclf_core.embedded.airflow_config import EXTRA_DAGS_ENV  # noqa: E402

EVENT_DAG = "artclf_ingest"
BASE_DAG = "s3_sensor_baseline"
BASE_DAG_FILE = REPO / "bench" / "dags" / "s3_sensor_baseline.py"
FINAL = ("catalogued", "duplicate", "quarantined", "failed")
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
CLAIM = re.compile(r"^airflow:([^/]+)/(.+)/(-?\d+)#(\d+)@")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ts(value: str | None) -> float | None:
    """An Airflow/PostgreSQL ISO timestamp -> epoch seconds."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# ------------------------------------------------------------------------------ product


class Product:
    """``artclf up`` in ``home``; S3, PostgreSQL and Airflow REST handles on it."""

    def __init__(self, home: Path, executor: str = "local") -> None:
        self.home = home
        self.executor = executor
        self.env = {
            **os.environ,
            # `artclf` and `airflow standalone` (which starts `airflow` by name) from this
            # interpreter's environment, even when its bin/ is not on the caller's PATH.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
            "ARTCLF_HOME": str(home),
            EXTRA_DAGS_ENV: str(BASE_DAG_FILE),
        }
        self.airflow = EmbeddedAirflow(home)
        self._token: str | None = None

    def up(self) -> None:
        t0 = time.perf_counter()
        subprocess.run(
            ["artclf", "up", "--executor", self.executor],
            cwd=REPO,
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        log(f"artclf up in {time.perf_counter() - t0:.0f}s (home {self.home})")
        self.stack_env = read_env_file(self.home / "stack.env")
        self.cli_env = {**self.env, **self.stack_env}
        self.bucket = self.stack_env["ARTCLF_BUCKET"]
        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.stack_env["ARTCLF_S3_ENDPOINT"],
            aws_access_key_id=self.stack_env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.stack_env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.stack_env.get("AWS_DEFAULT_REGION", "us-east-1"),
            config=Config(max_pool_connections=16, retries={"max_attempts": 5}),
        )
        self.db = psycopg.connect(self.stack_env["ARTCLF_DB_URL"], autocommit=True)
        deadline = time.monotonic() + 180
        for dag in (EVENT_DAG, BASE_DAG):
            while self.api("GET", f"/dags/{dag}", ok404=True) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"DAG {dag} never showed up in Airflow")
                time.sleep(1)
        log("both DAGs are parsed")

    def down(self) -> None:
        subprocess.run(["artclf", "down"], cwd=REPO, env=self.env, check=False)

    # -- Airflow REST
    def token(self) -> str:
        if self._token is None:
            req = urllib.request.Request(
                self.airflow.url() + "/auth/token",
                data=json.dumps(
                    {"username": "admin", "password": self.airflow.password()}
                ).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                self._token = json.loads(resp.read())["access_token"]
        return self._token

    def api(self, method: str, path: str, body: dict | None = None, ok404: bool = False):
        req = urllib.request.Request(
            self.airflow.url() + "/api/v2" + path,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token()}", "Content-Type": "application/json"},
            method=method,
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and ok404:
                return None
            if exc.code == 401:
                self._token = None
            raise

    def pause(self, dag: str, paused: bool) -> None:
        self.api("PATCH", f"/dags/{dag}", {"is_paused": paused})
        log(f"{dag}: {'paused' if paused else 'unpaused'}")

    def runs(self, dag: str) -> list[dict]:
        out = self.api("GET", f"/dags/{dag}/dagRuns?limit=1000&order_by=run_after")
        return out["dag_runs"]

    def task_instances(self, dag: str, run_id: str) -> list[dict]:
        rid = urllib.parse.quote(run_id, safe="")
        out = self.api("GET", f"/dags/{dag}/dagRuns/{rid}/taskInstances?limit=1000")
        return out["task_instances"]

    def asset_events(self, dag: str, run_id: str) -> list[dict]:
        rid = urllib.parse.quote(run_id, safe="")
        out = self.api("GET", f"/dags/{dag}/dagRuns/{rid}/upstreamAssetEvents")
        return out.get("asset_events", [])

    def wait_runs_idle(self, dag: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not [r for r in self.runs(dag) if r["state"] in ("queued", "running")]:
                return
            time.sleep(0.5)

    # -- catalogue / bucket
    def reset(self) -> None:
        """Empty the catalogue and the bucket (ids keep growing: the trigger's watermark)."""
        self.db.execute("TRUNCATE artclf.ingest_log, artclf.artworks CASCADE")
        keys = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            keys += [o["Key"] for o in page.get("Contents", [])]
        for i in range(0, len(keys), 1000):
            self.s3.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
            )
        log(f"catalogue and bucket emptied ({len(keys)} objects deleted)")


def image_files(data: Path) -> list[Path]:
    return sorted(p for p in data.glob("*/*") if p.suffix.lower() in SUFFIXES)


# ------------------------------------------------------------------------------ latency


POLL = """
SELECT (SELECT created_at FROM artclf.artworks WHERE source_key = %(k)s LIMIT 1),
       l.state, l.claimed_by, l.first_seen
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (SELECT * FROM artclf.ingest_log WHERE key = %(k)s
                   ORDER BY id DESC LIMIT 1) AS l ON true
"""


def drop_and_wait(p: Product, key: str, body: bytes, timeout: float) -> dict:
    """PUT, then poll every 50 ms until the artworks row (or a final log state) is there."""
    t0 = time.time()
    p.s3.put_object(Bucket=p.bucket, Key=key, Body=body)
    put_s = time.time() - t0
    claim = None
    first_seen = None
    while True:
        row = p.db.execute(POLL, {"k": key}).fetchone()
        now = time.time()
        created, state, claimed_by, seen = row
        if seen is not None:
            first_seen = seen.timestamp()
        if claimed_by and claim is None:
            claim = claimed_by
        if created is not None or state in ("duplicate", "quarantined", "failed"):
            return {
                "key": key,
                "t0": t0,
                "put_s": put_s,
                "latency": now - t0,
                "state": "catalogued" if created is not None else state,
                "row_created": created.timestamp() if created else None,
                "first_seen": first_seen,
                "claim": claim,
            }
        if now - t0 > timeout:
            return {
                "key": key,
                "t0": t0,
                "put_s": put_s,
                "latency": None,
                "state": "timeout",
                "first_seen": first_seen,
                "claim": claim,
            }
        time.sleep(0.05)


def breakdown(p: Product, dag: str, d: dict) -> dict:
    """Where the time went, from Airflow's records of the run that handled the drop."""
    m = CLAIM.match(d.get("claim") or "")
    if m:
        run_id, map_index = m.group(2), int(m.group(3))
    elif d.get("row_created"):  # the baseline's claims do not name the run: find it by time
        run_id, map_index = "", -1
        for r in reversed(p.runs(dag)[-5:]):
            for ti in p.task_instances(dag, r["dag_run_id"]):
                start, end = ts(ti.get("start_date")), ts(ti.get("end_date"))
                if ti["task_id"] == "ingest" and start and end and start <= d["row_created"] <= end:
                    run_id = r["dag_run_id"]
            if run_id:
                break
        if not run_id:
            return {}
    else:
        return {}
    rid = urllib.parse.quote(run_id, safe="")
    run = p.api("GET", f"/dags/{dag}/dagRuns/{rid}")
    tis = p.task_instances(dag, run_id)
    t0 = d["t0"]
    out: dict[str, float | None] = {"run_id": run_id}  # type: ignore[dict-item]

    def rel(v: str | None) -> float | None:
        t = ts(v)
        return None if t is None else t - t0

    if dag == EVENT_DAG:
        events = p.asset_events(dag, run_id)
        if events:
            out["asset_event"] = min(rel(e["timestamp"]) for e in events)
    out["swept"] = d["first_seen"] - t0 if d.get("first_seen") else None
    out["run_queued"] = rel(run.get("queued_at"))
    out["run_start"] = rel(run.get("start_date"))
    for ti in tis:
        name = ti["task_id"]
        if name == "ingest_batch" and ti.get("map_index") != map_index:
            continue
        if name == "ingest" or name == "ingest_batch":
            name = "work"
        out[f"{name}_queued"] = rel(ti.get("queued_when"))
        out[f"{name}_start"] = rel(ti.get("start_date"))
        out[f"{name}_end"] = rel(ti.get("end_date"))
    out["row"] = d["row_created"] - t0 if d.get("row_created") else None
    return out


def run_latency(
    p: Product,
    files: list[Path],
    n: int,
    dag: str,
    tag: str,
    timeout: float,
    jitter: float,
    rng: random.Random,
) -> list[dict]:
    results = []
    for i, path in enumerate(files[:n]):
        if jitter:
            time.sleep(rng.uniform(0, jitter))
        key = f"incoming/{tag}/{i:03d}-{path.parent.name}-{path.name}"
        d = drop_and_wait(p, key, path.read_bytes(), timeout)
        p.wait_runs_idle(dag, timeout=120)
        time.sleep(0.5)
        d["breakdown"] = breakdown(p, dag, d)
        lat = "timeout" if d["latency"] is None else f"{d['latency']:.2f}s"
        log(f"{tag} drop {i + 1}/{n}: {lat} ({d['state']})")
        results.append(d)
    return results


STEPS = [
    ("swept", "landing-zone sweep registered it (ingest_log.first_seen)"),
    ("asset_event", "asset event created (trigger fired)"),
    ("run_queued", "DAG run queued"),
    ("run_start", "DAG run started"),
    ("plan_start", "plan task started"),
    ("plan_end", "plan task ended"),
    ("wait_for_incoming_start", "sensor try started (last try)"),
    ("wait_for_incoming_end", "sensor succeeded"),
    ("work_queued", "ingest task queued"),
    ("work_start", "ingest task started"),
    ("row", "artworks row committed"),
    ("work_end", "ingest task ended"),
]


def print_latency(name: str, results: list[dict]) -> list[float]:
    lats = [d["latency"] for d in results if d["latency"] is not None]
    bad = [d for d in results if d["latency"] is None or d["state"] != "catalogued"]
    print(f"\n## {name}: {len(results)} drops, {len(bad)} not catalogued/timeout")
    if lats:
        print(
            f"PUT->row latency  p50 {pct(lats, 0.5):6.2f} s   p95 {pct(lats, 0.95):6.2f} s"
            f"   max {max(lats):6.2f} s   mean {statistics.mean(lats):6.2f} s"
        )
    print("median offset from PUT (s), over the drops that have it:")
    for key, label in STEPS:
        vals = [
            d["breakdown"][key]
            for d in results
            if d.get("breakdown") and d["breakdown"].get(key) is not None
        ]
        if vals:
            print(
                f"  {label:55s} {pct(vals, 0.5):7.2f}  (min {min(vals):6.2f}, "
                f"max {max(vals):6.2f}, n={len(vals)})"
            )
    return lats


# ------------------------------------------------------------------------------ throughput


def forward_alone(items: list[tuple[str, bytes]], sample: int = 512) -> float:
    """CPU ms per image of the shipped model's forward pass on one inference thread, on
    ``sample`` of the drop's pictures prepared as ingestion does: the yardstick of the tasks'
    forward figure (median of 3 passes)."""
    import numpy as np

    os.environ["ARTCLF_INFER_THREADS"] = "1"
    from artclf_core.images.decode import ImageRejected, decode_image
    from artclf_core.images.model_input import to_model_input
    from artclf_core.model.artmodel import ArtModel

    model = ArtModel.load()
    pixels = []
    for _, data in items[:sample]:
        try:
            pixels.append(to_model_input(decode_image(data).image, model.image_size))
        except ImageRejected:
            continue
    batch = np.stack(pixels)
    model.predict(batch[:8])  # the interpreter's first call plans its buffers: not timed
    costs = []
    for _ in range(3):
        start = time.process_time()
        model.predict(batch)
        costs.append(1000 * (time.process_time() - start) / len(batch))
    return statistics.median(costs)


def payloads(files: list[Path], total: int, seed: int) -> list[tuple[str, bytes]]:
    """Every shared image, then JPEG-q80 re-encodings (in memory) of a seeded sample."""
    from PIL import Image

    out = [(f"incoming/tp/{p.parent.name}/{p.name}", p.read_bytes()) for p in files][:total]
    extra = random.Random(seed).sample(files, max(0, total - len(out)))
    for i, p in enumerate(extra):
        with Image.open(p) as im:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "JPEG", quality=80)
        out.append((f"incoming/tp/reencoded/{i:04d}-{p.stem}.jpg", buf.getvalue()))
    return out


def put_all(p: Product, items: list[tuple[str, bytes]]) -> float:
    t0 = time.time()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: p.s3.put_object(Bucket=p.bucket, Key=kv[0], Body=kv[1]), items))
    return time.time() - t0


def copies_catalogued(p: Product) -> int:
    """Re-encoded copies that were catalogued instead of being recorded as duplicates."""
    return p.db.execute(
        "SELECT count(*) FROM artclf.ingest_log WHERE key LIKE 'incoming/tp/reencoded/%'"
        " AND state = 'catalogued'"
    ).fetchone()[0]


def count_final(p: Product) -> tuple[int, dict[str, int]]:
    rows = p.db.execute(
        "SELECT state, count(DISTINCT key) FROM artclf.ingest_log"
        " WHERE key LIKE 'incoming/tp/%' GROUP BY state"
    ).fetchall()
    states = dict(rows)
    return sum(v for k, v in states.items() if k in FINAL), states


class RssSampler(threading.Thread):
    """Peak RSS per process of the Airflow instance, sampled every 0.5 s."""

    def __init__(self, airflow: EmbeddedAirflow) -> None:
        super().__init__(daemon=True)
        self.airflow = airflow
        self.peak: dict[int, tuple[int, str]] = {}
        self.peak_total = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.5):
            total = 0
            for pid in self.airflow.processes():
                try:
                    proc = psutil.Process(pid)
                    rss = proc.memory_info().rss
                    cmd = " ".join(proc.cmdline())[:110]
                except psutil.Error:
                    continue
                total += rss
                if rss > self.peak.get(pid, (0, ""))[0]:
                    self.peak[pid] = (rss, cmd)
            self.peak_total = max(self.peak_total, total)


def run_throughput_airflow(p: Product, items: list[tuple[str, bytes]]) -> dict:
    p.reset()
    since = time.time()
    sampler = RssSampler(p.airflow)
    sampler.start()
    t0 = time.time()
    put_s = put_all(p, items)
    log(f"{len(items)} objects PUT in {put_s:.1f}s")
    n = len(items)
    deadline = t0 + 1800
    while True:
        done, states = count_final(p)
        if done >= n or time.time() > deadline:
            break
        time.sleep(0.5)
    wall = time.time() - t0
    sampler.stop_event.set()
    sampler.join()
    log(f"airflow: {done}/{n} final in {wall:.1f}s: {states}")
    missed = copies_catalogued(p)
    p.wait_runs_idle(EVENT_DAG, timeout=120)
    runs = [
        r
        for r in p.runs(EVENT_DAG)
        if (ts(r.get("run_after")) or 0) >= since - 1 or (ts(r.get("start_date")) or 0) >= since - 1
    ]
    mapped = tries = 0
    batch_durations = []
    timeline = []  # (task, start, end) in seconds after the first PUT
    cpu: dict[str, float] = {}  # the tasks' own CPU account, summed over the runs' reports
    for r in runs:
        entry = p.api(
            "GET",
            f"/dags/{EVENT_DAG}/dagRuns/{r['dag_run_id']}/taskInstances/report/xcomEntries/"
            "return_value",
            ok404=True,
        )
        value = (entry or {}).get("value")
        value = json.loads(value) if isinstance(value, str) else value
        for stage, secs in ((value or {}).get("summary") or {}).get("cpu", {}).items():
            cpu[stage] = cpu.get(stage, 0.0) + secs
        for ti in p.task_instances(EVENT_DAG, r["dag_run_id"]):
            start, end = ts(ti.get("start_date")), ts(ti.get("end_date"))
            if start and end:
                name = ti["task_id"] + (
                    f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else ""
                )
                timeline.append((name, start - t0, end - t0))
            if ti["task_id"] == "ingest_batch":
                mapped += 1
                tries += int(ti.get("try_number") or 1)
                if ti.get("duration"):
                    batch_durations.append(float(ti["duration"]))
    return {
        "wall": wall,
        "put_s": put_s,
        "done": done,
        "states": states,
        "runs": len(runs),
        "run_states": [r["state"] for r in runs],
        "mapped": mapped,
        "tries": tries,
        "batch_durations": batch_durations,
        "timeline": sorted(timeline, key=lambda x: x[1]),
        "rss": sampler,
        "missed": missed,
        "cpu": cpu,
    }


def run_throughput_cli(p: Product, items: list[tuple[str, bytes]]) -> dict:
    p.pause(EVENT_DAG, True)
    p.wait_runs_idle(EVENT_DAG, timeout=120)
    p.reset()
    t0 = time.time()
    put_s = put_all(p, items)
    t1 = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(
        ["artclf", "ingest", "--prefix", "incoming/tp/", "--json"],
        cwd=REPO,
        env=p.cli_env,
        capture_output=True,
        text=True,
    )
    t2 = time.time()
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode:
        log(f"artclf ingest failed: {proc.stderr[-2000:]}")
    done, states = count_final(p)
    missed = copies_catalogued(p)
    p.pause(EVENT_DAG, False)
    try:
        cpu = json.loads(proc.stdout.strip().splitlines()[-1]).get("cpu", {})
    except (ValueError, IndexError):
        cpu = {}
    return {
        "cpu": cpu,
        "wall": t2 - t0,
        "ingest_s": t2 - t1,
        "put_s": put_s,
        "done": done,
        "states": states,
        "maxrss": max(maxrss, before) * 1024,
        "summary": proc.stdout.strip()[-500:],
        "missed": missed,
    }


# ------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["all", "latency", "throughput"], default="all")
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/artworks"))
    ap.add_argument("--drops", type=int, default=20)
    ap.add_argument("--baseline-drops", type=int, default=5)
    ap.add_argument("--total", type=int, default=2000)
    ap.add_argument(
        "--manifest",
        help="the images of a manifest of bench/ingest.py (e.g. bench/manifests/"
        "ingest-sources-2000.tsv, every source alike) instead of every file of --data",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--home", help="ARTCLF_HOME to use (default: a fresh temporary one)")
    ap.add_argument(
        "--json-out",
        default="/tmp/artclf-afbench-latency.json",
        help="per-drop latency records (with their breakdown)",
    )
    ap.add_argument("--keep", action="store_true", help="leave the product up at the end")
    ap.add_argument(
        "--executor",
        choices=["local", "celery"],
        default="local",
        help="artclf up --executor (celery: 2 workers x 2 slots, Redis, metadata in PostgreSQL)",
    )
    args = ap.parse_args()

    if args.manifest:  # a pinned list (bench/manifests/, hashes checked): comparable runs
        sys.path.insert(0, str(REPO / "bench"))
        from ingest import read_manifest

        files = read_manifest(Path(args.manifest), Path(args.data))
    else:
        files = image_files(Path(args.data))
    rng = random.Random(args.seed)
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="artclf-afbench-"))
    p = Product(home, args.executor)
    load0 = os.getloadavg()
    try:
        p.up()
        print(f"# artclf Airflow bench, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(
            f"{os.cpu_count()} cores; load average at start {load0[0]:.2f}/{load0[1]:.2f}/"
            f"{load0[2]:.2f}"
        )
        if args.mode in ("all", "latency"):
            sample = rng.sample(files, args.drops + args.baseline_drops + 1)
            warm = run_latency(p, sample[:1], 1, EVENT_DAG, "warmup", 180, 0, rng)
            print(f"\nwarm-up drop (first after `artclf up`, not counted): {warm[0]['latency']}")
            ev = run_latency(p, sample[1:], args.drops, EVENT_DAG, "lat", 180, 5.0, rng)
            ev_l = print_latency("event-driven (artclf_ingest, AssetWatcher)", ev)
            p.pause(EVENT_DAG, True)
            p.pause(BASE_DAG, False)
            base = run_latency(
                p, sample[1 + args.drops :], args.baseline_drops, BASE_DAG, "base", 400, 60.0, rng
            )
            p.pause(BASE_DAG, True)
            p.pause(EVENT_DAG, False)
            b_l = print_latency("baseline (S3KeySensor, poke_interval 60 s)", base)
            if ev_l and b_l:
                print("\n| | event-driven | S3KeySensor | ratio |\n|---|---|---|---|")
                for q, name in ((0.5, "p50"), (0.95, "p95")):
                    print(
                        f"| {name} | {pct(ev_l, q):.2f} s | {pct(b_l, q):.2f} s | "
                        f"{pct(b_l, q) / pct(ev_l, q):.1f}x |"
                    )
                print(
                    f"| max | {max(ev_l):.2f} s | {max(b_l):.2f} s | {max(b_l) / max(ev_l):.1f}x |"
                )
            Path(args.json_out).write_text(json.dumps({"event": ev, "baseline": base}, indent=1))
        if args.mode in ("all", "throughput"):
            if args.mode == "throughput":
                # As in the latency mode: the first drop after `artclf up` converts the model
                # for TFLite and fills the caches; the throughput figure is for a warm product.
                warm = run_latency(p, rng.sample(files, 1), 1, EVENT_DAG, "warmup", 180, 0, rng)
                print(
                    f"\nwarm-up drop (first after `artclf up`, not counted): {warm[0]['latency']}"
                )
            p.wait_runs_idle(EVENT_DAG, timeout=120)
            items = payloads(files, args.total, args.seed)
            mb = sum(len(b) for _, b in items) / 1e6
            log(f"{len(items)} payloads ready ({mb:.0f} MB)")
            af = run_throughput_airflow(p, items)
            cli = run_throughput_cli(p, items)
            print(f"\n## throughput: {len(items)} objects ({mb:.0f} MB)")
            print(
                "| path | wall s (first PUT -> all final) | images/s | of which PUT s |"
                " final states |\n|---|---|---|---|---|"
            )
            print(
                f"| Airflow (artclf_ingest) | {af['wall']:.1f} | {af['done'] / af['wall']:.1f}"
                f" | {af['put_s']:.1f} | {af['states']} |"
            )
            print(
                f"| `artclf ingest` (CLI) | {cli['wall']:.1f} | "
                f"{cli['done'] / cli['wall']:.1f} | {cli['put_s']:.1f} | {cli['states']} |"
            )
            print(
                f"CLI ingest alone (after the PUTs): {cli['ingest_s']:.1f} s = "
                f"{cli['done'] / cli['ingest_s']:.1f} images/s; peak RSS "
                f"{cli['maxrss'] / 2**20:.0f} MiB; {cli['summary']}"
            )
            print(
                f"re-encoded copies catalogued instead of recorded as duplicates: Airflow "
                f"{af['missed']}, CLI {cli['missed']} (of {max(0, len(items) - len(files))})"
            )
            for name, res in (("Airflow", af), ("CLI", cli)):
                c, n = res["cpu"], max(res["done"], 1)
                if c:
                    per = {k: 1000 * v / n for k, v in c.items()}
                    stages = ", ".join(f"{k} {v:.2f}" for k, v in per.items())
                    print(
                        f"{name} CPU account, ms per image: forward {per.get('forward', 0):.2f},"
                        f" other {per.get('other', 0):.2f}, all {sum(per.values()):.2f} ({stages})"
                    )
            if af["cpu"].get("forward"):
                alone = forward_alone(items)
                under = 1000 * af["cpu"]["forward"] / max(af["done"], 1)
                print(
                    f"forward pass under Airflow {under:.2f} ms/image against {alone:.2f} alone on"
                    f" one thread (same images, this process, after the runs): "
                    f"{under / alone:.2f}x (issue 32's goal: at most 1.10x)"
                )
            bd = af["batch_durations"]
            print(
                f"Airflow: {af['runs']} DAG run(s) {af['run_states']}, {af['mapped']} mapped "
                f"ingest_batch task(s), {af['tries']} tries; batch durations "
                f"{[round(x, 1) for x in bd]}"
            )
            print(
                "Airflow timeline (s after the first PUT): "
                + ", ".join(f"{n} {a:.1f}-{b:.1f}" for n, a, b in af["timeline"])
            )
            rss = af["rss"]
            # Airflow 3 names a task's process "airflow worker -- <task instance uuid>".
            tasks = [
                b
                for b, cmd in rss.peak.values()
                if re.match(r"airflow worker -- [0-9a-f]{8}-", cmd)
            ]
            if tasks:
                print(
                    f"task processes: {len(tasks)} seen, peak RSS max "
                    f"{max(tasks) / 2**20:.0f} MiB, median {pct(tasks, 0.5) / 2**20:.0f} MiB"
                )
            print(
                f"Airflow instance peak total RSS {rss.peak_total / 2**20:.0f} MiB; "
                "top processes by peak RSS:"
            )
            for pid, (b, cmd) in sorted(rss.peak.items(), key=lambda kv: -kv[1][0])[:10]:
                print(f"  {b / 2**20:7.0f} MiB  pid {pid}  {cmd}")
        load1 = os.getloadavg()
        print(f"\nload average at end {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}")
        print(f"(results kept in {home})")
    finally:
        if not args.keep:
            p.down()
            if not args.home:
                shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
