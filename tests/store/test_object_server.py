"""The SeaweedFS S3 server of tests/support/seaweed.py, driven with boto3 alone: it behaves
like S3 where store/objects.py relies on it (ranges, multipart, errors, checksums, restarts).
The error codes asserted here are the ones store/objects.py turns into one-line errors."""

from __future__ import annotations

import hashlib
import os

import pytest

MB = 1024 * 1024


@pytest.fixture
def s3(s3_bucket):
    """A client configured from the standard environment alone, as lorareg's will be.  boto3
    reads AWS_ENDPOINT_URL and the keys itself, but not AWS_REGION (only AWS_DEFAULT_REGION)."""
    import boto3

    return boto3.client("s3", region_name=os.environ["AWS_REGION"])


def _code(excinfo) -> tuple[str, int]:
    err = excinfo.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


def test_put_get_list_delete(s3, s3_bucket):
    s3.put_object(Bucket=s3_bucket, Key="p/sha256/ab/cdef", Body=b"hello")
    s3.put_object(Bucket=s3_bucket, Key="p/sha256/ab/0123", Body=b"world!")
    assert s3.get_object(Bucket=s3_bucket, Key="p/sha256/ab/cdef")["Body"].read() == b"hello"
    assert s3.head_object(Bucket=s3_bucket, Key="p/sha256/ab/0123")["ContentLength"] == 6
    listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix="p/sha256/")["Contents"]
    assert sorted((o["Key"], o["Size"]) for o in listed) == [("p/sha256/ab/0123", 6), ("p/sha256/ab/cdef", 5)]
    s3.delete_object(Bucket=s3_bucket, Key="p/sha256/ab/cdef")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]] == ["p/sha256/ab/0123"]
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket=s3_bucket, Key="p/sha256/ab/cdef")
    s3.delete_object(Bucket=s3_bucket, Key="p/sha256/ab/cdef")  # deleting what is gone is not an error


def test_ranged_get(s3, s3_bucket):
    from botocore.exceptions import ClientError

    data = bytes(range(256)) * 64
    s3.put_object(Bucket=s3_bucket, Key="k", Body=data)
    part = s3.get_object(Bucket=s3_bucket, Key="k", Range="bytes=100-1123")
    assert part["Body"].read() == data[100:1124]
    assert part["ContentRange"] == f"bytes 100-1123/{len(data)}"
    assert s3.get_object(Bucket=s3_bucket, Key="k", Range="bytes=16000-")["Body"].read() == data[16000:]
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=s3_bucket, Key="k", Range=f"bytes={len(data)}-{len(data) + 10}")
    assert _code(exc) == ("InvalidRange", 416)


def test_multipart_upload_of_20_mb_in_8_mb_parts(s3, s3_bucket):
    data = os.urandom(20 * MB + 12345)
    up = s3.create_multipart_upload(Bucket=s3_bucket, Key="big")
    parts = []
    for number, start in enumerate(range(0, len(data), 8 * MB), 1):
        r = s3.upload_part(Bucket=s3_bucket, Key="big", UploadId=up["UploadId"], PartNumber=number,
                           Body=data[start:start + 8 * MB])
        parts.append({"PartNumber": number, "ETag": r["ETag"]})
        # An object appears under its key only once complete.
        assert s3.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0
    assert len(parts) == 3
    s3.complete_multipart_upload(Bucket=s3_bucket, Key="big", UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": parts})
    assert s3.head_object(Bucket=s3_bucket, Key="big")["ContentLength"] == len(data)
    got = s3.get_object(Bucket=s3_bucket, Key="big")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    # A range that spans the boundary of two parts.
    edge = s3.get_object(Bucket=s3_bucket, Key="big", Range=f"bytes={8 * MB - 10}-{8 * MB + 9}")["Body"].read()
    assert edge == data[8 * MB - 10:8 * MB + 10]


def test_aborted_multipart_upload_leaves_nothing(s3, s3_bucket):
    up = s3.create_multipart_upload(Bucket=s3_bucket, Key="half")
    s3.upload_part(Bucket=s3_bucket, Key="half", UploadId=up["UploadId"], PartNumber=1, Body=b"x" * (5 * MB))
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])] == ["half"]
    s3.abort_multipart_upload(Bucket=s3_bucket, Key="half", UploadId=up["UploadId"])
    assert s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert s3.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0


def test_upload_file_with_boto3_transfer_and_default_checksums(s3, s3_bucket, tmp_path):
    """boto3's managed transfer (parallel parts) with botocore's default CRC32 request
    checksums: SeaweedFS accepts them, no `request_checksum_calculation` needed."""
    from boto3.s3.transfer import TransferConfig

    src = tmp_path / "shard.safetensors"
    src.write_bytes(os.urandom(18 * MB))
    s3.upload_file(str(src), s3_bucket, "shard", Config=TransferConfig(multipart_chunksize=8 * MB, max_concurrency=4))
    dst = tmp_path / "back"
    s3.download_file(s3_bucket, "shard", str(dst))
    assert dst.read_bytes() == src.read_bytes()
    assert "ChecksumCRC32" in s3.put_object(Bucket=s3_bucket, Key="small", Body=b"abc")


