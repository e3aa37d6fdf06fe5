"""Measure pHash near-duplicate detection on the real artworks and pick the threshold.

Positives are (original, transformed copy) pairs: every original gets one copy per kind of
everyday transformation (JPEG re-encode q60-95, resize 50-150 %, crop up to 5 % per side,
PNG/JPEG conversion, and a combination of crop + resize + re-encode), made with a fixed seed.
Negatives are all pairs of distinct originals (~1.24 M pairs, vectorised), minus the pairs that
are genuinely the same artwork (same bytes, or listed in SAME_ARTWORK after looking at them).
Every image, original or copy, goes through the production path: ``decode_image`` (including
the JPEG draft) then ``phash``.

Run from the repository root (about a minute on one core)::

    .venv/bin/python bench/dedup_quality.py            # data in ../shared/data/artworks
    .venv/bin/python bench/dedup_quality.py --data /path/to/artworks --sheet bench/out/close.png

The data stays outside the repository; nothing from it is written except the optional contact
sheet of suspicious negative pairs (``--sheet``, under the git-ignored bench/out/).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from math import comb
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from artclf_core.images.decode import decode_image  # noqa: E402
from artclf_core.images.fingerprints import (  # noqa: E402
    N_BANDS,
    NEAR_DUP_MAX_DISTANCE,
    hamming_matrix,
    phash,
    sha256_hex,
)
from artclf_core.images.model_input import normalize_mode  # noqa: E402

#: Pairs of *different files* that are the same artwork, found by listing the negative pairs at
#: small pHash distance and looking at them (``--sheet``). They are excluded from the negatives:
#: calling them duplicates is right, not a false positive. Exact byte duplicates are found by
#: SHA-256 and excluded automatically. Names are "class/file".
SAME_ARTWORK: frozenset[frozenset[str]] = frozenset(
    {
        # The same Cubist painting, two photographs of it (colour balance differs), d = 6.
        frozenset({"painting/wikiart-Cubism__1183.jpg", "painting/wikiart-Cubism__13583.jpg"}),
        # The same wood-block design printed twice in the treatise (one impression shows a patched
        # round area), d = 10.
        frozenset(
            {
                "engraving/gitenberg42719_wood_engraving_treatise__illus_570a.png",
                "engraving/gitenberg42719_wood_engraving_treatise__illus_571.png",
            }
        ),
    }
)

KINDS = ("jpeg_requality", "resize", "crop", "convert", "combo")
MAX_D = 16


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        type=Path,
        default=REPO.parent / "shared" / "data" / "artworks",
        help="folder with one sub-folder of images per class",
    )
    p.add_argument("--seed", type=int, default=20240611, help="seed of the random transforms")
    p.add_argument("--limit", type=int, default=0, help="use only the first N images (smoke)")
    p.add_argument(
        "--sheet",
        type=Path,
        default=None,
        help="write a contact sheet of the closest negative pairs to this PNG",
    )
    p.add_argument("--timing-passes", type=int, default=3, help="passes timed; best is shown")
    p.add_argument("--close", type=int, default=14, help="list negative pairs at distance <= this")
    return p.parse_args()


def _full_rgb(data: bytes) -> Image.Image:
    """The original at full resolution (no draft): the source every copy is made from."""
    with Image.open(io.BytesIO(data)) as img:
        return normalize_mode(ImageOps.exif_transpose(img))


def _encode(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "PNG", compress_level=1)  # fast; the bytes decode identically
    return buf.getvalue()


def _crop(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, float]:
    """Crop 0-5 % off each side independently; return the copy and the largest side's cut."""
    w, h = img.size
    f = rng.uniform(0.0, 0.05, 4)
    box = (round(f[0] * w), round(f[1] * h), w - round(f[2] * w), h - round(f[3] * h))
    return img.crop(box), float(f.max())


def _resize(img: Image.Image, scale: float, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    resample = (Image.Resampling.LANCZOS, Image.Resampling.BICUBIC, Image.Resampling.BILINEAR)[
        int(rng.integers(0, 3))
    ]
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)


