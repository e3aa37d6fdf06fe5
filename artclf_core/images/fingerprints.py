"""Exact and near-duplicate detection: SHA-256 of the bytes, 64-bit pHash of the pixels.

* Exact duplicates are the same bytes: :func:`sha256_hex`.
* Near duplicates are the same picture re-encoded, resized, slightly cropped or converted to
  another format. They are found with the DCT perceptual hash of imagehash (Zauner's pHash as
  described by Neal Krawetz): grey, 32 x 32 Lanczos thumbnail, 2-D DCT, the 8 x 8 lowest
  frequencies compared with their median -> 64 bits. Two pictures are near duplicates when the
  Hamming distance of their hashes is at most :data:`NEAR_DUP_MAX_DISTANCE`, a threshold chosen
  by measurement on the 1,576 real artworks (``bench/dedup_quality.py``, ``docs/dedup.md``).
* A pHash match is confirmed by a second, independent hash, the difference hash
  (:func:`dhash`), which follows strokes and edges where pHash follows the layout.
* The catalogue is searched without a scan (``db.find_near``): candidates are the nearest
  artworks by embedding (HNSW) plus those sharing a 16-bit pHash band exactly
  (:func:`band_keys`, GIN); each candidate is then checked with both distances.

Hashes are stored as *signed* 64-bit ints so they fit PostgreSQL's ``bigint``; the bit pattern
is the one of ``int(str(imagehash.phash(img)), 16)``.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from artclf_core.images.model_input import to_model_input

__all__ = [
    "BAND_BITS",
    "FINGERPRINT_SIZE",
    "FINGERPRINT_VERSION",
    "N_BANDS",
    "NEAR_DUP_MAX_DHASH",
    "NEAR_DUP_MAX_DISTANCE",
    "band_keys",
    "catalogue_hashes",
    "dhash",
    "find_duplicates_in_batch",
    "hamming",
    "hamming_matrix",
    "phash",
    "sha256_hex",
    "square_hashes",
    "to_signed64",
    "to_unsigned64",
]

#: Largest pHash Hamming distance still called a near duplicate, together with
#: :data:`NEAR_DUP_MAX_DHASH`. Measured on the 1,576 real artworks with 7,880 transformed
#: copies against all 1.24 M pairs of distinct artworks (docs/dedup.md): pHash alone at 12
#: gives recall 0.974 but 57 false pairs, mostly faint drawings on blank paper and icons of
#: one workshop template, whose low frequencies agree; requiring the gradient hash (dHash) to
#: agree as well, pHash <= 14 and dHash <= 14, gives recall 0.980 with 14 false pairs.
#: pHash distances are always even (every hash has exactly 32 one-bits), so 14 == 15.
NEAR_DUP_MAX_DISTANCE: int = 14
#: Largest dHash Hamming distance of a near duplicate (second, independent check).
NEAR_DUP_MAX_DHASH: int = 14

_MASK64 = (1 << 64) - 1

# ---------------------------------------------------------------------------------------------
# Hashes


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of the raw bytes: the exact-duplicate key and the object's content id."""
    return hashlib.sha256(data).hexdigest()


def to_signed64(h: int) -> int:
    """Reinterpret a 64-bit pattern as a signed int (what PostgreSQL ``bigint`` can hold)."""
    h &= _MASK64
    return h - (1 << 64) if h >> 63 else h


def to_unsigned64(h: int) -> int:
    """The 64-bit pattern of a (possibly negative) stored hash, as a non-negative int."""
    return h & _MASK64


_HASH_SIZE = 8
_IMG_SIZE = 32  # hash_size * highfreq_factor, as in imagehash.phash


def _grey(img: Image.Image) -> Image.Image:
    """The grey picture both hashes start from; :func:`image_hashes` converts once for both,
    which saves one conversion per image (0.3 ms at 500 px)."""
    return img if img.mode == "L" else img.convert("L")


