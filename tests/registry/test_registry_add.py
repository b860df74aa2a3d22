"""Registering bases and adapters through the Python API."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lorareg.errors import LoraregError, NotFoundError


def test_add_base_stores_files_and_loads_with_transformers(reg, llama):
    from transformers import AutoModelForCausalLM

    info = reg.add_base(path=llama, name="llama")
    assert info.ref == "llama@1" and info.kind == "base" and info.version == 1
    assert info.digest.startswith("sha256:") and len(info.digest) == 71
    assert set(info.files) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert info.details["architecture"] == "LlamaForCausalLM"
    assert info.details["param_count"] > 0
    # the version folder is links into the store, and loads as a normal checkpoint
    assert (info.path / "model.safetensors").is_symlink()
    model = AutoModelForCausalLM.from_pretrained(info.path)
    assert model.config.hidden_size == 32


def test_readding_identical_content_returns_existing_version(reg, llama):
    first = reg.add_base(path=llama, name="llama")
    again = reg.add_base(path=llama, name="llama")
    assert again.ref == first.ref and again.existed
    assert [v.ref for v in reg.ls()] == ["llama@1"]


def test_new_content_under_same_name_is_next_version(reg, llama, tmp_path):
    from tests.support.factories import make_llama

    reg.add_base(path=llama, name="llama")
    other = make_llama(tmp_path / "llama-b", seed=7)
    v2 = reg.add_base(path=other, name="llama")
    assert v2.ref == "llama@2"
    assert reg.get(ref="llama").version == 2  # latest, no alias set
    reg.set_alias(name="llama", alias="current", version=1)
    assert reg.get(ref="llama").version == 1  # `current` wins
    assert reg.get(ref="llama@2").digest == v2.digest
    assert reg.get(ref="llama@current").version == 1


def test_digest_independent_of_sharding(reg, tmp_path):
    from tests.support.factories import make_llama

    one = make_llama(tmp_path / "one", seed=3)
    sharded = make_llama(tmp_path / "sharded", seed=3, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").exists()
    a = reg.add_base(path=one, name="one")
    b = reg.add_base(path=sharded, name="sharded")
    assert a.digest == b.digest


def test_reference_base_detects_changes(reg, llama, tmp_path):
    folder = tmp_path / "ref-llama"
    shutil.copytree(llama, folder)
    info = reg.add_base(path=folder, name="refllama", reference=True)
    assert not info.stored and info.path == folder.resolve()
    assert not any((reg.location().blobs / "sha256").rglob("*")) or all(
        p.stat().st_size < 10_000 for p in (reg.location().blobs / "sha256").rglob("*") if p.is_file()
    )  # only the small manifest blob is stored
    assert reg.verify(ref="refllama")[0].ok
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_act"] = "gelu"
    (folder / "config.json").write_text(json.dumps(cfg))
    result = reg.verify(ref="refllama")[0]
    assert not result.ok and "config.json" in result.problems[0]


def test_pickle_base_is_converted_with_allow_pickle(reg, llama, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(llama / "config.json", folder / "config.json")
    torch.save(load_file(llama / "model.safetensors"), folder / "pytorch_model.bin")
    info = reg.add_base(path=folder, name="pickled", allow_pickle=True)
    orig = reg.add_base(path=llama, name="orig")
    assert orig.weights_digest == info.weights_digest  # same tensors; the copy lacks the tokenizer files
    assert orig.digest != info.digest
    assert set(info.files) == {"config.json", "model.safetensors"}


def test_add_adapter_checks_and_records_config(reg, llama, llama_lora):
    base = reg.add_base(path=llama, name="llama")
    ad = reg.add_adapter(path=llama_lora, base="llama", name="chat")
    assert ad.ref == "chat@1" and ad.kind == "adapter"
    assert ad.details["r"] == 4 and ad.details["lora_alpha"] == 8
    assert ad.details["base"] == base.ref
    assert any(t.endswith("q_proj") for t in ad.details["target_modules"])
    assert reg.add_adapter(path=llama_lora, base="llama", name="chat").existed


def test_adapter_for_another_architecture_is_refused(reg, llama, gpt2_lora):
    reg.add_base(path=llama, name="llama")
    with pytest.raises(LoraregError) as exc:
        reg.add_adapter(path=gpt2_lora, base="llama", name="wrong")
    assert "c_attn" in str(exc.value)


def test_unknown_reference(reg):
    with pytest.raises(NotFoundError) as exc:
        reg.get(ref="nothing@3")
    assert "lorareg ls" in exc.value.hint


def test_name_kind_is_fixed(reg, llama, llama_lora):
    reg.add_base(path=llama, name="llama")
    with pytest.raises(LoraregError, match="already belongs to a base"):
        reg.add_adapter(path=llama_lora, base="llama", name="llama")


def test_aliases_and_log(reg, llama, tmp_path):
    from tests.support.factories import make_llama

    reg.add_base(path=llama, name="llama")
    reg.add_base(path=make_llama(tmp_path / "b", seed=9), name="llama")
    reg.set_alias(name="llama", alias="prod", version=2)
    reg.set_alias(name="llama", alias="prod", version=1)
    assert [(a.alias, a.version) for a in reg.aliases(name="llama")] == [("prod", 1)]
    events = reg.log(ref="llama")
    moves = [e for e in events if e.action == "alias"]
    assert [(e.args["version"], e.args["previous"]) for e in moves] == [(1, 2), (2, None)]
    reg.remove_alias(name="llama", alias="prod")
    assert reg.aliases(name="llama") == []


def test_concurrent_processes_on_sqlite_get_distinct_versions(tmp_path, lorareg_home):
    """Four processes add different checkpoints under one name at once: versions 1-4, no error."""
    import subprocess
    import sys

    from tests.support.factories import make_llama
    from lorareg import Registry

    folders = [make_llama(tmp_path / f"m{i}", seed=200 + i, layers=1) for i in range(4)]
    Registry.open().close()
    code = "import sys; from lorareg import Registry; Registry.open().add_base(path=sys.argv[1], name='race')"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(f)], stderr=subprocess.PIPE, text=True)
             for f in folders]
    errors = [p.communicate()[1] for p in procs if p.wait() != 0]
    assert not errors, errors
    with Registry.open() as reg:
        assert sorted(v.version for v in reg.ls(name="race")) == [1, 2, 3, 4]


def test_version_folders_load_with_peft(reg, llama, llama_lora):
    """The adapter's version folder (links into the store) loads with PeftModel on the base's folder."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = reg.add_base(path=llama, name="llama")
    ad = reg.add_adapter(path=llama_lora, base="llama", name="chat")
    ids = torch.tensor([[1, 7, 9, 2]])
    from_store = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base.path), ad.path)
    original = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama), llama_lora)
    assert torch.equal(from_store(ids).logits, original(ids).logits)