def make_copy(
    kind: str, img: Image.Image, src_fmt: str, rng: np.random.Generator
) -> tuple[bytes, float]:
    """One transformed copy of ``img`` and the largest fraction cropped off a side (0 if none).

    Copies keep the source's format (PNG stays PNG, the rest becomes JPEG q90) unless the kind
    is about the format.
    """
    keep = "PNG" if src_fmt == "PNG" else "JPEG"
    if kind == "jpeg_requality":
        return _encode(img, "JPEG", int(rng.integers(60, 96))), 0.0
    if kind == "resize":
        return _encode(_resize(img, float(rng.uniform(0.5, 1.5)), rng), keep), 0.0
    if kind == "crop":
        cropped, cut = _crop(img, rng)
        return _encode(cropped, keep), cut
    if kind == "convert":
        if keep == "JPEG":
            return _encode(img, "PNG"), 0.0
        return _encode(img, "JPEG", int(rng.integers(75, 96))), 0.0
    if kind == "combo":
        cropped, cut = _crop(img, rng)
        scaled = _resize(cropped, float(rng.uniform(0.5, 1.5)), rng)
        return _encode(scaled, "JPEG", int(rng.integers(60, 96))), cut
    raise ValueError(kind)


def _dhash(img: Image.Image) -> int:
    """imagehash's 64-bit difference hash, as an unsigned int (the second-hash experiment)."""
    return int(str(imagehash.dhash(img)), 16)


def _u64(values: list[int] | np.ndarray) -> np.ndarray:
    return np.array([int(v) & (2**64 - 1) for v in values], dtype=np.uint64)


def _histogram(name: str, dist: np.ndarray, top: int = 32) -> None:
    """Counts per distance; only even distances occur (every pHash has 32 one-bits)."""
    counts = np.bincount(np.minimum(dist, top + 1), minlength=top + 2)
    cells = [f"{d:>2}:{counts[d]:>7}" for d in range(0, top + 1, 2)]
    cells.append(f"odd:{int(counts[1 : top + 1 : 2].sum()):>5}")
    cells.append(f">{top}:{counts[top + 1]:>7}")
    print(f"{name} (n={len(dist)})")
    for i in range(0, len(cells), 9):
        print("   " + "  ".join(cells[i : i + 9]))


