"""The ``artclf`` command line: the whole product, with or without Airflow.

artclf up | down                        everything: the stack and Airflow running the DAG
artclf stack up | down | env | status   the embedded PostgreSQL + S3
artclf db migrate                       apply sql/ migrations
artclf drop PATH...                     upload files/folders to incoming/
artclf ingest                           process what is waiting
artclf similar ID [-k 5]                nearest artworks
artclf report                           where every dropped object ended
artclf train / evaluate                 the model
artclf models | retrain | atlas | label | review   model lifecycle, curation (cli/models.py)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

from artclf_core.cli import catalogue, models, stack  # noqa: E402
from artclf_core.cli.common import EXIT_REFUSED, EXIT_UNAVAILABLE  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="artclf", description=__doc__.split("\n")[0])
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)
    stack.add_parsers(sub)
    models.add_parsers(sub)
    catalogue.add_parsers(sub)
    models.add_training_parsers(sub)
    return parser


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
