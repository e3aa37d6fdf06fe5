"""The architecture names :func:`artclf_core.model.artmodel.build_model` knows, without Keras.

The CLI's ``--arch`` choices and the retrain DAG's ``arch`` param list them, and both must
parse without importing TensorFlow (a DAG file is parsed every few seconds by the
scheduler), so the names live here and ``artmodel`` builds from them.
"""

from __future__ import annotations

from artclf_core import IMAGE_SIZE

#: Architecture names: the prototype's CNN trained from scratch, EfficientNet-Lite0 with
#: ImageNet weights (:mod:`artclf_core.model.backbones`), and the same backbone frozen with
#: texture statistics (:mod:`artclf_core.model.texture`) under a closed-form head
#: (:mod:`artclf_core.lifecycle.ridge_head`), and the same recipe on the larger
#: EfficientNet-Lite1; ``efficientnet_lite1_gram`` adds the channel correlations of its early
#: stages (:class:`artclf_core.model.texture.ChannelCorrelation`), the default since it
#: generalises best to new sources (docs/model-card.md). Listed oldest first.
ARCHS: tuple[str, ...] = (
    "cnn",
    "efficientnet_lite0",
    "efficientnet_lite0_texture",
    "efficientnet_lite1_texture",
    "efficientnet_lite1_gram",
)
#: The frozen-backbone, closed-form-head architectures (:mod:`artclf_core.lifecycle.ridge_training`)
#: and the EfficientNet-Lite size each one runs.
TEXTURE_ARCHS: dict[str, str] = {
    "efficientnet_lite0_texture": "lite0",
    "efficientnet_lite1_texture": "lite1",
    "efficientnet_lite1_gram": "lite1",
}
#: The closed-form architectures that add the channel correlations of
#: :data:`artclf_core.model.texture.GRAM_TAPS`.
GRAM_ARCHS: frozenset[str] = frozenset({"efficientnet_lite1_gram"})
#: What ``artclf train`` and a first retraining build.
DEFAULT_ARCH = "efficientnet_lite1_gram"
#: Input side per architecture when ``image_size`` is not given. The backbone's 160 was chosen
#: by measurement (docs/model-card.md "Input resolution").
DEFAULT_IMAGE_SIZES: dict[str, int] = {
    "cnn": IMAGE_SIZE,
    "efficientnet_lite0": 160,
    "efficientnet_lite0_texture": 160,
    "efficientnet_lite1_texture": 160,
    "efficientnet_lite1_gram": 160,
}
