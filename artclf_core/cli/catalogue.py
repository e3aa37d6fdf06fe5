"""``artclf drop | ingest | similar | classify | report``: pictures in, answers out."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from artclf_core.cli import common
from artclf_core.cli.common import EXIT_PARTIAL
from artclf_core.embedded.stack import Stack

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".jfif"}


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

    from artclf_core.lake import s3 as s3lib

    settings = common.settings()
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
    from artclf_core.ingest.ingestor import Ingestor

    settings = common.settings()
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
    stack = Stack.default()
    servers = stack.server_cpu() if args.verbose and stack.serves(settings) else {}
    with Ingestor(settings, workers=args.workers) as ingestor:
        summary = ingestor.ingest_prefix(
            args.prefix,
            batch_size=args.batch_size,
            retry_failed=args.retry_failed,
            progress=progress,
        )
        load = ingestor.load_cpu
        # Before the connections close: a backend that has just exited may be counted
        # neither alive nor reaped.
        if servers:  # only with -v against the embedded stack: reading /proc is not free
            servers = {k: v - servers[k] for k, v in stack.server_cpu().items() if k in servers}
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        print(summary.line())
        for reason, n in sorted(summary.reasons.items()):
            print(f"  {reason}: {n}")
        if args.verbose and summary.processed:
            print(cpu_account(summary, load, servers))
    return EXIT_PARTIAL if summary.failed and args.strict else 0


def cpu_account(summary, load: float, servers: dict[str, float]) -> str:
    """``artclf ingest -v``'s CPU account: ms per processed object for each stage (the thread
    that ran it, ``other`` for the rest of the process), and the embedded servers' CPU over
    the same run when this command ran against the embedded stack."""
    ms = 1000 / summary.processed
    process = sum(summary.cpu.values())
    lines = [
        "  " + summary.cpu_line(),
        f"  ingest process {process * ms:.2f} ms per object"
        + (
            f" (start-up, not included: model load and checks' import, {load:.1f} s)"
            if load
            else ""
        ),
    ]
    if servers:
        names = {"s3": "S3 server", "postgres": "PostgreSQL"}
        parts = [f"{names[k]} {v * ms:.2f}" for k, v in sorted(servers.items())]
        total = process + sum(servers.values())
        lines.append(f"  {', '.join(parts)}; all together {total * ms:.2f} ms per object")
    return "\n".join(lines)


def cmd_similar(args: argparse.Namespace) -> int:
    from artclf_core.catalogue import artworks, db

    settings = common.settings()
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
        print(json.dumps([dict(zip(artworks.NEIGHBOUR_FIELDS, r, strict=True)) for r in rows]))
        return 0
    scope = "any label" if args.any_label else f"label {query[0]}"
    print(f"artwork {args.id} ({query[0]}, {query[1]}): {len(rows)} most similar, {scope}")
    print_neighbours(rows)
    return 0


def cmd_rehash(args: argparse.Namespace) -> int:
    """Recompute fingerprints of an older scheme from the lake (docs/dedup.md, "The hash")."""
    from artclf_core.lifecycle import rehash

    summary = rehash.rehash(common.settings(), batch_size=args.batch_size)
    print(summary.line())
    for why in summary.unreadable[:10]:
        print(f"  not rehashed: {why}")
    return EXIT_PARTIAL if summary.unreadable else 0


def print_neighbours(rows: list, indent: str = "") -> None:
    """The neighbour table of ``artclf similar`` and ``artclf classify``, with its header."""
    print(f"{indent}{'rank':>4}  {'artwork':>8}  {'distance':>8}  {'label':<12} location")
    for rank, aid, location, label, distance in rows:
        print(f"{indent}{rank:>4}  {aid:>8}  {distance:8.4f}  {label:<12} {location}")


def read_pictures(sources: list[str], settings) -> list[tuple[str, bytes | str]]:
    """``(name, bytes)`` for each local file or ``s3://bucket/key``; ``(name, error)`` when
    it cannot be read at all (missing, a folder, no permission)."""
    from artclf_core.lake import s3 as s3lib

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
    from artclf_core.catalogue import ask, db

    settings = common.settings()
    read = read_pictures(args.images, settings)
    unreadable = {n: m for n, m in read if isinstance(m, str)}
    pictures = [(n, d) for n, d in read if not isinstance(d, str)]
    model = ask.load_model(settings)
    with db.connect(settings.db_url) as conn:
        answers = ask.classify(model, conn, pictures, k=args.k, same_label=not args.any_label)
    by_name = {a.name: a for a in answers}
    ordered = [
        by_name.get(n) or ask.Answer(name=n, reason="unreadable", message=unreadable[n])
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
    from artclf_core.catalogue import db

    settings = common.settings()
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this module's commands on the main parser."""
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
        "rehash",
        help="recompute the near-copy fingerprints of artworks catalogued under an older "
        "scheme, from their pictures in the lake (safe beside ingestion; idempotent)",
    )
    p.add_argument("--batch-size", type=int, default=500)
    p.set_defaults(func=cmd_rehash)

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
