"""Forward-pass throughput of the model runtimes, in one process, on the same images.

    python bench/inference.py [--data ../shared/data/artworks] [--model PATH] [--images 512]

Decodes ``--images`` real images once (the ingestion preprocessing, not timed), then runs the
same uint8 batch through the Keras graph (TensorFlow's executor, the baseline) and through the
TFLite interpreter that ingestion uses by default (:mod:`artclf_core.runtime`), three times
each, and prints images/s, the ratio and how far the two runtimes' outputs are apart (classes
that differ, largest probability difference, smallest embedding cosine).
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

from artclf_core.model import ArtModel, default_model_path  # noqa: E402
from artclf_core.training import load_images, scan_labelled_folder  # noqa: E402


def rate(model: ArtModel, batch: np.ndarray, repeats: int = 3) -> tuple[float, tuple]:
    out = model.predict(batch[:16])  # build the runner and warm it up, not timed
    started = time.perf_counter()
    for _ in range(repeats):
        out = model.predict(batch)
    return repeats * len(batch) / (time.perf_counter() - started), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()

    samples = scan_labelled_folder(args.data)
    if not samples:
        raise SystemExit(f"no images under {args.data}")
    keras_model = ArtModel.load(args.model, runtime="keras")
    lite_model = ArtModel.load(args.model, runtime="tflite")
    step = max(1, len(samples) // args.images)
    batch = load_images(samples[::step][: args.images], size=keras_model.image_size)

    base, (p_k, e_k) = rate(keras_model, batch)
    fast, (p_l, e_l) = rate(lite_model, batch)
    cos = (e_k * e_l).sum(1) / np.linalg.norm(e_k, axis=1) / np.linalg.norm(e_l, axis=1)
    print(
        f"model {keras_model.version} ({keras_model.arch}, {keras_model.image_size} px), "
        f"{len(batch)} images, {os.cpu_count()} cores"
    )
    print(f"  keras (TensorFlow graph, chunks of {keras_model.runner.chunk}): {base:.0f} images/s")
    print(
        f"  tflite (XNNPACK, chunks of {lite_model.runner.chunk}): {fast:.0f} images/s"
        f"  -> {fast / base:.2f}x"
    )
    print(
        f"  outputs: {(p_k.argmax(1) != p_l.argmax(1)).sum()} classes differ, "
        f"max probability difference {np.abs(p_k - p_l).max():.2e}, "
        f"min embedding cosine {cos.min():.6f}"
    )


if __name__ == "__main__":
    main()
