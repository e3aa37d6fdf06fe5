"""Synthetic prints and drawings as training rows: does a painting drawn in lines teach a medium?

    python bench/medium_synthesis.py --features-cache F3.npz --synth S.npz
        [--data ../shared/data/artworks] [--folds 5] [--targets engraving,drawings]
        [--boosts 0,0.05,0.1,0.5,1] [--show grid.png]

The held-out print and drawing families are the weakest (engraving recall 0.41, drawings 0.56
on the grouped 5-fold plan): a new etching book has no etchings of its own look to learn from.
A print's medium is its marks, whatever it depicts, so every continuous-tone picture
(painting, sculpture, iconography) is redrawn here in the marks of the other media and added to
training under *their* label: line engraving or etching (parallel lines whose width follows the
darkness, crossed in the darker tones, an etcher's wobble sometimes), stipple, woodcut (a hard
threshold with contours and hatching), pencil, chalk or charcoal (the colour-dodge sketch
filter on tinted paper), pen and ink (contours from the gradient, hatching, sometimes a wash).
Each rendering is seeded by its image, so the cache ``--synth`` is the same on every run; a
rendering is one row (as a picture without copies) of a source ``synth-<target>-<source>``,
weighed ``boost`` times a normal image of its source size, and never joins a fold in which
its picture is held out. Scored: the recipe's heads on the real held-out pictures, on the same
folds as every recipe (the model card's plan). ``--show`` writes a grid of renderings to look
at. Results: docs/model-card.md, "Synthetic prints and drawings".
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from artclf_core import CLASSES  # noqa: E402
from artclf_core.images.model_input import open_rgb, to_model_input  # noqa: E402
from artclf_core.lifecycle import cv_evaluate, ridge_head, source_cv  # noqa: E402
from artclf_core.lifecycle.dataset import scan_labelled_folder  # noqa: E402
from artclf_core.lifecycle.ridge_stats import Added, RidgeStats  # noqa: E402

#: The classes whose pictures are redrawn (continuous tone: photographs and plates).
CONTENT = ("painting", "sculpture", "iconography")
SIZE = 160

PAPER = ((250, 248, 240), (245, 238, 220), (236, 226, 200), (255, 255, 255), (232, 222, 205))
INKS = ((15, 12, 10), (30, 25, 20), (45, 30, 20), (10, 10, 25))


def _work(img: Image.Image, rng, lo=360, hi=640) -> np.ndarray:
    w, h = img.size
    side = int(rng.integers(lo, hi))
    f = side / max(w, h)
    img = img.resize((max(8, int(w * f)), max(8, int(h * f))), Image.Resampling.BICUBIC)
    g = ImageOps.autocontrast(ImageOps.grayscale(img), cutoff=1)
    return np.asarray(g, dtype=np.float32) / 255.0


def _colour(ink_mask: np.ndarray, rng, paper=None, ink=None) -> Image.Image:
    paper = np.array(paper or PAPER[int(rng.integers(len(PAPER)))], np.float32)
    ink = np.array(ink or INKS[int(rng.integers(len(INKS)))], np.float32)
    m = np.clip(ink_mask, 0, 1)[..., None]
    out = paper * (1 - m) + ink * m
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


def _blurred(g: np.ndarray, radius: float) -> np.ndarray:
    """The grey picture ``g`` (0-1) through a Gaussian blur of ``radius`` pixels."""
    img = Image.fromarray((g * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(img, np.float32) / 255


def _lines(shape: tuple[int, ...], angle: float, period: float) -> np.ndarray:
    """Distance to the nearest of parallel lines at ``angle``, ``period`` pixels apart:
    0 on a line, 1 half-way between two."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    return np.abs((((xx * np.cos(angle) + yy * np.sin(angle)) / period) % 1.0) - 0.5) * 2


def _plate(img: Image.Image, rng) -> Image.Image:
    """A paper margin around the printed area, half of the time."""
    if rng.random() < 0.5:
        return img
    w, h = img.size
    px = int(w * rng.uniform(0.04, 0.15))
    py = int(h * rng.uniform(0.04, 0.15))
    arr = np.asarray(img)
    paper = tuple(int(v) for v in np.percentile(arr.reshape(-1, 3), 99, axis=0))
    out = ImageOps.expand(img, border=(px, py, px, py), fill=paper)
    return out


