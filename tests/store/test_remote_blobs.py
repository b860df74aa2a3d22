"""The object-store blob store against a real S3 server (SeaweedFS): what goes up is what was
hashed, what comes down is hashed as it enters the cache, ranged reads return the file's bytes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from lorareg.errors import IntegrityError, NotFoundError, ObjectStoreError
from lorareg.store.objects import MULTIPART_THRESHOLD, PART_SIZE
from lorareg.store.ranged import blob_exists, open_blob_file
from lorareg.store.remote_blobs import RemoteBlobStore, parse_size


def _store(bucket: str, root: Path, **kw) -> RemoteBlobStore:
    return RemoteBlobStore(f"s3://{bucket}/team", root / "cache", **kw)


def _random_file(path: Path, size: int, seed: int = 0) -> str:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    data = bytes(b ^ (i % 251) for i, b in enumerate(data[:size]))  # not periodic in a part
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_large_file_goes_up_in_parts_and_comes_down_hashed(s3_bucket, s3_server, tmp_path):
    size = MULTIPART_THRESHOLD + PART_SIZE + 12345  # three parts, the last a short one
    hexdigest = _random_file(tmp_path / "big.bin", size)
    claims: list[str] = []
    a = _store(s3_bucket, tmp_path / "a")
    a.claim = claims.append
    blob = a.put_file(tmp_path / "big.bin")
    a.flush()
    assert blob.sha256 == hexdigest and claims == [hexdigest]
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=f"team/sha256/{hexdigest[:2]}/{hexdigest[2:]}")
    assert head["ContentLength"] == size and "-" in head["ETag"]  # a multipart object
    b = _store(s3_bucket, tmp_path / "b")  # another machine
    assert b.has(hexdigest) and not b.path_for(hexdigest).exists()
    local = b.ensure_local(hexdigest)
    assert hashlib.sha256(local.read_bytes()).hexdigest() == hexdigest
    assert oct(local.stat().st_mode & 0o777) == oct(0o444)


def test_a_shard_begins_uploading_before_it_is_moved_into_the_store(s3_bucket, s3_server, tmp_path):
    hexdigest = _random_file(tmp_path / "shard.safetensors", MULTIPART_THRESHOLD + 10, seed=1)
    store = _store(s3_bucket, tmp_path / "a")
    store.begin_upload(tmp_path / "shard.safetensors", hexdigest)  # no lease (claim unset): nothing starts
    assert store.objects.size(hexdigest) is None
    claims: list[str] = []
    store.claim = claims.append
    store.begin_upload(tmp_path / "shard.safetensors", hexdigest)
    moved = tmp_path / "elsewhere.bin"
    os.replace(tmp_path / "shard.safetensors", moved)  # the upload holds the file open
    store.put_file(moved, expected_sha256=hexdigest, move=True)
    store.flush()
    assert claims == [hexdigest, hexdigest] and not moved.exists()
    assert store.objects.size(hexdigest) == MULTIPART_THRESHOLD + 10
    body = s3_server.client().get_object(Bucket=s3_bucket, Key=store.objects.key(hexdigest))["Body"].read()
    assert hashlib.sha256(body).hexdigest() == hexdigest


def test_a_link_to_an_unfetched_blob_is_read_with_ranges(s3_bucket, tmp_path):
    import torch
    from safetensors.torch import save_file

    from lorareg.merge.reader import open_checkpoint, TensorReader
    from lorareg.store.safetensors_header import read_header

    src = tmp_path / "src"
    src.mkdir()
    tensors = {"a": torch.randn(300, 70), "b": torch.arange(1000, dtype=torch.int64)}
    save_file(tensors, src / "model.safetensors")
    (src / "config.json").write_text('{"model_type": "llama"}')
    a = _store(s3_bucket, tmp_path / "a")
    blob = a.put_file(src / "model.safetensors")
    a.flush()
    b = _store(s3_bucket, tmp_path / "b")
    folder = tmp_path / "b" / "version"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").symlink_to(b.path_for(blob.sha256))
    assert not (folder / "model.safetensors").exists() and blob_exists(folder / "model.safetensors")
    assert read_header(folder / "model.safetensors").in_file_order()  # the header through a ranged read
    with open_blob_file(folder / "model.safetensors") as f:
        f.seek(8)
        assert f.read(20) == (src / "model.safetensors").read_bytes()[8:28]
    ckpt = open_checkpoint(folder)
    with TensorReader(ckpt) as reader:
        for name, t in ckpt.tensors.items():
            assert torch.equal(reader.tensor(t, bytearray(t.nbytes)), tensors[name])
    assert not b.path_for(blob.sha256).exists()  # nothing was fetched into b's cache


def test_an_object_whose_bytes_do_not_match_its_name_is_never_cached(s3_bucket, s3_server, tmp_path):
    store = _store(s3_bucket, tmp_path / "a")
    wrong = hashlib.sha256(b"what the name says").hexdigest()
    s3_server.client().put_object(Bucket=s3_bucket, Key=store.objects.key(wrong), Body=b"something else")
    with pytest.raises(IntegrityError, match="corrupt"):
        store.ensure_local(wrong)
    assert not store.path_for(wrong).exists()
    assert list((tmp_path / "a" / "cache").rglob("*.incomplete")) == []
    with pytest.raises(IntegrityError):
        store.verify(wrong)
    assert store.verify_all() == [wrong]


def test_verify_fetches_a_corrupt_cached_copy_again(s3_bucket, tmp_path):
    store = _store(s3_bucket, tmp_path / "a")
    blob = store.put_bytes(b"config bytes" * 100)
    store.flush()
    local = store.path_for(blob.sha256)
    os.chmod(local, 0o644)
    local.write_bytes(b"tampered" * 150)
    store.verify(blob.sha256)
    assert hashlib.sha256(local.read_bytes()).hexdigest() == blob.sha256
    local.chmod(0o644)
    local.write_bytes(b"x")
    assert store.verify_all() == []  # the object is fine; the cached copy was re-fetched
    assert local.read_bytes() == b"config bytes" * 100


def test_the_cache_evicts_least_recently_used_first(s3_bucket, tmp_path):
    store = _store(s3_bucket, tmp_path / "a")
    blobs = [store.put_bytes(bytes([i]) * 1000) for i in range(3)]
    store.flush()
    for age, b in zip((300, 100, 200), blobs):  # used 300 s, 100 s and 200 s ago
        t = os.path.getmtime(store.path_for(b.sha256)) - age
        os.utime(store.path_for(b.sha256), (t, t))
    removed = store.prune(max_bytes=1000)
    assert [r.sha256 for r in removed] == [blobs[0].sha256, blobs[2].sha256]
    assert [c.sha256 for c in store.cached()] == [blobs[1].sha256]
    assert store.open(blobs[0].sha256).read() == bytes([0]) * 1000  # evicted from the cache, not the store
    bounded = _store(s3_bucket, tmp_path / "b", cache_max=1500)
    for i in range(3):
        bounded.put_bytes(bytes([10 + i]) * 1000)
    bounded.flush()
    assert sum(c.size for c in bounded.cached()) == 3000  # within a command the cache may exceed its limit
    bounded.close()  # the command ends
    assert sum(c.size for c in bounded.cached()) <= 1500


def test_gc_removes_unreferenced_objects_and_stale_uploads(s3_bucket, s3_server, tmp_path):
    store = _store(s3_bucket, tmp_path / "a", stale_upload_s=0)
    keep, drop = store.put_bytes(b"keep"), store.put_bytes(b"drop")
    store.flush()
    client = s3_server.client()
    client.create_multipart_upload(Bucket=s3_bucket, Key=store.objects.key("ab" * 32))  # a killed writer's
    live = client.create_multipart_upload(Bucket=s3_bucket, Key=store.objects.key("cd" * 32))  # a live lease's
    assert store.gc({keep.sha256, "cd" * 32}, dry_run=True).removed == (drop.sha256,)
    assert store.has(drop.sha256)
    report = store.gc({keep.sha256, "cd" * 32})
    assert report.removed == (drop.sha256,) and report.temp_files_removed >= 1
    assert not store.has(drop.sha256) and not store.path_for(drop.sha256).exists()
    assert store.has(keep.sha256)
    # An upload older than a lease whose blob is protected belongs to a live writer (a long upload): kept.
    assert [u["UploadId"] for u in client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])] == [
        live["UploadId"]]
    with pytest.raises(NotFoundError):
        store.ensure_local(drop.sha256)


def test_errors_are_one_line_and_name_what_to_set(s3_bucket, s3_server, tmp_path, monkeypatch):
    secret = s3_server.secret_key
    with pytest.raises(ObjectStoreError, match="does not exist"):
        RemoteBlobStore("s3://no-such-bucket-here/x", tmp_path / "c1").objects.check()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret + "-wrong")
    with pytest.raises(ObjectStoreError, match="rejected the credentials") as wrong:
        _store(s3_bucket, tmp_path / "c2").objects.check()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ObjectStoreError, match="cannot reach") as unreachable:
        _store(s3_bucket, tmp_path / "c3").has("ab" * 32)
    for exc in (wrong.value, unreachable.value):
        assert "\n" not in str(exc) and secret not in str(exc) and s3_server.access_key not in str(exc)
        assert exc.hint and "AWS_" in exc.hint
    with pytest.raises(ObjectStoreError, match="credentials in its s3:// URL") as in_url:
        RemoteBlobStore("s3://key:topsecret@bucket/x", tmp_path / "c4")
    assert "topsecret" not in str(in_url.value) and "s3://BUCKET/PREFIX" in in_url.value.hint


def test_cache_sizes_parse():
    assert parse_size("10G") == 10 << 30 and parse_size("512M") == 512 << 20 and parse_size("1.5T") == int(1.5 * (1 << 40))
    assert parse_size("2GiB") == 2 << 30 and parse_size("1000") == 1000
    with pytest.raises(Exception, match="LORAREG_CACHE_MAX"):
        parse_size("lots")


def test_ranged_reads_with_read_ahead_return_the_files_bytes(s3_bucket, tmp_path):
    import random

    from lorareg.store.objects import READ_PART

    size = 3 * READ_PART + 4321
    _random_file(tmp_path / "f.bin", size, seed=3)
    data = (tmp_path / "f.bin").read_bytes()
    a = _store(s3_bucket, tmp_path / "a")
    blob = a.put_file(tmp_path / "f.bin")
    a.flush()
    f = _store(s3_bucket, tmp_path / "b").open_ranged(blob.sha256)
    rng = random.Random(7)
    pos = 0
    while pos < size:  # in order, in pieces of every size: inside a part, across parts, several parts at once
        n = rng.choice([1, 1000, READ_PART // 3, READ_PART + 17, 2 * READ_PART])
        assert f.read(n) == data[pos:pos + n]
        pos = min(size, pos + n)
    assert f.read(10) == b""
    f.seek(READ_PART - 5)  # and backwards, after the parts behind were dropped
    assert f.read(READ_PART + 10) == data[READ_PART - 5:2 * READ_PART + 5]
    f.close()


def test_credentials_and_endpoint_come_from_an_aws_profile(s3_bucket, s3_server, tmp_path, monkeypatch):
    """The standard AWS config files work as they do for every other tool: a named profile with
    its keys, region and endpoint (``endpoint_url`` in ~/.aws/config)."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(var)
    (tmp_path / "credentials").write_text(f"[team]\naws_access_key_id = {s3_server.access_key}\n"
                                          f"aws_secret_access_key = {s3_server.secret_key}\n")
    (tmp_path / "config").write_text(f"[profile team]\nregion = us-east-1\nendpoint_url = {s3_server.endpoint}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "team")
    store = _store(s3_bucket, tmp_path / "a")
    blob = store.put_bytes(b"from a profile")
    store.close()
    assert _store(s3_bucket, tmp_path / "b").open(blob.sha256).read() == b"from a profile"
    monkeypatch.setenv("AWS_PROFILE", "nobody")
    with pytest.raises(ObjectStoreError, match="cannot set up the S3 client") as exc:
        _store(s3_bucket, tmp_path / "c").has(blob.sha256)
    assert "AWS_PROFILE" in exc.value.hint
    monkeypatch.delenv("AWS_PROFILE")  # boto3's default session (the fixture's client) knows no profile
    assert s3_server.client().get_object(Bucket=s3_bucket, Key=store.objects.key(blob.sha256))["Body"].read() == (
        b"from a profile")
