"""Validation and decoding of uploads (artclf_core.images), on fixtures made in code."""

from __future__ import annotations

import re

import numpy as np
import pytest
from imagegen import (
    BAD_INPUT_LIMITS,
    SIZE,
    bad_inputs,
    encode,
    make_artwork,
    odd_but_good,
    odd_expected_frames,
    odd_expected_size,
)
from PIL import Image, ImageFile

from artclf_core.images.decode import (
    DEFAULT_LIMITS,
    DRAFT_SIZE,
    REASONS,
    DecodedImage,
    ImageRejected,
    Limits,
    decode_image,
)

BAD = bad_inputs()
ODD = odd_but_good()


def _reject(data: bytes, limits: Limits = DEFAULT_LIMITS) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, limits)
    return info.value


def test_fixture_covers_enough_kinds_and_every_main_reason() -> None:
    assert len(BAD) >= 14
    wanted = set(REASONS) - {"unsupported_mode"}  # no writable format produces such a mode
    assert wanted <= {reason for _, reason in BAD.values()}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_rejected_with_its_reason(name: str) -> None:
    data, reason = BAD[name]
    exc = _reject(data, BAD_INPUT_LIMITS)
    assert exc.reason == reason, f"{name}: {exc.reason}: {exc.message}"
    assert exc.reason in REASONS
    assert exc.message and str(exc) == exc.message


def test_reason_codes_are_snake_case() -> None:
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", r) for r in REASONS)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("html_named_jpg", "HTML"),
        ("json", "JSON"),
        ("plain_text", "plain text"),
        ("pdf", "PDF"),
        ("svg", "SVG"),
        ("ico", "ICO"),
        ("empty", "empty"),
    ],
)
def test_messages_name_the_problem(name: str, words: str) -> None:
    assert words in _reject(BAD[name][0], BAD_INPUT_LIMITS).message


def test_bomb_is_refused_from_the_header_not_by_decoding() -> None:
    # The 65-byte PNG holds no pixel data: decoding it would say "truncated"/"corrupt".
    exc = _reject(BAD["bomb_png_over_our_limit"][0])
    assert exc.reason == "too_many_pixels" and "8000x7000" in exc.message
    # A perfectly good picture over a (small) configured limit.
    assert _reject(encode(make_artwork(0)), Limits(max_pixels=10_000)).reason == "too_many_pixels"


def test_min_side_and_max_bytes_follow_the_limits() -> None:
    data = encode(make_artwork(0))
    assert _reject(data, Limits(min_side=300)).reason == "too_small"
    assert _reject(data, Limits(max_bytes=len(data) - 1)).reason == "too_large_file"
    assert decode_image(data, Limits(max_bytes=len(data), min_side=240)).width == SIZE[0]


def test_format_comes_from_the_bytes_and_the_accepted_list() -> None:
    png = encode(make_artwork(0), "PNG")
    assert decode_image(png).format == "PNG"
    exc = _reject(png, Limits(formats=frozenset({"JPEG"})))
    assert exc.reason == "unsupported_format" and "PNG" in exc.message


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_but_good_decodes_to_upright_rgb(name: str) -> None:
    data = ODD[name]
    out = decode_image(data)
    assert isinstance(out, DecodedImage)
    assert out.image.mode == "RGB"
    assert (out.width, out.height) == odd_expected_size(name)
    assert out.frames == odd_expected_frames(name)
    assert out.byte_size == len(data)
    w, h = out.image.size
    if name == "large_jpeg_drafted":
        # libjpeg scaled while decoding, never below the draft size, aspect kept.
        assert DRAFT_SIZE[0] <= w < out.width and DRAFT_SIZE[1] <= h < out.height
        assert abs(w / h - out.width / out.height) < 0.01
    else:
        assert (w, h) == (out.width, out.height)


def test_original_mode_and_format_are_reported() -> None:
    assert decode_image(ODD["cmyk_jpeg"]).mode == "CMYK"
    assert decode_image(ODD["grey16_png"]).mode.startswith("I;16")
    assert decode_image(ODD["palette_P_png"]).mode == "P"
    assert decode_image(ODD["mpo"]).format == "MPO"
    assert decode_image(ODD["webp"]).format == "WEBP"


