"""The classifier/embedder: its architecture, how it is saved with its metadata, and inference.

One Keras model returns both the class probabilities and the 128-d embedding from a single
forward pass, because ingestion needs both for every image and running the convolutions twice
would double the CPU cost of the lake.

The saved ``.keras`` file is the ordinary Keras zip with one extra member, ``artclf.json``,
holding the class order, version, architecture name, input size and validation metrics. Keeping
the metadata *inside* the model file means a model can never be paired with the wrong class
list (a sidecar file can be lost or mixed up when models are copied between machines), and
Keras ignores zip members it does not know, so ``keras.saving.load_model`` still reads it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from artclf_core import CLASSES, EMBEDDING_DIM, IMAGE_SIZE
from artclf_core.model.archs import ARCHS, DEFAULT_IMAGE_SIZES, GRAM_ARCHS, TEXTURE_ARCHS
from artclf_core.model.files import METADATA_MEMBER, default_model_path, read_metadata
from artclf_core.model.runtime import KerasRunner, LiteRunner, make_runner

# Imported lazily by the functions below would be nicer for start-up time, but every public
# function here needs TensorFlow anyway, so import it once, quietly.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

# Registers the texture architecture's ChannelStats layer, so load_model reads such files.
from artclf_core.model import texture as _texture  # noqa: E402, F401

#: Version of the layout of :data:`METADATA_MEMBER`, bumped if its keys change meaning.
METADATA_FORMAT = 1
#: Dropout between the backbone's pooled features and the embedding layer.
BACKBONE_DROPOUT = 0.3


def build_model(
    num_classes: int = len(CLASSES),
    seed: int = 0,
    *,
    arch: str = "cnn",
    image_size: int | None = None,
    weights: str | None = "imagenet",
) -> keras.Model:
    """Build one inference model with two named outputs, ``probabilities`` and ``embedding``.

    The input is raw 0-255 pixels (float32; uint8 arrays are cast by :meth:`ArtModel.predict`)
    of shape ``(image_size, image_size, 3)`` (default :data:`DEFAULT_IMAGE_SIZES` of the
    architecture) and any normalisation lives inside the model, so every caller feeds the same
    thing that :func:`artclf_core.images.model_input.to_model_input` produces. Augmentation is
    deliberately *not* part of this model (it is applied only while training), so inference is
    deterministic.

    ``arch="cnn"``: the prototype's CNN (``Rescaling(1/255)``, five conv/pool blocks, three
    dense layers). ``arch="efficientnet_lite0"``: the ImageNet-pretrained backbone of
    :func:`artclf_core.model.backbones.build_efficientnet_lite0` (nested as the sub-model
    ``"backbone"``; ``weights=None`` leaves it random, for tests of the plumbing only), its
    pooled 1280-d features, dropout, then the same two layers.
    ``arch="efficientnet_lite0_texture"``: the same backbone with the channel statistics of
    stages 2-6 beside its pooled features (:func:`artclf_core.model.texture.build_texture_backbone`,
    2176 values, no dropout), then the same two layers, whose weights
    :mod:`artclf_core.lifecycle.ridge_training` computes in closed form.
    ``arch="efficientnet_lite1_texture"``: the same on EfficientNet-Lite1.
    ``arch="efficientnet_lite1_gram"`` (the default): the same, plus the channel correlations
    of stages 1-3 (:class:`artclf_core.model.texture.ChannelCorrelation`, 3,352 values).

    The embedding is the linear 128-unit layer just before the softmax: a linear layer keeps
    the geometry the classifier uses (no ReLU zeroing half of the space), which is what a
    nearest-neighbour search in pgvector wants.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    size = int(image_size or DEFAULT_IMAGE_SIZES[arch])
    init = keras.initializers.GlorotUniform

    def glorot(i: int) -> keras.initializers.Initializer:
        # Distinct but reproducible seeds per layer: one shared seed would give every layer of
        # the same shape identical initial weights.
        return init(seed=seed * 1000 + i)

    inputs = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    if arch == "cnn":
        x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
        for i, filters in enumerate((16, 32, 64, 128, 256)):
            x = keras.layers.Conv2D(
                filters, 3, activation="relu", kernel_initializer=glorot(i), name=f"conv{i + 1}"
            )(x)
            x = keras.layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        for i in range(3):
            x = keras.layers.Dense(
                128, activation="relu", kernel_initializer=glorot(10 + i), name=f"dense{i + 1}"
            )(x)
    elif arch == "efficientnet_lite0":
        from artclf_core.model.backbones import build_efficientnet_lite0

        backbone = build_efficientnet_lite0((size, size, 3), weights=weights, name="backbone")
        x = backbone(inputs)
        x = keras.layers.Dropout(BACKBONE_DROPOUT, seed=seed, name="feature_dropout")(x)
    else:
        from artclf_core.model.texture import GRAM_TAPS, build_texture_backbone

        backbone = build_texture_backbone(
            size,
            weights=weights,
            name="backbone",
            variant=TEXTURE_ARCHS[arch],
            gram_taps=GRAM_TAPS if arch in GRAM_ARCHS else (),
        )
        x = backbone(inputs)
    embedding = keras.layers.Dense(
        EMBEDDING_DIM, activation=None, kernel_initializer=glorot(20), name="embedding"
    )(x)
    probabilities = keras.layers.Dense(
        num_classes, activation="softmax", kernel_initializer=glorot(21), name="probabilities"
    )(embedding)
    return keras.Model(
        inputs,
        {"probabilities": probabilities, "embedding": embedding},
        name=f"artclf_{arch}",
    )


