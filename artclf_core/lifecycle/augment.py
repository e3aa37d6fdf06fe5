"""Training-time augmentation aimed at what separates *sources*, not media.

In the shared training images almost every source has a look of its own: one book's greyscale
halftones, a web site's 224 px colour JPEGs, a museum's cut-outs on white, an icon shop's gold
borders. A classifier can reach a high score on a random split by recognising those looks, and
then fails on a new museum or book. Each transform below takes one such cue away or puts it on
images of other media, so the cue stops predicting the class:

=====================  ===================================================  ===========
transform              the source cue it breaks                             probability
=====================  ===================================================  ===========
greyscale              colour photographs vs greyscale book plates          0.35
sepia / duotone        photogravures, old prints, yellowed scans            0.15
halftone screen        book reproductions printed through a dot screen      0.15
paper tint             cream paper vs white backgrounds                     0.20
border or mat          plate margins, mounts, frames, white cut-outs        0.30
crop                   framing, margins kept or cut                         0.50
perspective            a photograph taken at an angle                       0.20
resample down and up   scan resolution, small web images                    0.30
JPEG recompression     compression level of each site                       0.40
colour jitter          white balance, contrast and brightness of a scan     0.60
horizontal flip        (composition)                                        0.50
=====================  ===================================================  ===========

Everything works on a decoded Pillow image before
:func:`artclf_core.images.model_input.to_model_input`,
so the network sees augmented pictures prepared exactly as ingestion prepares real ones. The
draws come from a ``numpy`` generator: a view is reproducible from its seed.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

_PAPER = ((245, 238, 220), (236, 226, 200), (250, 248, 240), (228, 220, 205))
_MATS = ((255, 255, 255), (245, 240, 230), (20, 20, 20), (128, 128, 128), (90, 70, 50))


def greyscale(img: Image.Image) -> Image.Image:
    return ImageOps.grayscale(img).convert("RGB")


def sepia(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Map grey levels onto a two-colour ramp (dark brown to cream, or a cool duotone)."""
    dark = (int(rng.integers(20, 70)), int(rng.integers(10, 50)), int(rng.integers(0, 40)))
    light = _PAPER[int(rng.integers(len(_PAPER)))]
    return ImageOps.colorize(ImageOps.grayscale(img), dark, light)


def halftone(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """An amplitude-modulated dot screen at 45 degrees, as in a book's halftone plate."""
    grey = np.asarray(ImageOps.grayscale(img), dtype=np.float32) / 255.0
    h, w = grey.shape
    period = float(rng.uniform(2.5, 5.0))
    angle = np.deg2rad(float(rng.choice([45.0, 15.0, 75.0])))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period)
    v = (-xx * np.sin(angle) + yy * np.cos(angle)) * (2 * np.pi / period)
    screen = (np.cos(u) * np.cos(v) + 1.0) / 2.0  # 0..1
    ink = (grey < screen).astype(np.float32)  # dark where the image is dark
    mix = float(rng.uniform(0.5, 1.0))
    out = (1.0 - mix) * grey + mix * (1.0 - ink)
    arr = np.clip(out * 255.0, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "L").convert("RGB")


def paper_tint(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Multiply by a paper colour: white becomes cream, ink stays dark."""
    paper = np.array(_PAPER[int(rng.integers(len(_PAPER)))], dtype=np.float32) / 255.0
    arr = np.asarray(img, dtype=np.float32) * paper
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def border(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Pad with a plain mat (white, cream, black, grey or brown) of 3-18 % on each side."""
    w, h = img.size
    colour = _MATS[int(rng.integers(len(_MATS)))]
    pads = [int(round(s * float(rng.uniform(0.03, 0.18)))) for s in (w, h, w, h)]
    return ImageOps.expand(img, border=tuple(pads), fill=colour)


def crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Keep 60-100 % of the area, aspect ratio within 3:4-4:3 of the original."""
    w, h = img.size
    area = float(rng.uniform(0.6, 1.0))
    aspect = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
    cw = min(w, max(8, int(round(w * np.sqrt(area * aspect)))))
    ch = min(h, max(8, int(round(h * np.sqrt(area / aspect)))))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    return img.crop((x0, y0, x0 + cw, y0 + ch))


def perspective(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A mild keystone, as in a photograph not taken square on (corners move up to 8 %)."""
    w, h = img.size
    d = 0.08
    src = [
        (float(rng.uniform(0, d)) * w, float(rng.uniform(0, d)) * h),
        (w - float(rng.uniform(0, d)) * w, float(rng.uniform(0, d)) * h),
        (w - float(rng.uniform(0, d)) * w, h - float(rng.uniform(0, d)) * h),
        (float(rng.uniform(0, d)) * w, h - float(rng.uniform(0, d)) * h),
    ]
    dst = [(0, 0), (w, 0), (w, h), (0, h)]
    coeffs = _perspective_coeffs(dst, src)
    fill = _MATS[int(rng.integers(len(_MATS)))]
    return img.transform(
        (w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR, fillcolor=fill
    )


def _perspective_coeffs(dst, src) -> tuple[float, ...]:
    rows = []
    rhs = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    sol = np.linalg.solve(np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64))
    return tuple(float(c) for c in sol)


def resample(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    f = float(rng.uniform(0.3, 0.7))
    small = img.resize((max(8, int(w * f)), max(8, int(h * f))), Image.Resampling.BILINEAR)
    return small.resize((w, h), Image.Resampling.BILINEAR)


def jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(30, 91)))
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def colour_jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.8, 1.2)))
    img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.7, 1.3)))
    img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.5, 1.5)))
    gain = rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    arr = np.asarray(img, dtype=np.float32) * gain
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _mirror(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageOps.mirror(img)


def _grey(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return greyscale(img)


#: Applied in this order, each with its probability (one draw each).
_GEOMETRY = ((0.5, crop), (0.2, perspective), (0.3, border), (0.5, _mirror), (0.6, colour_jitter))
#: One draw picks at most one tone: halftone 0.15, sepia 0.15, greyscale 0.20.
_TONES = ((0.15, halftone), (0.30, sepia), (0.50, _grey))
_SURFACE = ((0.2, paper_tint), (0.3, resample), (0.4, jpeg))


#: The groups of transforms, in the order they apply.
GROUPS = ("geometry", "tone", "surface")


def augment(
    img: Image.Image, rng: np.random.Generator, groups: tuple[str, ...] = GROUPS
) -> Image.Image:
    """One random view of ``img`` (RGB) through the transforms of the module's table;
    ``groups`` leaves out the others (``bench/augment_ablation.py`` measures each)."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown augmentation groups {sorted(unknown)}; known: {GROUPS}")
    img = img.convert("RGB")
    if "geometry" in groups:
        for p, step in _GEOMETRY:
            if rng.random() < p:
                img = step(img, rng)
    if "tone" in groups:
        tone = rng.random()
        for upto, step in _TONES:
            if tone < upto:
                img = step(img, rng)
                break
    if "surface" in groups:
        for p, step in _SURFACE:
            if rng.random() < p:
                img = step(img, rng)
    return img
