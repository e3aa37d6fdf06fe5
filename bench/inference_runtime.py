"""The inference runtime chosen by measurement: TensorFlow's ``tf.lite.Interpreter`` (deprecated,
the baseline) against LiteRT's (``ai-edge-litert``) and, where ``onnxruntime`` and ``tf2onnx``
are installed (they are not dependencies), ONNX Runtime on the same flatbuffer converted by
``tf2onnx``; each at 1 and 2 threads, on the same images.

    python bench/inference_runtime.py [--data ../shared/data/artworks] [--images 384] [--rounds 3]

The shipped model's flatbuffer (converted once, as ingestion does) runs the same uint8 batch
through each configuration; the configurations alternate within each round (A/B/C/D, A/B/C/D,
...) so that a busy moment of the machine hits them all, and the median of the rounds is
printed: process CPU milliseconds per image (all threads; steadier than wall time on a shared
machine), wall images/s, and the ratio of both against the baseline (``tf.lite`` at 2
threads, what the product ran before). Also printed: the time to build an interpreter and
plan its buffers (startup, per task), the largest probability difference and the smallest
embedding cosine against the baseline's outputs, and the machine's load average. Without
``--data`` (or with an empty folder) the images are made in code.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from artclf_core.model import runtime  # noqa: E402
from artclf_core.model.artmodel import ArtModel, default_model_path  # noqa: E402


def interpreter_classes() -> dict[str, type]:
    found: dict[str, type] = {"tf.lite": tf.lite.Interpreter}
    try:
        from ai_edge_litert.interpreter import Interpreter

        found["litert"] = Interpreter
    except ImportError:
        print("ai-edge-litert is not installed: only tf.lite is measured", file=sys.stderr)
    return found


class OrtConfig:
    """ONNX Runtime over the flatbuffer converted by tf2onnx (same weights, float32)."""

    def __init__(self, threads: int, onnx_path: Path):
        import onnxruntime as ort

        self.name, self.threads = f"onnxrt x{threads}", threads
        started = time.perf_counter()
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self.startup = time.perf_counter() - started
        self.input = self.session.get_inputs()[0].name
        self.cpu: list[float] = []
        self.wall: list[float] = []

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, embs = [], []
        for i in range(0, len(batch) - runtime.TFLITE_CHUNK + 1, runtime.TFLITE_CHUNK):
            p, e = self.session.run(None, {self.input: batch[i : i + runtime.TFLITE_CHUNK]})
            probs.append(p)
            embs.append(e)
        return np.concatenate(probs), np.concatenate(embs)

    def timed(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return Config.timed(self, batch)  # type: ignore[arg-type]


def onnx_file(flatbuffer: bytes) -> Path | None:
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx
    except ImportError:
        return None
    import tempfile

    folder = Path(tempfile.mkdtemp())
    (folder / "model.tflite").write_bytes(flatbuffer)
    tf2onnx.convert.from_tflite(
        str(folder / "model.tflite"), opset=17, output_path=str(folder / "model.onnx")
    )
    return folder / "model.onnx"


def images(data: Path | None, n: int, size: int) -> np.ndarray:
    if data is not None and data.is_dir():
        from artclf_core.lifecycle.dataset import load_images, scan_labelled_folder

        samples = scan_labelled_folder(data)
        if samples:
            step = max(1, len(samples) // n)
            return load_images(samples[::step][:n], size=size)
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


class Config:
    def __init__(self, name: str, cls: type, threads: int, flatbuffer: bytes, size: int):
        self.name, self.threads = name, threads
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.interp = cls(model_content=flatbuffer, num_threads=threads)
        inp = self.interp.get_input_details()[0]["index"]
        self.interp.resize_tensor_input(inp, [runtime.TFLITE_CHUNK, size, size, 3])
        self.interp.allocate_tensors()
        self.startup = time.perf_counter() - started
        self.input = inp
        outs = sorted(self.interp.get_output_details(), key=lambda o: (len(o["name"]), o["name"]))
        self.outputs = outs[0]["index"], outs[1]["index"]
        self.cpu: list[float] = []
        self.wall: list[float] = []

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, embs = [], []
        for i in range(0, len(batch), runtime.TFLITE_CHUNK):
            chunk = np.ascontiguousarray(batch[i : i + runtime.TFLITE_CHUNK])
            if len(chunk) != runtime.TFLITE_CHUNK:
                break
            self.interp.set_tensor(self.input, chunk)
            self.interp.invoke()
            probs.append(self.interp.get_tensor(self.outputs[0]))
            embs.append(self.interp.get_tensor(self.outputs[1]))
        return np.concatenate(probs), np.concatenate(embs)

    def timed(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cpu, wall = time.process_time(), time.perf_counter()
        out = self.run(batch)
        n = len(out[0])
        self.cpu.append(1000 * (time.process_time() - cpu) / n)
        self.wall.append(n / (time.perf_counter() - wall))
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model = ArtModel.load()
    source = default_model_path()
    flatbuffer = runtime._flatbuffer(lambda: model.model, model.image_size, source)
    batch = images(args.data, args.images, model.image_size)
    configs = [
        Config(f"{name} x{threads}", cls, threads, flatbuffer, model.image_size)
        for name, cls in interpreter_classes().items()
        for threads in (2, 1)
    ]
    onnx = onnx_file(flatbuffer)
    if onnx is not None:
        configs += [OrtConfig(threads, onnx) for threads in (2, 1)]
    baseline = configs[0]
    reference = baseline.run(batch)  # warm-up of each, not timed
    for config in configs[1:]:
        config.run(batch[: runtime.TFLITE_CHUNK])
    outputs = {}
    for _ in range(args.rounds):
        for config in configs:
            outputs[config.name] = config.timed(batch)
    print(
        f"model {model.version}, {len(reference[0])} images at {model.image_size} px, "
        f"median of {args.rounds} interleaved rounds, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'runtime':<12} {'CPU ms/img':>10} {'ratio':>6} {'img/s':>7} {'ratio':>6} "
        f"{'startup s':>9} {'max dprob':>9} {'min cos':>9}"
    )
    base_cpu, base_wall = statistics.median(baseline.cpu), statistics.median(baseline.wall)
    for config in configs:
        probs, embs = outputs[config.name]
        cpu, wall = statistics.median(config.cpu), statistics.median(config.wall)
        dprob = float(np.abs(probs - reference[0]).max())
        cos = np.sum(embs * reference[1], axis=1) / (
            np.linalg.norm(embs, axis=1) * np.linalg.norm(reference[1], axis=1)
        )
        print(
            f"{config.name:<12} {cpu:>10.2f} {cpu / base_cpu:>6.2f} {wall:>7.0f} "
            f"{wall / base_wall:>6.2f} {config.startup:>9.2f} {dprob:>9.1e} {cos.min():>9.7f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
