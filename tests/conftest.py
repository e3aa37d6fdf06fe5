"""Shared fixtures: one real embedded stack (PostgreSQL + pgvector, SeaweedFS S3) per test
session, started and stopped by the project's own code, in a temporary ARTCLF_HOME."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    from artclf_core.embedded.stack import Stack

    home = tmp_path_factory.mktemp("artclf-home")
    s = Stack(
        home,
        bucket="artclf-test",
        pg_tuning={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
    )
    env = s.up()
    yield s, env
    s.down()


@pytest.fixture(scope="session")
def settings(stack):
    from artclf_core.config import Settings

    _, env = stack
    return Settings.from_env(env, home=Path("/nonexistent"))


@pytest.fixture
def clean(settings):
    """Empty catalogue and bucket before a test (the stack itself is shared)."""
    return reset(settings)


def reset(settings):
    """Empty the catalogue and the bucket; module-scoped fixtures call it directly."""
    from artclf_core.catalogue import db
    from artclf_core.lake import s3 as s3lib

    with db.connect(settings.db_url) as conn:
        conn.execute("TRUNCATE artclf.ingest_log, artclf.artworks, artclf.model_versions CASCADE")
        conn.commit()
    client = s3lib.client(settings)
    for page in s3lib.iter_pages(client, settings.bucket, ""):
        # The product's delete: keys with control characters cannot travel in XML.
        s3lib.delete_many(client, settings.bucket, [r.key for r in page])
    return settings


@pytest.fixture(scope="session")
def model():
    from artclf_core.model.artmodel import ArtModel

    return ArtModel.load(os.environ.get("ARTCLF_MODEL") or None)
