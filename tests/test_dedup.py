"""Exact and near-duplicate detection (artclf_core.dedup), on fixtures made in code."""

from __future__ import annotations

import itertools
import time

import imagehash
import numpy as np
import pytest
from imagegen import encode, make_artwork, near_copies, odd_but_good

from artclf_core.dedup import (
    N_BANDS,
    NEAR_DUP_MAX_DISTANCE,
    PROBE_RADII,
    band_keys,
    find_duplicates_in_batch,
    hamming,
    hamming_matrix,
    phash,
    probe_keys,
    probe_radii,
    sha256_hex,
    to_signed64,
    to_unsigned64,
)
from artclf_core.images import decode_image

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


def test_phash_is_cheap() -> None:
    images = [decode_image(encode(make_artwork(s))).image for s in range(40)]
    phash(images[0])
    t0 = time.perf_counter()
    for img in images:
        phash(img)
    # < 1 ms on an idle core for 320 x 240; generous bound for a shared CI machine.
    assert (time.perf_counter() - t0) / len(images) < 0.005


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
    m = hamming_matrix(seed_hashes).astype(int)
    np.fill_diagonal(m, 64)
    assert m.min() > NEAR_DUP_MAX_DISTANCE, np.unravel_index(m.argmin(), m.shape)


@pytest.mark.parametrize("seed", range(8))
def test_near_copies_are_within_the_threshold(seed: int) -> None:
    img = make_artwork(seed)
    original = phash(decode_image(encode(img, "JPEG", quality=92)).image)
    for name, data in near_copies(img).items():
        d = hamming(original, phash(decode_image(data).image))
        assert d <= NEAR_DUP_MAX_DISTANCE, f"seed {seed} {name}: distance {d}"


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
    probes = probe_keys(-1)
    assert len(probes) == len(set(probes)) == 3 * 137 + 697 and all(k in INT32 for k in probes)


def test_probe_radii_satisfy_the_pigeonhole_condition() -> None:
    assert PROBE_RADII == (2, 2, 2, 3)
    for d in range(0, 25):
        radii = probe_radii(d)
        assert sum(r + 1 for r in radii) == d + 1 and max(radii) - min(radii) <= 1


def _flip(h: int, positions: list[int]) -> int:
    u = to_unsigned64(h)
    for p in positions:
        u ^= 1 << p
    return to_signed64(u)


@pytest.mark.parametrize("d", [NEAR_DUP_MAX_DISTANCE, 0, 4, 8, 10, 16])
def test_every_hash_within_d_shares_a_probe_key(d: int) -> None:
    rng = np.random.default_rng(d)
    for trial in range(600):
        h = int(rng.integers(-(2**63), 2**63 - 1, dtype=np.int64))
        probes = set(probe_keys(h, d))
        if trial % 2:
            flips = rng.choice(64, size=int(rng.integers(0, d + 1)), replace=False)
        else:
            # Adversarial: spread exactly d flips as evenly as possible over the bands.
            per_band = [d // N_BANDS + (i < d % N_BANDS) for i in rng.permutation(N_BANDS)]
            flips = np.concatenate(
                [16 * b + rng.choice(16, size=k, replace=False) for b, k in enumerate(per_band)]
            )
        g = _flip(h, [int(p) for p in flips])
        assert hamming(h, g) <= d
        assert probes & set(band_keys(g)), (d, hex(to_unsigned64(h)), sorted(flips))


def test_guarantee_is_tight_for_every_split_of_d_flips() -> None:
    """All ways of distributing d = NEAR_DUP_MAX_DISTANCE flips over the 4 bands."""
    d = NEAR_DUP_MAX_DISTANCE
    rng = np.random.default_rng(1)
    h = int(rng.integers(-(2**63), 2**63 - 1, dtype=np.int64))
    probes = set(probe_keys(h))
    for split in itertools.product(range(d + 1), repeat=N_BANDS):
        if sum(split) > d or max(split) > 16:
            continue
        flips = [
            16 * (N_BANDS - 1 - b) + int(p)
            for b, k in enumerate(split)
            for p in rng.choice(16, size=k, replace=False)
        ]
        assert probes & set(band_keys(_flip(h, flips))), split


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