def _sheet(path: Path, pairs: list[tuple[int, int, int]], files: list[Path]) -> None:
    """Side-by-side thumbnails of the closest negative pairs, for a human to judge."""
    tile, rows = 160, pairs[:24]
    sheet = Image.new("RGB", (2 * tile * 2 + 30, tile * ((len(rows) + 1) // 2)), "white")
    for k, (i, j, _d) in enumerate(rows):
        x0, y0 = (k % 2) * (2 * tile + 30), (k // 2) * tile
        for c, idx in enumerate((i, j)):
            with Image.open(files[idx]) as im:
                th = normalize_mode(ImageOps.exif_transpose(im))
                th.thumbnail((tile - 4, tile - 4))
                sheet.paste(th, (x0 + c * tile, y0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    print(f"contact sheet of the {len(rows)} closest negative pairs: {path}")


def _band_widths(m: int) -> list[int]:
    return [64 // m + (i < 64 % m) for i in range(m)]


def _radii(m: int, d: int) -> list[int]:
    """Generalised pigeonhole radii, as artclf_core.images.fingerprints.probe_radii but for m
    bands."""
    base, extra = divmod(d + 1, m)
    return [base + (i >= m - extra) - 1 for i in range(m)]


def _scheme(hashes: np.ndarray, m: int, d: int, catalogue: int) -> tuple[int, float, float]:
    """(probe keys, expected candidates per lookup for uniform hashes, measured on ``hashes``).

    Measured = mean over queries of the fraction of the *other* hashes sharing a key with the
    query (some band within its radius), scaled to ``catalogue`` rows.
    """
    widths, radii = _band_widths(m), _radii(m, d)
    probes = sum(sum(comb(w, k) for k in range(r + 1)) for w, r in zip(widths, radii, strict=True))
    uniform = sum(
        sum(comb(w, k) for k in range(r + 1)) * catalogue / 2**w
        for w, r in zip(widths, radii, strict=True)
    )
    x = hashes[:, None] ^ hashes[None, :]
    hit = np.zeros(x.shape, dtype=bool)
    shift = 64
    for w, r in zip(widths, radii, strict=True):
        shift -= w
        mask = np.uint64(((1 << w) - 1) << shift)
        if r >= 0:
            hit |= np.bitwise_count(x & mask) <= r
    n = len(hashes)
    measured = (hit.sum() - n) / (n * (n - 1)) * catalogue
    return probes, uniform, float(measured)


def main() -> int:
    args = _args()
    files = sorted(p for p in args.data.glob("*/*") if p.is_file())
    if args.limit:
        files = files[: args.limit]
    if not files:
        print(f"no images under {args.data}", file=sys.stderr)
        return 2
    names = [f"{p.parent.name}/{p.name}" for p in files]
    n = len(files)
    print(f"data: {args.data} ({n} images), seed {args.seed}")

    # --- originals, through the production path ----------------------------------------------
    raw = [p.read_bytes() for p in files]
    decode_s, hash_s = [], []
    for _ in range(args.timing_passes):  # best pass: the machine is shared with other work
        t0 = time.perf_counter()
        decoded = [decode_image(b) for b in raw]
        t1 = time.perf_counter()
        orig = np.array([phash(d.image) for d in decoded], dtype=np.int64)
        decode_s.append(t1 - t0)
        hash_s.append(time.perf_counter() - t1)
    orig_u = orig.view(np.uint64)
    orig_d = _u64([_dhash(d.image) for d in decoded])
    sizes = np.array([d.image.width * d.image.height for d in decoded])
    print(
        f"decode_image {1000 * min(decode_s) / n:.2f} ms/image, phash {1000 * min(hash_s) / n:.3f}"
        f" ms/image (best of {args.timing_passes} passes, one core; decoded images "
        f"{np.median(sizes) / 1e3:.0f} kpx median, {sizes.max() / 1e3:.0f} kpx max)"
    )

    # --- negatives: all pairs of distinct originals -------------------------------------------
    dm = hamming_matrix(orig)
    iu, ju = np.triu_indices(n, k=1)
    shas = [sha256_hex(b) for b in raw]
    by_sha: dict[str, list[int]] = {}
    for i, sha in enumerate(shas):
        by_sha.setdefault(sha, []).append(i)
    exact = {
        (g[a], g[b]) for g in by_sha.values() for a in range(len(g)) for b in range(a + 1, len(g))
    }
    near_pairs = [
        (int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(dm <= args.close, k=1)), strict=True)
    ]
    listed = {p for p in near_pairs if frozenset((names[p[0]], names[p[1]])) in SAME_ARTWORK}
    excluded = np.array(sorted(i * n + j for i, j in exact | listed), dtype=np.int64)
    keep = ~np.isin(iu.astype(np.int64) * n + ju, excluded)
    neg = dm[iu, ju][keep].astype(np.int64)
    neg_d = np.bitwise_count(orig_d[iu] ^ orig_d[ju])[keep].astype(np.int64)
    print(
        f"negatives: {len(iu)} pairs of distinct files, minus {len(exact)} exact duplicate "
        f"(same SHA-256) and {len(listed)} same-artwork pairs (SAME_ARTWORK) = {len(neg)}"
    )
    for i, j in sorted(exact):
        print(f"   exact duplicate: {names[i]} == {names[j]}")
    for i, j in sorted(listed):
        print(f"   same artwork:    {names[i]} ~ {names[j]} (d={dm[i, j]})")
    close = sorted(
        ((i, j, int(dm[i, j])) for i, j in near_pairs if (i, j) not in exact),
        key=lambda t: (t[2], t[0], t[1]),
    )
    print(f"negative pairs at distance <= 10 (of {len(close)} at <= {args.close}):")
    for i, j, d in close:
        if d <= 10:
            tag = "   [same artwork: excluded]" if (i, j) in listed else ""
            print(f"   d={d:>2}  {names[i]}  <->  {names[j]}{tag}")
    if args.sheet:
        _sheet(args.sheet, close, files)

    # --- positives: transformed copies ---------------------------------------------------------
    rng = np.random.default_rng(args.seed)
    kind_of, own, cut_of, copy_p, copy_d = [], [], [], [], []
    t0 = time.perf_counter()
    for idx, data in enumerate(raw):
        src = _full_rgb(data)
        for kind in KINDS:
            copy, cut = make_copy(kind, src, decoded[idx].format, rng)
            img = decode_image(copy).image
            kind_of.append(kind)
            own.append(idx)
            cut_of.append(cut)
            copy_p.append(phash(img))
            copy_d.append(_dhash(img))
    kinds, own_a, cuts = np.array(kind_of), np.array(own), np.array(cut_of)
    pos = np.bitwise_count(_u64(copy_p) ^ orig_u[own_a]).astype(np.int64)
    pos_d = np.bitwise_count(_u64(copy_d) ^ orig_d[own_a]).astype(np.int64)
    print(
        f"\npositives: {len(pos)} copies ({len(KINDS)} per image: {', '.join(KINDS)}) made, "
        f"decoded and hashed in {time.perf_counter() - t0:.0f} s"
    )

    # --- threshold table ---------------------------------------------------------------------
    print(
        f"\n{'d':>2} {'TP':>5} {'FP':>5} {'precision':>9} {'recall':>7} {'FP rate':>8} "
        f"{'false/1M':>8} | recall by kind: " + " ".join(f"{k[:8]:>8}" for k in KINDS)
    )
    rows: dict[int, tuple[float, float]] = {}
    for d in range(MAX_D + 1):
        tp, fp = int((pos <= d).sum()), int((neg <= d).sum())
        prec, rec = (tp / (tp + fp) if tp + fp else 1.0), tp / len(pos)
        rows[d] = (prec, rec)
        per_kind = " ".join(f"{np.mean(pos[kinds == k] <= d):>8.3f}" for k in KINDS)
        print(
            f"{d:>2} {tp:>5} {fp:>5} {prec:>9.4f} {rec:>7.4f} {fp / len(neg):>8.1e} "
            f"{1e6 * fp / len(neg):>8.1f} |                 {per_kind}"
        )
    print(
        "   precision = TP / (TP + FP) over these positive and negative pairs; false/1M = "
        "expected false matches of one upload in a 1,000,000-image catalogue (FP rate x 1e6)"
    )

    print("\ndistance histograms:")
    _histogram("positives, all copies", pos)
    for k in KINDS:
        _histogram(f"positives, {k}", pos[kinds == k])
    _histogram("negatives (distinct artworks)", neg)

    chosen = NEAR_DUP_MAX_DISTANCE
    print(f"\nrecall at d={chosen} of the crop and combo copies, by the largest cut of any side:")
    for lo in range(5):
        m = np.isin(kinds, ("crop", "combo")) & (cuts >= lo / 100) & (cuts < (lo + 1) / 100)
        if m.any():
            print(
                f"   {lo}-{lo + 1} %: n={int(m.sum()):>5}  recall {np.mean(pos[m] <= chosen):.3f}"
                f"  median d {np.median(pos[m]):.0f}"
            )

    # --- a second hash? ------------------------------------------------------------------------
    print("\nsecond hash (experiment, not in production): pHash <= P and dHash <= D")
    print(f"   {'P':>2} {'D':>3} {'recall':>7} {'crop+combo':>10} {'FP':>5} {'precision':>9}")
    hard = np.isin(kinds, ("crop", "combo"))
    for p_max, d_max in ((chosen, 64), (12, 16), (14, 14), (14, 16), (14, 18), (16, 16)):
        hit_p = (pos <= p_max) & (pos_d <= d_max)
        fp = int(((neg <= p_max) & (neg_d <= d_max)).sum())
        tp = int(hit_p.sum())
        print(
            f"   {p_max:>2} {d_max:>3} {tp / len(pos):>7.4f} {np.mean(hit_p[hard]):>10.3f} "
            f"{fp:>5} {tp / (tp + fp):>9.4f}"
        )

    # --- band schemes ----------------------------------------------------------------------------
    print(
        f"\nmulti-index hashing at d={chosen}, 1,000,000 catalogued hashes: candidates per "
        "lookup (uniform = hashes spread evenly; measured = on these real hashes)"
    )
    print(
        f"   {'bands':>5} {'bits':>14} {'radii':>18} {'probes':>7} {'uniform':>9} {'measured':>9}"
    )
    for m in (3, 4, 5, 8):
        probes, uniform, measured = _scheme(orig_u, m, chosen, 1_000_000)
        mark = "   <- used" if m == N_BANDS else ""
        widths = "/".join(str(w) for w in sorted(set(_band_widths(m)), reverse=True))
        print(
            f"   {m:>5} {widths:>14} {str(tuple(_radii(m, chosen))):>18} {probes:>7} "
            f"{uniform:>9.0f} {measured:>9.0f}{mark}"
        )
    ok = [d for d in rows if rows[d][0] >= 0.99 and rows[d][1] >= 0.95]
    prec, rec = rows[chosen]
    print(f"\nthresholds with precision >= 0.99 and recall >= 0.95: {ok or 'none'}")
    print(
        f"CHOSEN NEAR_DUP_MAX_DISTANCE = {chosen}: precision {prec:.4f}, recall {rec:.4f}, "
        f"{1e6 * int((neg <= chosen).sum()) / len(neg):.0f} false matches per 1M catalogued "
        f"images (pHash alone; the product confirms with dHash: bench/dedup_rule.py)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
