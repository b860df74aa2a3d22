"""export: no byte copied when a link will do, and an exported folder cannot corrupt the store silently."""

from __future__ import annotations

import os
import stat

import torch
from transformers import AutoModelForCausalLM


def test_export_links_read_only_blobs_and_loads(reg, llama, llama_lora, tmp_path):
    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=llama_lora, base="llama", name="chat")
    merged = reg.merge(base="llama", adapters=["chat"], name="m")
    reg.export(ref=merged.ref, dest=tmp_path / "out")
    shard = tmp_path / "out" / "model.safetensors"
    blob = os.path.realpath(merged.path / "model.safetensors")
    how = reg.log(limit=1)[0].args["how"]
    assert how in ({"hardlink": len(merged.files)}, {"reflink": len(merged.files)})
    assert not shard.is_symlink() and os.path.samefile(shard, blob) == ("hardlink" in how)
    assert not shard.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)  # read-only like the blob
    ids = torch.tensor([[1, 5, 9, 2]])
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "out")(ids).logits
    b = AutoModelForCausalLM.from_pretrained(merged.path)(ids).logits
    assert torch.equal(a, b)


def test_a_blob_changed_through_an_export_is_caught(reg, llama, tmp_path):
    base = reg.add_base(path=llama, name="llama")
    reg.export(ref=base.ref, dest=tmp_path / "out")
    shard = tmp_path / "out" / "model.safetensors"
    if shard.stat().st_nlink < 2:  # a reflink: the store cannot be reached through it at all
        return
    os.chmod(shard, 0o644)
    with open(shard, "r+b") as f:  # someone edits the exported weights in place
        f.seek(-3, os.SEEK_END)
        f.write(b"\x00\x01\x02")
    result = reg.verify(ref=base.ref)[0]
    assert not result.ok and "model.safetensors" in result.problems[0] and "corrupt" in result.problems[0]


def test_export_copy_makes_independent_files(reg, llama, tmp_path):
    base = reg.add_base(path=llama, name="llama")
    reg.export(ref=base.ref, dest=tmp_path / "out", copy=True)
    shard = tmp_path / "out" / "model.safetensors"
    assert shard.stat().st_nlink == 1 and not os.path.samefile(shard, os.path.realpath(base.path / "model.safetensors"))
    assert reg.log(limit=1)[0].args["how"] == {"copy": len(base.files)}
