"""What int8 post-training quantisation would give: speed and quality against float32.

    python bench/quantization.py [--data ../shared/data/artworks] [--model PATH] [--calibration 200]

Not used by the product (see docs/benchmarks.md, "Draft decode and an overlapped tail"): it
measures the option for whoever decides on it. The model (default: the shipped one) is frozen
as ingestion freezes it (``runtime.convert_to_tflite``'s graph), then converted with TFLite's
full-integer kernels (float input and output), calibrated on ``--calibration`` images of the
training part of the model's own source-disjoint split. Prints both runtimes' images/s and
CPU ms per image on 256 held-out images, then accuracy, balanced accuracy, per-class F1 and
label precision@5 of both on the whole held-out part, and how far their outputs are apart.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from artclf_core.lifecycle.dataset import (  # noqa: E402
    VAL_FRACTION,
    load_images,
    scan_labelled_folder,
    split_by_source,
)
from artclf_core.lifecycle.evaluation import evaluate_samples  # noqa: E402
from artclf_core.model.artmodel import ArtModel, default_model_path  # noqa: E402
from artclf_core.model.runtime import LiteRunner, convert_to_tflite  # noqa: E402


def int8_flatbuffer(model: ArtModel, calibration: np.ndarray) -> bytes:
    """The product's frozen graph (``runtime.convert_to_tflite``), with int8 kernels."""

    def int8(converter) -> None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [calibration[i : i + 1]] for i in range(len(calibration))
        )

    return convert_to_tflite(model.model, model.image_size, configure=int8)


def speed(predict, batch: np.ndarray) -> tuple[float, float]:
    """(images/s, CPU ms per image) over ``batch`` in chunks of 16, after a warm-up call."""
    predict(batch[:16])
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(batch), 16):
        predict(batch[i : i + 16])
    n = len(batch)
    return n / (time.perf_counter() - wall), 1000 * (time.process_time() - cpu) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    parser.add_argument("--model", default=None)
    parser.add_argument("--calibration", type=int, default=200)
    args = parser.parse_args()

    model = ArtModel.load(args.model or default_model_path())
    split = (model.metrics or {}).get("split") or {}
    train, val = split_by_source(
        scan_labelled_folder(args.data),
        float(split.get("val_fraction", VAL_FRACTION)),
        int(split.get("seed", 0)),
        mode=split.get("mode", "source"),
    )
    rng = np.random.default_rng(0)
    picked = rng.choice(len(train), min(args.calibration, len(train)), replace=False)
    calibration = load_images([train[i] for i in picked], size=model.image_size)
    started = time.perf_counter()
    flatbuffer = int8_flatbuffer(model, calibration)
    print(f"int8 conversion: {time.perf_counter() - started:.1f} s, {len(flatbuffer) // 1024} KiB")
    int8 = LiteRunner(flatbuffer, model.image_size, len(model.classes), model.embedding_dim)

    held_out = load_images(val[:256], size=model.image_size)
    for name, predict in (("float32 (product)", model.runner), ("int8", int8)):
        rate, cpu = speed(predict, held_out)
        print(f"{name:18s} {rate:6.0f} images/s  {cpu:.2f} ms CPU per image")

    p_float, e_float = model.predict(held_out)
    reports = {"float32": evaluate_samples(val, model)}
    model._runner = int8  # score the same held-out images through the int8 interpreter
    p_int8, e_int8 = model.predict(held_out)
    reports["int8"] = evaluate_samples(val, model)
    cos = (e_float * e_int8).sum(1) / (
        np.linalg.norm(e_float, axis=1) * np.linalg.norm(e_int8, axis=1)
    )
    print(f"\nheld-out images: {len(val)}")
    for name, rep in reports.items():
        f1 = ", ".join(f"{c} {v['f1']:.3f}" for c, v in rep["per_class"].items())
        print(
            f"{name:8s} accuracy {rep['accuracy']:.3f}  balanced {rep['balanced_accuracy']:.3f}"
            f"  precision@5 {rep['label_precision_at_5']:.3f}  F1: {f1}"
        )
    print(
        f"int8 against float32 on 256 images: {int((p_float.argmax(1) != p_int8.argmax(1)).sum())}"
        f" classes differ, largest probability difference {np.abs(p_float - p_int8).max():.3f},"
        f" embedding cosine min {cos.min():.4f} / mean {cos.mean():.4f}"
    )


if __name__ == "__main__":
    main()
