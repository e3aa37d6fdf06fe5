"""The lake in S3 (MinIO, SeaweedFS or AWS): a boto3 client and the few operations we need.

S3 has no rename: a move is a server-side copy to the new key followed by a delete of the old
one. The pipeline copies *before* it commits the catalogue and deletes *after*, so a crash in
between leaves the object in both places (repaired by the next run), never in neither.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterator

import boto3
from botocore.config import Config

from artclf_core.config import Settings
from artclf_core.db import ObjectRef


def client(settings: Settings, *, max_pool: int = 32):
    """A boto3 S3 client for the configured endpoint (path-style, retries with backoff)."""
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        region_name=settings.s3_region,
        config=Config(
            s3={"addressing_style": "path"},
            # Checksums only where S3 requires them: CRC32 of every body on every GET/PUT
            # costs more client CPU than the transfer on loopback, and TLS/ETags already
            # protect integrity end to end.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            parameter_validation=False,
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=max_pool,
            connect_timeout=5,
            read_timeout=60,
        ),
    )


def iter_pages(s3, bucket: str, prefix: str, page_size: int = 1000) -> Iterator[list[ObjectRef]]:
    """List ``prefix`` page by page (streamed: memory stays bounded whatever the count).

    "Folders" (keys ending in ``/``, as some S3 consoles create) are skipped.
    """
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(
        Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}
    ):
        refs = [
            ObjectRef(
                bucket=bucket,
                key=obj["Key"],
                etag=obj.get("ETag", "").strip('"'),
                last_modified=obj["LastModified"],
                size=int(obj.get("Size", 0)),
            )
            for obj in page.get("Contents", [])
            if not obj["Key"].endswith("/")
        ]
        if refs:
            yield refs


def get_bytes(s3, bucket: str, key: str, max_bytes: int | None = None) -> bytes:
    """Download an object; refuse to read more than ``max_bytes`` (oversized files)."""
    resp = s3.get_object(Bucket=bucket, Key=key)
    body = resp["Body"]
    if max_bytes is not None and int(resp.get("ContentLength", 0)) > max_bytes:
        body.close()
        raise ObjectTooLarge(int(resp["ContentLength"]))
    return body.read()


class ObjectTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"object is {size} bytes")
        self.size = size


def copy(s3, bucket: str, src: str, dst: str, metadata: dict[str, str] | None = None) -> None:
    """Server-side copy, replacing user metadata with ``metadata`` (the artclf trace)."""
    kwargs = {"MetadataDirective": "REPLACE", "Metadata": metadata} if metadata else {}
    s3.copy_object(Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src}, **kwargs)


def delete(s3, bucket: str, key: str) -> None:
    s3.delete_object(Bucket=bucket, Key=key)


def delete_many(s3, bucket: str, keys: list[str]) -> set[str]:
    """Delete keys with DeleteObjects, 1,000 per request; return the keys that failed."""
    failed: set[str] = set()
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        resp = s3.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
        )
        failed.update(
            err["Key"] for err in resp.get("Errors", []) if err.get("Code") != "NoSuchKey"
        )
    return failed


def basename(key: str) -> str:
    return posixpath.basename(key) or "object"


#: Bytes per path part ("folder" or file name) that SeaweedFS accepts, like most file systems
#: behind object stores; and bytes per key on AWS S3 and MinIO.
MAX_PART_BYTES = 255
MAX_KEY_BYTES = 1024


def fit_key(folder: str, prefix: str, name: str) -> str:
    """``folder + prefix + name``, with ``name`` shortened when the last path part or the
    whole key would exceed what stores accept (:data:`MAX_PART_BYTES`, :data:`MAX_KEY_BYTES`).

    A name dropped under ``incoming/`` can be accepted there and still be too long once the
    lake prefixes it (``catalog/<label>/<hash>-``): such an object could never be moved. The
    shortening is deterministic (a re-run computes the same key), keeps the extension, cuts
    on a UTF-8 character boundary and inserts ``~`` and 8 hex digits of the whole name's
    SHA-1, so two long names that share their start stay apart. The full original key is
    kept in the object's ``artclf-source-key`` metadata and in the catalogue.
    """
    budget = min(
        MAX_PART_BYTES - len(prefix.encode()),
        MAX_KEY_BYTES - len(folder.encode()) - len(prefix.encode()),
    )
    raw = name.encode()
    if len(raw) <= budget:
        return folder + prefix + name
    stem, ext = posixpath.splitext(name)
    if len(ext.encode()) > 16:
        stem, ext = name, ""
    tag = "~" + hashlib.sha1(raw).hexdigest()[:8]
    keep = budget - len(ext.encode()) - len(tag)
    short = stem.encode()[:keep].decode("utf-8", "ignore")
    return folder + prefix + short + tag + ext
