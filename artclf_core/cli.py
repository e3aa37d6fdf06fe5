"""The ``artclf`` command line: the whole product, with or without Airflow.

artclf up | down                        everything: the stack and Airflow running the DAG
artclf stack up | down | env | status   the embedded PostgreSQL + S3
artclf db migrate                       apply sql/ migrations
artclf drop PATH...                     upload files/folders to incoming/
artclf ingest                           process what is waiting
artclf similar ID [-k 5]                nearest artworks
artclf report                           where every dropped object ended
artclf train / evaluate                 the model
artclf models | retrain | atlas | label | review   model lifecycle, curation (cli_models.py)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".jfif"}


def _settings():
    from artclf_core.config import Settings

    return Settings.from_env()


# ---------------------------------------------------------------------------- stack


def cmd_stack(args: argparse.Namespace) -> int:
    from artclf_core.stack import Stack, format_env

    stack = Stack.default()
    if args.action == "up":
        env = stack.up()
        print(f"artclf stack is up (state in {stack.home})", file=sys.stderr)
        print(f"  PostgreSQL: {_redact(env['ARTCLF_DB_URL'])}", file=sys.stderr)
        print(
            f"  S3:         {env['ARTCLF_S3_ENDPOINT']}  bucket {env['ARTCLF_BUCKET']}",
            file=sys.stderr,
        )
        print('  eval "$(artclf stack env)" to export the connection settings', file=sys.stderr)
    elif args.action == "down":
        stack.down()
        print("artclf stack is down", file=sys.stderr)
    elif args.action == "env":
        if not stack.env_file.exists():
            print("no embedded stack is running here: artclf stack up", file=sys.stderr)
            return EXIT_UNAVAILABLE
        from artclf_core.config import read_env_file

        sys.stdout.write(format_env(read_env_file(stack.env_file)))
    else:
        for name, running in stack.status().items():
            print(f"{name}: {'running' if running else 'stopped'}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """The stack, then Airflow on it; idempotent: when both run, only print how to use them."""
    from artclf_core.embedded.airflow import DAG_ID, EmbeddedAirflow
    from artclf_core.stack import Stack

    stack = Stack.default()
    airflow = EmbeddedAirflow(
        stack.home, executor=args.executor, workers=args.workers, concurrency=args.concurrency
    )
    stack_was_up = all(stack.status().values())
    before = airflow.leader() if airflow.is_running() else None
    env = stack.up()
    warm = None
    if before is None:
        print("starting Airflow (up to a minute)...", file=sys.stderr)
        warm = _start_warm(env, stack.home)
    try:
        info = airflow.start(env)
    except BaseException:
        if warm is not None:
            warm.kill()
            warm.wait()
        if not stack_was_up:  # leave things as they were: nothing half-started
            stack.down()
        raise
    if warm is not None:
        _finish_warm(warm, stack.home)
    already = stack_was_up and before is not None and airflow.leader() == before
    url = info["AIRFLOW_URL"]
    print(f"artclf is {'already ' if already else ''}up (state in {stack.home})")
    print()
    print(f"  Airflow     {url}   login {info['AIRFLOW_USER']} / {info['AIRFLOW_PASSWORD']}")
    plan = airflow.deployment()
    if plan["executor"] == "celery":
        print(
            f"              CeleryExecutor: {plan['workers']} workers x {plan['concurrency']} "
            f"slots, broker {_redact(airflow.redis.url())}"
        )
    print(f"              DAG {DAG_ID} runs by itself when images land under incoming/")
    print(f"              {url}/dags/{DAG_ID}")
    print(f"  Artworks    {url}/artclf/   (also under Browse in Airflow's menu)")
    print(f"              read-only login viewer / {airflow.password('viewer')}")
    print(f"  S3          {env['ARTCLF_S3_ENDPOINT']}   bucket {env['ARTCLF_BUCKET']}")
    print(
        f"              access key {env['AWS_ACCESS_KEY_ID']}   "
        f"secret key {env['AWS_SECRET_ACCESS_KEY']}"
    )
    print(f"  PostgreSQL  {_redact(env['ARTCLF_DB_URL'])}")
    print()
    print("Next:")
    print('  source .venv/bin/activate && eval "$(artclf stack env)"   # settings for any tool')
    print("  artclf drop path/to/images/      # upload to s3://$ARTCLF_BUCKET/incoming/; or")
    print('  aws --endpoint-url "$ARTCLF_S3_ENDPOINT" s3 cp x.jpg "s3://$ARTCLF_BUCKET/incoming/"')
    print(f"  # the {DAG_ID} DAG catalogues them within seconds: watch it in Airflow")
    print("  artclf report                    # where every dropped object ended")
    print("  artclf similar 1                 # top-5 similar artworks")
    print("  artclf classify picture.jpg      # its label and top-5, without cataloguing it")
    print('  psql "$ARTCLF_READER_DB_URL" -c "SELECT * FROM artclf.similar_artworks(1, 5)"')
    print("  artclf down                      # stop everything (make stop)")
    return 0


def _start_warm(env: dict[str, str], home: Path) -> subprocess.Popen:
    """``artclf models warm`` in the background while Airflow starts: the first drop then
    finds the model converted for inference (see ``cli_models._warm``)."""
    with open(home / "model-warm.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "artclf_core.cli", "models", "warm"],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _finish_warm(proc: subprocess.Popen, home: Path, timeout: float = 180.0) -> None:
    """Wait for the warm-up; a failure only costs the first drop the conversion."""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    if code != 0:
        print(
            f"note: preparing the model for inference did not finish (see "
            f"{home / 'model-warm.log'}); the first batch will do it",
            file=sys.stderr,
        )


def cmd_down(args: argparse.Namespace) -> int:
    """Airflow first (its tasks and trigger use the stack), then the stack."""
    from artclf_core.embedded.airflow import EmbeddedAirflow
    from artclf_core.stack import Stack

    stack = Stack.default()
    EmbeddedAirflow(stack.home).stop()
    stack.down()
    print("artclf is down (data kept in " + str(stack.home) + ")", file=sys.stderr)
    return 0


def _redact(url: str) -> str:
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


def cmd_db(args: argparse.Namespace) -> int:
    from artclf_core import db

    applied = db.migrate(_settings().db_url)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


# ---------------------------------------------------------------------------- lake


def iter_files(paths: list[str]) -> list[tuple[Path, str]]:
    """(file, key suffix) for every image under the given files/folders, folders kept."""
    out: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.is_file() and not f.name.startswith("."):
                    out.append((f, f"{path.name}/{f.relative_to(path).as_posix()}"))
        elif path.is_file():
            out.append((path, path.name))
        else:
            raise ValueError(f"{raw}: no such file or folder")
    return out


def cmd_drop(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from artclf_core import s3 as s3lib

    settings = _settings()
    client = s3lib.client(settings)
    files = iter_files(args.paths)
    prefix = args.prefix if args.prefix.endswith("/") else args.prefix + "/"

    def upload(item: tuple[Path, str]) -> None:
        client.upload_file(str(item[0]), settings.bucket, prefix + item[1])

    show = len(files) > 20 and sys.stderr.isatty() or args.progress
    with (
        ThreadPoolExecutor(8) as pool,
        tqdm(total=len(files), unit="file", disable=not show, desc="drop") as bar,
    ):
        for _ in pool.map(upload, files):
            bar.update()
    print(f"dropped {len(files)} file(s) into s3://{settings.bucket}/{prefix}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from artclf_core.pipeline import Ingestor

    settings = _settings()
    if args.model:
        settings = settings.with_(model_path=args.model)

    def progress(summary) -> None:
        if args.verbose:
            print("  " + summary.line(), file=sys.stderr)

    def stop(signum: int, _frame: object) -> None:
        # Unwinds through the pipeline, which releases its claims so that the next run takes
        # the objects at once (a SIGKILL cannot be caught: its claims die with its session).
        print(
            f"artclf ingest: stopped by {signal.Signals(signum).name}; unfinished objects"
            " stay in place and are claimable by the next run at once",
            file=sys.stderr,
        )
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    with Ingestor(settings, workers=args.workers) as ingestor:
        summary = ingestor.ingest_prefix(
            args.prefix,
            batch_size=args.batch_size,
            retry_failed=args.retry_failed,
            progress=progress,
        )
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        print(summary.line())
        for reason, n in sorted(summary.reasons.items()):
            print(f"  {reason}: {n}")
    return EXIT_PARTIAL if summary.failed and args.strict else 0


def cmd_similar(args: argparse.Namespace) -> int:
    from artclf_core import db

    settings = _settings()
    with db.connect(settings.db_url) as conn:
        rows = conn.execute(
            "SELECT rank, artwork_id, location, label, distance"
            " FROM artclf.similar_artworks(%s, %s, %s)",
            (args.id, args.k, not args.any_label),
        ).fetchall()
        if (
            not rows
            and not conn.execute(
                "SELECT 1 FROM artclf.artworks WHERE id = %s", (args.id,)
            ).fetchone()
        ):
            raise LookupError(f"no artwork with id {args.id}")  # main(): exit 2, one line
        query = conn.execute(
            "SELECT best_label, location FROM artclf.catalogue WHERE id = %s", (args.id,)
        ).fetchone()
    if args.json:
        print(json.dumps([dict(zip(db.NEIGHBOUR_FIELDS, r, strict=True)) for r in rows]))
        return 0
    scope = "any label" if args.any_label else f"label {query[0]}"
    print(f"artwork {args.id} ({query[0]}, {query[1]}): {len(rows)} most similar, {scope}")
    print_neighbours(rows)
    return 0


def print_neighbours(rows: list, indent: str = "") -> None:
    """The neighbour table of ``artclf similar`` and ``artclf classify``, with its header."""
    print(f"{indent}{'rank':>4}  {'artwork':>8}  {'distance':>8}  {'label':<12} location")
    for rank, aid, location, label, distance in rows:
        print(f"{indent}{rank:>4}  {aid:>8}  {distance:8.4f}  {label:<12} {location}")


def read_pictures(sources: list[str], settings) -> list[tuple[str, bytes | str]]:
    """``(name, bytes)`` for each local file or ``s3://bucket/key``; ``(name, error)`` when
    it cannot be read at all (missing, a folder, no permission)."""
    from artclf_core import s3 as s3lib

    client = None
    out: list[tuple[str, bytes | str]] = []
    for source in sources:
        try:
            if source.startswith("s3://"):
                bucket, _, key = source[5:].partition("/")
                client = client or s3lib.client(settings)
                out.append((source, s3lib.get_bytes(client, bucket, key)))
            else:
                out.append((source, Path(source).read_bytes()))
        except Exception as exc:  # noqa: BLE001 - reported per picture, the others go on
            out.append((source, f"cannot read {source}: {exc}"))
    return out


def cmd_classify(args: argparse.Namespace) -> int:
    from artclf_core import classify, db

    settings = _settings()
    read = read_pictures(args.images, settings)
    unreadable = {n: m for n, m in read if isinstance(m, str)}
    pictures = [(n, d) for n, d in read if not isinstance(d, str)]
    model = classify.load_model(settings)
    with db.connect(settings.db_url) as conn:
        answers = classify.classify(model, conn, pictures, k=args.k, same_label=not args.any_label)
    by_name = {a.name: a for a in answers}
    ordered = [
        by_name.get(n) or classify.Answer(name=n, reason="unreadable", message=unreadable[n])
        for n, _ in read
    ]
    if args.json:
        for a in ordered:
            print(json.dumps(a.as_dict()))
    else:
        for i, a in enumerate(ordered):
            if i:
                print()
            if a.reason:
                print(f"{a.name}: rejected [{a.reason}] {a.message}")
                continue
            others = ", ".join(
                f"{c} {p:.3f}" for c, p in sorted(a.probabilities.items(), key=lambda x: -x[1])[1:]
            )
            print(
                f"{a.name}: {a.label} {a.probability:.3f}  ({others})"
                f"  [{a.width}x{a.height} {a.format}, model {a.model_version}]"
            )
            if a.low_confidence:
                print(f"  low confidence, below {a.review_threshold:.3f}: a curator should check")
            if a.catalogued_as is not None:
                print(f"  already catalogued as artwork {a.catalogued_as}")
            if a.note:
                print(f"  {a.note}")
            elif a.neighbours:
                scope = "any label" if args.any_label else f"label {a.label}"
                print(f"  {len(a.neighbours)} most similar, {scope}:")
                print_neighbours([tuple(n.values()) for n in a.neighbours], indent="  ")
    return EXIT_PARTIAL if any(a.reason for a in ordered) else 0


#: What ``artclf report`` lists after the counts when no --state is given.
ATTENTION_STATES = ("failed", "quarantined", "processing")


def cmd_report(args: argparse.Namespace) -> int:
    """Where every dropped object ended: counts by state and reason, then the objects of
    ``--state`` (default: those that need attention: failed, quarantined, stuck), each with
    its ingest-log id and its artwork id (what ``artclf similar`` takes)."""
    from artclf_core import db

    settings = _settings()
    states = (args.state,) if args.state else ATTENTION_STATES
    with db.connect(settings.db_url) as conn:
        counts = conn.execute(
            "SELECT state, coalesce(reason, ''), count(*) FROM artclf.ingest_log"
            " GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        detail = db.fetch_dicts(
            conn,
            "SELECT id, state, key, final_key, reason, message, attempts, artwork_id,"
            " duplicate_of, duplicate_kind, distance FROM artclf.ingest_log"
            " WHERE state = ANY(%s) ORDER BY id DESC LIMIT %s",
            (list(states), args.limit),
        )
    if not counts:
        print("nothing dropped yet: artclf drop PATH (or any S3 client) under incoming/")
        return 0
    print(f"{'state':<12} {'reason':<24} {'objects':>8}")
    for state, reason, n in counts:
        print(f"{state:<12} {reason or '-':<24} {n:>8}")
    print()
    what = f"state {args.state}" if args.state else "needing attention (" + ", ".join(states) + ")"
    if not detail:
        print(f"no object {what}")
        return 0
    print(f"objects {what}, newest first (at most {args.limit}):")
    print(f"{'log':>7} {'artwork':>7}  {'state':<11}  object -> where it is now  [why]")
    for r in detail:
        artwork = r["artwork_id"] or r["duplicate_of"]
        print(
            f"{r['id']:>7} {artwork or '-':>7}  {r['state']:<11}  {r['key']} -> "
            f"{r['final_key'] or '(in place)'}  {_why(r)}"
        )
    return 0


def _why(r: dict) -> str:
    """The reason column of a report line: what a duplicate copies, why an object failed."""
    if r["state"] == "duplicate":
        how = r["duplicate_kind"] or "exact"
        dist = f", pHash distance {r['distance']}" if r["distance"] is not None else ""
        return f"[{how} copy of artwork {r['duplicate_of']}{dist}]"
    if r["reason"]:
        tries = f" (attempts {r['attempts']})" if r["state"] == "failed" else ""
        return f"[{r['reason']}] {r['message'] or ''}{tries}".rstrip()
    return ""


# ---------------------------------------------------------------------------- model


def cmd_train(args: argparse.Namespace) -> int:
    from artclf_core import training
    from artclf_core.metrics import format_report

    kwargs = {"val": args.val, "seed": args.seed, "arch": args.arch}
    if args.kshot:
        kwargs["kshot"] = True
    for name in (
        "epochs",
        "patience",
        "learning_rate",
        "batch_size",
        "image_size",
        "head_epochs",
        "fine_tune_stages",
    ):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    result = training.train(args.data, args.out, **kwargs)
    report = result.get("report") or result.get("validation")
    if report:
        print(format_report(report))
    print(f"saved {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from artclf_core import training
    from artclf_core.metrics import format_report

    if args.cv == "sources":
        from artclf_core import cv_evaluate

        result = cv_evaluate.evaluate_by_sources(
            args.data, args.model, views=args.views, variant=args.backbone
        )
        print(json.dumps(result) if args.json else cv_evaluate.format_by_sources(result))
        return 0
    report = training.evaluate(args.data, args.model)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
    return 0


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="artclf", description=__doc__.split("\n")[0])
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start everything: the stack and Airflow running the DAG")
    p.add_argument(
        "--executor",
        choices=["local", "celery"],
        help="local: the LocalExecutor with SQLite metadata; celery: the "
        "CeleryExecutor with a Redis broker, Airflow's metadata in the stack's PostgreSQL "
        "and --workers Celery workers, the path docker-compose takes. Default: what the "
        "last `artclf up` used, else local",
    )
    p.add_argument("--workers", type=int, help="Celery workers (celery executor; default 2)")
    p.add_argument(
        "--concurrency", type=int, help="task slots per Celery worker (celery executor; default 2)"
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop everything `artclf up` started (data is kept)")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("stack", help="start/stop the embedded PostgreSQL + S3")
    p.add_argument("action", choices=["up", "down", "env", "status"])
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("db", help="database schema")
    p.add_argument("action", choices=["migrate"])
    p.set_defaults(func=cmd_db)

    from artclf_core import cli_models

    cli_models.add_parsers(sub)

    p = sub.add_parser("drop", help="upload images or folders to incoming/")
    p.add_argument("paths", nargs="+")
    p.add_argument("--prefix", default="incoming/")
    p.add_argument("--progress", action="store_true", help="always show the progress bar")
    p.set_defaults(func=cmd_drop)

    p = sub.add_parser("ingest", help="process every object waiting under a prefix")
    p.add_argument("--prefix", default="incoming/")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=8, help="I/O and decoding threads")
    p.add_argument(
        "--retry-failed", action="store_true", help="also retry objects that used up their attempts"
    )
    p.add_argument("--model", help="a .keras model (default: ARTCLF_MODEL or the shipped one)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--strict", action="store_true", help="exit 1 if any object failed")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("similar", help="the k artworks most similar to one")
    p.add_argument("id", type=int)
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--any-label", action="store_true", help="do not restrict to its label")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser(
        "classify",
        help="label, probabilities and most similar artworks of pictures (nothing catalogued)",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="a local file or s3://bucket/key")
    p.add_argument("-k", type=int, default=5, help="neighbours per picture (default 5)")
    p.add_argument("--any-label", action="store_true", help="neighbours of any label")
    p.add_argument("--json", action="store_true", help="one JSON object per picture")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser(
        "report",
        help="where every dropped object ended: counts by state and reason, then the objects "
        "that need attention (or those of --state), with their log and artwork ids",
    )
    p.add_argument(
        "--state",
        choices=["pending", "processing", "catalogued", "duplicate", "quarantined", "failed"],
        help="list the objects in this state instead of those needing attention",
    )
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("train", help="train a model on DIR/<label>/*")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--arch",
        default="efficientnet_lite1_texture",
        choices=[
            "efficientnet_lite1_texture",
            "efficientnet_lite0_texture",
            "efficientnet_lite0",
            "cnn",
        ],
        help="efficientnet_lite1_texture (default: frozen backbone, closed-form head, "
        "calibrated by source-family CV), the same on Lite0, efficientnet_lite0 "
        "(fine-tuned) or cnn",
    )
    p.add_argument("--epochs", type=int, help="max epochs (backbone: of the fine-tuning phase)")
    p.add_argument("--val", default="source", choices=["source", "random", "none"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patience", type=int, help="early-stopping patience (epochs)")
    p.add_argument("--learning-rate", type=float, help="(backbone: of the fine-tuning phase)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=int, help="input side (default: the arch's recipe)")
    p.add_argument("--head-epochs", type=int, help="backbone: epochs with it frozen")
    p.add_argument("--fine-tune-stages", type=int, help="backbone: top stages unfrozen (0-7)")
    p.add_argument(
        "--kshot",
        action="store_true",
        help="closed-form archs: also measure the k-shot curve and store it in the model "
        "(the Models page plots it; a few minutes more)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a model on DIR/<label>/*")
    p.add_argument("--data", required=True)
    p.add_argument("--model")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--cv",
        choices=("sources",),
        help="sources: leave-one-source-family-out CV of the reference recipe, and the model "
        "on the families it never trained on (docs/model-card.md); without it every image "
        "of DIR is scored, which overstates quality on training data",
    )
    p.add_argument("--views", type=int, default=1, help="--cv: views per training image")
    p.add_argument(
        "--backbone",
        default="lite1",
        choices=("lite0", "lite1", "lite2"),
        help="--cv: the recipe's frozen EfficientNet-Lite (default lite1, the shipped one)",
    )
    p.set_defaults(func=cmd_evaluate)
    return parser


#: Exit codes (README "Exit codes"): 0 done, 1 done but some objects failed or were
#: rejected (``ingest --strict``, ``classify``), 2 refused (bad input, a check that failed,
#: a lock that stayed taken), 3 a service was unreachable, 128+N stopped by signal N
#: (130: Ctrl-C). Module-level so every command uses the same numbers.
EXIT_PARTIAL = 1
EXIT_REFUSED = 2
EXIT_UNAVAILABLE = 3

#: What becomes of the objects when a command stops half-way, for every command: claims
#: belong to the run's database session, so they end with it.
_NOTHING_LOST = (
    "Nothing is lost: what was committed stays committed, and objects this run had claimed"
    " stay where they are and are taken by the next run at once."
)


def unavailable(exc: BaseException) -> str | None:
    """Which service a failure says is unreachable ("PostgreSQL", "S3"), or None.

    Walks the cause chain: the pipeline may wrap a connection failure in its own error.
    Only connection-level failures count (SQLSTATE class 08, a server shutting down, or no
    SQLSTATE at all for a refused connection); a lock timeout or a refused statement is
    another kind of error and keeps its own message.
    """
    import psycopg
    from botocore.exceptions import (
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    s3_down = (
        EndpointConnectionError,
        ConnectionClosedError,
        ConnectTimeoutError,
        ReadTimeoutError,
    )
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, psycopg.OperationalError):
            state = current.sqlstate or ""
            if not state or state.startswith("08") or state in ("57P01", "57P02", "57P03"):
                return "PostgreSQL"
        if isinstance(current, s3_down):
            return "S3"
        current = current.__cause__ or current.__context__
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # a real command line, not a caller's in-process use
        from artclf_core.native_logs import filter_stderr

        filter_stderr()
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    # Libraries' INFO chatter is not an answer to the user's command (issue 30). A filter on
    # the handler, not logger levels: Great Expectations sets its own level when imported.
    noisy = ("great_expectations", "tensorflow", "absl", "h5py", "botocore", "urllib3")
    for handler in logging.root.handlers:
        handler.addFilter(lambda r: r.levelno >= logging.WARNING or not r.name.startswith(noisy))
    if args.command == "train" or getattr(args, "verbose", False):
        # Training progress (epochs, features, evaluation) is logged at INFO by artclf.*.
        logging.getLogger("artclf").setLevel(min(logging.INFO, logging.root.level))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"artclf {args.command}: interrupted. {_NOTHING_LOST}", file=sys.stderr)
        return 130
    except Exception as exc:
        service = unavailable(exc)
        if service is not None:
            print(
                f"artclf {args.command}: {service} is unreachable ({_first_line(exc)}). "
                f"{_NOTHING_LOST} Start {service} again (`artclf stack up` for the embedded"
                " stack) and re-run the command.",
                file=sys.stderr,
            )
            return EXIT_UNAVAILABLE
        refused = isinstance(exc, RuntimeError | ValueError | LookupError)
        if refused or type(exc).__module__.startswith("psycopg"):  # e.g. a refusal in SQL
            # One line: a PostgreSQL refusal's primary message, not its CONTEXT lines.
            why = getattr(getattr(exc, "diag", None), "message_primary", None) or str(exc)
            print(f"artclf {args.command}: {why.strip().splitlines()[0]}", file=sys.stderr)
            return EXIT_REFUSED
        raise


if __name__ == "__main__":
    sys.exit(main())
