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
from artclf_core.metrics import classification_report
from artclf_core.model import ArtModel, build_model, make_version, save_model
from artclf_core.preprocess import open_rgb, to_model_input

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

#: File suffixes treated as images; everything else (README, MANIFEST.csv, .DS_Store) is skipped.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
#: Default share of each class held out for validation.
VAL_FRACTION = 0.2
#: Default maximum number of epochs; early stopping normally ends training well before.
EPOCHS = 80
#: Epochs without a better validation loss before training stops.
PATIENCE = 15

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
) -> tuple[list[Sample], list[Sample]]:
    """Split into ``(train, validation)`` so that validation sources are never trained on.

    For each class, whole ``(class, source)`` groups are held out, choosing the subset of
    sources whose size is closest to ``val_fraction`` of the class (never all of them, so the
    class is still learnt). A class with a single source (drawings are all ``rijks``, icons all
    ``orthodoxshop``) falls back to :func:`sub_source_key` groups, and to single files if even
    that gives one group, so every class with two or more images appears in validation.
    ``mode="random"`` is a plain stratified split per class (single files), kept only to show
    how much a random split overstates accuracy.

    Files with identical SHA-256 always stay on one side: within a class their groups are
    merged before choosing, and a duplicate shared by two classes goes to training, so an exact
    copy can never be scored as an "unseen" image.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be between 0 and 1")
    if mode not in ("source", "random"):
        raise ValueError(f"unknown split mode {mode!r}")
    hashes = {s: file_sha256(s.path) for s in samples}
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(samples):
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


def load_images(samples: Sequence[Sample], *, workers: int | None = None) -> np.ndarray:
    """Decode samples into a uint8 array (N, 150, 150, 3) with the ingestion preprocessing.

    Decoding once up front (about 100 MB for the 1,576 shared images) makes each epoch pure
    tensor work; a couple of threads overlap Pillow's decoding, which releases the GIL.
    """
    out = np.empty((len(samples), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = to_model_input(open_rgb(str(samples[i].path)))

    n_workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        list(pool.map(one, range(len(samples))))
    return out


def build_augmenter(seed: int = 0) -> keras.Sequential:
    """The training-only augmentation, aimed at the cues that identify a *source*, not a medium.

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


