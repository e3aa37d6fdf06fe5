"""Texture features of a frozen ImageNet backbone: what the medium looks like up close.

Hatching, halftone dots, woodcut gouges, brush strokes, gold leaf and photographic grain are
*textures*; the pooled output of an ImageNet network mostly says *what is depicted* (a saint, a
horse, a statue), which is the same across media and, worse, differs between sources. The
per-channel mean and standard deviation of the early and middle stages' activations (the
"style" statistics of neural style transfer) describe texture independent of layout, so the
``efficientnet_lite0_texture`` architecture (:mod:`artclf_core.model`) concatenates them with
the pooled head. They come from the same forward pass: the taps cost a few reductions, not a
second network.

Which stages are tapped and why is measured in docs/model-card.md ("What was tried").
"""

from __future__ import annotations

import os
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402

#: MBConv stages (1-based, :data:`artclf_core.model.backbones.efficientnet_lite.STAGES`) whose last
#: block's output is summarised by :class:`ChannelStats`. Stage 2 ends at 1/4 of the input
#: side (fine strokes and dots), stage 6 at 1/32 (motifs).
DEFAULT_TAPS: tuple[int, ...] = (2, 3, 4, 5, 6)


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
) -> keras.Model:
    """EfficientNet-Lite ``variant`` returning one vector: its pooled 1280-d head followed by
    :class:`ChannelStats` of each tapped stage (896 more values for Lite0's default taps)."""
    from artclf_core.model.backbones.efficientnet_lite import build_efficientnet_lite

    net = build_efficientnet_lite(variant, (size, size, 3), weights=weights, name=f"{name}_net")
    parts = [net.output]
    for stage in taps:
        out = net.get_layer(tap_layer_name(net, stage, variant)).output
        parts.append(ChannelStats(name=f"texture_stage{stage}")(out))
    features = keras.layers.Concatenate(name="features")(parts) if len(parts) > 1 else parts[0]
    return keras.Model(net.input, features, name=name)


def feature_dim(taps: Sequence[int] = DEFAULT_TAPS, variant: str = "lite0") -> int:
    """Length of :func:`build_texture_backbone`'s output for ``taps``."""
    from artclf_core.model.backbones.efficientnet_lite import FEATURE_DIM, stages

    return FEATURE_DIM + sum(2 * stages(variant)[s - 1].output_filters for s in taps)
