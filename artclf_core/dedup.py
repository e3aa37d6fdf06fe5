"""Exact and near-duplicate detection: SHA-256 of the bytes, 64-bit pHash of the pixels.

* Exact duplicates are the same bytes: :func:`sha256_hex`.
* Near duplicates are the same picture re-encoded, resized, slightly cropped or converted to
  another format. They are found with the DCT perceptual hash of imagehash (Zauner's pHash as
  described by Neal Krawetz): grey, 32 x 32 Lanczos thumbnail, 2-D DCT, the 8 x 8 lowest
  frequencies compared with their median -> 64 bits. Two pictures are near duplicates when the
  Hamming distance of their hashes is at most :data:`NEAR_DUP_MAX_DISTANCE`, a threshold chosen
  by measurement on the 1,576 real artworks (``bench/dedup_quality.py``, ``docs/dedup.md``).
* The catalogue is searched without a scan by multi-index hashing (:func:`band_keys`,
  :func:`probe_keys`): 64 bits cut into 4 bands of 16 bits; by the pigeonhole principle two
  hashes within distance 12 agree to within 2 or 3 bits in at least one band.

Hashes are stored as *signed* 64-bit ints so they fit PostgreSQL's ``bigint``; the bit pattern
is the one of ``int(str(imagehash.phash(img)), 16)``.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from itertools import combinations

import numpy as np
import scipy.fftpack
from PIL import Image

__all__ = [
    "BAND_BITS",
    "N_BANDS",
    "NEAR_DUP_MAX_DISTANCE",
    "PROBE_RADII",
    "band_keys",
    "find_duplicates_in_batch",
    "hamming",
    "hamming_matrix",
    "phash",
    "probe_keys",
    "probe_radii",
    "sha256_hex",
    "to_signed64",
    "to_unsigned64",
]

#: Largest pHash Hamming distance still called a near duplicate. Measured on the 1,576 real
#: artworks with 7,880 transformed copies against all 1.24 M pairs of distinct artworks
#: (docs/dedup.md): at 12, recall 0.968 and pair precision 0.993; at 10 recall drops to 0.933
#: (5 % crops are where pHash fails), at 14 false matches are 3.7 times as many. pHash distances are
#: always even (every hash has exactly 32 one-bits, split at the median), so 12 == 13.
NEAR_DUP_MAX_DISTANCE: int = 12

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
    small = img.convert("L").resize((_IMG_SIZE, _IMG_SIZE), Image.Resampling.LANCZOS)
    pixels = np.asarray(small)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
    low = dct[:_HASH_SIZE, :_HASH_SIZE]
    bits = (low > np.median(low)).ravel()
    return to_signed64(int.from_bytes(np.packbits(bits).tobytes(), "big"))


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
# Multi-index hashing for catalogue lookups
#
# 4 bands x 16 bits. A stored hash gets 4 keys ``band << 16 | value`` (0 .. 262,143: int32).
# Generalised pigeonhole (Norouzi, Punjani & Fleet, "Fast search in Hamming space with
# multi-index hashing", CVPR 2012): give band i a probe radius r_i with sum(r_i + 1) > d. If
# hamming(q, g) <= d, the differing bits cannot exceed r_i in *every* band (that would take at
# least sum(r_i + 1) > d bits), so in some band i they number <= r_i, and one of the probes of
# band i is exactly g's key. For d = 12: radii (2, 2, 2, 3), i.e. 3 x 137 + 697 = 1,108 probe
# keys. With 1 M catalogued hashes spread evenly over 65,536 values per band, each key matches
# ~15 rows: ~17,000 candidate rows per lookup (27,000 measured on the artworks, whose hashes
# cluster), each checked with one bit_count. Other splittings (docs/dedup.md): 3 bands of 22/21
# bits need 10,903 probes; 5 bands of 13/12 bits, 291 probes but ~45,000 candidates; 8 bands
# of 8 bits, 48 probes but ~190,000 candidates. Band 0 gets a radius of 2, not 3, because its
# first bit (the DCT's DC term) is always 1, which halves its spread and doubles its rows/key.

N_BANDS: int = 4
BAND_BITS: int = 64 // N_BANDS
_BAND_MASK = (1 << BAND_BITS) - 1


def probe_radii(max_distance: int = NEAR_DUP_MAX_DISTANCE) -> tuple[int, ...]:
    """Per-band probe radii: the smallest, most even split with ``sum(r_i + 1) > max_distance``.

    ``max_distance + 1`` "slots" are shared out over the bands, extra slots to the last bands;
    a band with 0 slots (radius -1) is not probed at all (e.g. distance 0 needs one band).
    """
    if max_distance < 0:
        raise ValueError("max_distance must be >= 0")
    base, extra = divmod(max_distance + 1, N_BANDS)
    return tuple(base + (i >= N_BANDS - extra) - 1 for i in range(N_BANDS))


#: Radii used for :data:`NEAR_DUP_MAX_DISTANCE` (2, 2, 2, 3).
PROBE_RADII: tuple[int, ...] = probe_radii(NEAR_DUP_MAX_DISTANCE)


def _bands(h: int) -> list[int]:
    u = to_unsigned64(h)
    return [(u >> (BAND_BITS * (N_BANDS - 1 - i))) & _BAND_MASK for i in range(N_BANDS)]


@lru_cache(maxsize=8)
def _flip_masks(radius: int) -> tuple[int, ...]:
    """All band-wide masks with at most ``radius`` ones: the offsets of a Hamming ball."""
    masks = [0] if radius >= 0 else []
    for r in range(1, radius + 1):
        for positions in combinations(range(BAND_BITS), r):
            masks.append(sum(1 << p for p in positions))
    return tuple(masks)


def band_keys(h: int) -> list[int]:
    """Keys to store with a catalogued hash (an ``integer[]`` column under a GIN index).

    Key = ``band_index << 16 | band_value``: the band index keeps equal values in different
    bands apart. The largest key is 4 * 65,536 - 1 = 262,143, well inside int32. Stored keys do
    not depend on the threshold, so it can change without re-indexing the catalogue.
    """
    return [(i << BAND_BITS) | v for i, v in enumerate(_bands(h))]


def probe_keys(h: int, max_distance: int = NEAR_DUP_MAX_DISTANCE) -> list[int]:
    """Keys to look up so that every stored hash within ``max_distance`` of ``h`` shares one.

    Each band's value and all its neighbours within the band's radius (:func:`probe_radii`).
    Candidates found this way still need the exact ``bit_count(phash # h) <= d`` check.
    """
    keys: list[int] = []
    for i, (v, radius) in enumerate(zip(_bands(h), probe_radii(max_distance), strict=True)):
        base = i << BAND_BITS
        keys.extend(base | (v ^ m) for m in _flip_masks(radius))
    return keys


# ---------------------------------------------------------------------------------------------
# Within one batch


def find_duplicates_in_batch(
    sha256s: list[str],
    phashes: list[int],
    max_distance: int = NEAR_DUP_MAX_DISTANCE,
) -> list[tuple[str, int] | None]:
    """For each item: None if it is the first of its kind in the batch, else what it repeats.

    ``("exact", j)``: same bytes as item ``j``, the first with that SHA-256. Otherwise
    ``("near", j)``: the earlier item with the smallest pHash distance (earliest on ties) when
    that distance is at most ``max_distance``. Exact wins over near because it is certain.
    The catalogue is not consulted here; this is what two uploads in the same batch cannot
    learn from the database because neither is in it yet.
    """
    if len(sha256s) != len(phashes):
        raise ValueError("sha256s and phashes must have the same length")
    first_by_sha: dict[str, int] = {}
    hashes = _as_u64(list(phashes))
    out: list[tuple[str, int] | None] = []
    for i, sha in enumerate(sha256s):
        j = first_by_sha.setdefault(sha, i)
        if j != i:
            out.append(("exact", j))
            continue
        if i:
            dist = np.bitwise_count(hashes[:i] ^ hashes[i])
            k = int(np.argmin(dist))  # first minimum = earliest on ties
            if int(dist[k]) <= max_distance:
                out.append(("near", k))
                continue
        out.append(None)
    return out