def test_server_verifies_checksums(s3, s3_bucket):
    """A body that does not match its declared checksum is refused, never stored."""
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=s3_bucket, Key="bad", Body=b"hello", ChecksumCRC32="AAAAAA==")
    assert _code(exc) == ("BadDigest", 400)
    assert s3.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0


def test_put_if_absent(s3, s3_bucket):
    from botocore.exceptions import ClientError

    s3.put_object(Bucket=s3_bucket, Key="once", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=s3_bucket, Key="once", Body=b"2", IfNoneMatch="*")
    assert _code(exc) == ("PreconditionFailed", 412)
    assert s3.get_object(Bucket=s3_bucket, Key="once")["Body"].read() == b"1"


def test_wrong_credentials_are_rejected(s3_server, s3_bucket):
    from botocore.exceptions import ClientError

    s3_server.client().put_object(Bucket=s3_bucket, Key="k", Body=b"secret bytes")
    wrong_secret = s3_server.client(secret_key="not-the-secret")
    with pytest.raises(ClientError) as exc:
        wrong_secret.get_object(Bucket=s3_bucket, Key="k")
    assert _code(exc) == ("SignatureDoesNotMatch", 403)
    with pytest.raises(ClientError) as exc:
        wrong_secret.put_object(Bucket=s3_bucket, Key="k2", Body=b"x")
    assert _code(exc) == ("SignatureDoesNotMatch", 403)
    with pytest.raises(ClientError) as exc:
        wrong_secret.head_object(Bucket=s3_bucket, Key="k")  # HEAD has no body: the bare status
    assert _code(exc) == ("403", 403)
    with pytest.raises(ClientError) as exc:
        s3_server.client(access_key="AKIANOSUCHKEY").list_objects_v2(Bucket=s3_bucket)
    assert _code(exc) == ("InvalidAccessKeyId", 403)


def test_read_only_identity_cannot_write(s3_server, s3_bucket):
    from botocore.exceptions import ClientError

    s3_server.client().put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    reader = s3_server.client(access_key=s3_server.read_only_access_key, secret_key=s3_server.read_only_secret_key)
    assert reader.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"x"
    for write in (lambda: reader.put_object(Bucket=s3_bucket, Key="k2", Body=b"y"),
                  lambda: reader.create_multipart_upload(Bucket=s3_bucket, Key="k3"),
                  lambda: reader.delete_object(Bucket=s3_bucket, Key="k")):
        with pytest.raises(ClientError) as exc:
            write()
        assert _code(exc) == ("AccessDenied", 403)


def test_missing_bucket(s3, s3_bucket):
    """No bucket is created on the fly (as on AWS): writes to a missing one fail too."""
    from botocore.exceptions import ClientError

    for call in (lambda: s3.get_object(Bucket="lorareg-no-such-bucket", Key="k"),
                 lambda: s3.put_object(Bucket="lorareg-no-such-bucket", Key="k", Body=b"x"),
                 lambda: s3.list_objects_v2(Bucket="lorareg-no-such-bucket")):
        with pytest.raises(s3.exceptions.NoSuchBucket) as exc:
            call()
        assert _code(exc) == ("NoSuchBucket", 404)
    with pytest.raises(ClientError) as exc:
        s3.head_bucket(Bucket="lorareg-no-such-bucket")
    assert _code(exc) == ("404", 404)
    assert "lorareg-no-such-bucket" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_unreachable_endpoint(s3_server):
    from botocore.exceptions import EndpointConnectionError

    from tests.support.postgres import free_port

    with pytest.raises(EndpointConnectionError):
        s3_server.client(endpoint=f"http://127.0.0.1:{free_port()}").list_buckets()


def test_stop_and_start_keep_the_data(s3_server, s3, s3_bucket):
    from botocore.exceptions import EndpointConnectionError

    data = os.urandom(3 * MB)
    s3.put_object(Bucket=s3_bucket, Key="kept", Body=data)
    endpoint = s3_server.endpoint
    with s3_server.stopped():
        assert not s3_server.running
        with pytest.raises(EndpointConnectionError):
            s3_server.client().get_object(Bucket=s3_bucket, Key="kept")
    assert s3_server.running and s3_server.endpoint == endpoint
    assert s3.get_object(Bucket=s3_bucket, Key="kept")["Body"].read() == data
    s3.put_object(Bucket=s3_bucket, Key="after", Body=b"new")
    assert {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]} == {"kept", "after"}
