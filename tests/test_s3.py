"""The hot path's S3 client (``s3.DataPath``, obstore) against the real embedded SeaweedFS:
what boto3 sees of its PUTs, and its errors in the pipeline's terms."""

from __future__ import annotations

import dataclasses

import pytest

from artclf_core.lake import s3 as s3lib


def test_a_put_carries_the_trace_metadata_and_content_type_any_client_reads(clean):
    path = s3lib.DataPath(clean)
    meta = {"artclf-state": "catalogued", "artclf-source-key": "incoming/%C3%A9t%C3%A9.jpg"}
    path.put(clean.bucket, "catalog/painting/x.jpg", b"\xff\xd8bytes", meta, "image/jpeg")
    head = s3lib.client(clean).head_object(Bucket=clean.bucket, Key="catalog/painting/x.jpg")
    assert head["Metadata"] == meta
    assert head["ContentType"] == "image/jpeg"
    data, content_type = path.get(clean.bucket, "catalog/painting/x.jpg")
    assert (data, content_type) == (b"\xff\xd8bytes", "image/jpeg")


def test_errors_are_the_pipelines_missing_too_large_and_failure(clean):
    path = s3lib.DataPath(clean)
    with pytest.raises(s3lib.ObjectMissing):
        path.get(clean.bucket, "incoming/nothing.jpg")
    path.put(clean.bucket, "incoming/big.bin", b"x" * 5000, {})
    with pytest.raises(s3lib.ObjectTooLarge) as too_large:
        path.get(clean.bucket, "incoming/big.bin", max_bytes=4999)
    assert too_large.value.size == 5000
    assert path.get(clean.bucket, "incoming/big.bin", max_bytes=5000)[0] == b"x" * 5000
    wrong = dataclasses.replace(clean, aws_secret_access_key="not-the-key")
    with pytest.raises(s3lib.S3Failure) as failure:
        s3lib.DataPath(wrong).get(clean.bucket, "incoming/big.bin")
    assert "\n" not in str(failure.value) and str(failure.value)
