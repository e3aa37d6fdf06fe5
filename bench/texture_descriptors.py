"""Richer texture descriptors beside the shipped features, under the grouped cross-validation.

    python bench/texture_descriptors.py --cache F.npz [--data ../shared/data/artworks] [--size 160]
        [--add F240.npz:240] [--crop C96.npz:96]
        [--folds 5] [--variants base,base+gram1,...]

The shipped recipe describes texture by each channel's spatial mean and standard deviation
(first-order "style" statistics). Neural style transfer's own descriptor is the channel
correlation (Gram) matrix: which filters fire *together*, i.e. hatching crossing hatching,
dots beside dots. It is cheap (a 24-channel stage at 40 x 40 is a 1,600 x 24 product) and
comes from the same forward pass. Also measured: colour and tone statistics of the model's
160 px input (saturation, grey share, luminance histogram, gradient energy), the cues a
curator uses first ("is it monochrome, is it lines"), and (``--crop``) the blocks of a
native-resolution centre square, where a print's lines and a plate's halftone dots are still
there to see.

Each descriptor block is computed once for every image (cached in ``--cache``), appended to
the shipped features (Lite1 pooled 1280 + texture statistics 896, 160 px) and run through
the recipe's ``cv_evaluate.cross_validate`` on the model card's folds (source families and
near-copy groups never split). Printed: pooled balanced accuracy, label precision@5 and
per-class recall. Results: docs/model-card.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _feature_cv import Folds, score  # noqa: E402

from artclf_core.images.model_input import open_rgb, to_model_input  # noqa: E402
from artclf_core.lifecycle.dataset import scan_labelled_folder  # noqa: E402

SIZE = 160  # the shipped input side; --size for another
STAGES = (0, 1, 2, 3, 4)  # 0: the stem (32 channels at 1/2 of the input side)
CHUNK = 128


def moments(fmap: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, 2C): each channel's skewness and share of positive activations."""
    x = fmap.astype(np.float64)
    mu = x.mean((1, 2), keepdims=True)
    d = x - mu
    sd = np.sqrt((d**2).mean((1, 2))) + 1e-6
    skew = (d**3).mean((1, 2)) / sd**3
    pos = (x > 0).mean((1, 2))
    return np.concatenate([skew, pos], axis=1).astype(np.float32)


