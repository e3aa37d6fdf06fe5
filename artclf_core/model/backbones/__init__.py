"""Pretrained image backbones in pure Keras 3, with their weights in the repository.

Importing this package imports Keras/TensorFlow (never torch); see ``docs/backbone.md``.
"""

from artclf_core.model.backbones.efficientnet_lite import (
    FEATURE_DIM,
    NATIVE_INPUT_SIZE,
    WEIGHTS_PATH,
    build_efficientnet_lite0,
    convert_state_dict,
    load_weights_npz,
    trainable_top,
)

__all__ = [
    "FEATURE_DIM",
    "NATIVE_INPUT_SIZE",
    "WEIGHTS_PATH",
    "build_efficientnet_lite0",
    "convert_state_dict",
    "load_weights_npz",
    "trainable_top",
]
