"""Fingerprint schemes: ingestion writes the current one, near copies are found across schemes,
and ``artclf rehash`` brings older rows up to date from the lake, once, safely."""

from __future__ import annotations

import os
import subprocess
import sys

import imagegen
import numpy as np
from PIL import Image

from artclf_core.catalogue import db
from artclf_core.cli.stack import _older_fingerprints_notice
from artclf_core.images import fingerprints
from artclf_core.images.decode import decode_image
from artclf_core.images.model_input import to_model_input
from artclf_core.ingest.ingestor import Ingestor
from artclf_core.lake import s3 as s3lib
from artclf_core.lifecycle import rehash

N = 6


def stored(settings) -> dict[str, tuple[int, int, list[int], int]]:
    """``{key: (phash, dhash, phash_bands, fingerprint_version)}`` of every artwork."""
    with db.connect(settings.db_url) as conn:
        rows = conn.execute(
            "SELECT key, phash, dhash, phash_bands, fingerprint_version FROM artclf.artworks"
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def make_old(settings, pictures: dict[str, bytes]) -> None:
    """Turn every row back into what scheme 1 stored: the hashes of the decoded picture."""
    with db.connect(settings.db_url) as conn:
        rows = conn.execute("SELECT id, source_key FROM artclf.artworks").fetchall()
        for artwork_id, source_key in rows:
            p, d = fingerprints.image_hashes(decode_image(pictures[source_key]).image)
            conn.execute(
                "UPDATE artclf.artworks SET phash = %s, dhash = %s, phash_bands = %s,"
                " fingerprint_version = 1 WHERE id = %s",
                (p, d, fingerprints.band_keys(p), artwork_id),
            )
        conn.commit()


def test_square_hashes_are_imagehash_of_the_160_px_square() -> None:
    import imagehash

    img = imagegen.make_artwork(7)
    square = to_model_input(img, fingerprints.FINGERPRINT_SIZE)
    p, d = fingerprints.square_hashes(square)
    small = Image.fromarray(square)
    assert fingerprints.to_unsigned64(p) == int(str(imagehash.phash(small)), 16)
    assert fingerprints.to_unsigned64(d) == int(str(imagehash.dhash(small)), 16)
    assert (p, d) == fingerprints.catalogue_hashes(img)
    # A few bits from scheme 1's hashes of the same picture, far inside the thresholds.
    old_p, old_d = fingerprints.image_hashes(img)
    assert fingerprints.hamming(p, old_p) <= 4 and fingerprints.hamming(d, old_d) <= 8


def test_ingestion_rehash_and_copies_across_schemes(stack, clean, model, capsys) -> None:
    settings = clean
    client = s3lib.client(settings)
    pictures = {
        f"incoming/rh/art{i}.jpg": imagegen.encode(imagegen.make_artwork(300 + i), quality=90)
        for i in range(N)
    }
    for key, data in pictures.items():
        client.put_object(Bucket=settings.bucket, Key=key, Body=data)
    with Ingestor(settings, model=model) as ingestor:
        assert ingestor.ingest_prefix("incoming/").catalogued == N

    # Ingestion stores the current scheme, computed from the 160 px square.
    current = stored(settings)
    with db.connect(settings.db_url) as conn:
        by_source = dict(conn.execute("SELECT key, source_key FROM artclf.artworks").fetchall())
    for key, (p, d, bands, version) in current.items():
        want = fingerprints.catalogue_hashes(decode_image(pictures[by_source[key]]).image)
        assert (p, d) == want and version == fingerprints.FINGERPRINT_VERSION
        assert bands == fingerprints.band_keys(p)

    # A catalogue from before: every row at scheme 1.
    make_old(settings, pictures)
    assert all(v[3] == 1 for v in stored(settings).values())
    _older_fingerprints_notice(stack[1])  # what `artclf up` and `artclf stack up` then say
    assert f"note: {N} artwork(s) carry near-copy fingerprints" in capsys.readouterr().err

    # A near copy is still found against a scheme-1 row.
    copy = imagegen.near_copies(imagegen.make_artwork(300))["jpeg_q60"]
    client.put_object(Bucket=settings.bucket, Key="incoming/rh/copy.jpg", Body=copy)
    with Ingestor(settings, model=model) as ingestor:
        summary = ingestor.ingest_prefix("incoming/")
    assert summary.duplicates == 1 and summary.catalogued == 0

    # One picture has gone from the lake: it keeps its old fingerprints and is reported.
    lost = sorted(current)[0]
    client.delete_object(Bucket=settings.bucket, Key=lost)
    first = rehash.rehash(settings, batch_size=4)
    assert first.rehashed == N - 1 and len(first.unreadable) == 1 and first.left == 1
    assert lost in first.unreadable[0]
    after = stored(settings)
    for key, values in after.items():
        if key == lost:
            assert values[3] == 1
        else:
            assert values == current[key]  # exactly what ingestion would store today

    # Idempotent: a second run computes nothing again; the CLI says what is left, exit 1.
    again = rehash.rehash(settings)
    assert again.rehashed == 0 and again.left == 1
    done = subprocess.run(
        [sys.executable, "-m", "artclf_core.cli", "rehash"],
        env={**os.environ, **stack[1]},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert "rehashed 0 artwork(s)" in done.stdout and "1 left" in done.stdout
    assert lost in done.stdout
    assert np.all([v[3] == 2 for k, v in stored(settings).items() if k != lost])
