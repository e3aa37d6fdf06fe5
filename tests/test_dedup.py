"""Exact and near-duplicate detection (images.fingerprints), on fixtures made in code."""

from __future__ import annotations

import itertools

import imagehash
import numpy as np
import pytest
from imagegen import encode, make_artwork, near_copies, odd_but_good

from artclf_core.images.decode import decode_image
from artclf_core.images.fingerprints import (
    N_BANDS,
    NEAR_DUP_MAX_DHASH,
    NEAR_DUP_MAX_DISTANCE,
    band_keys,
    dhash,
    find_duplicates_in_batch,
    hamming,
    hamming_matrix,
    phash,
    sha256_hex,
    to_signed64,
    to_unsigned64,
)

INT32 = range(-(2**31), 2**31)


@pytest.fixture(scope="module")
def seed_hashes() -> np.ndarray:
    """pHash of make_artwork(0..199), through the production decode path."""
    return np.array(
        [
            phash(decode_image(encode(make_artwork(s), "JPEG", quality=92)).image)
            for s in range(200)
        ],
        dtype=np.int64,
    )


def test_sha256_hex() -> None:
    assert sha256_hex(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_phash_is_bit_identical_to_imagehash_and_signed() -> None:
    images = [make_artwork(s) for s in range(30)]
    images += [decode_image(b).image for b in odd_but_good().values()]
    images += [make_artwork(1).convert("L"), make_artwork(2).resize((37, 1001))]
    for img in images:
        expected = int(str(imagehash.phash(img)), 16)
        got = phash(img)
        assert -(2**63) <= got < 2**63
        assert to_unsigned64(got) == expected


def test_signed_unsigned_roundtrip() -> None:
    for u in (0, 1, 2**63 - 1, 2**63, 2**64 - 1):
        s = to_signed64(u)
        assert -(2**63) <= s < 2**63 and to_unsigned64(s) == u


def test_hamming_and_matrix_agree() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(-(2**63), 2**63 - 1, 50, dtype=np.int64)
    m = hamming_matrix(hashes)
    assert m.shape == (50, 50) and m.dtype == np.uint8
    assert np.all(np.diag(m) == 0) and np.array_equal(m, m.T)
    for i, j in itertools.combinations(range(50), 2):
        assert m[i, j] == hamming(int(hashes[i]), int(hashes[j]))
    assert hamming(-1, 0) == 64 and hamming(to_unsigned64(-1), -1) == 0
    cross = hamming_matrix(hashes[:3], hashes.view(np.uint64))
    assert cross.shape == (3, 50) and np.array_equal(cross, m[:3])
    assert np.array_equal(hamming_matrix([int(h) for h in hashes[:5]]), m[:5, :5])


def test_distinct_seeds_are_never_near_duplicates(seed_hashes: np.ndarray) -> None:
    """pHash alone would fold two of the 200 synthetic pictures (distance 14); the dHash
    confirmation keeps every distinct picture apart."""
    dh = [
        dhash(decode_image(encode(make_artwork(s), "JPEG", quality=92)).image) for s in range(200)
    ]
    out = find_duplicates_in_batch([str(s) for s in range(200)], seed_hashes.tolist(), dhashes=dh)
    assert out == [None] * 200


@pytest.mark.parametrize("seed", range(8))
def test_near_copies_are_within_the_threshold(seed: int) -> None:
    img = make_artwork(seed)
    decoded = decode_image(encode(img, "JPEG", quality=92)).image
    p0, d0 = phash(decoded), dhash(decoded)
    for name, data in near_copies(img).items():
        copy = decode_image(data).image
        d = hamming(p0, phash(copy))
        assert d <= NEAR_DUP_MAX_DISTANCE, f"seed {seed} {name}: pHash distance {d}"
        e = hamming(d0, dhash(copy))
        assert e <= NEAR_DUP_MAX_DHASH, f"seed {seed} {name}: dHash distance {e}"


def test_dhash_is_bit_identical_to_imagehash() -> None:
    for s in range(5):
        img = make_artwork(s)
        assert to_unsigned64(dhash(img)) == int(str(imagehash.dhash(img)), 16)


def test_band_keys_fit_int32_and_keep_bands_apart() -> None:
    for h in (0, -1, 2**63 - 1, -(2**63), 0x0123456789ABCDEF):
        keys = band_keys(h)
        assert len(keys) == N_BANDS and all(k in INT32 and k >= 0 for k in keys)
        assert [k >> 16 for k in keys] == list(range(N_BANDS))
    assert band_keys(0x0123456789ABCDEF) == [
        0x0123,
        1 << 16 | 0x4567,
        2 << 16 | 0x89AB,
        3 << 16 | 0xCDEF,
    ]


def _flip(h: int, positions: list[int]) -> int:
    u = to_unsigned64(h)
    for p in positions:
        u ^= 1 << p
    return to_signed64(u)


def test_every_hash_within_3_bits_shares_a_band_key() -> None:
    """Pigeonhole: 3 flipped bits cannot touch all 4 bands."""
    rng = np.random.default_rng(3)
    for _ in range(2000):
        h = int(rng.integers(-(2**63), 2**63 - 1, dtype=np.int64))
        flips = rng.choice(64, size=int(rng.integers(0, 4)), replace=False)
        g = _flip(h, [int(p) for p in flips])
        assert set(band_keys(h)) & set(band_keys(g))
    # ... and 4 bits, one per band, can.
    h = 0
    assert not set(band_keys(h)) & set(band_keys(_flip(h, [0, 16, 32, 48])))


def test_batch_exact_near_and_first() -> None:
    a, b, c = (phash(make_artwork(s)) for s in (0, 1, 2))
    a_copy = phash(decode_image(near_copies(make_artwork(0))["jpeg_q60"]).image)
    out = find_duplicates_in_batch(
        ["sa", "sb", "sa", "sa2", "sc", "sb"],
        [a, b, a, a_copy, c, b],
    )
    assert out == [None, None, ("exact", 0), ("near", 0), None, ("exact", 1)]


def test_batch_exact_wins_over_near_and_nearest_earlier_is_named() -> None:
    base = phash(make_artwork(3))
    close, closer = _flip(base, [0, 1, 2, 3]), _flip(base, [0, 1])
    out = find_duplicates_in_batch(["x", "y", "z", "y"], [close, closer, base, closer])
    # z is nearest to y (distance 2) though x (distance 4) came first; the second "y" is exact.
    assert out == [None, ("near", 0), ("near", 1), ("exact", 1)]
    # Ties go to the earliest; beyond max_distance nothing is a duplicate.
    tie = find_duplicates_in_batch(["p", "q", "r"], [_flip(base, [5]), _flip(base, [6]), base])
    assert tie == [None, ("near", 0), ("near", 0)]
    assert find_duplicates_in_batch(["p", "q"], [base, _flip(base, [1, 2, 3])], max_distance=2) == [
        None,
        None,
    ]


def test_batch_edge_cases() -> None:
    assert find_duplicates_in_batch([], []) == []
    assert find_duplicates_in_batch(["only"], [123]) == [None]
    with pytest.raises(ValueError):
        find_duplicates_in_batch(["a"], [])
