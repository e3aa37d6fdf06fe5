"""Where the lake and the catalogue are: settings from the environment.

Nothing here holds a credential. Values come, in order, from the process environment
(``ARTCLF_*`` and the standard ``AWS_*`` variables), then from the state file that
``artclf stack up`` writes for the embedded default (``<ARTCLF_HOME>/stack.env``), so a user
can run ``artclf ingest`` right after ``artclf stack up`` without exporting anything.
Airflow passes the same settings built from its connections (see ``plugins/``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

#: Prefix where people drop new images.
INCOMING_PREFIX = "incoming/"
#: Catalogued images: ``catalog/<label>/<sha256[:16]>-<name>``.
CATALOG_PREFIX = "catalog/"
#: Exact and near copies of catalogued artworks: ``duplicates/<log id>-<name>``.
DUPLICATES_PREFIX = "duplicates/"
#: Rejected input: ``quarantine/<log id>-<name>``; the reason is in the ingest log and in the
#: object's ``x-amz-meta-artclf-reason`` metadata.
QUARANTINE_PREFIX = "quarantine/"
#: Curated, labelled images: ``training/<label>/...``; ingested in place, never moved.
TRAINING_PREFIX = "training/"
#: Every prefix whose objects are input: the queue holds objects under these only.
INPUT_PREFIXES = (INCOMING_PREFIX, TRAINING_PREFIX)


def default_home() -> Path:
    """The project-local state directory of the embedded stack (``./.artclf`` by default)."""
    return Path(os.environ.get("ARTCLF_HOME", ".artclf")).expanduser().resolve()


def read_env_file(path: Path) -> dict[str, str]:
    """Parse the ``export KEY='value'`` lines written by ``artclf stack env``."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ")
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("'\"")
    return values


@dataclass(frozen=True)
class Settings:
    """Everything the core needs to reach the lake and the catalogue."""

    db_url: str
    s3_endpoint: str | None
    bucket: str
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    s3_region: str = "us-east-1"
    model_path: str | None = None
    #: How many times a failing object is retried before it is parked as failed.
    max_attempts: int = 3

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, home: Path | None = None) -> Settings:
        """Build settings from the environment, falling back to the embedded stack's file."""
        env = dict(os.environ if environ is None else environ)
        stack_file = (home or default_home()) / "stack.env"
        merged = {**read_env_file(stack_file), **{k: v for k, v in env.items() if v}}
        db_url = merged.get("ARTCLF_DB_URL")
        if not db_url:
            raise RuntimeError(
                "ARTCLF_DB_URL is not set and no embedded stack is running here: "
                "start one with `artclf stack up`, or export ARTCLF_DB_URL, "
                "ARTCLF_S3_ENDPOINT, ARTCLF_BUCKET and AWS credentials."
            )
        return cls(
            db_url=db_url,
            s3_endpoint=merged.get("ARTCLF_S3_ENDPOINT") or None,
            bucket=merged.get("ARTCLF_BUCKET", "artclf"),
            aws_access_key_id=merged.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=merged.get("AWS_SECRET_ACCESS_KEY"),
            s3_region=merged.get("AWS_DEFAULT_REGION", merged.get("AWS_REGION", "us-east-1")),
            model_path=merged.get("ARTCLF_MODEL") or None,
            max_attempts=int(merged.get("ARTCLF_MAX_ATTEMPTS", "3")),
        )

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]
