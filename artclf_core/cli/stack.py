"""``artclf up | down | stack | db``: the embedded stack, Airflow on it, and the schema."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from artclf_core.cli import common
from artclf_core.cli.common import EXIT_UNAVAILABLE


def cmd_stack(args: argparse.Namespace) -> int:
    from artclf_core.embedded.stack import Stack, format_env

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
        _older_fingerprints_notice(env)
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


def _older_fingerprints_notice(env: dict[str, str]) -> None:
    """After an upgrade, say once per start that older near-copy fingerprints are waiting
    for ``artclf rehash`` (sql/012; near copies are still found meanwhile)."""
    from artclf_core.catalogue import db
    from artclf_core.lifecycle import rehash

    with db.connect(env["ARTCLF_DB_URL"]) as conn:
        waiting = rehash.pending(conn)
    if waiting:
        print(
            f"note: {waiting} artwork(s) carry near-copy fingerprints of an older scheme;"
            " `artclf rehash` recomputes them from the lake (safe while ingesting)",
            file=sys.stderr,
        )


def cmd_up(args: argparse.Namespace) -> int:
    """The stack, then Airflow on it; idempotent: when both run, only print how to use them."""
    from artclf_core.embedded.airflow import EmbeddedAirflow
    from artclf_core.embedded.airflow_config import DAG_ID
    from artclf_core.embedded.stack import Stack

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
    _older_fingerprints_notice(env)
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
    from artclf_core.embedded.stack import Stack

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
    from artclf_core.catalogue import db

    applied = db.migrate(common.settings().db_url)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this module's commands on the main parser."""
    p = sub.add_parser("up", help="start everything: the stack and Airflow running the DAG")
    p.add_argument(
        "--executor",
        choices=["local", "celery"],
        help="local: the LocalExecutor; celery: the CeleryExecutor with a Redis broker "
        "and --workers Celery workers, the path docker-compose takes (both keep Airflow's "
        "metadata in the stack's PostgreSQL). Default: what the "
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
