"""The lake in S3 (MinIO, SeaweedFS or AWS): a boto3 client, the hot path's obstore client
(:class:`DataPath`) and the few operations we need.

S3 has no rename: a move is a server-side copy to the new key followed by a delete of the old
one. The pipeline copies *before* it commits the catalogue and deletes *after*, so a crash in
between leaves the object in both places (repaired by the next run), never in neither.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import boto3
from botocore.config import Config

from artclf_core.config import Settings


@dataclass(frozen=True)
class ObjectRef:
    """One version of one S3 object, as listed or announced."""

    bucket: str
    key: str
    etag: str
    last_modified: datetime | None
    size: int


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
    return get_with_type(s3, bucket, key, max_bytes)[0]


def get_with_type(
    s3, bucket: str, key: str, max_bytes: int | None = None
) -> tuple[bytes, str | None]:
    """:func:`get_bytes` and the object's Content-Type."""
    resp = s3.get_object(Bucket=bucket, Key=key)
    body = resp["Body"]
    if max_bytes is not None and int(resp.get("ContentLength", 0)) > max_bytes:
        body.close()
        raise ObjectTooLarge(int(resp["ContentLength"]))
    return body.read(), resp.get("ContentType")


class ObjectTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"object is {size} bytes")
        self.size = size


class ObjectMissing(Exception):
    """The object is not there (deleted, or moved away by another run)."""


class S3Failure(Exception):
    """Any other failure of a data-path request, after the client's retries."""


class DataPath:
    """The ingest hot path's client: GET of object bytes and PUT of them with metadata,
    through obstore (the Rust ``object_store`` crate) instead of boto3.

    Measured on the embedded SeaweedFS (issue 15, docs/benchmarks.md): a GET of ~50 KB costs
    0.43 ms of client CPU here against 2.18 ms through boto3, and writing the moved object as
    a PUT of the bytes already downloaded (with the trace metadata) costs client and server
    less than a server-side CopyObject with ``MetadataDirective=REPLACE``. The PUT also
    writes exactly the bytes that were hashed and classified, even if the source was
    overwritten in between. Listings, batched deletes, copies (repairs, whose bytes are not
    in memory) and everything outside the hot path stay on the boto3 client of
    :func:`client`. One store per bucket, built on first use; thread-safe.

    Keys obstore cannot carry (:func:`obstore_safe`: a control character, DEL, a ``%``, an
    empty or dot segment) go through boto3 instead: S3 accepts them, object_store's path
    parser refuses them ("illegal character sequence") or would percent-decode ``%41`` into
    another key, and an object whose key no retry can fix must still be catalogued.
    """

    def __init__(self, settings: Settings, *, timeout_s: int = 60) -> None:
        from obstore.store import S3Store

        self._make = lambda bucket: S3Store(
            bucket,
            endpoint=settings.s3_endpoint,
            access_key_id=settings.aws_access_key_id,
            secret_access_key=settings.aws_secret_access_key,
            region=settings.s3_region,
            virtual_hosted_style_request=False,
            client_options={
                "allow_http": bool(
                    settings.s3_endpoint and settings.s3_endpoint.startswith("http:")
                ),
                "connect_timeout": "5s",
                "timeout": f"{timeout_s}s",
            },
            # As boto3's standard mode here: a few retries with backoff, then the error.
            retry_config={"max_retries": 4, "retry_timeout": timedelta(seconds=timeout_s)},
        )
        self._stores: dict[str, object] = {}
        self._settings = settings
        self._boto = None  # for the keys obstore cannot carry, built on first need

    def _store(self, bucket: str):
        store = self._stores.get(bucket)
        if store is None:
            store = self._stores.setdefault(bucket, self._make(bucket))
        return store

    def _fallback(self):
        if self._boto is None:
            self._boto = client(self._settings)
        return self._boto

    def get(self, bucket: str, key: str, max_bytes: int | None = None) -> tuple[bytes, str | None]:
        """The object's bytes and its Content-Type; refuse more than ``max_bytes``."""
        import obstore

        if not obstore_safe(key):
            return self._get_boto(bucket, key, max_bytes)
        try:
            result = obstore.get(self._store(bucket), key)
            size = int(result.meta["size"])
            if max_bytes is not None and size > max_bytes:
                raise ObjectTooLarge(size)  # the body is never read
            data = bytes(result.bytes())
        except FileNotFoundError as exc:
            raise ObjectMissing(f"no object at {key}") from exc
        except ObjectTooLarge:
            raise
        except Exception as exc:  # noqa: BLE001 - obstore's errors have no common S3 base
            raise S3Failure(_first_line(exc)) from exc
        return data, result.attributes.get("Content-Type")

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        metadata: dict[str, str],
        content_type: str | None = None,
    ) -> None:
        """Write ``data`` at ``key`` with user ``metadata`` (``x-amz-meta-*``)."""
        import obstore

        if not obstore_safe(key):
            extra = {"ContentType": content_type} if content_type else {}
            try:
                self._fallback().put_object(
                    Bucket=bucket, Key=key, Body=data, Metadata=dict(metadata), **extra
                )
            except Exception as exc:  # noqa: BLE001
                raise S3Failure(_first_line(exc)) from exc
            return
        attributes = dict(metadata)
        if content_type:
            attributes["Content-Type"] = content_type
        try:
            obstore.put(self._store(bucket), key, data, attributes=attributes)
        except Exception as exc:  # noqa: BLE001
            raise S3Failure(_first_line(exc)) from exc

    def _get_boto(self, bucket: str, key: str, max_bytes: int | None) -> tuple[bytes, str | None]:
        try:
            return get_with_type(self._fallback(), bucket, key, max_bytes)
        except ObjectTooLarge:
            raise
        except Exception as exc:  # noqa: BLE001
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                raise ObjectMissing(f"no object at {key!r}") from exc
            raise S3Failure(_first_line(exc)) from exc