def hatching(img: Image.Image, rng) -> Image.Image:
    """Line engraving / etching: parallel lines whose width follows the darkness, crossed in
    the darker tones; etching wobble sometimes."""
    g = _blurred(_work(img, rng), 1.0)
    h, w = g.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = float(rng.uniform(3.0, 7.0))
    base = float(rng.uniform(0, np.pi))
    wobble = float(rng.uniform(0, 1.5)) if rng.random() < 0.5 else 0.0
    dark = 1.0 - g
    ink = np.zeros_like(g)
    layers = int(rng.integers(2, 4))
    for k in range(layers):
        a = base + k * float(rng.uniform(0.8, 1.4))
        u = xx * np.cos(a) + yy * np.sin(a)
        v = -xx * np.sin(a) + yy * np.cos(a)
        if wobble:
            u = u + wobble * np.sin(v / float(rng.uniform(8, 30)) + float(rng.uniform(0, 6)))
        phase = np.abs(((u / period) % 1.0) - 0.5) * 2  # 0 at line centre .. 1 between
        # layer k covers tones darker than its threshold; width grows with darkness
        t = k / layers * 0.8
        cover = np.clip((dark - t) / (1 - t + 1e-6), 0, 1)
        line = (phase < cover * float(rng.uniform(0.7, 1.0))).astype(np.float32)
        ink = np.maximum(ink, line)
    out = _colour(ink, rng)
    return _plate(out, rng)


def stipple(img: Image.Image, rng) -> Image.Image:
    """Stipple or crayon-manner: random dots with density following the darkness."""
    g = _work(img, rng, 300, 520)
    dark = (1 - g) ** float(rng.uniform(0.8, 1.4))
    ink = (rng.random(g.shape) < dark * 0.9).astype(np.float32)
    out = _colour(ink, rng).filter(ImageFilter.GaussianBlur(0.4))
    return _plate(out, rng)


def woodcut(img: Image.Image, rng) -> Image.Image:
    """Woodcut or wood engraving: a hard threshold of the tones with contours, black on paper."""
    g = _blurred(_work(img, rng, 300, 520), 1.5)
    levels = np.floor(g * int(rng.integers(3, 6)))
    edges = np.zeros_like(g)
    edges[:, 1:] += levels[:, 1:] != levels[:, :-1]
    edges[1:, :] += levels[1:, :] != levels[:-1, :]
    a = float(rng.uniform(0, np.pi))
    phase = _lines(g.shape, a, float(rng.uniform(3, 6)))
    ink = np.maximum((phase < (1 - g) * 1.1).astype(np.float32), np.clip(edges, 0, 1))
    ink[g < float(rng.uniform(0.12, 0.25))] = 1
    return _plate(_colour(ink, rng), rng)


def pencil(img: Image.Image, rng) -> Image.Image:
    """Pencil, chalk or charcoal sketch: colour-dodge of the blurred negative (the classic
    sketch filter), soft, on tinted paper; sanguine or charcoal tones sometimes."""
    g = _work(img, rng, 300, 560)
    gi = Image.fromarray((g * 255).astype(np.uint8))
    blur = (
        np.asarray(
            ImageOps.invert(gi).filter(ImageFilter.GaussianBlur(float(rng.uniform(2, 8)))),
            np.float32,
        )
        / 255
    )
    sketch = np.clip(g / np.maximum(1 - blur, 1e-3), 0, 1)
    sketch = sketch ** float(rng.uniform(1.5, 4.0))  # darken the strokes
    ink = 1 - sketch
    # grain of the paper under the chalk
    ink = ink * (0.7 + 0.3 * rng.random(ink.shape))
    r = rng.random()
    inkc = (160, 60, 40) if r < 0.25 else (40, 40, 45) if r < 0.7 else (90, 90, 95)
    return _colour(ink, rng, ink=inkc)


def pen(img: Image.Image, rng) -> Image.Image:
    """Pen and ink: contours from the gradient with loose hatching in the darkest tones, or
    pen and wash (a light grey wash under the lines)."""
    g = _work(img, rng, 300, 560)
    gs = _blurred(g, 1.2)
    gy, gx = np.gradient(gs)
    mag = np.hypot(gx, gy)
    thr = np.quantile(mag, float(rng.uniform(0.82, 0.93)))
    lines = (mag > thr).astype(np.float32)
    a = float(rng.uniform(0, np.pi))
    phase = _lines(g.shape, a, float(rng.uniform(4, 8)))
    hatch = ((phase < 0.3) & (gs < float(rng.uniform(0.25, 0.45)))).astype(np.float32)
    ink = np.maximum(lines, hatch)
    if rng.random() < 0.4:
        wash = np.clip((1 - gs) * float(rng.uniform(0.25, 0.5)), 0, 1)
        ink = np.maximum(ink, wash)
    return _colour(ink, rng)


ENGRAVING = (hatching, stipple, woodcut)
DRAWINGS = (pencil, pen)


def render(img: Image.Image, target: str, rng) -> Image.Image:
    if target == "engraving":
        fn = ENGRAVING[int(rng.choice(3, p=[0.6, 0.15, 0.25]))]
    else:
        fn = DRAWINGS[int(rng.choice(2, p=[0.55, 0.45]))]
    return fn(img.convert("RGB"), rng)


