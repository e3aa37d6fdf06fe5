"""Texture features of a frozen ImageNet backbone: what the medium looks like up close.

Hatching, halftone dots, woodcut gouges, brush strokes, gold leaf and photographic grain are
*textures*; the pooled output of an ImageNet network mostly says *what is depicted* (a saint, a
horse, a statue), which is the same across media and, worse, differs between sources. The
per-channel mean and standard deviation of the early and middle stages' activations (the
"style" statistics of neural style transfer) describe texture independent of layout, so the
``efficientnet_lite0_texture`` architecture (:mod:`artclf_core.model`) concatenates them with
the pooled head. They come from the same forward pass: the taps cost a few reductions, not a
second network.

Beside those first-order statistics, :class:`ChannelCorrelation` gives the correlation of every
pair of channels of the early stages (the normalised Gram matrix of style transfer): which
filters fire *together* over the picture, i.e. hatching crossing hatching, dots beside dots,
strokes along edges. Mean and deviation say how much of each pattern there is; correlations say
how the patterns combine, which is what tells an etching's cross-hatching from a pen drawing's
loose lines. The ``efficientnet_lite1_gram`` architecture adds them for stages 1-3 (1,176
values, a few matrix products on maps already computed).

Which stages are tapped and why is measured in docs/model-card.md ("What was tried").
"""

from __future__ import annotations

import os
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import numpy as np  # noqa: E402

#: MBConv stages (1-based, :data:`artclf_core.model.backbones.efficientnet_lite.STAGES`) whose last
#: block's output is summarised by :class:`ChannelStats`. Stage 2 ends at 1/4 of the input
#: side (fine strokes and dots), stage 6 at 1/32 (motifs).
DEFAULT_TAPS: tuple[int, ...] = (2, 3, 4, 5, 6)
#: Stages whose channel correlations :class:`ChannelCorrelation` adds in the ``_gram``
#: architectures: the early stages, where texture lives (stride 2 to 8). The stem and stage 4
#: measured worse (docs/model-card.md, "Channel correlations").
GRAM_TAPS: tuple[int, ...] = (1, 2, 3)


@keras.saving.register_keras_serializable(package="artclf")
class ChannelStats(keras.layers.Layer):
    """(N, H, W, C) -> (N, 2C): each channel's spatial mean and standard deviation.

    A registered layer rather than a Lambda so a saved model loads without ``safe_mode=False``
    (``import artclf_core.model.texture`` registers it; :mod:`artclf_core.model` imports it).
    """

    def call(self, x):
        mean = keras.ops.mean(x, axis=(1, 2))
        sq = keras.ops.mean(keras.ops.square(x), axis=(1, 2))
        std = keras.ops.sqrt(keras.ops.maximum(sq - keras.ops.square(mean), 0.0) + 1e-6)
        return keras.ops.concatenate([mean, std], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[-1])


@keras.saving.register_keras_serializable(package="artclf")
class ChannelCorrelation(keras.layers.Layer):
    """(N, H, W, C) -> (N, C(C-1)/2): the correlation over space of every pair of channels.

    The upper triangle (diagonal excluded: it is 1) of the normalised Gram matrix of the
    centred activations, row by row. Needs static H, W and C (the model's input is square and
    fixed). ``eps`` keeps a dead channel's correlations at 0 rather than NaN.
    """

    def __init__(self, eps: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.eps = eps

    def call(self, x):
        _, h, w, c = x.shape
        flat = keras.ops.reshape(x, (-1, h * w, c))
        centred = flat - keras.ops.mean(flat, axis=1, keepdims=True)
        cov = keras.ops.matmul(keras.ops.transpose(centred, (0, 2, 1)), centred) / float(h * w)
        sd = keras.ops.sqrt(keras.ops.mean(keras.ops.square(centred), axis=1)) + self.eps
        corr = cov / (keras.ops.expand_dims(sd, 2) * keras.ops.expand_dims(sd, 1))
        rows, cols = np.triu_indices(c, 1)
        index = (rows * c + cols).astype("int32")
        return keras.ops.take(keras.ops.reshape(corr, (-1, c * c)), index, axis=1)

    def compute_output_shape(self, input_shape):
        c = input_shape[-1]
        return (input_shape[0], c * (c - 1) // 2)

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}


def tap_layer_name(backbone: keras.Model, stage: int, variant: str = "lite0") -> str:
    """Name of the layer whose output ends ``stage``: its last block's residual ``add``, or the
    projection's BatchNorm for a stage whose last block has no shortcut."""
    from artclf_core.model.backbones.efficientnet_lite import stages

    block = f"stage{stage}_block{stages(variant)[stage - 1].repeats}"
    names = {layer.name for layer in backbone.layers}
    for candidate in (f"{block}_add", f"{block}_project_bn"):
        if candidate in names:
            return candidate
    raise ValueError(f"stage {stage} has no output layer in {backbone.name}")


def build_texture_backbone(
    size: int,
    *,
    taps: Sequence[int] = DEFAULT_TAPS,
    weights: str | None = "imagenet",
    name: str = "backbone",
    variant: str = "lite0",
    gram_taps: Sequence[int] = (),
) -> keras.Model:
    """EfficientNet-Lite ``variant`` returning one vector: its pooled 1280-d head followed by
    :class:`ChannelStats` of each tapped stage (896 more values for Lite0's default taps), then
    :class:`ChannelCorrelation` of each of ``gram_taps``."""
    from artclf_core.model.backbones.efficientnet_lite import build_efficientnet_lite

    net = build_efficientnet_lite(variant, (size, size, 3), weights=weights, name=f"{name}_net")
    parts = [net.output]
    for stage in taps:
        out = net.get_layer(tap_layer_name(net, stage, variant)).output
        parts.append(ChannelStats(name=f"texture_stage{stage}")(out))
    for stage in gram_taps:
        out = net.get_layer(tap_layer_name(net, stage, variant)).output
        parts.append(ChannelCorrelation(name=f"gram_stage{stage}")(out))
    features = keras.layers.Concatenate(name="features")(parts) if len(parts) > 1 else parts[0]
    return keras.Model(net.input, features, name=name)


def feature_dim(
    taps: Sequence[int] = DEFAULT_TAPS, variant: str = "lite0", gram_taps: Sequence[int] = ()
) -> int:
    """Length of :func:`build_texture_backbone`'s output for ``taps`` and ``gram_taps``."""
    from artclf_core.model.backbones.efficientnet_lite import FEATURE_DIM, stages

    widths = [stages(variant)[s - 1].output_filters for s in gram_taps]
    return (
        FEATURE_DIM
        + sum(2 * stages(variant)[s - 1].output_filters for s in taps)
        + sum(c * (c - 1) // 2 for c in widths)
    )