def test_add_base_reads_each_byte_once_and_stores_it_in_that_read(reg, llama, monkeypatch):
    """The digest pass stores the blobs; nothing reads the folder a second time to copy it."""
    from lorareg.store.blobs import BlobStore

    def no_second_pass(*_a, **_k):
        raise AssertionError("put_file read the folder again")

    monkeypatch.setattr(BlobStore, "put_file", no_second_pass)
    reads: list[int] = []
    info = reg.add_base(path=llama, name="llama", progress=reads.append)
    on_disk = sum(p.stat().st_size for p in llama.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert sum(reads) == on_disk
    for rel in info.files:  # the version folder's links reach blobs holding the folder's bytes
        assert (info.path / rel).read_bytes() == (llama / rel).read_bytes()
    assert reg.verify(ref=info.ref)[0].ok


def test_writer_lease_is_held_from_the_first_blob_to_the_commit(reg, llama, llama_lora, monkeypatch):
    """While the digest pass writes blobs that no row names yet, they are pending under one
    live lease (add's, shared by register_version), so a gc run then keeps them; once the
    rows commit, the lease and its pending rows are gone."""
    from sqlmodel import select

    import lorareg.store.digest as digest_mod
    from lorareg.registry import models as m
    from lorareg.registry.gc import referenced_blobs

    ctx = reg._ctx
    real = digest_mod._store_file
    seen: list[tuple[int, int, int]] = []

    def gc_meanwhile(*args, **kwargs):
        with ctx.session() as session:
            lease_ids = session.exec(select(m.Lease.id)).all()
            kept = set(session.exec(select(m.PendingBlob.sha256)).all()) | referenced_blobs(session)
        stored = {h for h, _ in ctx.blobs.iter_blobs()}
        removed = reg.gc().blobs_removed
        seen.append((len(lease_ids), removed, len(stored - {h for h, _ in ctx.blobs.iter_blobs()})))
        assert stored <= kept  # every blob stored so far is claimed, or named by a committed row
        return real(*args, **kwargs)

    monkeypatch.setattr(digest_mod, "_store_file", gc_meanwhile)
    info = reg.add_base(path=llama, name="llama")
    assert len(seen) >= 2 and all(s == (1, 0, 0) for s in seen)  # one lease; gc removed nothing
    with ctx.session() as session:
        assert session.exec(select(m.Lease)).all() == [] and session.exec(select(m.PendingBlob)).all() == []
    assert info.ref == "llama@1" and reg.verify(ref="llama")[0].ok
    reg.add_adapter(path=llama_lora, base="llama", name="chat")


def test_reference_base_stores_no_file(reg, llama, tmp_path):
    folder = tmp_path / "ref-llama"
    shutil.copytree(llama, folder)
    info = reg.add_base(path=folder, name="refllama", reference=True)
    blobs = reg.location().blobs
    assert not any((blobs / "sha256" / f.sha256[:2] / f.sha256[2:]).exists() for f in info.files.values())
