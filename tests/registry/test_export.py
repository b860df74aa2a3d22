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


def test_export_copy_reports_each_step_and_copies_every_byte(reg, llama, tmp_path, monkeypatch):
    import lorareg.registry.export as export_mod

    monkeypatch.setattr(export_mod, "COPY_CHUNK", 4096)  # several steps per file
    base = reg.add_base(path=llama, name="llama")
    seen: list[tuple[int, int]] = []
    reg.export(ref=base.ref, dest=tmp_path / "out", copy=True, copy_progress=lambda n, total: seen.append((n, total)))
    total = sum(f.size for f in base.files.values())
    assert sum(n for n, _ in seen) == total and {t for _, t in seen} == {total}
    assert max(n for n, _ in seen) == 4096 and len(seen) > len(base.files)
    for rel in base.files:
        assert (tmp_path / "out" / rel).read_bytes() == (llama / rel).read_bytes()


def test_export_copy_falls_back_to_user_space_mid_file(reg, llama, tmp_path, monkeypatch):
    """copy_file_range refused after its first step (as between some file systems): the rest
    of the file is copied through user space from where the kernel stopped."""
    import errno

    import lorareg.registry.export as export_mod

    monkeypatch.setattr(export_mod, "COPY_CHUNK", 1000)  # not a multiple of the page size
    real, calls = os.copy_file_range, []

    def flaky(src, dst, count, *a):
        calls.append(count)
        if len(calls) % 2 == 0:
            raise OSError(errno.EXDEV, "cross-device")
        return real(src, dst, count, *a)

    monkeypatch.setattr(os, "copy_file_range", flaky)
    base = reg.add_base(path=llama, name="llama")
    reg.export(ref=base.ref, dest=tmp_path / "out", copy=True)
    assert calls
    for rel in base.files:
        assert (tmp_path / "out" / rel).read_bytes() == (llama / rel).read_bytes()


def test_cli_export_copy_flag(reg, llama, tmp_path):
    from click.testing import CliRunner

    from lorareg.cli.main import cli

    base = reg.add_base(path=llama, name="llama")
    linked = CliRunner().invoke(cli, ["export", base.ref, str(tmp_path / "linked")])
    copied = CliRunner().invoke(cli, ["export", base.ref, str(tmp_path / "copied"), "--copy"])
    assert linked.exit_code == 0 and copied.exit_code == 0, linked.output + copied.output
    blob = os.path.realpath(base.path / "model.safetensors")
    assert not os.path.samefile(tmp_path / "copied" / "model.safetensors", blob)
    assert (tmp_path / "copied" / "model.safetensors").read_bytes() == (llama / "model.safetensors").read_bytes()
    hows = [e.args["how"] for e in reg.log(limit=2)]
    assert {"copy": len(base.files)} in hows and any("copy" not in h for h in hows)


def test_export_to_another_file_system_copies_with_progress(reg, llama, tmp_path, monkeypatch):
    """Where neither a reflink nor a hard link can be made (another file system), the files
    are copied, and the copy reports its progress like --copy does."""
    import errno

    import lorareg.registry.export as export_mod

    def cross_device(*_a, **_k):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(export_mod, "_reflink", lambda src, target: False)
    monkeypatch.setattr(os, "link", cross_device)
    base = reg.add_base(path=llama, name="llama")
    seen: list[int] = []
    reg.export(ref=base.ref, dest=tmp_path / "out", copy_progress=lambda n, total: seen.append(n))
    assert reg.log(limit=1)[0].args["how"] == {"copy": len(base.files)}
    assert sum(seen) == sum(f.size for f in base.files.values())
    for rel in base.files:
        assert (tmp_path / "out" / rel).read_bytes() == (llama / rel).read_bytes()
