"""Training the classifier on a labelled folder ``DIR/<class>/<source>__<name>``.

:func:`train` stops and picks its weights on whole sources it did not train on (the split of
:mod:`artclf_core.lifecycle.dataset`), and saves the model with its metadata, split and
report. Texture architectures train their head in closed form
(:mod:`artclf_core.lifecycle.ridge_training`); the others by gradient descent here.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from artclf_core import CLASSES, IMAGE_SIZE
from artclf_core.lifecycle.dataset import (
    VAL_FRACTION,
    ValMode,
    describe_split,
    load_images,
    scan_labelled_folder,
    split_by_source,
)
from artclf_core.lifecycle.evaluation import full_report
from artclf_core.model.archs import DEFAULT_IMAGE_SIZES
from artclf_core.model.artmodel import (
    ArtModel,
    build_model,
    input_size,
    make_version,
    save_model,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

log = logging.getLogger("artclf.training")

#: Default maximum number of epochs; early stopping normally ends training well before.
EPOCHS = 80
#: Epochs without a better validation loss before training stops.
PATIENCE = 15


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
    views: int | None = None,
    kshot: bool = False,
    unlabelled: str | os.PathLike[str] | None = None,
    verbose: int = 2,
) -> dict[str, Any]:
    """Train a model on ``data_dir`` and save it, with its metadata, to ``out_path``.

    Every keyword left as None takes the architecture's :data:`RECIPES` value.
    ``label_smoothing`` softens the one-hot targets; ``source_balanced`` weighs each image
    like the ridge head does (classes equal, a source of n images by 1/sqrt(n),
    :func:`artclf_core.lifecycle.ridge_head.source_weights`) instead of by class only.
    ``views`` (closed-form architectures only): views of each training image, the picture
    and augmented copies (default :data:`artclf_core.lifecycle.ridge_head.DEFAULT_VIEWS`).
    ``unlabelled`` (closed-form architectures only): a folder of ``<collection>/`` images
    without labels that the head self-trains on (:mod:`artclf_core.lifecycle.self_training`).

    * ``arch="cnn"``: the prototype's recipe: augmentation layers in front of the model, class
      weights, Adam, learning-rate halving on plateaus and early stopping on the
      (class-weighted) validation loss with the best epoch's weights restored.
    * ``arch="efficientnet_lite0"``: the ImageNet backbone, in two phases over the same
      augmented tf.data pipeline (:func:`augment_image`) and class weights: (a)
      ``head_epochs`` with the backbone frozen, training dropout + embedding + softmax at
      ``head_learning_rate``; (b) up to ``epochs`` more with the top ``fine_tune_stages``
      stages and the backbone head unfrozen (BatchNorm kept frozen, see
      :func:`artclf_core.model.backbones.trainable_top`) at ``learning_rate``, halved on plateaus.
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
    from artclf_core.model.archs import TEXTURE_ARCHS

    if views is not None and arch not in TEXTURE_ARCHS:
        raise ValueError(f"views: only the closed-form architectures take them, not {arch!r}")
    if unlabelled is not None and arch not in TEXTURE_ARCHS:
        raise ValueError(
            f"unlabelled images: only the closed-form architectures self-train, not {arch!r}"
        )
    if arch in TEXTURE_ARCHS:
        from artclf_core.lifecycle import ridge_training

        return ridge_training.train(
            data_dir,
            out_path,
            arch=arch,
            seed=seed,
            val=val,
            val_fraction=val_fraction,
            image_size=image_size,
            **({} if views is None else {"views": views}),
            kshot=kshot,
            unlabelled=unlabelled,
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
        from artclf_core.lifecycle.ridge_head import DEFAULT_SOURCE_POWER, source_weights

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
        from artclf_core.model.backbones import trainable_top

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
        report = full_report(va_samples, probs, embs, classes, split=split)
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