def test_transparency_is_composited_on_white() -> None:
    for name in ("rgba_transparent_png", "la_png", "rgba_webp_lossless"):
        img = decode_image(ODD[name]).image
        assert img.getpixel((5, 100)) == (255, 255, 255), name  # the transparent left band
        assert img.getpixel((200, 100)) != (255, 255, 255), name
    assert decode_image(ODD["palette_with_transparency_png"]).image.getpixel((0, 0)) == (
        255,
        255,
        255,
    )


def test_exif_orientation_is_applied() -> None:
    upright = np.asarray(make_artwork(12, size=(SIZE[1], SIZE[0])), dtype=np.int16)
    got = np.asarray(decode_image(ODD["exif_rotated_jpeg"]).image, dtype=np.int16)
    assert got.shape == upright.shape
    assert np.abs(got - upright).mean() < 8  # JPEG noise only; a wrong turn gives ~60


def test_cmyk_and_16_bit_keep_their_tones() -> None:
    rgb = np.asarray(make_artwork(11), dtype=np.int16)
    cmyk = np.asarray(decode_image(ODD["cmyk_jpeg"]).image, dtype=np.int16)
    assert np.abs(cmyk - rgb).mean() < 12
    grey = np.asarray(decode_image(ODD["grey16_png"]).image)
    assert 20 < grey.mean() < 235 and grey.std() > 10  # scaled to 8 bits, not clipped to white


def test_animated_gif_gives_its_first_frame() -> None:
    out = decode_image(ODD["animated_gif"])
    assert out.frames == 3
    r, g, b = out.image.getpixel((10, 10))
    assert r > 150 and g < 80 and b < 80


def test_truncated_images_stay_errors() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    decode_image(ODD["webp"])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_refuses_to_run_if_truncated_loading_was_switched_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError):
        decode_image(BAD["truncated_jpeg"][0])


def test_decoded_image_is_independent_of_the_input_buffer() -> None:
    data = bytearray(encode(make_artwork(5), "PNG"))
    img = decode_image(bytes(data)).image
    before = img.getpixel((10, 10))
    data[:] = b"\0" * len(data)
    assert img.getpixel((10, 10)) == before
    assert isinstance(img, Image.Image)


def test_pillows_bomb_error_is_reported_with_the_products_limit() -> None:
    exc = _reject(BAD["bomb_png_pillow_error"][0])
    assert exc.reason == "too_many_pixels" and "10000 Mpx" in exc.message, exc.message
    assert "over the 50.0 Mpx limit" in exc.message and "DOS" not in exc.message


def test_a_file_appended_to_an_image_is_refused_but_padding_is_not() -> None:
    art = make_artwork(3)
    # An appended archive that itself holds an FFD9 pair: the scan must not stop there.
    rider = b"PK\x03\x04" + bytes(range(256)) * 8 + b"\xff\xd9" + b"\x00" * 100
    for fmt, kw in (("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}), ("WEBP", {})):
        clean = encode(art, fmt, **kw)
        assert decode_image(clean).format == fmt
        assert decode_image(clean + b"\x00" * 64).format == fmt  # a tool's padding
        exc = _reject(clean + rider)
        assert exc.reason == "trailing_data", (fmt, kw, exc)
        assert f"{len(rider)} bytes follow the end of the {fmt} image" in exc.message
    assert decode_image(encode(art) + rider, Limits(max_trailing_bytes=10_000)).format == "JPEG"


def test_scan_end_finds_the_first_marker_after_entropy_coded_data() -> None:
    """The regular-expression search gives, on any bytes, the same answer as a plain walk:
    stuffed ``FF00``, restart markers and fill bytes belong to the scan."""
    import random

    from artclf_core.images.decode import _scan_end

    def walk(data: bytes, i: int) -> int | None:
        while True:
            j = data.find(b"\xff", i)
            if j < 0 or j + 1 >= len(data):
                return None
            following = data[j + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7:
                i = j + 2
            elif following == 0xFF:
                i = j + 1
            else:
                return j

    rng = random.Random(32)
    alphabet = [0xFF, 0x00, 0xD0, 0xD7, 0xD8, 0xD9, 0xFE, 0x12]
    for _ in range(20_000):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        start = rng.randint(0, len(data))
        assert _scan_end(data, start) == walk(data, start), (data, start)
    # Linear whatever the bytes: a long run of fill bytes is no trap.
    assert _scan_end(b"\xff" * 1_000_000 + b"\x00", 0) is None
