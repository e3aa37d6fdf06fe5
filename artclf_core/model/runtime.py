"""Where a loaded model's forward pass runs: TensorFlow Lite (XNNPACK) by default, Keras as the
fallback.

The ``.keras`` file stays the model's one artifact (training, the registry and the lake keep
it); this module derives an inference copy from it. On 2 CPU cores the shipped
EfficientNet-Lite0 at 160 px runs ~200 images/s through TensorFlow's graph executor and ~500
images/s through the TFLite interpreter with its XNNPACK kernels (``bench/inference.py``:
2.5x), with the same float32 weights and arithmetic: the probabilities agree to ~5e-6 and
the embeddings to a cosine of 1.000000 (``docs/benchmarks.md``, "Inference runtime"; the
tests compare both runtimes). No quantisation
is applied: int8 doubles the speed again but moves embeddings by up to 4 % (cosine), which would
change near-duplicate and similarity answers for already catalogued artworks.

The conversion takes ~2 s, so the converted model is cached on disk under
``$ARTCLF_HOME/model-cache/tflite/``, keyed by the digest of the ``.keras`` file and the
TensorFlow version; every Airflow task that loads the model after the first one skips it.

The flatbuffer runs in LiteRT's interpreter (``ai-edge-litert``), the successor of
``tf.lite.Interpreter``, which TensorFlow has scheduled for deletion: the same XNNPACK kernels
and bit-identical outputs, 1-7 % less CPU per image (``bench/inference_runtime.py``). ONNX
Runtime on the same weights (converted by tf2onnx) measured the same CPU per image as LiteRT
and would add a second conversion and two dependencies, so it is not used. Threads
(:func:`inference_threads`): the CPUs the process may use divided by the model-running tasks
that share them (``ARTCLF_CONCURRENT_TASKS``, which the deployment sets), at least one. A
second XNNPACK thread buys about 16 % wall time for about 58 % more CPU per image whenever
anything else wants the core, which under Airflow it always does: two ``ingest_batch`` tasks
run at once (issue 32). The CLI, alone on the machine, keeps a thread per core.

``ARTCLF_RUNTIME=keras`` selects TensorFlow's executor instead (for a platform where the TFLite
interpreter is missing or misbehaves); a conversion that fails falls back to it with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from artclf_core.native_logs import native_noise_dropped

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

log = logging.getLogger(__name__)

#: Runtimes :func:`make_runner` knows.
RUNTIMES: tuple[str, ...] = ("tflite", "keras")
#: Images per interpreter call. XNNPACK is cheapest on small batches that keep the activations
#: in cache. Measured on the shipped Lite1 model (``bench/inference_chunk.py``: 160 px, 2 cores,
#: 2026-12-07, CPU ms per image): 1 thread 3.3 at 4-8 against 3.65 at 16 and 3.9 at 32;
#: 2 threads 3.4 at 8 against 3.6 at 16, and 5 % less wall time. Every image's outputs are
#: bit-identical whatever the chunk (``tests/test_model.py``).
TFLITE_CHUNK = 8
#: Images per call of the Keras graph (bounds the activations' memory, ~1.4 MB per image).
KERAS_CHUNK = 64


def runtime_name() -> str:
    """The runtime chosen by ``ARTCLF_RUNTIME`` (``tflite`` when unset)."""
    name = os.environ.get("ARTCLF_RUNTIME", "tflite").strip().lower() or "tflite"
    if name not in RUNTIMES:
        raise ValueError(f"ARTCLF_RUNTIME={name!r}: expected one of {', '.join(RUNTIMES)}")
    return name


def inference_threads() -> int:
    """Threads for the interpreter: the CPUs this process may run on divided by the tasks
    that run the model at once on them (``ARTCLF_CONCURRENT_TASKS``: the embedded Airflow
    and docker-compose set it to the ``ingest_batch`` concurrency, resp. the Celery worker's;
    unset for the CLI: 1), at least 1. ``ARTCLF_INFER_THREADS`` overrides."""
    configured = os.environ.get("ARTCLF_INFER_THREADS")
    if configured:
        return max(1, int(configured))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    tasks = max(1, int(os.environ.get("ARTCLF_CONCURRENT_TASKS") or 1))
    return max(1, cores // tasks)


class KerasRunner:
    """The Keras model's graph, traced once with a batch dimension of ``None``."""

    name = "keras"
    chunk = KERAS_CHUNK

    def __init__(self, model: Any, image_size: int) -> None:
        spec = tf.TensorSpec(shape=(None, image_size, image_size, 3), dtype=tf.uint8)

        # The images travel as uint8 (4x less memory than float32) and are cast in the graph.
        # No autograph (no Python control flow here): it writes each converted function's
        # source to a temporary file that a process ending without atexit (a killed or forked
        # task) leaves behind in /tmp.
        @tf.function(input_signature=[spec], autograph=False)
        def forward(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            out = model(tf.cast(x, tf.float32), training=False)
            return out["probabilities"], out["embedding"]

        self._forward = forward

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, e = self._forward(tf.constant(batch))
        return p.numpy(), e.numpy()


class LiteRunner:
    """A TFLite interpreter over the frozen model; one call at a time (a lock guards it)."""

    name = "tflite"
    chunk = TFLITE_CHUNK

    def __init__(self, flatbuffer: bytes, image_size: int, n_classes: int, dim: int) -> None:
        from ai_edge_litert.interpreter import Interpreter  # LiteRT, not tf.lite (deprecated)

        with native_noise_dropped():
            self._interp = Interpreter(model_content=flatbuffer, num_threads=inference_threads())
        self._input = self._interp.get_input_details()[0]["index"]
        outputs = self._interp.get_output_details()
        # convert_variables_to_constants names the outputs Identity, Identity_1, ... in the
        # order the function returned them: (probabilities, embedding).
        outputs = sorted(outputs, key=lambda o: (len(o["name"]), o["name"]))
        self._probs, self._embs = outputs[0]["index"], outputs[1]["index"]
        shapes = (int(outputs[0]["shape"][-1]), int(outputs[1]["shape"][-1]))
        if shapes != (n_classes, dim):
            raise ValueError(f"converted outputs have widths {shapes}, expected {(n_classes, dim)}")
        self._size = image_size
        self._batch = -1
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            n = int(batch.shape[0])
            if n != self._batch:
                # About as cheap as one call: XNNPACK re-plans its buffers.
                self._interp.resize_tensor_input(self._input, [n, self._size, self._size, 3])
                with native_noise_dropped():
                    self._interp.allocate_tensors()
                self._batch = n
            self._interp.set_tensor(self._input, np.ascontiguousarray(batch))
            self._interp.invoke()
            # get_tensor returns copies, so the next call cannot overwrite them.
            return self._interp.get_tensor(self._probs), self._interp.get_tensor(self._embs)


def frozen_forward(model: Any, image_size: int) -> Any:
    """The model's forward pass as a frozen concrete function: uint8 input (cast to float in
    the graph), outputs ``(probabilities, embedding)``, weights as constants."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec(shape=(None, image_size, image_size, 3), dtype=tf.uint8)

    def forward(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        out = model(tf.cast(x, tf.float32), training=False)
        return out["probabilities"], out["embedding"]

    # autograph=False: see KerasRunner (no temporary source files).
    concrete = tf.function(forward, autograph=False).get_concrete_function(spec)
    return convert_variables_to_constants_v2(concrete)


def convert_to_tflite(
    model: Any, image_size: int, configure: Callable[[Any], None] | None = None
) -> bytes:
    """Freeze the model into a TFLite flatbuffer, float32 throughout unless ``configure``
    (given the converter; ``bench/quantization.py`` uses it) says otherwise."""
    frozen = frozen_forward(model, image_size)
    # Without ``trackable_obj`` the converter logs a deprecation notice and takes its older
    # path, which is 5x faster here (1.1 s against 5.8 s) for the same flatbuffer.
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)
    try:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
        if configure is not None:
            configure(converter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return converter.convert()
    finally:
        absl_log.setLevel(level)


def _cache_path(source: Path) -> Path:
    from artclf_core.model.files import cache_dir

    digest = hashlib.sha256()
    with source.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    digest.update(tf.__version__.encode())
    return cache_dir() / "tflite" / f"{digest.hexdigest()[:32]}.tflite"


def _flatbuffer(
    load_model: Callable[[], Any], image_size: int, source: Path | None, *, fresh: bool = False
) -> bytes:
    """The converted model, from the disk cache when ``source`` (the .keras file) was seen:
    then the Keras model is not even loaded. ``fresh`` converts again whatever the cache
    holds."""
    cached = _cache_path(source) if source is not None else None
    if cached is not None and cached.is_file() and not fresh:
        return cached.read_bytes()
    flatbuffer = convert_to_tflite(load_model(), image_size)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            from artclf_core.model.files import temporary_name

            tmp = temporary_name(cached)
            tmp.write_bytes(flatbuffer)
            os.replace(tmp, cached)
        except OSError as exc:  # a read-only home only costs the conversion next time
            log.debug("could not cache the converted model at %s: %s", cached, exc)
    return flatbuffer


def make_runner(
    load_model: Callable[[], Any],
    *,
    image_size: int,
    n_classes: int,
    dim: int,
    source: Path | None = None,
    runtime: str | None = None,
) -> KerasRunner | LiteRunner:
    """The runner for the model ``load_model()`` returns: TFLite unless
    ``runtime``/``ARTCLF_RUNTIME`` says keras or the conversion fails."""
    runtime = runtime or runtime_name()
    if runtime == "tflite":
        # A cached file that does not load (a damaged disk, a TFLite upgrade that reads it
        # differently) is converted again once before giving up on TFLite.
        for fresh in (False, True):
            try:
                flatbuffer = _flatbuffer(load_model, image_size, source, fresh=fresh)
                return LiteRunner(flatbuffer, image_size, n_classes, dim)
            except Exception as exc:  # noqa: BLE001 - any converter failure: Keras still works
                failure = exc
            if source is None:
                break
        log.warning("TFLite conversion failed (%s); running the model with Keras", failure)
    return KerasRunner(load_model(), image_size)
