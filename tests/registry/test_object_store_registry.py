"""A team registry on real servers: blobs in S3-compatible storage (SeaweedFS), two
LORAREG_HOMEs playing two machines over one database and one bucket.  What a merge reads
and writes through the object store must be what PEFT gives on the same inputs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from lorareg import Registry
from tests.merge.helpers import mismatches, peft_merged, read_folder, state


def _open(home: Path, bucket: str, db: Path) -> Registry:
    return Registry.open(home=home, blobs=f"s3://{bucket}/team", database_url=f"sqlite:///{db}")


def _objects(s3_server, bucket: str) -> dict[str, int]:
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="team/sha256/")
    return {o["Key"].split("/", 2)[2].replace("/", ""): o["Size"] for p in pages for o in p.get("Contents", ())}


def test_two_machines_share_one_bucket(s3_bucket, s3_server, tmp_path, llama, llama_lora):
    db = tmp_path / "registry.db"
    with _open(tmp_path / "a", s3_bucket, db) as a:
        base = a.add_base(path=llama, name="llama")
        a.add_adapter(path=llama_lora, base="llama", name="chat")
    stored = _objects(s3_server, s3_bucket)
    for f in base.files.values():  # every file of the version is an object named by its sha256
        assert stored[f.sha256] == f.size
    weights = base.files["model.safetensors"].sha256

    with _open(tmp_path / "b", s3_bucket, db) as b:
        merged = b.merge(base="llama", adapters=["chat"], name="assistant")
        # The base's weights were streamed with ranged reads: machine b never held a copy.
        assert not (tmp_path / "b" / "cache" / "sha256" / weights[:2] / weights[2:]).exists()
        out = b.export(ref="assistant@1", dest=tmp_path / "exported")
        assert out.digest == merged.digest
        assert not mismatches(state(peft_merged(llama, llama_lora, torch.float32)), read_folder(tmp_path / "exported"))
        assert b.rebuild(ref="assistant@1").ok
        assert all(r.ok for r in b.verify(all_versions=True))
    for f in merged.files.values():
        assert f.sha256 in _objects(s3_server, s3_bucket)

    with _open(tmp_path / "a", s3_bucket, db) as a:  # machine a sees b's version and can load it
        folder = a.folder(ref="assistant@1")
        for rel, f in merged.files.items():
            assert hashlib.sha256((folder / rel).read_bytes()).hexdigest() == f.sha256
        assert all(r.ok for r in a.verify(all_versions=True))


def test_recipe_only_merge_uploads_no_shards_and_gc_empties_the_bucket(s3_bucket, s3_server, tmp_path, llama,
                                                                       llama_lora):
    db = tmp_path / "registry.db"
    with _open(tmp_path / "a", s3_bucket, db) as a:
        versions = [a.add_base(path=llama, name="llama"), a.add_adapter(path=llama_lora, base="llama", name="chat")]
        before = _objects(s3_server, s3_bucket)
        info = a.merge(base="llama", adapters=["chat"], name="assistant", keep="recipe")
        added = set(_objects(s3_server, s3_bucket)) - set(before)
        assert info.files["model.safetensors"].sha256 not in added and len(added) <= 1  # at most the tensor manifest
        kept = a.merge(base="llama", adapters=["chat"], name="kept")
        assert kept.files["model.safetensors"].sha256 in _objects(s3_server, s3_bucket)
        a.remove(refs=["kept@1", "assistant@1", "chat@1", "llama@1"])
        a.gc()
    # Removed versions stay as tombstones with their tensor manifests (a few KB each); every file went,
    # from the bucket and from this machine's cache.
    left = _objects(s3_server, s3_bucket)
    assert len(left) <= 3 and all(size < 10_000 for size in left.values())
    for v in [*versions, kept]:
        for f in v.files.values():
            assert f.sha256 not in left
            assert not (tmp_path / "a" / "cache" / "sha256" / f.sha256[:2] / f.sha256[2:]).exists()