def input_size(model: keras.Model) -> int:
    """The square input side of ``model`` (what :func:`save_model` records as ``image_size``)."""
    shape = model.inputs[0].shape
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2]:
        raise ValueError(f"model input must be (None, size, size, 3), got {tuple(shape)}")
    return int(shape[1])


def weights_digest(model: keras.Model) -> str:
    """SHA-256 over all weights, so two files with the same digest compute the same function."""
    h = hashlib.sha256()
    for w in model.get_weights():
        arr = np.ascontiguousarray(w)
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def make_version(
    arch: str, model: keras.Model | None = None, *, date: _dt.date | None = None
) -> str:
    """Return a model version such as ``"cnn-20261125-1a2b3c4d"``.

    The date says when it was trained and the 8 hex digits identify the weights, so rows in the
    database tagged with a version can be traced to exactly one model file. Without a model the
    suffix is random (still unique, but not reproducible).
    """
    day = (date or _dt.datetime.now(_dt.UTC).date()).strftime("%Y%m%d")
    suffix = weights_digest(model)[:8] if model is not None else os.urandom(4).hex()
    return f"{arch}-{day}-{suffix}"


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays nested in ``value`` into plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_model(
    model: keras.Model,
    path: str | os.PathLike[str],
    *,
    version: str,
    classes: tuple[str, ...] | list[str],
    arch: str,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` as a ``.keras`` file with artclf's metadata appended as ``artclf.json``.

    The file is written to a temporary name in the same folder and renamed into place, so a
    reader (an ingestion worker reloading the default model) never sees a half-written zip.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"model path must end with .keras, got {path}")
    classes = tuple(classes)
    n_out = int(model.output["probabilities"].shape[-1]) if isinstance(model.output, dict) else -1
    if n_out != len(classes):
        raise ValueError(f"model has {n_out} probability outputs but {len(classes)} classes")
    meta = {
        "format": METADATA_FORMAT,
        "version": version,
        "classes": list(classes),
        "arch": arch,
        "image_size": input_size(model),
        "embedding_dim": EMBEDDING_DIM,
        "weights_sha256": weights_digest(model),
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "metrics": _jsonable(metrics) if metrics is not None else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its 0600 mode would make the shipped model unreadable to others.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.keras")
    try:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(METADATA_MEMBER, json.dumps(meta, indent=2, sort_keys=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class ArtModel:
    """A loaded model plus the metadata needed to interpret its outputs.

    :meth:`predict` is the only inference entry point: it returns probabilities and embeddings
    from the same forward pass, run by :mod:`artclf_core.model.runtime` (TFLite's XNNPACK kernels by
    default, 2.5x faster than TensorFlow's graph on 2 cores for the same float32 results;
    batches of any size reuse the same compiled model).
    """

    def __init__(
        self,
        model: keras.Model | None,
        *,
        version: str,
        classes: tuple[str, ...],
        arch: str,
        image_size: int | None = None,
        metrics: dict[str, Any] | None = None,
        runtime: str | None = None,
        path: Path | None = None,
        embedding_dim: int = EMBEDDING_DIM,
    ) -> None:
        if model is None and path is None:
            raise ValueError("ArtModel needs a Keras model or the path of its .keras file")
        if model is not None:
            size = input_size(model)
            if image_size is not None and int(image_size) != size:
                raise ValueError(f"image_size {image_size} but the model's input is {size}x{size}")
            embedding_dim = int(model.output["embedding"].shape[-1])
        else:
            size = int(image_size or IMAGE_SIZE)
        self._model = model
        self.version = version
        self.classes = tuple(classes)
        self.arch = arch
        #: Side of the square input :meth:`predict` expects (the metadata's ``image_size``).
        self.image_size = size
        self.metrics = metrics
        #: Where the model was loaded from (None when built in memory).
        self.path = path
        self.embedding_dim = int(embedding_dim)
        #: ``tflite`` or ``keras`` (:mod:`.runtime`); None picks ``ARTCLF_RUNTIME``.
        self.runtime = runtime
        self._runner: KerasRunner | LiteRunner | None = None

    @property
    def model(self) -> keras.Model:
        """The Keras model, read from :attr:`path` on first use: inference from a cached TFLite
        conversion never needs it, which saves ~1 s per process (every Airflow task)."""
        if self._model is None:
            self._model = keras.saving.load_model(self.path, compile=False)
        return self._model

    @property
    def runner(self) -> KerasRunner | LiteRunner:
        """The forward pass, built on first use (a conversion to TFLite costs ~2 s, cached)."""
        if self._runner is None:
            self._runner = make_runner(
                lambda: self.model,
                image_size=self.image_size,
                n_classes=len(self.classes),
                dim=self.embedding_dim,
                source=self.path,
                runtime=self.runtime,
            )
        return self._runner

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, *, runtime: str | None = None
    ) -> ArtModel:
        """Open a model saved by :func:`save_model` (the shipped default when ``path`` is
        None): its metadata now, its Keras graph when first needed (:attr:`model`)."""
        path = Path(path) if path is not None else default_model_path()
        meta = read_metadata(path)
        return cls(
            None,
            version=str(meta["version"]),
            classes=tuple(meta["classes"]),
            arch=str(meta.get("arch", "cnn")),
            image_size=int(meta.get("image_size", IMAGE_SIZE)),
            metrics=meta.get("metrics"),
            runtime=runtime,
            path=path,
            embedding_dim=int(meta.get("embedding_dim", EMBEDDING_DIM)),
        )

    def __repr__(self) -> str:
        return f"ArtModel(version={self.version!r}, arch={self.arch!r}, classes={self.classes})"

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(probabilities (N, C) float32, embeddings (N, 128) float32)`` for a batch.

        ``batch`` is uint8 of shape (N, S, S, 3) with S = :attr:`image_size` (150 for the
        cnn), as stacked from :func:`artclf_core.images.model_input.to_model_input`. Large batches
        are
        cut into the runtime's chunks (8 or 64 images) to bound memory; each image still goes
        through the network once.
        """
        arr = np.asarray(batch)
        size = self.image_size
        if arr.ndim != 4 or arr.shape[1:] != (size, size, 3):
            raise ValueError(f"expected a batch of shape (N, {size}, {size}, 3), got {arr.shape}")
        if arr.dtype != np.uint8:
            raise TypeError(f"expected uint8 pixels (0-255), got {arr.dtype}")
        n = arr.shape[0]
        probs = np.empty((n, len(self.classes)), dtype=np.float32)
        embs = np.empty((n, self.embedding_dim), dtype=np.float32)
        if n == 0:
            return probs, embs
        runner = self.runner
        for start in range(0, n, runner.chunk):
            stop = start + runner.chunk
            probs[start:stop], embs[start:stop] = runner(arr[start:stop])
        return probs, embs

    def labels(self, probabilities: np.ndarray) -> list[str]:
        """Map rows of probabilities to class names (argmax), in the model's class order."""
        return [self.classes[i] for i in np.argmax(probabilities, axis=1)]
