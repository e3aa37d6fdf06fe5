"""Choosing the near-duplicate rule: pHash alone, dHash alone, or pHash confirmed by dHash.

    python bench/dedup_rule.py [--data ../shared/data/artworks] [--seed 0]

Positives: 5 transformed copies of each real image (re-encode JPEG q60-95, resize 50-150%,
crop up to 5%, PNG/JPEG conversion, combinations: bench/dedup_quality.py's make_copy), each
against its original. Negatives: all pairs of distinct images (byte-identical pairs excluded).
Prints recall and the number of false pairs for each rule and threshold; the product uses
pHash <= NEAR_DUP_MAX_DISTANCE and dHash <= NEAR_DUP_MAX_DHASH (artclf_core/images/fingerprints.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from dedup_quality import KINDS, make_copy  # noqa: E402

from artclf_core.images import fingerprints  # noqa: E402
from artclf_core.images.decode import decode_image  # noqa: E402


def hashes(data: bytes, scheme: int = fingerprints.FINGERPRINT_VERSION) -> tuple[int, int]:
    """The pair ingestion stores, under fingerprint ``scheme`` (1: of the decoded picture;
    2: of the picture squeezed to FINGERPRINT_SIZE, the product's since 2026-12-07)."""
    img = decode_image(data).image
    p, d = fingerprints.catalogue_hashes(img) if scheme == 2 else fingerprints.image_hashes(img)
    return fingerprints.to_unsigned64(p), fingerprints.to_unsigned64(d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--scheme",
        type=int,
        choices=(1, 2),
        default=fingerprints.FINGERPRINT_VERSION,
        help="fingerprint scheme (artclf_core.images.fingerprints.FINGERPRINT_VERSION)",
    )
    args = parser.parse_args()
    suffixes = (".jpg", ".jpeg", ".png", ".webp")
    files = sorted(p for p in args.data.glob("*/*") if p.suffix.lower() in suffixes)
    rng = np.random.default_rng(args.seed)
    orig, copies, owner = [], [], []
    for i, path in enumerate(files):
        data = path.read_bytes()
        orig.append(hashes(data, args.scheme))
        with Image.open(path) as im:
            fmt, img = im.format, ImageOps.exif_transpose(im).convert("RGB")
        for kind in KINDS:
            copy, _ = make_copy(kind, img, fmt, rng)
            copies.append(hashes(copy, args.scheme))
            owner.append(i)
    o = np.array(orig, dtype=np.uint64)
    c = np.array(copies, dtype=np.uint64)
    own = np.array(owner)
    pos_p = np.bitwise_count(c[:, 0] ^ o[own, 0]).astype(int)
    pos_d = np.bitwise_count(c[:, 1] ^ o[own, 1]).astype(int)
    iu = np.triu_indices(len(o), 1)
    neg_p = np.bitwise_count(o[:, None, 0] ^ o[None, :, 0])[iu].astype(int)
    neg_d = np.bitwise_count(o[:, None, 1] ^ o[None, :, 1])[iu].astype(int)
    keep = neg_p > 0  # byte-identical originals are true duplicates, not negatives
    neg_p, neg_d = neg_p[keep], neg_d[keep]
    print(
        f"fingerprint scheme {args.scheme}: {len(files)} images, {len(c)} copies, "
        f"{len(neg_p)} negative pairs"
    )
    print(f"{'rule':<28}{'recall':>8}{'false pairs':>13}{'pair precision':>16}")

    def row(name: str, pos: np.ndarray, neg: np.ndarray) -> None:
        tp, fp = int(pos.sum()), int(neg.sum())
        print(f"{name:<28}{tp / len(pos):>8.4f}{fp:>13}{tp / max(tp + fp, 1):>16.4f}")

    for d in (10, 12, 14):
        row(f"pHash <= {d}", pos_p <= d, neg_p <= d)
    for d in (10, 12, 14):
        row(f"dHash <= {d}", pos_d <= d, neg_d <= d)
    for a in (12, 14, 16):
        for b in (12, 14, 16):
            mark = (
                "  <- used"
                if (a, b) == (fingerprints.NEAR_DUP_MAX_DISTANCE, fingerprints.NEAR_DUP_MAX_DHASH)
                else ""
            )
            row(
                f"pHash <= {a} and dHash <= {b}{mark}",
                (pos_p <= a) & (pos_d <= b),
                (neg_p <= a) & (neg_d <= b),
            )


if __name__ == "__main__":
    main()
