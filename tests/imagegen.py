"""Fixture images made in code, so the test suite needs no image files and no ``../shared``.

* :func:`make_artwork` draws a distinct synthetic "painting" per seed: the pHash tests need
  pictures that are far apart from each other (different seeds) and near to their own
  re-encodings, which random noise (no low-frequency structure) and flat colours (identical
  hashes) both fail to give.
* :func:`near_copies` makes the everyday transformations a catalogue sees: re-encodes,
  resizes, small crops, format conversions.
* :func:`bad_inputs` and :func:`odd_but_good` are the validator's two sides: every upload that
  must be refused with a given reason code, and every odd-but-legitimate one that must come out
  as clean RGB.
"""

from __future__ import annotations

import io
import json
import random
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from artclf_core.images.decode import Limits

#: Size of the fixture pictures (width, height).
SIZE: tuple[int, int] = (320, 240)

#: Limits to decode :func:`bad_inputs` with: only ``max_bytes`` differs from the defaults, so
#: the "oversized_file" case stays a 300 KB file instead of 50 MiB of test data. Every other
#: bad input is well under 200 KB, so it is refused for its own reason, not for its size.
BAD_INPUT_LIMITS = Limits(max_bytes=200_000)


def _gradient(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A linear gradient between two random colours at a random angle, (h, w, 3) float."""
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = np.cos(angle) * xx / w + np.sin(angle) * yy / h
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-9)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    return c0 + t[..., None] * (c1 - c0)


def make_artwork(seed: int, size: tuple[int, int] = SIZE) -> Image.Image:
    """A synthetic RGB picture, visually distinct for every seed.

    Large random shapes over a random gradient give each seed its own low-frequency layout
    (which is what pHash sees); strokes and a sine texture add the high-frequency detail that
    makes JPEG re-encoding and resizing actually change pixels.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    canvas = _gradient(rng, w, h)
    # A sine texture of random frequency and orientation, like canvas weave or hatching.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    fx, fy = rng.uniform(0.05, 0.4, 2)
    canvas += rng.uniform(5, 20) * np.sin(fx * xx + fy * yy)[..., None]
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")

    draw = ImageDraw.Draw(img)
    scale = min(w, h)
    for _ in range(int(rng.integers(4, 9))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.1, 0.45, 2) * scale
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            n = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            pts = [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in angles]
            draw.polygon(pts, fill=colour)
    for _ in range(int(rng.integers(5, 15))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(3)]
        draw.line(pts, fill=colour, width=int(rng.integers(1, 6)))
    return img.filter(ImageFilter.SMOOTH)


def encode(img: Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    """Encode ``img`` in memory (``kw`` go to ``Image.save``, e.g. ``quality=60``)."""
    buf = io.BytesIO()
    if fmt == "JPEG" and img.mode in ("RGBA", "P", "LA"):
        img = img.convert("RGB")
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _crop(img: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    """Crop fractions of the width/height off each side."""
    w, h = img.size
    return img.crop((round(left * w), round(top * h), w - round(right * w), h - round(bottom * h)))


def near_copies(img: Image.Image) -> dict[str, bytes]:
    """Transformed copies of ``img`` that must be found as near duplicates of it.

    The original to compare with is ``img`` itself (or any lossless/high-quality encoding of
    it); each copy is one everyday transformation, plus two combinations. The crops take 3-5 %
    off the width and height, spread over both sides: cutting 3-5 % off *one* side shifts the
    whole picture, and that is where pHash starts to miss (about 1 in 30 at 5 % on these
    pictures, 1 in 9 on the real artworks: docs/dedup.md), so such crops are measured by the
    benchmark rather than promised here. Every copy below stays within NEAR_DUP_MAX_DISTANCE
    for all seeds 0..199.
    """
    w, h = img.size
    half = img.resize((w // 2, h // 2), Image.Resampling.LANCZOS)
    big = img.resize((w * 3 // 2, h * 3 // 2), Image.Resampling.BICUBIC)
    return {
        "jpeg_q60": encode(img, "JPEG", quality=60),
        "resize_50": encode(half, "JPEG", quality=90),
        "resize_150": encode(big, "JPEG", quality=90),
        "crop_3pct": encode(_crop(img, 0.02, 0.01, 0.01, 0.02), "JPEG", quality=90),
        "crop_4pct": encode(_crop(img, 0.02, 0.02, 0.02, 0.02), "JPEG", quality=90),
        "crop_5pct_width": encode(_crop(img, 0.025, 0.0, 0.025, 0.0), "PNG"),
        "png": encode(img, "PNG"),
        "webp": encode(img, "WEBP", quality=80),
        "resize_75_jpeg_q70": encode(
            img.resize((w * 3 // 4, h * 3 // 4), Image.Resampling.BILINEAR), "JPEG", quality=70
        ),
        "crop_4pct_resize_50_jpeg_q75": encode(
            _crop(img, 0.02, 0.02, 0.02, 0.02).resize((w // 2, h // 2)), "JPEG", quality=75
        ),
    }


# ---------------------------------------------------------------------------------------------
# Bad inputs


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def png_header_only(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG that *announces* ``width`` x ``height`` RGB pixels.

    The IDAT holds one compressed empty string: harmless unless a decoder trusts the header
    and allocates width * height * 3 bytes, which is exactly what the bomb guard must prevent.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b""))
        + _png_chunk(b"IEND", b"")
    )


def _gif_header_only(width: int, height: int) -> bytes:
    """A tiny GIF whose screen and single frame claim ``width`` x ``height`` pixels."""
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", width, height, 0x80, 0, 0)
        + b"\x00\x00\x00\xff\xff\xff"  # 2-colour global palette
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, width, height, 0)
        + b"\x02\x02\x44\x01\x00"  # LZW min code size 2, one tiny sub-block
        + b"\x3b"
    )


def _noise(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def bad_inputs() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected ``ImageRejected.reason``). Decode with :data:`BAD_INPUT_LIMITS`.

    Covers what reaches an upload bucket in practice: error pages and API answers saved under
    an image name, interrupted transfers, damaged files, icons and documents, and crafted
    decompression bombs at each of the three places they can be caught (our own pixel limit,
    Pillow's warning, Pillow's error).
    """
    art = make_artwork(1)
    jpeg = encode(art, "JPEG", quality=90)
    png = encode(_noise((160, 120), 2), "PNG")
    gif = encode(make_artwork(3).convert("P", palette=Image.Palette.ADAPTIVE), "GIF")
    webp = encode(art, "WEBP", quality=80)

    sos = jpeg.index(b"\xff\xda")
    sos_len = struct.unpack(">H", jpeg[sos + 2 : sos + 4])[0]
    scan_start = sos + 2 + sos_len
    garbage = random.Random(7).randbytes(20_000)

    idat = png.index(b"IDAT")
    png_bad = bytearray(png)
    png_bad[idat + 40 : idat + 240] = garbage[:200]  # also breaks the CRC, as in real damage

    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("picture.jpg", jpeg)

    svg = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<svg xmlns="http://www.w3.org/2000/svg" width="320" height="240">'
        b'<rect width="320" height="240" fill="#c33"/></svg>\n'
    )
    html = (
        b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
        b"<body><h1>Not Found</h1><p>The requested URL was not found.</p></body></html>\n"
    )
    heic = struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic" + b"\x00" * 64

    cases: dict[str, tuple[bytes, str]] = {
        "empty": (b"", "empty"),
        "oversized_file": (encode(_noise((300, 300), 4), "PNG"), "too_large_file"),
        "html_named_jpg": (html, "not_an_image"),
        "plain_text": (b"This is not a picture, it is a note about one.\n" * 20, "not_an_image"),
        "json": (json.dumps({"error": "AccessDenied", "code": 403}).encode(), "not_an_image"),
        "xml": (b'<?xml version="1.0"?>\n<Error><Code>NoSuchKey</Code></Error>\n', "not_an_image"),
        "base64_data_url": (b"data:image/jpeg;base64," + jpeg[:300].hex().encode(), "not_an_image"),
        "random_bytes": (garbage[:4096], "not_an_image"),
        "zip_archive": (zbuf.getvalue(), "not_an_image"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated_jpeg_headers_only": (jpeg[: scan_start + 10], "truncated"),
        "truncated_png": (png[: len(png) * 2 // 3], "truncated"),
        "truncated_gif": (gif[: len(gif) // 2], "truncated"),
        "truncated_webp": (webp[: len(webp) // 2], "truncated"),
        "jpeg_header_then_garbage": (jpeg[:20] + garbage, "corrupt"),
        "jpeg_garbage_scan_data": (jpeg[:scan_start] + garbage + b"\xff\xd9", "corrupt"),
        "png_damaged_idat": (bytes(png_bad), "corrupt"),
        "too_small_10x10": (encode(art.resize((10, 10)), "PNG"), "too_small"),
        "too_small_strip_1000x20": (encode(art.resize((1000, 20)), "JPEG"), "too_small"),
        "bomb_png_over_our_limit": (png_header_only(8000, 7000), "too_many_pixels"),
        "bomb_png_pillow_warning": (png_header_only(10_000, 10_000), "too_many_pixels"),
        "bomb_png_pillow_error": (png_header_only(100_000, 100_000), "too_many_pixels"),
        "bomb_gif": (_gif_header_only(65_535, 65_535), "too_many_pixels"),
        "jpeg_with_zip_appended": (encode(art) + b"PK\x03\x04" + bytes(4096), "trailing_data"),
        "ico": (encode(art, "ICO", sizes=[(64, 64)]), "unsupported_format"),
        "pdf": (encode(art, "PDF"), "unsupported_format"),
        "eps": (encode(art.resize((64, 48)), "EPS"), "unsupported_format"),
        "svg": (svg, "unsupported_format"),
        "heic_header": (heic, "unsupported_format"),
    }
    return cases


# ---------------------------------------------------------------------------------------------
# Odd but good inputs


def odd_but_good() -> dict[str, bytes]:
    """name -> bytes of uploads that must be accepted and come out as 8-bit upright RGB.

    Every picture is :data:`SIZE` (320 x 240) once upright; see :func:`odd_expected_size`.
    """
    art = make_artwork(11)
    w, h = art.size
    rgba = art.convert("RGBA")
    alpha = Image.new("L", art.size, 255)
    ImageDraw.Draw(alpha).rectangle((0, 0, 39, h - 1), fill=0)  # left 40 px fully transparent
    rgba.putalpha(alpha)
    pal_t = art.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal_t.info["transparency"] = pal_t.getpixel((0, 0))
    grey16 = np.asarray(art.convert("L"), dtype=np.uint16) * 257
    # EXIF orientation 6: the camera stored the pixels of an upright portrait turned 90 degrees
    # anticlockwise and asks viewers to turn them back.
    upright = make_artwork(12, size=(h, w))
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.new("RGB", art.size, c) for c in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    second = make_artwork(13)
    return {
        "greyscale_L_png": encode(art.convert("L"), "PNG"),
        "greyscale_jpeg": encode(art.convert("L"), "JPEG", quality=90),
        "bilevel_1_png": encode(art.convert("1"), "PNG"),
        "palette_P_png": encode(art.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "palette_with_transparency_png": encode(pal_t, "PNG"),
        "rgba_transparent_png": encode(rgba, "PNG"),
        "la_png": encode(rgba.convert("LA"), "PNG"),
        "rgba_webp_lossless": encode(rgba, "WEBP", lossless=True),
        "cmyk_jpeg": encode(art.convert("CMYK"), "JPEG", quality=90),
        "grey16_png": encode(Image.fromarray(grey16), "PNG"),
        "exif_rotated_jpeg": encode(stored, "JPEG", quality=90, exif=exif.tobytes()),
        "progressive_jpeg": encode(art, "JPEG", quality=85, progressive=True),
        "animated_gif": encode(
            frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0
        ),
        "webp": encode(art, "WEBP", quality=80),
        "tiff_lzw": encode(art, "TIFF", compression="tiff_lzw"),
        "tiff_two_pages": encode(art, "TIFF", save_all=True, append_images=[second]),
        "bmp": encode(art, "BMP"),
        "mpo": encode(art, "MPO", save_all=True, append_images=[second]),
        "large_jpeg_drafted": encode(art.resize((w * 4, h * 4)), "JPEG", quality=85),
    }


def odd_expected_size(name: str) -> tuple[int, int]:
    """Upright (width, height) that ``decode_image`` must report for ``odd_but_good()[name]``."""
    w, h = SIZE
    if name == "exif_rotated_jpeg":
        return h, w
    if name == "large_jpeg_drafted":
        return w * 4, h * 4
    return w, h


def odd_expected_frames(name: str) -> int:
    """Number of frames ``decode_image`` must report for ``odd_but_good()[name]``."""
    return {"animated_gif": 3, "tiff_two_pages": 2, "mpo": 2}.get(name, 1)


def class_background(label: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """The paper colour of a class's test pictures (paintings draw theirs from ``rng``)."""
    return {
        "drawings": (236, 224, 196),
        "engraving": (250, 250, 250),
        "iconography": (200, 160, 40),
        "painting": tuple(int(v) for v in rng.integers(0, 255, 3)),
        "sculpture": (40, 40, 40),
    }[label]


def labelled_png(label: str, i: int) -> bytes:
    """A picture whose colours/shapes differ by class, so a short training learns them."""
    rng = np.random.default_rng([zlib.crc32(label.encode()), i])
    img = Image.new("RGB", (120 + i, 100), class_background(label, rng))
    d = ImageDraw.Draw(img)
    for k in range(6 + i % 4):
        x, y = int(rng.integers(0, 100)), int(rng.integers(0, 80))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        if label == "engraving":
            d.line([(0, 3 * k + i % 3), (120, 3 * k + 10)], fill=(0, 0, 0))
        d.rectangle([x, y, x + 15 + k, y + 12], fill=colour)
    return encode(img, fmt="PNG")


# ------------------------------------------------------------- none of the five classes


def _photo_noise(img: Image.Image, rng: np.random.Generator, sigma: float = 6.0) -> Image.Image:
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0.0, sigma, (img.height, img.width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype("uint8"))


def text_page(seed: int = 0, size: tuple[int, int] = (600, 800)) -> Image.Image:
    """A printed page: a heading and justified lines of words, black on off-white paper."""
    rng = np.random.default_rng([41, seed])
    w, h = size
    img = Image.new("RGB", size, (246, 244, 238))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=18)
    d.text(
        (60, 50),
        "CHAPTER " + "IVX"[seed % 3],
        fill=(20, 20, 20),
        font=ImageFont.load_default(size=30),
    )
    words = ["the", "collection", "museum", "of", "and", "catalogue", "was", "in", "a", "year"]
    y = 110
    while y < h - 60:
        x = 60
        while x < w - 120:
            word = words[int(rng.integers(len(words)))]
            d.text((x, y), word, fill=(25, 25, 25), font=font)
            x += int(d.textlength(word + " ", font=font))
        y += 26
    return _photo_noise(img, rng, 3.0)


def building_photo(seed: int = 0, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A colour street photograph of a modern building: blue sky, a glass and concrete facade
    in perspective, a grey road."""
    rng = np.random.default_rng([42, seed])
    w, h = size
    sky = np.linspace([90, 150, 230], [190, 215, 245], h)[:, None, :].repeat(w, 1)
    img = Image.fromarray(sky.astype("uint8"))
    d = ImageDraw.Draw(img)
    left, right, top = int(w * 0.15), int(w * 0.85), int(h * 0.12)
    d.polygon(
        [(left, h), (left + 30, top), (right - 30, top + 20), (right, h)], fill=(170, 165, 160)
    )
    for row in range(top + 20, int(h * 0.8), 34):
        for col in range(left + 50, right - 50, 44):
            tint = int(rng.integers(60, 140))
            d.rectangle([col, row, col + 30, row + 22], fill=(tint // 2, tint, tint + 60))
    d.rectangle([0, int(h * 0.85), w, h], fill=(80, 80, 84))
    d.line([(0, int(h * 0.93)), (w, int(h * 0.93))], fill=(235, 235, 235), width=4)
    return _photo_noise(img, rng)


def person_photo(seed: int = 0, size: tuple[int, int] = (480, 640)) -> Image.Image:
    """A colour snapshot of a person: a face and shoulders against a blurred green park."""
    rng = np.random.default_rng([43, seed])
    w, h = size
    bg = rng.integers(0, 255, (h // 16, w // 16, 3)).astype(np.float32)
    bg = bg * [0.3, 0.7, 0.3] + [30, 70, 20]
    img = Image.fromarray(np.clip(bg, 0, 255).astype("uint8")).resize(size, Image.BICUBIC)
    img = img.filter(ImageFilter.GaussianBlur(6))
    d = ImageDraw.Draw(img)
    skin = (224, 172, 140)
    d.ellipse([w * 0.1, h * 0.62, w * 0.9, h * 1.2], fill=(200, 40, 50))  # a red jumper
    d.rectangle([w * 0.42, h * 0.5, w * 0.58, h * 0.66], fill=skin)  # neck
    d.ellipse([w * 0.3, h * 0.18, w * 0.7, h * 0.58], fill=skin)  # face
    d.chord([w * 0.28, h * 0.12, w * 0.72, h * 0.42], 180, 360, fill=(70, 45, 30))  # hair
    for ex in (0.42, 0.58):
        d.ellipse([w * ex - 9, h * 0.35 - 6, w * ex + 9, h * 0.35 + 6], fill=(60, 40, 30))
    d.arc([w * 0.42, h * 0.43, w * 0.58, h * 0.51], 20, 160, fill=(150, 60, 60), width=4)
    return _photo_noise(img.filter(ImageFilter.GaussianBlur(1)), rng)


def out_of_class() -> dict[str, Image.Image]:
    """Pictures that are none of the five classes, which must land in review."""
    return {
        "text_page": text_page(),
        "building_photo": building_photo(),
        "person_photo": person_photo(),
    }
