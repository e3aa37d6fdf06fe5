"""Training and evaluating the classifier on a labelled folder ``DIR/<class>/<source>__<name>``.

The product is judged on images from museums, books and photographers that are not in the
training folder, so everything here is built around *source-disjoint* validation: a model that
learns "greyscale 1900s book scan = engraving" looks excellent on a random split and fails in
production. :func:`split_by_source` therefore holds out whole sources, and :func:`train` stops
and picks its weights on those unseen sources.

Pixels always go through :func:`artclf_core.preprocess.open_rgb` and
:func:`artclf_core.preprocess.to_model_input`, the same functions ingestion uses.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import re
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from artclf_core import CLASSES, IMAGE_SIZE
from artclf_core.metrics import classification_report, label_precision_at_k
from artclf_core.model import (
    DEFAULT_IMAGE_SIZES,
    ArtModel,
    build_model,
    input_size,
    make_version,
    save_model,
)
from artclf_core.preprocess import open_rgb, to_model_input

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

log = logging.getLogger("artclf.training")

#: File suffixes treated as images; everything else (README, MANIFEST.csv, .DS_Store) is skipped.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
#: Default share of each class held out for validation.
VAL_FRACTION = 0.2
#: Default maximum number of epochs; early stopping normally ends training well before.
EPOCHS = 80
#: Epochs without a better validation loss before training stops.
PATIENCE = 15
#: The JPEG draft the validation split's near-copy grouping decodes at. Frozen at the value
#: the shipped model's split was made with: the grouping only has to be stable, and a decode
#: that flips a few hash bits would move images between training and validation and make
#: model cards incomparable (ingestion's own draft, preprocess.DRAFT_SIZE, may change).
SPLIT_DRAFT_SIZE: tuple[int, int] = (300, 300)

ValMode = Literal["source", "random", "none"]


@dataclass(frozen=True, order=True)
class Sample:
    """One labelled image: its path, class and source (the file-name prefix before ``__``)."""

    path: Path
    label: str
    source: str


def scan_labelled_folder(data_dir: str | os.PathLike[str]) -> list[Sample]:
    """List the images of ``DIR/<label>/*`` as :class:`Sample`\\ s, sorted by path.

    Every sub-folder must be one of :data:`artclf_core.CLASSES` (a typo such as ``paintings``
    would otherwise silently drop a whole class); hidden entries and non-image files are
    skipped. The source is the file-name prefix before ``__`` or, without one, the class folder.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"training folder {root} does not exist")
    samples: list[Sample] = []
    for sub in sorted(root.iterdir()):
        if sub.name.startswith(".") or not sub.is_dir():
            continue
        if sub.name not in CLASSES:
            raise ValueError(f"folder {sub} is not a class; expected one of {', '.join(CLASSES)}")
        for f in sorted(sub.iterdir()):
            if f.name.startswith(".") or not f.is_file():
                continue
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            source = f.name.split("__", 1)[0] if "__" in f.name else sub.name
            samples.append(Sample(f, sub.name, source))
    if not samples:
        raise ValueError(f"no images found under {root}")
    return samples


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (used to keep exact duplicates on one side of a split)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_OBJECT_LOT = re.compile(r"^(?:\d+_)?([A-Za-z]+(?:-[A-Za-z]+)*-\d+)")
_NUMBER = re.compile(r"^\d+$")


def sub_source_key(sample: Sample) -> str:
    """The finer grouping key used when a class has a single source.

    - Museum object numbers (``rijks__0009632_RP-T-1889-A-2046(R).jpg``): the acquisition lot,
      i.e. the object number up to its first number (``RP-T-1889``). A lot is one collection
      entering the museum, often one artist or album, and keeps recto/verso sheets together,
      so it is the closest thing to a "sub-source" there is.
    - Plain running numbers (``orthodoxshop__044.jpg``): blocks of ten consecutive numbers
      (``04x``), because neighbouring shop listings tend to be the same painter or series.
    - Anything else: the file itself.
    """
    stem = Path(sample.path).stem
    rest = stem.split("__", 1)[1] if "__" in stem else stem
    m = _OBJECT_LOT.match(rest)
    if m:
        return m.group(1)
    if _NUMBER.match(rest):
        return f"{int(rest) // 10:0{max(1, len(rest) - 1)}d}x"
    return rest


def _rng_for(seed: int, label: str) -> np.random.Generator:
    """A generator per (seed, class), so one class's choice does not depend on the others."""
    return np.random.default_rng([seed, zlib.crc32(label.encode())])


def _choose_groups(sizes: dict[str, int], target: float, rng: np.random.Generator) -> set[str]:
    """Pick groups whose total size is close to ``target``, never all of them and never none.

    With few groups (the sources of one class) every proper subset is tried and the closest
    wins, ties broken by ``rng``; with many (acquisition lots) a seeded greedy pass adds groups
    in random order while they fit under the target.
    """
    keys = sorted(sizes)
    if len(keys) < 2:
        return set()
    if len(keys) <= 12:
        best: list[tuple[str, ...]] = []
        best_diff = math.inf
        for r in range(1, len(keys)):
            for combo in itertools.combinations(keys, r):
                diff = abs(sum(sizes[k] for k in combo) - target)
                if diff < best_diff - 1e-9:
                    best, best_diff = [combo], diff
                elif abs(diff - best_diff) <= 1e-9:
                    best.append(combo)
        return set(best[int(rng.integers(len(best)))])
    chosen: set[str] = set()
    total = 0
    for i in rng.permutation(len(keys)):
        k = keys[int(i)]
        if total + sizes[k] <= target:
            chosen.add(k)
            total += sizes[k]
    if not chosen:
        chosen.add(min(keys, key=lambda k: (sizes[k], k)))
    return chosen


def split_by_source(
    samples: Sequence[Sample],
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    *,
    mode: Literal["source", "random"] = "source",
    keep: set[str] | frozenset[str] = frozenset(),
) -> tuple[list[Sample], list[Sample]]:
    """Split into ``(train, validation)`` so that validation sources are never trained on.

    For each class, whole ``(class, source)`` groups are held out, choosing the subset of
    sources whose size is closest to ``val_fraction`` of the class (never all of them, so the
    class is still learnt). A class with a single source (drawings are all ``rijks``, icons all
    ``orthodoxshop``) falls back to :func:`sub_source_key` groups, and to single files if even
    that gives one group, so every class with two or more images appears in validation.
    ``mode="random"`` is a plain stratified split per class (single files), kept only to show
    how much a random split overstates accuracy. Sources in ``keep`` (curator collections,
    whose labels are what the retraining is for) always stay in training.

    Copies always stay on one side: files with identical SHA-256, and near copies by the
    ingest pipeline's own rule (pHash and dHash within 14 bits, see :mod:`artclf_core.dedup`),
    form one group (:func:`duplicate_groups`); within a class their groups are merged before
    choosing, and a copy shared by two classes goes to training, so neither an exact nor a
    re-encoded/resized copy can be scored as an "unseen" image.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be between 0 and 1")
    if mode not in ("source", "random"):
        raise ValueError(f"unknown split mode {mode!r}")
    hashes = duplicate_groups(samples)
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(samples):
        if s.source not in keep:
            by_class[s.label].append(s)
    key_fns: list[Callable[[Sample], str]] = [lambda s: str(s.path)]
    if mode == "source":
        key_fns = [lambda s: s.source, sub_source_key, *key_fns]
    val: set[Sample] = set()
    for label, items in sorted(by_class.items()):
        rng = _rng_for(seed, label)
        for key_fn in key_fns:
            groups = _groups_merging_duplicates(items, key_fn, hashes)
            if len(groups) >= 2:
                target = val_fraction * len(items)
                chosen = _choose_groups({k: len(v) for k, v in groups.items()}, target, rng)
                for k in chosen:
                    val.update(groups[k])
                break
    # A duplicate across two classes: keep every copy in training.
    train_hashes = {hashes[s] for s in samples if s not in val}
    val = {s for s in val if hashes[s] not in train_hashes}
    train_list = [s for s in sorted(samples) if s not in val]
    val_list = [s for s in sorted(samples) if s in val]
    return train_list, val_list


def duplicate_groups(samples: Sequence[Sample]) -> dict[Sample, str]:
    """Map each sample to the SHA-256 of the first member of its group of copies.

    Exact copies share a SHA-256; near copies (re-encoded, resized, slightly cropped) are found
    with the same pHash + dHash rule ingestion uses. Chains are followed (union-find), so a
    copy of a copy joins the group too.
    """
    from artclf_core import dedup

    ordered = sorted(samples)
    shas = [file_sha256(s.path) for s in ordered]
    phashes, dhashes = [], []
    for s in ordered:
        p, d = dedup.image_hashes(open_rgb(str(s.path), draft_size=SPLIT_DRAFT_SIZE))
        phashes.append(p)
        dhashes.append(d)
    found = dedup.find_duplicates_in_batch(shas, phashes, dhashes=dhashes)
    root = list(range(len(ordered)))
    for i, hit in enumerate(found):
        if hit is not None:
            root[i] = root[hit[1]]  # hit[1] < i, so its root is final already
    return {s: shas[root[i]] for i, s in enumerate(ordered)}


def _groups_merging_duplicates(
    items: Sequence[Sample], key_fn: Callable[[Sample], str], hashes: dict[Sample, str]
) -> dict[str, list[Sample]]:
    """Group ``items`` by ``key_fn``, merging groups that share a file hash (union-find).

    A merged group is named after its alphabetically first key, so names stay deterministic.
    """
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    first_key_of_hash: dict[str, str] = {}
    for s in items:
        k = key_fn(s)
        parent.setdefault(k, k)
        other = first_key_of_hash.setdefault(hashes[s], k)
        a, b = find(k), find(other)
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in items:
        groups[find(key_fn(s))].append(s)
    return dict(groups)


def describe_split(train: Sequence[Sample], val: Sequence[Sample]) -> dict[str, Any]:
    """Summarise a split per class: counts and which sources are (partly) held out."""
    out: dict[str, Any] = {"n_train": len(train), "n_val": len(val), "classes": {}}
    for label in CLASSES:
        tr = Counter(s.source for s in train if s.label == label)
        va = Counter(s.source for s in val if s.label == label)
        if not tr and not va:
            continue
        out["classes"][label] = {
            "train": dict(sorted(tr.items())),
            "val": dict(sorted(va.items())),
            "val_groups": sorted(
                {
                    s.source if s.source not in tr else f"{s.source}:{sub_source_key(s)}"
                    for s in val
                    if s.label == label
                }
            ),
        }
    return out


def load_images(
    samples: Sequence[Sample], *, size: int = IMAGE_SIZE, workers: int | None = None
) -> np.ndarray:
    """Decode samples into a uint8 array (N, size, size, 3) with the ingestion preprocessing.

    ``size`` is the model's input side (:attr:`ArtModel.image_size`: 150 for the cnn, the
    backbone's chosen resolution otherwise). Decoding once up front (about 100 MB at 150 px,
    175 MB at 192 px for the 1,576 shared images) makes each epoch pure tensor work; a couple
    of threads overlap Pillow's decoding, which releases the GIL.
    """
    out = np.empty((len(samples), size, size, 3), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = to_model_input(open_rgb(str(samples[i].path)), size)

    n_workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        list(pool.map(one, range(len(samples))))
    return out


# ------------------------------------------------------------------------------ recipes


@dataclass(frozen=True)
class Recipe:
    """How one architecture is trained by default (every field can be overridden in train()).

    ``epochs``/``learning_rate``/``patience`` are the main phase: the whole cnn, or the
    fine-tuning of the backbone's top ``fine_tune_stages`` stages. ``head_epochs`` and
    ``head_learning_rate`` are the backbone's first phase, with the backbone frozen (0 for the
    cnn, which has no such phase).
    """

    image_size: int
    epochs: int
    learning_rate: float
    patience: int
    batch_size: int = 32
    head_epochs: int = 0
    head_learning_rate: float = 1e-3
    fine_tune_stages: int = 0


#: Default recipe per architecture. The cnn's is the prototype's (unchanged). The backbone's
#: was chosen by measurement on the shared images (docs/model-card.md): a frozen-backbone
#: head phase, then stages 6-7 + head fine-tuned at a low learning rate with frozen
#: BatchNorm, stopped on the source-disjoint validation loss.
RECIPES: dict[str, Recipe] = {
    "cnn": Recipe(image_size=IMAGE_SIZE, epochs=EPOCHS, learning_rate=1e-3, patience=PATIENCE),
    "efficientnet_lite0": Recipe(
        image_size=DEFAULT_IMAGE_SIZES["efficientnet_lite0"],
        epochs=20,
        learning_rate=3e-5,
        patience=5,
        head_epochs=15,
        head_learning_rate=1e-3,
        fine_tune_stages=2,
    ),
}


# ------------------------------------------------------------------------- augmentation


def build_augmenter(seed: int = 0) -> keras.Sequential:
    """The cnn's training-only augmentation, aimed at the cues that identify a *source*.

    Colour is the strongest such cue here (greyscale book plates vs colour web images), so
    images are randomly turned grey and their saturation, brightness and contrast jittered;
    small flips, rotations (up to 7 degrees), zooms *in* (random crops) and shifts stand in for
    different framing, and a mild blur for differing scan resolution. Vertical flips are left
    out: upside-down art is not something the product will see.
    """
    L = keras.layers
    return keras.Sequential(
        [
            L.RandomFlip("horizontal", seed=seed + 1),
            L.RandomRotation(0.02, fill_mode="reflect", seed=seed + 2),
            L.RandomZoom((-0.2, 0.0), fill_mode="reflect", seed=seed + 3),
            L.RandomTranslation(0.05, 0.05, fill_mode="reflect", seed=seed + 4),
            L.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 5),
            L.RandomContrast(0.2, value_range=(0, 255), seed=seed + 6),
            L.RandomSaturation((0.25, 0.75), value_range=(0, 255), seed=seed + 7),
            L.RandomGrayscale(0.3, seed=seed + 8),
            L.RandomGaussianBlur(0.3, kernel_size=3, value_range=(0, 255), seed=seed + 9),
        ],
        name="augment",
    )


def _coin(seed: tf.Tensor, p: float) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed) < p


def augment_image(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """The backbone's augmentation of one uint8 (S, S, 3) image -> float32 0-255 (S, S, 3).

    Every step attacks a cue that identifies a *source* rather than a medium, and every random
    draw is stateless from ``seed`` (shape [2]), so a run is reproducible:

    * random crop of 55-100 % of the area, aspect 3:4-4:3, squeezed back to S x S (framing,
      margins and plate borders differ between books and museums), horizontal flip;
    * with p=0.3 a down- and up-scale by 0.3-0.7 (blur: scan resolution, the 224 px web
      images), with p=0.5 a JPEG re-compression at quality 20-90 (compression artefacts);
    * colour jitter: brightness +-0.15, contrast 0.7-1.3, saturation 0.5-1.5, hue +-0.04 and a
      per-channel gain of 0.88-1.12 (paper tint, white balance);
    * with p=0.3 greyscale (colour photographs vs greyscale book plates).

    Runs in the tf.data pipeline, never inside the saved model.
    """
    size = tf.shape(image)[:2]
    s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 12)
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=s[0],
        min_object_covered=0.0,
        aspect_ratio_range=(0.75, 1.33),
        area_range=(0.55, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    x = tf.image.resize(tf.slice(image, begin, extent), size)  # float32 0-255
    x = tf.image.stateless_random_flip_left_right(x, s[1])

    def blur(img: tf.Tensor) -> tf.Tensor:
        factor = tf.random.stateless_uniform([], s[3], 0.3, 0.7)
        small = tf.cast(tf.round(tf.cast(size, tf.float32) * factor), tf.int32)
        return tf.image.resize(tf.image.resize(img, small, antialias=True), size)

    x = tf.cond(_coin(s[2], 0.3), lambda: blur(x), lambda: x)

    def jpeg(img: tf.Tensor) -> tf.Tensor:
        u8 = tf.cast(tf.clip_by_value(tf.round(img), 0.0, 255.0), tf.uint8)
        out = tf.image.stateless_random_jpeg_quality(u8, 20, 90, s[5])
        return tf.cast(out, tf.float32)

    x = tf.cond(_coin(s[4], 0.5), lambda: jpeg(x), lambda: x)
    x = x / 255.0
    x = tf.image.stateless_random_brightness(x, 0.15, s[6])
    x = tf.image.stateless_random_contrast(x, 0.7, 1.3, s[7])
    x = tf.clip_by_value(x, 0.0, 1.0)
    x = tf.image.stateless_random_saturation(x, 0.5, 1.5, s[8])
    x = tf.image.stateless_random_hue(x, 0.04, s[9])
    x = x * tf.random.stateless_uniform([1, 1, 3], s[10], 0.88, 1.12)
    x = tf.clip_by_value(x, 0.0, 1.0)
    x = tf.cond(
        _coin(s[11], 0.3), lambda: tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3]), lambda: x
    )
    x = tf.ensure_shape(x * 255.0, image.shape)
    return x


def build_training_model(base: keras.Model, seed: int = 0, *, augment: bool = True) -> keras.Model:
    """Wrap ``base`` (optionally with the cnn's augmentation) and keep only the probabilities.

    The wrapper shares ``base``'s weights, so training it trains ``base``; only ``base`` is
    saved, which keeps augmentation out of the inference model. The backbone is trained with
    ``augment=False`` here because its augmentation runs in the tf.data pipeline
    (:func:`augment_image`).
    """
    size = input_size(base)
    inputs = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    x = build_augmenter(seed)(inputs) if augment else inputs
    probs = base(x)["probabilities"]
    # Identity layer so the output (and its logs) is named "probabilities".
    probs = keras.layers.Identity(name="probabilities")(probs)
    return keras.Model(inputs, probs, name="artclf_train")


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class weights ``n / (k * count)`` so each present class contributes equally."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes, dtype=np.float64)
    weights[present] = labels.size / (present.sum() * counts[present])
    return weights


def _dataset(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    batch_size: int,
    *,
    shuffle_seed: int | None,
    augment_seed: int | None = None,
) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((x, y, w.astype(np.float32)))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    if augment_seed is not None:
        # One fresh [2] seed per image and epoch (rerandomised every pass over the data).
        seeds = tf.data.Dataset.random(seed=augment_seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip(ds, seeds.batch(2))
        ds = ds.map(
            lambda e, s: (augment_image(e[0], s), e[1], e[2]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        ds = ds.batch(batch_size)
    else:
        ds = ds.batch(batch_size).map(
            lambda a, b, c: (tf.cast(a, tf.float32), b, c), num_parallel_calls=tf.data.AUTOTUNE
        )
    return ds.prefetch(tf.data.AUTOTUNE)


class _BestWeights(keras.callbacks.Callback):
    """Model selection across training phases: keeps the weights of the epoch with the lowest
    ``monitor`` over every ``fit`` it is passed to, and stops a fit once ``patience`` epochs
    (counted over all phases) have not improved on it."""

    def __init__(self, target: keras.Model, monitor: str) -> None:
        super().__init__()
        self.target = target
        self.monitor = monitor
        self.patience: int | None = None
        self.best = math.inf
        self.best_epoch = -1
        self.best_weights: list[np.ndarray] | None = None
        self.epoch = -1  # global epoch index over all phases

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch += 1
        value = (logs or {}).get(self.monitor)
        if value is not None and float(value) < self.best:
            self.best = float(value)
            self.best_epoch = self.epoch
            self.best_weights = self.target.get_weights()
        elif self.patience is not None and self.epoch - self.best_epoch >= self.patience:
            self.model.stop_training = True

    def restore(self) -> None:
        if self.best_weights is not None:
            self.target.set_weights(self.best_weights)


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch (losses, validation metrics, seconds), through ``logging``.

    Keras's own progress output goes to stdout, which a scheduler's task log may not show
    and which is noise in a CLI's JSON output; an operator watching a 10-minute training in
    the Airflow log needs to see it advance.
    """

    def __init__(self, phase: str = "") -> None:
        super().__init__()
        self.phase = phase
        self._started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        values = " ".join(f"{k} {float(v):.4f}" for k, v in sorted((logs or {}).items()))
        log.info(
            "epoch %d%s: %s (%.1f s)",
            epoch + 1,
            f" ({self.phase})" if self.phase else "",
            values,
            time.perf_counter() - self._started,
        )


def _merge_histories(histories: Sequence[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Concatenate per-phase histories; keys missing from a phase are dropped."""
    keys = set.intersection(*(set(h) for h in histories)) if histories else set()
    return {k: [float(v) for h in histories for v in h[k]] for k in sorted(keys)}


def train(
    data_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    val: ValMode = "source",
    val_fraction: float = VAL_FRACTION,
    arch: str = "cnn",
    patience: int | None = None,
    learning_rate: float | None = None,
    image_size: int | None = None,
    head_epochs: int | None = None,
    head_learning_rate: float | None = None,
    fine_tune_stages: int | None = None,
    label_smoothing: float = 0.0,
    source_balanced: bool = False,
    kshot: bool = False,
    verbose: int = 2,
) -> dict[str, Any]:
    """Train a model on ``data_dir`` and save it, with its metadata, to ``out_path``.

    Every keyword left as None takes the architecture's :data:`RECIPES` value.
    ``label_smoothing`` softens the one-hot targets; ``source_balanced`` weighs each image
    like the ridge head does (classes equal, a source of n images by 1/sqrt(n),
    :func:`artclf_core.ridge_head.source_weights`) instead of by class only.

    * ``arch="cnn"``: the prototype's recipe: augmentation layers in front of the model, class
      weights, Adam, learning-rate halving on plateaus and early stopping on the
      (class-weighted) validation loss with the best epoch's weights restored.
    * ``arch="efficientnet_lite0"``: the ImageNet backbone, in two phases over the same
      augmented tf.data pipeline (:func:`augment_image`) and class weights: (a)
      ``head_epochs`` with the backbone frozen, training dropout + embedding + softmax at
      ``head_learning_rate``; (b) up to ``epochs`` more with the top ``fine_tune_stages``
      stages and the backbone head unfrozen (BatchNorm kept frozen, see
      :func:`artclf_core.backbones.trainable_top`) at ``learning_rate``, halved on plateaus.
      The weights of the epoch with the lowest validation loss over *both* phases are kept,
      and phase (b) stops after ``patience`` epochs without a new best.

    With ``val="none"`` the training loss is monitored instead and no report is produced.
    The saved model never saw the validation images, so ``bench/model_quality.py`` can rebuild
    the split from the stored parameters and re-measure it.

    Returns ``{"version", "model_path", "report" (validation report with
    ``label_precision_at_5`` and ``by_source``, or None), "history", "best_epoch",
    "epochs_run", "train_seconds", "split"}``.
    """
    if val not in ("source", "random", "none"):
        raise ValueError(f"val must be 'source', 'random' or 'none', got {val!r}")
    from artclf_core.model import TEXTURE_ARCHS

    if arch in TEXTURE_ARCHS:
        from artclf_core import ridge_training

        return ridge_training.train(
            data_dir,
            out_path,
            arch=arch,
            seed=seed,
            val=val,
            val_fraction=val_fraction,
            image_size=image_size,
            kshot=kshot,
            verbose=verbose,
        )
    if arch not in RECIPES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(RECIPES)}")
    recipe = RECIPES[arch]
    epochs = recipe.epochs if epochs is None else int(epochs)
    batch_size = recipe.batch_size if batch_size is None else int(batch_size)
    patience = recipe.patience if patience is None else int(patience)
    learning_rate = recipe.learning_rate if learning_rate is None else float(learning_rate)
    image_size = recipe.image_size if image_size is None else int(image_size)
    head_epochs = recipe.head_epochs if head_epochs is None else int(head_epochs)
    head_lr = recipe.head_learning_rate if head_learning_rate is None else head_learning_rate
    stages = recipe.fine_tune_stages if fine_tune_stages is None else int(fine_tune_stages)
    backbone_arch = arch != "cnn"

    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    classes = CLASSES
    samples = scan_labelled_folder(data_dir)
    if val == "none":
        tr_samples, va_samples = list(samples), []
    else:
        tr_samples, va_samples = split_by_source(samples, val_fraction, seed, mode=val)
    index = {c: i for i, c in enumerate(classes)}
    x_tr = load_images(tr_samples, size=image_size)
    y_tr = np.array([index[s.label] for s in tr_samples], dtype=np.int64)
    x_va = load_images(va_samples, size=image_size)
    y_va = np.array([index[s.label] for s in va_samples], dtype=np.int64)
    decode_seconds = time.perf_counter() - started
    log.info(
        "decoded %d images at %dpx in %.1f s: %d train, %d validation",
        len(samples),
        image_size,
        decode_seconds,
        len(tr_samples),
        len(va_samples),
    )

    weights = class_weights(y_tr, len(classes))
    per_image = weights[y_tr]
    if source_balanced:
        from artclf_core.ridge_head import DEFAULT_SOURCE_POWER, source_weights

        per_image = source_weights(
            y_tr, np.array([s.source for s in tr_samples]), DEFAULT_SOURCE_POWER
        )
    train_ds = _dataset(
        x_tr,
        y_tr,
        per_image,
        batch_size,
        shuffle_seed=seed,
        augment_seed=seed if backbone_arch else None,
    )
    val_ds = None
    if len(va_samples):
        # Validation is weighted by its own class frequencies, so early stopping optimises the
        # balanced objective the model is judged on.
        val_ds = _dataset(
            x_va, y_va, class_weights(y_va, len(classes))[y_va], 64, shuffle_seed=None
        )
    monitor = "val_loss" if val_ds is not None else "loss"

    n_classes = len(classes)

    def smoothed(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        onehot = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), n_classes)
        return keras.losses.categorical_crossentropy(
            onehot, y_pred, label_smoothing=label_smoothing
        )

    def compile_(model: keras.Model, lr: float) -> None:
        model.compile(
            optimizer=keras.optimizers.Adam(lr),
            loss=smoothed if label_smoothing else keras.losses.SparseCategoricalCrossentropy(),
            weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )

    base = build_model(len(classes), seed=seed, arch=arch, image_size=image_size)
    fit_started = time.perf_counter()
    # Progress goes through logging (EpochLog); Keras's bars only with verbose > 2.
    fit_args = {"validation_data": val_ds, "shuffle": False, "verbose": max(0, verbose - 2)}
    phase_epochs: list[int] = []
    if not backbone_arch:
        trainer = build_training_model(base, seed=seed)
        compile_(trainer, learning_rate)
        stopper = keras.callbacks.EarlyStopping(
            monitor=monitor,
            patience=patience,
            restore_best_weights=True,
            verbose=int(bool(verbose)),
        )
        callbacks = [
            EpochLog(),
            stopper,
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor, factor=0.5, patience=max(1, patience // 3), min_lr=1e-5, verbose=0
            ),
        ]
        hist = trainer.fit(train_ds, epochs=epochs, callbacks=callbacks, **fit_args)
        history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        epochs_run = len(next(iter(history.values()), []))
        best_epoch = int(stopper.best_epoch) + 1 if stopper.best_weights is not None else epochs_run
        phase_epochs = [epochs_run]
    else:
        from artclf_core.backbones import trainable_top

        backbone = base.get_layer("backbone")
        trainer = build_training_model(base, seed=seed, augment=False)
        best = _BestWeights(base, monitor)
        histories = []
        if head_epochs > 0:
            backbone.trainable = False
            compile_(trainer, head_lr)
            hist = trainer.fit(
                train_ds, epochs=head_epochs, callbacks=[best, EpochLog("head")], **fit_args
            )
            histories.append(hist.history)
            phase_epochs.append(len(hist.history.get("loss", [])))
        if epochs > 0:
            trainable_top(backbone, stages)
            compile_(trainer, learning_rate)
            best.patience = patience
            done = sum(phase_epochs)
            plateau = keras.callbacks.ReduceLROnPlateau(
                monitor=monitor,
                factor=0.5,
                patience=max(1, patience // 2),
                min_lr=learning_rate / 16,
                verbose=0,
            )
            hist = trainer.fit(
                train_ds,
                initial_epoch=done,
                epochs=done + epochs,
                callbacks=[best, plateau, EpochLog("fine-tune")],
                **fit_args,
            )
            histories.append(hist.history)
            phase_epochs.append(len(hist.history.get("loss", [])))
        best.restore()
        history = _merge_histories(histories)
        epochs_run = sum(phase_epochs)
        best_epoch = best.best_epoch + 1 if best.best_weights is not None else epochs_run
    fit_seconds = time.perf_counter() - fit_started

    version = make_version(arch, base)
    wrapped = ArtModel(base, version=version, classes=classes, arch=arch)
    split = {
        "mode": val,
        "val_fraction": val_fraction,
        "seed": seed,
        **describe_split(tr_samples, va_samples),
    }
    report = None
    if len(va_samples):
        probs, embs = wrapped.predict(x_va)
        report = _full_report(va_samples, probs, embs, classes, split=split)
    train_seconds = time.perf_counter() - started
    training_info = {
        "epochs_max": epochs,
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "patience": patience,
        "seed": seed,
        "image_size": image_size,
        "class_weights": dict(zip(classes, weights.round(4).tolist(), strict=True)),
        "decode_seconds": round(decode_seconds, 1),
        "fit_seconds": round(fit_seconds, 1),
        "train_seconds": round(train_seconds, 1),
    }
    if backbone_arch:
        training_info.update(
            head_epochs=head_epochs,
            head_learning_rate=head_lr,
            fine_tune_stages=stages,
            phase_epochs=phase_epochs,
            augmentation="augment_image (tf.data)",
            label_smoothing=label_smoothing,
            source_balanced=source_balanced,
        )
    metadata_metrics = {
        "validation": report,
        "split": split,
        "training": training_info,
        "history": history,
    }
    path = save_model(
        base, out_path, version=version, classes=classes, arch=arch, metrics=metadata_metrics
    )
    log.info("saved %s (%s) after %.0f s", path, version, train_seconds)
    return {
        "version": version,
        "model_path": str(path),
        "report": report,
        "history": history,
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "train_seconds": train_seconds,
        "split": split,
    }


# --------------------------------------------------------------------------- evaluation


def _trained_sources(split: dict[str, Any] | None) -> dict[str, set[str]] | None:
    """``{class: sources with training images}`` from a model's stored split, if any."""
    if not split or not isinstance(split.get("classes"), dict):
        return None
    return {c: set((info or {}).get("train", {})) for c, info in split["classes"].items()}


def by_source_report(
    samples: Sequence[Sample],
    y_pred: np.ndarray,
    classes: Sequence[str],
    *,
    split: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Accuracy grouped by (class, source), and per class over its sources.

    ``sources`` maps ``"<class>/<source>"`` to ``{"label", "source", "n", "accuracy",
    "predicted" (counts by predicted class), "trained_on"}``; ``trained_on`` says whether the
    model had training images of that source (from the model's stored ``split``; None when
    unknown), so a high figure on a source the model learnt from is not read as
    generalisation. ``per_class`` gives, for each class, the leave-one-source-out style view:
    the accuracy of each of its sources weighted equally (``mean_source_accuracy``), the worst
    source, and the same mean over the sources the model was *not* trained on
    (``unseen_source_accuracy``, None when there are none or it is unknown).
    """
    classes = tuple(classes)
    trained = _trained_sources(split)
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[(s.label, s.source)].append(i)
    index = {c: i for i, c in enumerate(classes)}
    sources: dict[str, Any] = {}
    for (label, source), rows in sorted(groups.items()):
        pred = Counter(classes[int(p)] for p in np.asarray(y_pred)[rows])
        sources[f"{label}/{source}"] = {
            "label": label,
            "source": source,
            "n": len(rows),
            "accuracy": pred.get(label, 0) / len(rows),
            "predicted": {c: pred[c] for c in classes if pred.get(c)},
            "trained_on": None if trained is None else source in trained.get(label, set()),
        }
    per_class: dict[str, Any] = {}
    for label in sorted({s.label for s in samples}, key=lambda c: index.get(c, len(index))):
        mine = [v for v in sources.values() if v["label"] == label]
        worst = min(mine, key=lambda v: (v["accuracy"], v["source"]))
        unseen = [v["accuracy"] for v in mine if v["trained_on"] is False]
        per_class[label] = {
            "sources": len(mine),
            "n": sum(v["n"] for v in mine),
            "mean_source_accuracy": float(np.mean([v["accuracy"] for v in mine])),
            "worst_source": worst["source"],
            "worst_accuracy": worst["accuracy"],
            "unseen_sources": len(unseen) if trained is not None else None,
            "unseen_source_accuracy": float(np.mean(unseen)) if unseen else None,
        }
    return {"sources": sources, "per_class": per_class}


def _full_report(
    samples: Sequence[Sample],
    probs: np.ndarray,
    embs: np.ndarray,
    classes: Sequence[str],
    *,
    split: dict[str, Any] | None = None,
) -> dict[str, Any]:
    index = {c: i for i, c in enumerate(classes)}
    y_true = np.array([index[s.label] for s in samples], dtype=np.int64)
    y_pred = np.argmax(probs, axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    report = classification_report(y_true, y_pred, classes)
    report["label_precision_at_5"] = label_precision_at_k(embs, y_true, k=5)
    report["by_source"] = by_source_report(samples, y_pred, classes, split=split)
    return report


def evaluate_samples(samples: Sequence[Sample], model: ArtModel) -> dict[str, Any]:
    """Report of ``model`` over ``samples`` (labels must be model classes).

    The keys of :func:`artclf_core.metrics.classification_report`, plus
    ``label_precision_at_5`` (the embedding's retrieval quality within ``samples``, see
    :func:`artclf_core.metrics.label_precision_at_k`) and ``by_source``
    (:func:`by_source_report`, using the split stored in the model's metadata).
    """
    unknown = {s.label for s in samples} - set(model.classes)
    if unknown:
        raise ValueError(f"labels {sorted(unknown)} are not classes of model {model.version}")
    probs = np.zeros((0, len(model.classes)), np.float32)
    embs = np.zeros((0, model.embedding_dim), np.float32)
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    # Decode in chunks so evaluating a large folder does not hold every image in memory.
    for chunk in _chunks(samples, 256):
        parts.append(model.predict(load_images(chunk, size=model.image_size)))
    if parts:
        probs = np.concatenate([p for p, _ in parts])
        embs = np.concatenate([e for _, e in parts])
    split = (model.metrics or {}).get("split") if isinstance(model.metrics, dict) else None
    return _full_report(samples, probs, embs, model.classes, split=split)


def _chunks(items: Sequence[Sample], size: int) -> Iterable[Sequence[Sample]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def evaluate(
    data_dir: str | os.PathLike[str], model_path: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Report of a saved model (the shipped default when ``model_path`` is None) on a folder.

    Every image of the folder is scored, so on the training folder this overstates quality;
    ``by_source`` marks which sources the model was trained on, and ``bench/model_quality.py``
    gives the held-out figure.
    """
    model = ArtModel.load(model_path)
    return evaluate_samples(scan_labelled_folder(data_dir), model)
