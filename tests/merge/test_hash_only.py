"""A recipe-only merge hashes the shards' tensors without writing them: the digests and every
size must be those of the written folder, and the small files' sha256 too; a shard gets no
sha256 of its own (no blob of it is kept, so that second hash pass is skipped)."""

from __future__ import annotations

import hashlib

import torch

from lorareg.merge import merge
from tests.support.factories import make_llama, make_lora

from .helpers import plan as _plan


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_hash_only_gives_the_written_folders_digests(tmp_path):
    base = make_llama(tmp_path / "base", dtype=torch.bfloat16, seed=3, max_shard_size="20KB")
    adapter = make_lora(base, tmp_path / "adapter", seed=4)
    for shard_size in (5 * 2**30, 12_000):  # the base's layout kept, and re-sharded (with an index)
        plan = _plan(base, adapter, max_shard_size=shard_size)
        written = merge(plan, tmp_path / f"written-{shard_size}")
        hashed = merge(plan, tmp_path / f"hashed-{shard_size}", write_weights=False)
        assert hashed.digest == written.digest
        assert {k: f.size for k, f in hashed.files.items()} == {k: f.size for k, f in written.files.items()}
        shards = sorted(p.name for p in written.path.glob("*.safetensors"))
        assert all(hashed.files[s].sha256 is None for s in shards)
        assert len(shards) > 1 and all(written.files[s].sha256 == _sha256(written.path / s) for s in shards)
        assert not list(hashed.path.glob("*.safetensors"))  # nothing written...
        for rel, f in hashed.files.items():  # ...and the small files are there, as written
            if rel not in shards:
                assert _sha256(hashed.path / rel) == f.sha256 == _sha256(written.path / rel)
        assert (hashed.tensors_changed, hashed.notes) == (written.tensors_changed, written.notes)