def phash(img: Image.Image) -> int:
    """64-bit DCT perceptual hash, bit-identical to ``imagehash.phash(img)``, as signed int64.

    The same steps as imagehash, without its ``ImageHash`` object and hex round trip. Nearly
    all the time is the grey conversion and 32 x 32 Lanczos resize (about 4 ns per pixel:
    0.3 ms at 224 x 224, 1.5 ms at 640 x 480), which must stay exactly as they are for the bits
    to match; ``decode_image``'s JPEG draft keeps big uploads near 300-600 px. The DCT is
    scipy's, like imagehash's: a matrix product over the 8 x 8 corner is 7 us faster but its
    different float rounding flips bits of flat pictures (all AC coefficients ~0, ties at the
    median). Bit ``i`` of the 8 x 8 row-major grid is bit ``63 - i`` of the int, as in
    imagehash's hex string.
    """
    import scipy.fftpack  # here: the catalogue imports this module's constants, not the DCT

    small = _grey(img).resize((_IMG_SIZE, _IMG_SIZE), Image.Resampling.LANCZOS)
    pixels = np.asarray(small)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
    low = dct[:_HASH_SIZE, :_HASH_SIZE]
    bits = (low > np.median(low)).ravel()
    return to_signed64(int.from_bytes(np.packbits(bits).tobytes(), "big"))


def dhash(img: Image.Image) -> int:
    """64-bit difference hash (imagehash.dhash bits) as a signed int64.

    It compares neighbouring pixels of a 9 x 8 grey thumbnail, so it follows edges and
    strokes where pHash follows the low-frequency layout: two faint animal studies on the same
    paper share the layout but not the strokes. Used only to confirm a pHash match.
    """
    grey = _grey(img).resize((9, 8), Image.Resampling.LANCZOS)
    px = np.asarray(grey, dtype=np.int16)
    bits = (px[:, 1:] > px[:, :-1]).ravel()
    return to_signed64(int.from_bytes(np.packbits(bits).tobytes(), "big"))


def image_hashes(img: Image.Image) -> tuple[int, int]:
    """``(phash, dhash)`` of one picture, from one grey conversion (ingestion and the training
    split's near-copy grouping both need the pair)."""
    grey = _grey(img)
    return phash(grey), dhash(grey)


#: Side of the square picture the catalogue's fingerprints are taken from: the whole picture
#: squeezed to 160 x 160 (bilinear, as the model input), the shipped model's own input, so
#: ingestion hashes the pixels it has already made for the model instead of the draft decode.
FINGERPRINT_SIZE: int = 160
#: The catalogue's fingerprint scheme. 1: imagehash's pHash/dHash of the decoded picture (draft
#: decode, up to 2026-12-07); 2: the same of the picture squeezed to :data:`FINGERPRINT_SIZE`.
#: ``artclf rehash`` brings older rows to this one (``artclf.artworks.fingerprint_version``).
FINGERPRINT_VERSION: int = 2


def square_hashes(square: np.ndarray) -> tuple[int, int]:
    """``(phash, dhash)`` of a :data:`FINGERPRINT_SIZE` square RGB picture (``uint8`` array, as
    :func:`~artclf_core.images.model_input.to_model_input` makes it): the catalogue's
    fingerprints, scheme :data:`FINGERPRINT_VERSION`.

    These are imagehash's pHash and dHash of that square, so
    ``imagehash.phash(img.resize((160, 160), Image.BILINEAR, reducing_gap=2.0))`` gives the same
    bits. Both hashes squeeze the picture to a square anyway (32 x 32, 9 x 8), so starting from
    160 x 160 changes few bits against the decoded picture (on the 62-source manifest: none for
    90 % of pictures, at most 2 pHash and 5 dHash bits) and costs half: 0.31 against 0.60 ms.
    """
    if square.shape[:2] != (FINGERPRINT_SIZE, FINGERPRINT_SIZE):
        raise ValueError(f"expected a {FINGERPRINT_SIZE} px square, got {square.shape}")
    return image_hashes(Image.fromarray(square))