def tone(x: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8-range pixels -> colour and tone statistics (46 values)."""
    rgb = x.astype(np.float64) / 255.0
    mx, mn = rgb.max(-1), rgb.min(-1)
    sat = (mx - mn) / (mx + 1e-6)
    lum = rgb @ np.array([0.299, 0.587, 0.114])
    n = len(x)
    feats = [
        sat.reshape(n, -1).mean(1)[:, None],
        sat.reshape(n, -1).std(1)[:, None],
        np.quantile(sat.reshape(n, -1), [0.5, 0.9], axis=1).T,
        (sat < 0.08).reshape(n, -1).mean(1)[:, None],  # share of (near-)grey pixels
    ]
    # luminance histogram (16 bins) and its spread
    bins = np.clip((lum * 16).astype(int), 0, 15).reshape(n, -1)
    feats.append(np.stack([(bins == b).mean(1) for b in range(16)], axis=1))
    feats.append(lum.reshape(n, -1).std(1)[:, None])
    # hue histogram weighted by saturation (12 bins)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b)  # -pi..pi
    hb = np.clip(((hue + np.pi) / (2 * np.pi) * 12).astype(int), 0, 11).reshape(n, -1)
    sw = sat.reshape(n, -1)
    hist = np.stack([(sw * (hb == k)).sum(1) for k in range(12)], axis=1)
    feats.append(hist / (sw.sum(1, keepdims=True) + 1e-6))
    # gradient energy at 1 and 2 px, and its orientation spread (lines vs. areas)
    for step in (1, 2):
        gx = lum[:, :, step:] - lum[:, :, :-step]
        gy = lum[:, step:, :] - lum[:, :-step, :]
        ex, ey = np.abs(gx).reshape(n, -1), np.abs(gy).reshape(n, -1)
        feats += [ex.mean(1)[:, None], ey.mean(1)[:, None], np.quantile(ex, 0.9, axis=1)[:, None]]
        feats.append(((ex > 0.1).mean(1))[:, None])
        feats.append(((ey > 0.1).mean(1))[:, None])
    # the "dark-on-light" share: lines on paper vs. filled areas
    feats.append((lum < 0.3).reshape(n, -1).mean(1)[:, None])
    feats.append((lum > 0.8).reshape(n, -1).mean(1)[:, None])
    return np.concatenate(feats, axis=1).astype(np.float32)


def native_crop(path: str, side: int) -> np.ndarray:
    """The centre ``side`` x ``side`` square of the picture at its stored resolution (no draft
    decode; a picture whose short side is under ``side`` is first enlarged to it): the strokes,
    dots and hatching that the 160 px squeeze of the whole picture averages away."""
    from PIL import Image

    img = open_rgb(path, draft=False)
    w, h = img.size
    if min(w, h) < side:
        scale = side / min(w, h)
        img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
        w, h = img.size
    left, top = (w - side) // 2, (h - side) // 2
    return np.asarray(img.crop((left, top, left + side, top + side)), dtype=np.uint8)


def compute(samples, size: int = SIZE, crop: bool = False) -> dict[str, np.ndarray]:
    """Every block for every image: of the squeezed picture at ``size``, or (``crop``) of its
    native-resolution centre square of side ``size``."""
    import keras

    from artclf_core.model.texture import (
        ChannelCorrelation,
        build_texture_backbone,
        tap_layer_name,
    )

    net = build_texture_backbone(size, variant="lite1")
    taps = [
        net.get_layer("stem_relu" if s == 0 else tap_layer_name(net, s, "lite1")).output
        for s in STAGES
    ]
    # the correlations by the shipped model's own layer (gram1-3 are its features)
    grams = [ChannelCorrelation()(t) for t in taps]
    probe = keras.Model(net.input, [net.output, *taps, *grams])
    blocks: dict[str, list[np.ndarray]] = {"base": [], "tone": []}
    for s in STAGES:
        blocks[f"gram{s}"], blocks[f"mom{s}"] = [], []
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        for i in range(0, len(samples), CHUNK):
            part = samples[i : i + CHUNK]
            if crop:
                x = np.stack(list(pool.map(lambda s: native_crop(str(s.path), size), part)))
            else:
                x = np.stack(
                    list(pool.map(lambda s: to_model_input(open_rgb(str(s.path)), size), part))
                )
            x = x.astype(np.float32)
            out = probe.predict(x, batch_size=32, verbose=0)
            blocks["base"].append(out[0])
            blocks["tone"].append(tone(x))
            fmaps, corrs = out[1 : 1 + len(STAGES)], out[1 + len(STAGES) :]
            for s, fmap, corr in zip(STAGES, fmaps, corrs, strict=True):
                blocks[f"gram{s}"].append(corr)
                blocks[f"mom{s}"].append(moments(fmap))
            print(f"  {i + len(part)}/{len(samples)} ({time.perf_counter() - started:.0f} s)")
    return {k: np.concatenate(v) for k, v in blocks.items()}


def main() -> int:

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--size", type=int, default=SIZE, help="input side of the cached blocks")
    ap.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="CACHE:SIZE",
        help="also the blocks at another input side (e.g. gram1@240), cached in CACHE",
    )
    ap.add_argument(
        "--crop",
        action="append",
        default=[],
        metavar="CACHE:SIDE",
        help="also the blocks of each picture's native-resolution centre square of SIDE px, "
        "named crop<block>@<SIDE> (e.g. croptex@96), cached in CACHE",
    )
    ap.add_argument("--folds", type=int, default=5, help="0: leave one family out")
    ap.add_argument("--lam", type=float, default=10.0)
    ap.add_argument("--per-source", action="store_true", help="accuracy of each source")
    ap.add_argument(
        "--variants",
        default="base,base+tone,base+gram1,base+gram2,base+gram3,base+mom1+mom2,"
        "base+gram1+gram2,base+tone+gram1+gram2",
    )
    args = ap.parse_args()
    samples = scan_labelled_folder(args.data)
    if Path(args.cache).exists():
        with np.load(args.cache) as z:
            blocks = {k: z[k] for k in z.files}
    else:
        blocks = compute(samples, args.size)
        np.savez(args.cache, **blocks)
    for extra in args.add:  # another size's blocks, named <block>@<size>
        path, size = extra.rsplit(":", 1)
        if not Path(path).exists():
            np.savez(path, **compute(samples, int(size)))
        with np.load(path) as z:
            blocks.update({f"{k}@{size}": z[k] for k in z.files})
    for extra in args.crop:  # the native-resolution centre square's blocks
        path, side = extra.rsplit(":", 1)
        if not Path(path).exists():
            np.savez(path, **compute(samples, int(side), crop=True))
        with np.load(path) as z:
            blocks.update({f"crop{k}@{side}": z[k] for k in z.files})
        blocks[f"croppool@{side}"] = blocks[f"cropbase@{side}"][:, :1280]
        blocks[f"croptex@{side}"] = blocks[f"cropbase@{side}"][:, 1280:]
    blocks["pool"], blocks["tex"] = blocks["base"][:, :1280], blocks["base"][:, 1280:]
    folds = Folds.of(samples)
    sources, y = folds.sources, folds.y
    print(f"{len(samples)} images, {len(set(folds.groups))} groups, grouped {args.folds}-fold")
    print(f"{'variant':28s} {'dims':>5s} {'bal. acc.':>9s} {'p@5':>6s}  recall")
    per_source: dict[str, dict[str, float]] = {}
    for name in args.variants.split(","):
        started = time.perf_counter()
        feats = np.concatenate([blocks[b] for b in name.split("+")], axis=1)
        got = score(feats, folds, lam=args.lam, k=args.folds or None)
        pred = got.scores.argmax(1)
        per_source[name] = {
            src: float((pred[sources == src] == y[sources == src]).mean())
            for src in np.unique(sources)
        }
        print(
            f"{name:28s} {feats.shape[-1]:5d} {got.balanced_accuracy:9.3f}"
            f" {got.precision_at_5:6.3f}  {got.recall}  ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    if args.per_source and len(per_source) > 1:
        first, *rest = per_source
        print(f"\naccuracy per source: {first} -> {', '.join(rest)}")
        last = per_source[rest[-1]]
        for src in sorted(per_source[first], key=lambda s: last[s] - per_source[first][s]):
            cells = " ".join(f"{per_source[v][src]:.2f}" for v in per_source)
            print(f"  {src:55s} {(sources == src).sum():4d}  {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