def build_training_model(base: keras.Model, seed: int = 0) -> keras.Model:
    """Wrap ``base`` with augmentation and keep only the probabilities output for the loss.

    The wrapper shares ``base``'s weights, so training it trains ``base``; only ``base`` is
    saved, which keeps augmentation out of the inference model.
    """
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype="float32", name="image")
    x = build_augmenter(seed)(inputs)
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
    x: np.ndarray, y: np.ndarray, w: np.ndarray, batch_size: int, *, shuffle_seed: int | None
) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((x, y, w.astype(np.float32)))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(
        lambda a, b, c: (tf.cast(a, tf.float32), b, c), num_parallel_calls=tf.data.AUTOTUNE
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def _predict_labels(model: ArtModel, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    preds = [
        np.argmax(model.predict(images[i : i + batch_size])[0], axis=1)
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def train(
    data_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    epochs: int = EPOCHS,
    batch_size: int = 32,
    seed: int = 0,
    val: ValMode = "source",
    val_fraction: float = VAL_FRACTION,
    arch: str = "cnn",
    patience: int = PATIENCE,
    learning_rate: float = 1e-3,
    verbose: int = 2,
) -> dict[str, Any]:
    """Train a model on ``data_dir`` and save it, with its metadata, to ``out_path``.

    Training uses augmentation, class weights, Adam, learning-rate halving on plateaus and early
    stopping on the (class-weighted) validation loss with the best epoch's weights restored.
    With ``val="none"`` the training loss is monitored instead and no report is produced.
    The saved model never saw the validation images, so ``bench/model_quality.py`` can rebuild
    the split from the stored parameters and re-measure it.

    Returns ``{"version", "model_path", "report" (validation report or None), "history",
    "best_epoch", "epochs_run", "train_seconds", "split"}``.
    """
    if val not in ("source", "random", "none"):
        raise ValueError(f"val must be 'source', 'random' or 'none', got {val!r}")
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    classes = CLASSES
    samples = scan_labelled_folder(data_dir)
    if val == "none":
        tr_samples, va_samples = list(samples), []
    else:
        tr_samples, va_samples = split_by_source(samples, val_fraction, seed, mode=val)
    index = {c: i for i, c in enumerate(classes)}
    x_tr = load_images(tr_samples)
    y_tr = np.array([index[s.label] for s in tr_samples], dtype=np.int64)
    x_va = load_images(va_samples)
    y_va = np.array([index[s.label] for s in va_samples], dtype=np.int64)
    decode_seconds = time.perf_counter() - started
    if verbose:
        print(
            f"decoded {len(samples)} images in {decode_seconds:.1f}s: "
            f"{len(tr_samples)} train, {len(va_samples)} validation",
            flush=True,
        )

    weights = class_weights(y_tr, len(classes))
    train_ds = _dataset(x_tr, y_tr, weights[y_tr], batch_size, shuffle_seed=seed)
    val_ds = None
    if len(va_samples):
        # Validation is weighted by its own class frequencies, so early stopping optimises the
        # balanced objective the model is judged on.
        val_ds = _dataset(
            x_va, y_va, class_weights(y_va, len(classes))[y_va], 64, shuffle_seed=None
        )

    base = build_model(len(classes), seed=seed, arch=arch)
    trainer = build_training_model(base, seed=seed)
    trainer.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    monitor = "val_loss" if val_ds is not None else "loss"
    stopper = keras.callbacks.EarlyStopping(
        monitor=monitor, patience=patience, restore_best_weights=True, verbose=int(bool(verbose))
    )
    callbacks = [
        stopper,
        keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=0.5, patience=max(1, patience // 3), min_lr=1e-5, verbose=0
        ),
    ]
    fit_started = time.perf_counter()
    hist = trainer.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        callbacks=callbacks,
        shuffle=False,  # the dataset reshuffles itself, with its own seed
        verbose=verbose,
    )
    fit_seconds = time.perf_counter() - fit_started
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    epochs_run = len(next(iter(history.values()), []))
    best_epoch = int(stopper.best_epoch) + 1 if stopper.best_weights is not None else epochs_run

    version = make_version(arch, base)
    wrapped = ArtModel(base, version=version, classes=classes, arch=arch)
    report = None
    if len(va_samples):
        report = classification_report(y_va, _predict_labels(wrapped, x_va), classes)
    split = {
        "mode": val,
        "val_fraction": val_fraction,
        "seed": seed,
        **describe_split(tr_samples, va_samples),
    }
    train_seconds = time.perf_counter() - started
    training_info = {
        "epochs_max": epochs,
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "patience": patience,
        "seed": seed,
        "class_weights": dict(zip(classes, weights.round(4).tolist(), strict=True)),
        "decode_seconds": round(decode_seconds, 1),
        "fit_seconds": round(fit_seconds, 1),
        "train_seconds": round(train_seconds, 1),
    }
    metadata_metrics = {
        "validation": report,
        "split": split,
        "training": training_info,
        "history": history,
    }
    path = save_model(
        base, out_path, version=version, classes=classes, arch=arch, metrics=metadata_metrics
    )
    if verbose:
        print(f"saved {path} ({version}) after {train_seconds:.0f}s", flush=True)
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


def evaluate_samples(samples: Sequence[Sample], model: ArtModel) -> dict[str, Any]:
    """Classification report of ``model`` over ``samples`` (labels must be model classes)."""
    unknown = {s.label for s in samples} - set(model.classes)
    if unknown:
        raise ValueError(f"labels {sorted(unknown)} are not classes of model {model.version}")
    index = {c: i for i, c in enumerate(model.classes)}
    y_true = np.array([index[s.label] for s in samples], dtype=np.int64)
    y_pred = np.zeros(0, dtype=np.int64)
    preds: list[np.ndarray] = []
    # Decode in chunks so evaluating a large folder does not hold every image in memory.
    for chunk in _chunks(samples, 256):
        preds.append(_predict_labels(model, load_images(chunk)))
    if preds:
        y_pred = np.concatenate(preds)
    return classification_report(y_true, y_pred, model.classes)


def _chunks(items: Sequence[Sample], size: int) -> Iterable[Sequence[Sample]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def evaluate(
    data_dir: str | os.PathLike[str], model_path: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Report of a saved model (the shipped default when ``model_path`` is None) on a folder.

    Every image of the folder is scored, so on the training folder this overstates quality;
    use ``bench/model_quality.py`` for the held-out figure.
    """
    model = ArtModel.load(model_path)
    return evaluate_samples(scan_labelled_folder(data_dir), model)