def obstore_safe(key: str) -> bool:
    """Whether obstore can GET and PUT ``key`` as it is: no ASCII control character or DEL,
    no ``%`` (object_store would percent-decode it), no empty, ``.`` or ``..`` segment."""
    if "%" in key or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        return False
    return all(part not in ("", ".", "..") for part in key.split("/"))


def _first_line(exc: BaseException) -> str:
    """obstore's messages carry the whole response body; the first line says what failed."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def copy(s3, bucket: str, src: str, dst: str, metadata: dict[str, str] | None = None) -> None:
    """Server-side copy, replacing user metadata with ``metadata`` (the artclf trace)."""
    kwargs = {"MetadataDirective": "REPLACE", "Metadata": metadata} if metadata else {}
    s3.copy_object(Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src}, **kwargs)


def delete(s3, bucket: str, key: str) -> None:
    s3.delete_object(Bucket=bucket, Key=key)


def delete_many(s3, bucket: str, keys: list[str]) -> set[str]:
    """Delete keys with DeleteObjects, 1,000 per request; return the keys that failed.

    A key with a control character cannot travel in DeleteObjects' XML body (XML 1.0 has no
    way to write most of them, and parsers turn ``\r`` into ``\n``): one such key made the
    whole request fail as MalformedXML. Those keys are deleted one by one with DeleteObject,
    whose key travels percent-encoded in the URL.
    """
    failed: set[str] = set()
    plain = [k for k in keys if xml_safe(k)]
    for start in range(0, len(plain), 1000):
        chunk = plain[start : start + 1000]
        resp = s3.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
        )
        failed.update(
            err["Key"] for err in resp.get("Errors", []) if err.get("Code") != "NoSuchKey"
        )
    for key in keys:
        if not xml_safe(key):
            try:
                s3.delete_object(Bucket=bucket, Key=key)
            except Exception:  # noqa: BLE001 - reported as failed, retried by the next run
                failed.add(key)
    return failed


def xml_safe(key: str) -> bool:
    """Whether ``key`` can be written in an S3 XML request body as it is."""
    return not any(ord(c) < 0x20 or ord(c) == 0x7F for c in key)


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
