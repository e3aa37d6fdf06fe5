"""``artclf`` commands for the model lifecycle and curation.

artclf models list | show V | register | activate V | embed V | rollback | drop V
artclf retrain [--arch A] [--force]       train on the lake's labelled images, gate, publish
artclf atlas [--version V] [--out F]      interactive HTML projection of a version's embeddings
artclf label ID LABEL [--by NAME]          confirm or correct an artwork's label
artclf label DIR [--collection C]          label a folder of <class>/ sub-folders in one go
artclf review [--threshold P] [--collection C] low-confidence predictions awaiting a curator
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from artclf_core.cli import common
from artclf_core.model.archs import ARCHS, DEFAULT_ARCH


def _balanced(metrics: Any) -> str:
    try:
        return f"{metrics['validation']['balanced_accuracy']:.3f}"
    except (KeyError, TypeError):
        return "-"


def cmd_models(args: argparse.Namespace) -> int:
    from artclf_core.catalogue import db, registry
    from artclf_core.lifecycle import reembed

    settings = common.settings()
    action = args.action
    if action == "register":
        version = registry.register(settings.db_url, args.model)
        print(f"registered model {version}")
        return 0
    if action in ("activate", "embed", "show", "drop") and not args.version:
        raise ValueError(f"give a VERSION: artclf models {action} VERSION")
    if action == "list":
        with db.connect(settings.db_url) as conn:
            rows = db.fetch_dicts(
                conn,
                "SELECT m.version, m.arch, m.status, m.is_active, m.index_built, m.created_at,"
                " m.metrics, (SELECT count(*) FROM artclf.embeddings e"
                "  WHERE e.model_version = m.version) AS embedded"
                " FROM artclf.model_versions m ORDER BY m.created_at, m.version",
            )
        if args.json:
            print(json.dumps(rows, default=str))
            return 0
        print(f"{'':2}{'version':34} {'arch':18} {'status':10} {'bal.acc':>7} {'embedded':>9}")
        for r in rows:
            mark = "* " if r["is_active"] else "  "
            print(
                f"{mark}{r['version']:34} {r['arch']:18} {r['status']:10} "
                f"{_balanced(r['metrics']):>7} {r['embedded']:>9}"
            )
        return 0
    if action == "show":
        with db.connect(settings.db_url) as conn:
            rows = db.fetch_dicts(
                conn,
                "SELECT version, arch, status, is_active, artifact, data_fingerprint, params,"
                " decision, plots, index_built, created_at, activated_at"
                " FROM artclf.model_versions WHERE version = %s",
                (args.version,),
            )
            if not rows:
                raise LookupError(f"no model version {args.version}")
            record = rows[0]
            record["activations"] = db.fetch_dicts(
                conn,
                "SELECT version, previous, activated_by, reason, activated_at"
                " FROM artclf.model_activations WHERE version = %s OR previous = %s ORDER BY id",
                (args.version, args.version),
            )
        print(json.dumps(record, indent=2, default=str))
        return 0
    if action in ("activate", "embed"):

        def progress(done: int, total: int) -> None:
            print(f"\rembedded {done}/{total}", end="", file=sys.stderr, flush=True)

        result = reembed.reembed(
            settings, args.version, activate=action == "activate", progress=progress
        )
        print(file=sys.stderr)
        print(json.dumps(result))
        return 0
    if action == "warm":
        return _warm(settings, args.version)
    if action == "rollback":
        print(json.dumps(reembed.rollback(settings)))
        return 0
    if action == "drop":
        dropped = reembed.drop(settings, args.version)
        print(f"{'dropped' if dropped else 'no'} embeddings of {args.version}; status retired")
        return 0
    raise ValueError(f"unknown action {action}")


def _warm(settings: Any, version: str | None) -> int:
    """Prepare a version's inference copy (default: the model the ingest workers load) in
    the model cache.

    The first forward pass of a model converts its ``.keras`` file for TFLite (~2-4 s of CPU
    with the imports); doing it ahead, e.g. while ``artclf up`` starts Airflow, means the
    first drop is catalogued as fast as the next ones.
    """
    import time

    from artclf_core.catalogue.registry import load_for_inference

    started = time.perf_counter()
    model = load_for_inference(settings, version)
    print(
        f"model {model.version} ready for inference ({model.runner.name}) in "
        f"{time.perf_counter() - started:.1f}s"
    )
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from artclf_core.lifecycle import promotion, retrain

    policy = promotion.GatePolicy.from_env(min_gain=args.min_gain, max_f1_drop=args.max_f1_drop)
    with tempfile.TemporaryDirectory(prefix="artclf-retrain-") as tmp:
        summary = retrain.retrain(
            common.settings(),
            work_dir=args.work_dir or tmp,
            arch=args.arch,
            epochs=args.epochs,
            policy=policy,
            force=args.force,
            verbose=2 if args.verbose else 0,
        )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_atlas(args: argparse.Namespace) -> int:
    from artclf_core.lifecycle import reembed

    summary = reembed.write_version_atlas(
        common.settings(), args.version, args.out, upload=not args.no_upload
    )
    print(json.dumps(summary, default=str))
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    import getpass

    from artclf_core.catalogue import db

    curator = args.by or getpass.getuser()
    if args.label is None:
        return _label_folder(args, curator)
    try:
        artwork_id = int(args.target)
    except ValueError:
        raise ValueError(
            f"{args.target!r} is not an artwork id; `artclf label ID LABEL` labels one "
            "artwork, `artclf label DIR` a folder of <class>/ sub-folders"
        ) from None
    from artclf_core import CLASSES

    if args.label not in CLASSES:
        raise ValueError(f"unknown label {args.label}; expected one of {', '.join(CLASSES)}")
    with db.connect(common.settings().db_url) as conn:
        conn.execute("SELECT artclf.confirm_label(%s, %s, %s)", (artwork_id, args.label, curator))
        if args.collection:
            conn.execute("SELECT artclf.set_collection(%s, %s)", ([artwork_id], args.collection))
        conn.commit()
    print(f"artwork {artwork_id}: label {args.label} confirmed")
    return 0


def _label_folder(args: argparse.Namespace, curator: str) -> int:
    from artclf_core.ingest import labelling

    if not Path(args.target).is_dir():
        raise ValueError(
            f"{args.target}: no such folder (`artclf label DIR`, or `artclf label ID LABEL`)"
        )
    summary = labelling.label_folder(
        common.settings(), args.target, curator=curator, collection=args.collection
    )
    if args.json:
        print(json.dumps(summary.__dict__))
        return 0
    print(summary.line())
    for path, why in sorted(summary.not_labelled.items()):
        print(f"  not labelled: {path}: {why}")
    for path in summary.skipped:
        print(f"  skipped (not a picture): {path}")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from artclf_core.catalogue import db

    with db.connect(common.settings().db_url) as conn:
        rows = db.fetch_dicts(
            conn,
            "SELECT artwork_id, location, label, probability"
            " FROM artclf.review_queue(%s, %s::text) LIMIT %s",
            (args.threshold, args.collection, args.limit),
        )
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    for r in rows:
        print(f"{r['artwork_id']:>8}  {r['label']:12} p={r['probability']:.2f}  {r['location']}")
    print(f"{len(rows)} artwork(s) to review", file=sys.stderr)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the commands of this module on the main parser."""
    p = sub.add_parser("models", help="the model registry: list, show, activate, rollback")
    p.add_argument(
        "action",
        choices=["list", "show", "register", "activate", "embed", "rollback", "drop", "warm"],
        help="warm: prepare the inference copy of VERSION (default: the active model)",
    )
    p.add_argument("version", nargs="?")
    p.add_argument("--model", help="register: a .keras file (default: ARTCLF_MODEL or shipped)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("retrain", help="train on the lake's labelled images, gate and publish")
    p.add_argument(
        "--arch",
        choices=ARCHS,
        help="default: ARTCLF_TRAIN_ARCH, else the active model's architecture",
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--min-gain", type=float, help="gate: least balanced-accuracy gain")
    p.add_argument("--max-f1-drop", type=float, help="gate: largest per-class F1 drop")
    p.add_argument("--force", action="store_true", help="train even if the data is unchanged")
    p.add_argument("--work-dir", help="keep the dataset and candidate here")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("atlas", help="HTML projection of a model version's embeddings")
    p.add_argument("--version", help="default: the active one")
    p.add_argument("--out", help="default: $ARTCLF_HOME/atlas/<version>.html")
    p.add_argument("--no-upload", action="store_true", help="do not copy it to models/<v>/")
    p.set_defaults(func=cmd_atlas)

    p = sub.add_parser(
        "label",
        help="confirm or correct labels (curators): one artwork (ID LABEL) or a folder of "
        "<class>/ sub-folders (DIR), new pictures in it catalogued first",
    )
    p.add_argument("target", metavar="ID|DIR")
    p.add_argument("label", nargs="?", help="with ID: the label")
    p.add_argument("--by", help="curator name (default: your login)")
    p.add_argument(
        "--collection",
        help="the collection these artworks belong to (DIR: default the folder's name for new "
        "pictures; given, it is set on every labelled artwork)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("review", help="low-confidence predictions awaiting a curator")
    p.add_argument("--threshold", type=float, help="default: the review_threshold setting")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--collection", help="only this collection's artworks (artworks.collection)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_review)


def cmd_train(args: argparse.Namespace) -> int:
    from artclf_core.lifecycle import training
    from artclf_core.lifecycle.metrics import format_report

    kwargs = {"val": args.val, "seed": args.seed, "arch": args.arch}
    if args.kshot:
        kwargs["kshot"] = True
    if args.unlabelled:
        kwargs["unlabelled"] = args.unlabelled
    for name in (
        "epochs",
        "patience",
        "learning_rate",
        "batch_size",
        "image_size",
        "head_epochs",
        "fine_tune_stages",
        "views",
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
    from artclf_core.lifecycle import evaluation
    from artclf_core.lifecycle.metrics import format_report

    if args.cv == "sources":
        from artclf_core.lifecycle import cv_evaluate

        options = {} if args.views is None else {"views": args.views}
        result = cv_evaluate.evaluate_by_sources(
            args.data, args.model, variant=args.backbone, gram=not args.no_gram, **options
        )
        print(json.dumps(result) if args.json else cv_evaluate.format_by_sources(result))
        return 0
    report = evaluation.evaluate(args.data, args.model)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
    return 0


def add_training_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this module's commands on the main parser."""
    p = sub.add_parser("train", help="train a model on DIR/<label>/*")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--arch",
        default=DEFAULT_ARCH,
        choices=ARCHS,
        help="efficientnet_lite1_gram (default: frozen backbone, texture statistics and "
        "channel correlations, closed-form head, calibrated by source-family CV), "
        "efficientnet_lite1_texture (without the correlations), the same on Lite0, "
        "efficientnet_lite0 (fine-tuned) or cnn",
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
        "--views",
        type=int,
        help="closed-form archs: views of each training image, the picture and tone copies "
        "of it (greyscale, sepia, halftone; default: ridge_head.DEFAULT_VIEWS; 1: the picture)",
    )
    p.add_argument(
        "--kshot",
        action="store_true",
        help="closed-form archs: also measure the k-shot curve and store it in the model "
        "(the Models page plots it; a few minutes more)",
    )
    p.add_argument(
        "--unlabelled",
        metavar="UDIR",
        help="closed-form archs: UDIR/<collection>/ images without labels; the head "
        "self-trains on each collection's confident predictions (what the nightly retrain "
        "does with the catalogue's uncurated artworks)",
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
    p.add_argument(
        "--views",
        type=int,
        help="--cv: views per training image, the picture and tone copies (default: the "
        "recipe's, ridge_head.DEFAULT_VIEWS)",
    )
    p.add_argument(
        "--backbone",
        default="lite1",
        choices=("lite0", "lite1", "lite2"),
        help="--cv: the recipe's frozen EfficientNet-Lite (default lite1, the shipped one)",
    )
    p.add_argument(
        "--no-gram",
        action="store_true",
        help="--cv: the recipe without the channel correlations (the default before 2026-12-07)",
    )
    p.set_defaults(func=cmd_evaluate)