def rng_for(sample, target: str) -> np.random.Generator:
    """The rendering's generator: from the image's class, file name and target medium."""
    digest = hashlib.sha256(f"{sample.label}/{Path(sample.path).name}/{target}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def synth_features(samples, idx: list[int], targets: list[str]) -> dict[str, np.ndarray]:
    """Backbone features (the recipe's, 160 px) of each picture of ``idx`` redrawn as each
    target medium."""
    from artclf_core.model.texture import GRAM_TAPS, build_texture_backbone

    net = build_texture_backbone(SIZE, variant="lite1", gram_taps=GRAM_TAPS)
    out = {}
    for target in targets:
        feats = []
        started = time.perf_counter()
        for c in range(0, len(idx), 128):
            chunk = idx[c : c + 128]
            x = np.zeros((len(chunk), SIZE, SIZE, 3), np.uint8)

            def one(
                j: int, chunk: list[int] = chunk, x: np.ndarray = x, target: str = target
            ) -> None:
                s = samples[chunk[j]]
                x[j] = to_model_input(
                    render(open_rgb(str(s.path)), target, rng_for(s, target)), SIZE
                )

            with ThreadPoolExecutor(2) as pool:
                list(pool.map(one, range(len(chunk))))
            feats.append(net.predict(x.astype(np.float32), batch_size=64, verbose=0))
            print(
                f"  {target} {c + len(chunk)}/{len(idx)} ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        out[target] = np.concatenate(feats)
    return out


def show(samples, path: str, n: int = 6) -> None:
    """A grid: the picture, then each renderer's drawing of it."""
    fns = (*ENGRAVING, *DRAWINGS)
    picked = [s for s in samples if s.label in CONTENT][:: max(1, len(samples) // (2 * n))][:n]
    grid = Image.new("RGB", (200 * (1 + len(fns)), 200 * len(picked)), "white")
    for r, s in enumerate(picked):
        img = open_rgb(str(s.path))
        grid.paste(img.resize((200, 200)), (0, 200 * r))
        for c, fn in enumerate(fns):
            rng = np.random.default_rng([r, c])
            grid.paste(fn(img, rng).resize((200, 200)), (200 * (c + 1), 200 * r))
    grid.save(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    ap.add_argument("--features-cache", required=True, help="the recipe's three-view cache")
    ap.add_argument("--synth", required=True, help=".npz keeping the renderings' features")
    ap.add_argument("--folds", type=int, default=5, help="0: leave one family out")
    ap.add_argument("--targets", default="engraving,drawings")
    ap.add_argument("--boosts", default="0,0.05,0.1,0.5,1")
    ap.add_argument("--show", help="write a grid of renderings to this PNG")
    args = ap.parse_args()
    samples = scan_labelled_folder(args.data)
    if args.show:
        show(samples, args.show)
    feats = cv_evaluate.cached_features(
        samples, SIZE, ridge_head.DEFAULT_VIEWS, "lite1", args.features_cache
    )
    targets = args.targets.split(",")
    if not os.path.exists(args.synth):
        idx = [i for i, s in enumerate(samples) if s.label in CONTENT]
        np.savez(args.synth, idx=np.array(idx), **synth_features(samples, idx, targets))
    synth = np.load(args.synth)
    idx = synth["idx"]
    _, groups = cv_evaluate.grouping(samples)
    y = np.array([CLASSES.index(s.label) for s in samples])
    sources = np.array([s.source for s in samples])
    keys = ridge_head.source_keys(y, sources)
    stats = RidgeStats(feats, y, sources, n_classes=len(CLASSES))
    plan = source_cv.plan(groups, args.folds or None)
    print(f"{len(samples)} images, {cv_evaluate.plan_name(args.folds or None, len(set(groups)))}")
    before = None
    for boost in [float(b) for b in args.boosts.split(",")]:
        scores = np.zeros((len(y), len(CLASSES)))
        for _, _, test in plan:
            added = None
            if boost:
                keep = ~np.isin(idx, test)
                rows = np.concatenate([synth[t][keep] for t in targets])
                added = Added(
                    np.repeat(rows[None], feats.shape[0], axis=0),
                    np.concatenate([np.full(keep.sum(), CLASSES.index(t)) for t in targets]),
                    np.array([f"synth-{t}-{sources[i]}" for t in targets for i in idx[keep]]),
                    np.full(len(rows), boost),
                )
            scores[test] = stats.head(test, with_basis=False, added=added).logits(feats[0, test])
        pred = scores.argmax(1)
        recall = [float(np.mean(pred[y == c] == c)) for c in range(len(CLASSES))]
        per = {k: float(np.mean(pred[keys == k] == y[keys == k])) for k in sorted(set(keys))}
        line = f"boost {boost:<5} balanced accuracy {np.mean(recall):.3f}  recall " + " / ".join(
            f"{r:.2f}" for r in recall
        )
        if before is None:
            before = per
        else:
            moved = sorted((per[s] - before[s], s) for s in before)
            line += (
                f"  sources up / down by more than 0.05: {sum(d > 0.05 for d, _ in moved)}"
                f" / {sum(d < -0.05 for d, _ in moved)}\n    "
                + "; ".join(f"{s} {before[s]:.2f} -> {per[s]:.2f}" for _, s in moved[:4])
            )
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
