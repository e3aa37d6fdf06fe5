"""Forward-pass throughput of the model runtimes, in one process, on the same images.

    python bench/inference.py [--data ../shared/data/artworks] [--model PATH] [--images 512]
                              [--baseline PATH]

Decodes ``--images`` real images once (the ingestion preprocessing, not timed), then runs the
same uint8 batch through the Keras graph (TensorFlow's executor, the baseline) and through the
TFLite interpreter that ingestion uses by default (:mod:`artclf_core.model.runtime`), three times
each, and prints images/s, the ratio and how far the two runtimes' outputs are apart (classes
that differ, largest probability difference, smallest embedding cosine).

``--baseline PATH`` also runs another model file (e.g. the previous default, from
``git show REV:artclf_core/models/default.keras``) through the TFLite runtime on the same
images, alternating with ``--model``, and prints both models' CPU milliseconds per image
(process time: steadier than wall time on a shared machine) and their ratio.
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

from artclf_core.lifecycle.dataset import load_images, scan_labelled_folder  # noqa: E402
from artclf_core.model.artmodel import ArtModel, default_model_path  # noqa: E402


def rate(model: ArtModel, batch: np.ndarray, repeats: int = 3) -> tuple[float, tuple]:
    out = model.predict(batch[:16])  # build the runner and warm it up, not timed
    started = time.perf_counter()
    for _ in range(repeats):
        out = model.predict(batch)
    return repeats * len(batch) / (time.perf_counter() - started), out


def cpu_ms_per_image(model: ArtModel, batch: np.ndarray) -> float:
    """Process CPU time of one pass over ``batch`` (all threads), per image."""
    started = time.process_time()
    model.predict(batch)
    return 1000.0 * (time.process_time() - started) / len(batch)


def compare_cpu(model: ArtModel, baseline: ArtModel, samples, n: int, rounds: int = 3) -> None:
    """Both models' CPU per image on the same images (each at its own input size),
    alternating so that a busy moment of the machine hits both."""
    step = max(1, len(samples) // n)
    chosen = samples[::step][:n]
    batches = {m.version: load_images(chosen, size=m.image_size) for m in (model, baseline)}
    for m in (model, baseline):
        m.predict(batches[m.version][:16])  # build and warm, not timed
    cost: dict[str, list[float]] = {model.version: [], baseline.version: []}
    for _ in range(rounds):
        for m in (baseline, model):
            cost[m.version].append(cpu_ms_per_image(m, batches[m.version]))
    new, old = min(cost[model.version]), min(cost[baseline.version])
    print(f"  CPU per image, tflite, best of {rounds} over {len(chosen)} images:")
    print(f"    baseline {baseline.version} ({baseline.image_size} px): {old:.2f} ms")
    print(f"    model    {model.version} ({model.image_size} px): {new:.2f} ms -> {new / old:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--baseline", type=Path, help="another model file to compare CPU with")
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
    if args.baseline:
        compare_cpu(lite_model, ArtModel.load(args.baseline, runtime="tflite"), samples, len(batch))


if __name__ == "__main__":
    main()