def catalogue_hashes(img: Image.Image) -> tuple[int, int]:
    """The catalogue's ``(phash, dhash)`` of a decoded picture: :func:`square_hashes` of it
    squeezed to :data:`FINGERPRINT_SIZE` (for callers that have not made that square already:
    ``artclf rehash``, the benches)."""
    return square_hashes(to_model_input(img, FINGERPRINT_SIZE))


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes (signed or unsigned ints)."""
    return ((a ^ b) & _MASK64).bit_count()


def _as_u64(hashes: np.ndarray | list[int]) -> np.ndarray:
    """uint64 view of hashes given as stored (int64), as uint64, or as Python ints."""
    if isinstance(hashes, np.ndarray) and hashes.dtype != object:
        return hashes if hashes.dtype == np.uint64 else hashes.astype(np.int64).view(np.uint64)
    # Python ints may mix signed (stored) and unsigned (computed elsewhere) forms.
    return np.array([to_unsigned64(int(h)) for h in np.ravel(hashes)], dtype=np.uint64)


def hamming_matrix(hashes: np.ndarray, other: np.ndarray | None = None) -> np.ndarray:
    """Pairwise Hamming distances as ``uint8``: (n, n) for ``hashes``, or (n, m) to ``other``.

    Accepts int64 (as stored) or uint64 arrays; XOR then numpy's popcount, no Python loop.
    Memory is n * m bytes, so split very large sets into row blocks.
    """
    a = _as_u64(hashes).ravel()
    b = a if other is None else _as_u64(other).ravel()
    return np.bitwise_count(a[:, None] ^ b[None, :]).astype(np.uint8, copy=False)


# ---------------------------------------------------------------------------------------------
# Exact pHash bands for catalogue lookups
#
# 4 bands x 16 bits; a stored hash gets 4 keys ``band << 16 | value`` (0 .. 262,143: int32)
# in an ``integer[]`` column under a GIN index. By the pigeonhole principle two hashes within
# 3 bits agree exactly on at least one band, so a lookup by the query's own 4 keys finds every
# such hash at the cost of 4 index probes. Larger distances are reached through the embedding
# index (see ``db.find_near``); the multi-index-hashing alternative that guarantees distance
# 12-14 through bands alone needs 1,108+ probes and ~17,000-27,000 candidate rows per lookup
# at 1 M artworks (measured, docs/dedup.md), far over the 5 ms budget.

N_BANDS: int = 4
BAND_BITS: int = 64 // N_BANDS
_BAND_MASK = (1 << BAND_BITS) - 1


def _bands(h: int) -> list[int]:
    u = to_unsigned64(h)
    return [(u >> (BAND_BITS * (N_BANDS - 1 - i))) & _BAND_MASK for i in range(N_BANDS)]


def band_keys(h: int) -> list[int]:
    """Keys to store with a catalogued hash, and to look it up by exact band match.

    Key = ``band_index << 16 | band_value``: the band index keeps equal values in different
    bands apart. The largest key is 4 * 65,536 - 1 = 262,143, well inside int32.
    """
    return [(i << BAND_BITS) | v for i, v in enumerate(_bands(h))]


# ---------------------------------------------------------------------------------------------
# Within one batch


def find_duplicates_in_batch(
    sha256s: list[str],
    phashes: list[int],
    max_distance: int = NEAR_DUP_MAX_DISTANCE,
    dhashes: list[int] | None = None,
    max_dhash: int = NEAR_DUP_MAX_DHASH,
) -> list[tuple[str, int] | None]:
    """For each item: None if it is the first of its kind in the batch, else what it repeats.

    ``("exact", j)``: same bytes as item ``j``, the first with that SHA-256. Otherwise
    ``("near", j)``: among the earlier items within ``max_distance`` pHash bits (and, when
    ``dhashes`` are given, within ``max_dhash`` dHash bits), the one with the smallest summed
    distance, earliest on ties. Exact wins over near because it is certain. The catalogue is
    not consulted here; this is what two uploads in the same batch cannot learn from the
    database because neither is in it yet.
    """
    if len(sha256s) != len(phashes):
        raise ValueError("sha256s and phashes must have the same length")
    first_by_sha: dict[str, int] = {}
    hashes = _as_u64(list(phashes))
    dh = _as_u64(list(dhashes)) if dhashes is not None else None
    out: list[tuple[str, int] | None] = []
    for i, sha in enumerate(sha256s):
        j = first_by_sha.setdefault(sha, i)
        if j != i:
            out.append(("exact", j))
            continue
        if i:
            dist = np.bitwise_count(hashes[:i] ^ hashes[i]).astype(np.int32)
            ok = dist <= max_distance
            if dh is not None:
                ok &= np.bitwise_count(dh[:i] ^ dh[i]) <= max_dhash
            if ok.any():
                # Closest by both hashes together (a crop can bring a look-alike closer in
                # pHash alone); earliest on ties.
                both = dist + (np.bitwise_count(dh[:i] ^ dh[i]) if dh is not None else 0)
                k = int(np.argmin(np.where(ok, both, 1 << 20)))
                out.append(("near", k))
                continue
        out.append(None)
    return out
