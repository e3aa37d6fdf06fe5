"""The Great Expectations suite on batches built here: a good batch passes, and a bad one fails
with messages that name the broken expectation and show the offending values."""

from __future__ import annotations

import dataclasses

import numpy as np
from catalogue_rows import artwork_row

from artclf_core import CLASSES
from artclf_core.catalogue.artworks import ArtworkRow
from artclf_core.ingest import quality


def _rows(n: int) -> list[ArtworkRow]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        p = rng.dirichlet(np.ones(len(CLASSES)))
        rows.append(
            artwork_row(
                i,
                label=CLASSES[int(p.argmax())],
                probabilities=dict(zip(CLASSES, map(float, p), strict=True)),
                embedding=rng.normal(size=128),
                key=f"catalog/painting/{i:04d}.jpg",
                model_version="cnn-test",
                phash_bands=[0, 0, 0, i],
                dhash=i,
            )
        )
    return rows


def test_good_batch_passes() -> None:
    result = quality.validate_rows(_rows(40))
    assert result.success and result.failures == []
    assert quality.validate_rows([]).success


def test_bad_batch_fails_with_specific_messages() -> None:
    rows = _rows(40)
    rows[3] = dataclasses.replace(rows[3], label="poster")
    rows[5] = dataclasses.replace(rows[5], embedding=np.zeros(64, np.float32))
    rows[7] = dataclasses.replace(rows[7], sha256=rows[8].sha256)
    result = quality.validate_rows(rows)
    assert not result.success
    text = result.summary()
    assert "(label)" in text and "poster" in text
    assert "(embedding_dim)" in text and "64" in text
    assert "(sha256)" in text
