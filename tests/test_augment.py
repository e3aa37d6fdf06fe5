"""Source-breaking augmentation: reproducible, RGB in and out, every transform runs."""

from __future__ import annotations

import numpy as np
import pytest
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


def test_channel_correlation_is_the_normalised_gram_matrix() -> None:
    """Each output is the Pearson correlation over space of one pair of channels, in the
    order of the upper triangle; a constant (dead) channel gives 0, not NaN."""
    from artclf_core.model import texture

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 5, 4)).astype(np.float32)
    x[1, ..., 3] = 7.0
    out = np.asarray(texture.ChannelCorrelation()(x))
    assert out.shape == (2, 6)
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    for n in range(2):
        flat = x[n].reshape(-1, 4)
        for k, (i, j) in enumerate(pairs):
            want = 0.0 if n == 1 and 3 in (i, j) else np.corrcoef(flat[:, i], flat[:, j])[0, 1]
            assert abs(out[n, k] - want) < 1e-4
    net = texture.build_texture_backbone(64, weights=None, variant="lite1", gram_taps=(1, 2, 3))
    assert net.output.shape[-1] == texture.feature_dim(variant="lite1", gram_taps=(1, 2, 3))


def test_a_training_view_is_the_same_picture_whatever_the_chunk(tmp_path) -> None:
    """View 0 is the picture as ingestion prepares it; an augmented view is seeded by the
    sample's class and name, so training in chunks of any size gives the same rows."""
    from artclf_core.images.model_input import open_rgb, to_model_input
    from artclf_core.lifecycle.dataset import Sample, load_images

    samples = []
    for i in range(4):
        path = tmp_path / f"src__{i}.png"
        Image.fromarray(
            np.random.default_rng(i).integers(0, 255, (70, 90, 3), dtype=np.uint8), "RGB"
        ).save(path)
        samples.append(Sample(path, "painting", "src"))
    plain = load_images(samples, size=32)
    assert np.array_equal(plain[2], to_model_input(open_rgb(str(samples[2].path)), 32))
    views = load_images(samples, size=32, view=1)
    assert np.array_equal(views[2:], load_images(samples[2:], size=32, view=1))
    assert not np.array_equal(views, plain)
    assert not np.array_equal(views, load_images(samples, size=32, view=2))


def test_groups_leave_the_other_transforms_out() -> None:
    img = _picture()
    same = augment.augment(img, np.random.default_rng(3), groups=())
    assert np.array_equal(np.asarray(same), np.asarray(img))
    full = augment.augment(img, np.random.default_rng(3))
    named = augment.augment(img, np.random.default_rng(3), groups=augment.GROUPS)
    assert np.array_equal(np.asarray(full), np.asarray(named))
    with pytest.raises(ValueError, match="unknown augmentation groups"):
        augment.augment(img, np.random.default_rng(3), groups=("tones",))


def _samples(tmp_path, n: int) -> list:
    """``n`` random colour pictures and one grey one (greyscale leaves it as it is)."""
    from artclf_core.lifecycle.dataset import Sample

    samples = []
    for i in range(n):
        pixels = np.random.default_rng(i).integers(0, 255, (70, 90, 3), dtype=np.uint8)
        if i == 0:
            pixels[:] = pixels[..., :1]
        path = tmp_path / f"src__{i}.png"
        Image.fromarray(pixels, "RGB").save(path)
        samples.append(Sample(path, "painting", "src"))
    return samples


def test_a_view_says_which_copies_it_changed(tmp_path) -> None:
    """load_view returns only the copies that differ from the picture: with tone alone about
    half come out unchanged, and those need no forward pass."""
    from artclf_core.lifecycle.dataset import load_images, load_view

    samples = _samples(tmp_path, 12)
    plain = load_images(samples, size=32)
    copies = load_images(samples, size=32, view=1, groups=("tone",))
    changed, inputs = load_view(samples, view=1, groups=("tone",), size=32)
    assert changed.dtype == bool and 0 < changed.sum() < len(samples)
    assert np.array_equal(inputs, copies[changed])
    assert all(np.array_equal(copies[i], plain[i]) for i in np.flatnonzero(~changed))
    with pytest.raises(ValueError, match="view must be at least 1"):
        load_view(samples, view=0)


def test_unchanged_copies_reuse_the_pictures_features(tmp_path) -> None:
    """The recipe's copies through the backbone: the same features as running every copy,
    with only the changed ones computed."""
    from artclf_core.lifecycle import ridge_head
    from artclf_core.lifecycle.dataset import load_images
    from artclf_core.lifecycle.features import backbone_features

    class MeanColour:
        """A stand-in backbone: each input's mean colour; counts the rows it sees."""

        rows = 0

        def predict(self, x: np.ndarray, **_: object) -> np.ndarray:
            self.rows += len(x)
            return x.reshape(len(x), -1, 3).mean(1)

    samples, net = _samples(tmp_path, 12), MeanColour()
    pictures = backbone_features(samples, net, 32)
    got = backbone_features(samples, net, 32, view=2, pictures=pictures)
    every = load_images(samples, size=32, view=2, groups=ridge_head.VIEW_TRANSFORMS)
    assert np.allclose(got, MeanColour().predict(every.astype(np.float32)))
    assert len(samples) < net.rows < 2 * len(samples)
    with pytest.raises(ValueError, match="pictures' own features"):
        backbone_features(samples, net, 32, view=1)
