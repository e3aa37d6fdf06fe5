"""Source-breaking augmentation: reproducible, RGB in and out, every transform runs."""

from __future__ import annotations

import numpy as np
from PIL import Image

from artclf_core.lifecycle import augment


def _picture() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8), "RGB")


def test_augment_is_reproducible_and_rgb() -> None:
    img = _picture()
    a = augment.augment(img, np.random.default_rng([1, 2]))
    b = augment.augment(img, np.random.default_rng([1, 2]))
    assert a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_every_transform_returns_an_rgb_picture() -> None:
    img = _picture()
    rng = np.random.default_rng(5)
    for out in (
        augment.greyscale(img),
        augment.sepia(img, rng),
        augment.halftone(img, rng),
        augment.paper_tint(img, rng),
        augment.border(img, rng),
        augment.crop(img, rng),
        augment.perspective(img, rng),
        augment.resample(img, rng),
        augment.jpeg(img, rng),
        augment.colour_jitter(img, rng),
    ):
        assert out.mode == "RGB" and min(out.size) >= 8
    arr = np.asarray(augment.halftone(img, rng))
    assert (arr[..., 0] == arr[..., 1]).all(), "a halftone plate is grey"


def test_texture_backbone_shape() -> None:
    from artclf_core.model import texture

    net = texture.build_texture_backbone(64, weights=None)
    out = net.predict(np.zeros((2, 64, 64, 3), np.float32), verbose=0)
    assert out.shape == (2, texture.feature_dim())
