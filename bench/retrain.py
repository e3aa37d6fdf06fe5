"""Nightly retraining on a lake of the shared images: the gate's verdict, both models'
figures on the same source-disjoint validation images, and the time it takes.

    python bench/retrain.py [--data ../shared/data/artworks] [--arch cnn] [--epochs N]
                            [--uncurated N [--collections C]]

1. Starts a throw-away embedded stack; the shipped default model is the active version.
2. Drops the shared images under ``training/<label>/`` (the lake's labelled images) and
   ingests them (they are catalogued in place, with their folder's label). With
   ``--uncurated N``, also N uncurated artworks in C collections (``incoming/museum-XX/``,
   default one per 1,000), the nightly run's self-training input at lake scale: the shared
   pictures mirrored and turned by 90 or 270 degrees (four variants each, none a near copy
   of another), catalogued by the active model like any drop. This measures time only: the
   variants are copies of the labelled pictures, validation families included.
3. Runs :func:`artclf_core.lifecycle.retrain.retrain` exactly as the ``artclf_retrain`` DAG does:
   dataset export, source-disjoint split (copies grouped), training, the active model scored
   on the same validation images, the gate, publishing to ``models/<version>/``.

Prints accuracy, balanced accuracy and per-class F1 of the candidate and of the active
(shipped) model, the gate's decision with its reasons, and the wall time of the retraining.
Caveat printed with the result: the shipped model was trained on these images, so where the
split differs from the one it was trained with, it is scored partly on images it has seen,
which flatters it (the gate is then conservative).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import _stack  # noqa: E402
from ingest import images  # noqa: E402

from artclf_core import CLASSES  # noqa: E402
from artclf_core.config import Settings, read_env_file  # noqa: E402
from artclf_core.lake import s3 as s3lib  # noqa: E402
from artclf_core.lifecycle import promotion, retrain  # noqa: E402


def _row(name: str, report: dict | None) -> str:
    if report is None:
        return f"| {name} | - | - | " + " | ".join("-" for _ in CLASSES) + " |"
    f1 = " | ".join(f"{report['per_class'][c]['f1']:.3f}" for c in CLASSES)
    return f"| {name} | {report['accuracy']:.3f} | {report['balanced_accuracy']:.3f} | {f1} |"


#: Four uncurated variants of each shared picture: far apart in pHash from the picture and
#: from each other, so that ingestion catalogues them instead of turning them away.
VARIANTS = (
    ("m", (Image.Transpose.FLIP_LEFT_RIGHT,)),
    ("r90", (Image.Transpose.ROTATE_90,)),
    ("r270", (Image.Transpose.ROTATE_270,)),
    ("mr90", (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_90)),
)


def _put_variant(client, bucket: str, files: list[Path], j: int, collections: int) -> None:
    """PUT the ``j``-th uncurated variant under ``incoming/museum-XX/``."""
    tag, ops = VARIANTS[(j // len(files)) % len(VARIANTS)]
    path = files[j % len(files)]
    with Image.open(path) as img:
        out = img.convert("RGB")
    for op in ops:
        out = out.transpose(op)
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=90)
    key = f"incoming/museum-{j % collections:02d}/{tag}-{path.stem}.jpg"
    client.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    parser.add_argument("--arch", help="default: the active (shipped) model's architecture")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--uncurated", type=int, default=0, help="uncurated artworks to add")
    parser.add_argument("--collections", type=int, help="default: one per 1,000 uncurated")
    args = parser.parse_args()

    from artclf_core.ingest.ingestor import Ingestor

    files = images(args.data, None)
    with _stack.throwaway_stack() as (stack, _url), tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(read_env_file(stack.env_file), home=Path(tmp) / "none")
        client = s3lib.client(settings)

        def put(p: Path) -> None:
            client.upload_file(str(p), settings.bucket, f"training/{p.parent.name}/{p.name}")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, files))
        with Ingestor(settings) as ing:
            summary = ing.ingest_prefix("training/")
        _stack.log(
            f"lake: {summary.catalogued} labelled artworks catalogued, "
            f"{summary.duplicates} duplicates turned away, {summary.quarantined} quarantined"
        )
        if args.uncurated:
            collections = args.collections or max(1, round(args.uncurated / 1000))
            t0 = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(
                    pool.map(
                        lambda j: _put_variant(client, settings.bucket, files, j, collections),
                        range(args.uncurated),
                    )
                )
            with Ingestor(settings) as ing:
                more = ing.ingest_prefix()
            _stack.log(
                f"lake: {more.catalogued} uncurated artworks in {collections} collections "
                f"catalogued ({more.duplicates} duplicates, {more.quarantined} quarantined) "
                f"in {time.perf_counter() - t0:.0f} s"
            )
        t0 = time.perf_counter()
        result = retrain.retrain(
            settings,
            work_dir=Path(tmp) / "work",
            arch=args.arch,
            epochs=args.epochs,
            policy=promotion.GatePolicy.from_env(),
            verbose=2,
        )
        seconds = time.perf_counter() - t0
        report = json.loads(
            client.get_object(Bucket=settings.bucket, Key=result["report"].split("/", 3)[3])[
                "Body"
            ].read()
        )

    print()
    print(f"retraining ({report['arch']}) took {seconds / 60:.1f} min on {os.cpu_count()} cores")
    print(f"dataset: {report['dataset']}")
    print(f"validation: {report['candidate']['n']} images from held-out sources")
    print()
    print("| model | accuracy | balanced acc. | " + " | ".join(f"F1 {c}" for c in CLASSES) + " |")
    print("|---|---|---|" + "---|" * len(CLASSES))
    print(_row(f"candidate {result['version']}", report["candidate"]))
    print(_row(f"active {result['compared_with']}", report["active"]))
    print()
    print(f"gate: {result['status'].upper()}")
    for reason in result["reasons"]:
        print(f"  - {reason}")
    if args.json:
        args.json.write_text(json.dumps({**result, "seconds": seconds}, indent=2, default=str))


if __name__ == "__main__":
    main()
