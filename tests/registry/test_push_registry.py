"""`lorareg push` and `lorareg add base hf://...` end to end against the local Hub server."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lorareg.cli.main import cli
from tests.support.hub_state import ALICE


class _Out:
    def __init__(self, result):
        self.output = result.stdout  # progress bars go to stderr; --json output is stdout alone


def run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return _Out(r)


def test_push_merged_versions_and_download_by_tag(hub, reg, llama, llama_lora, llama_lora2, monkeypatch, tmp_path):
    from huggingface_hub import ModelCard, snapshot_download
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("HF_TOKEN", ALICE)
    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=llama_lora, base="llama", name="chat")
    reg.add_adapter(path=llama_lora2, base="llama", name="code")
    v1 = reg.merge(base="llama", adapters=["chat"], name="assistant")
    v2 = reg.merge(base="llama", adapters=["chat", "code:0.5"], name="assistant", keep="recipe")

    out = json.loads(run("push", v1.ref, "--repo", "alice/assistant", "--json").output)
    assert out["tag"] == "v1" and not out["noop"] and len(out["commit_sha"]) == 40
    again = json.loads(run("push", v1.ref, "--repo", "alice/assistant", "--json").output)
    assert again["noop"] and again["commit_sha"] == out["commit_sha"]
    # v2 is recipe only: push rebuilds it, checks the digest, then uploads
    out2 = json.loads(run("push", v2.ref, "--repo", "alice/assistant", "--json").output)
    assert out2["tag"] == "v2" and "tokenizer.json" in out2["reused"]

    listed = json.loads(run("ls", "merges", "--pushed", "--json").output)
    where = {i["ref"]: [(p["repo_id"], p["tag"]) for p in i["pushes"]] for i in listed}
    assert where == {"assistant@1": [("alice/assistant", "v1")], "assistant@2": [("alice/assistant", "v2")]}

    folder = snapshot_download("alice/assistant", revision="v2", endpoint=hub.url, token=ALICE,
                               cache_dir=tmp_path / "cache")
    card = ModelCard.load(f"{folder}/README.md")
    assert card.data.base_model_relation == "merge" and {"lora", "merge", "lorareg"} <= set(card.data.tags)
    assert v2.digest in card.text and reg.get(ref="chat").digest in card.text
    assert ALICE not in card.text
    model = AutoModelForCausalLM.from_pretrained(folder)
    exported = tmp_path / "v2"
    reg.export(ref=v2.ref, dest=exported)
    ours = AutoModelForCausalLM.from_pretrained(exported)
    for (k, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(ours.state_dict().items())):
        assert torch.equal(a, b), k


def test_add_base_from_hub_pins_commit(hub, reg, llama, monkeypatch):
    from lorareg.registry.hub_client import push_folder

    res = push_folder(folder=llama, repo_id="alice/tiny-llama", tag="release", token=ALICE, commit_message="up")
    monkeypatch.setenv("HF_TOKEN", ALICE)
    out = json.loads(run("add", "base", "hf://alice/tiny-llama@release", "--json").output)
    assert out["name"] == "tiny-llama"
    assert out["details"]["hub_repo"] == "alice/tiny-llama" and out["details"]["hub_commit"] == res.commit_sha
    assert out["digest"] == reg.add_base(path=llama, name="local").digest
    tree = json.loads(run("lineage", "tiny-llama", "--json").output)
    assert tree["nodes"][0]["source"] == f"hf://alice/tiny-llama@{res.commit_sha}"


def test_pushed_card_names_the_hub_base(hub, reg, llama, llama_lora, monkeypatch, tmp_path):
    from huggingface_hub import ModelCard, hf_hub_download

    from lorareg.registry.hub_client import push_folder

    push_folder(folder=llama, repo_id="alice/tiny-llama", tag="v1", token=ALICE, commit_message="up")
    monkeypatch.setenv("HF_TOKEN", ALICE)
    reg.add_base_from_hub(uri="hf://alice/tiny-llama@v1", name="tiny")
    reg.add_adapter(path=llama_lora, base="tiny", name="chat")
    merged = reg.merge(base="tiny", adapters=["chat:0.5"], name="half")
    reg.push(ref=merged.ref, repo="alice/half")
    card = ModelCard.load(hf_hub_download("alice/half", "README.md", revision="v1", endpoint=hub.url,
                                          token=ALICE, cache_dir=tmp_path / "cache"))
    assert card.data.base_model == "alice/tiny-llama"
    assert "lorareg rebuild half@1" in card.text


def test_push_adapter_only_and_show_lists_pushes(hub, reg, llama, llama_lora, monkeypatch, tmp_path):
    from huggingface_hub import ModelCard, snapshot_download

    monkeypatch.setenv("HF_TOKEN", ALICE)
    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=llama_lora, base="llama", name="chat")
    out = json.loads(run("push", "chat", "--repo", "alice/chat-lora", "--adapter-only", "--json").output)
    assert out["tag"] == "v1" and out["adapter_only"]
    shown = json.loads(run("show", "chat", "--json").output)
    assert shown["details"]["hub_pushes"][0]["repo_id"] == "alice/chat-lora"
    folder = snapshot_download("alice/chat-lora", revision="v1", endpoint=hub.url, token=ALICE,
                               cache_dir=tmp_path / "cache")
    card = ModelCard.load(f"{folder}/README.md")
    assert card.data.library_name == "peft" and card.data.base_model_relation == "adapter"
    names = {p.name for p in __import__("pathlib").Path(folder).iterdir()} - {".gitattributes"}
    assert names == {"README.md", "adapter_config.json", "adapter_model.safetensors"}


def test_push_refuses_a_corrupt_store_file(hub, reg, llama, monkeypatch):
    import os

    from lorareg.errors import IntegrityError

    monkeypatch.setenv("HF_TOKEN", ALICE)
    info = reg.add_base(path=llama, name="llama")
    sha = info.files["model.safetensors"].sha256
    blob = reg.location().blobs / "sha256" / sha[:2] / sha[2:]
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.safetensors"):
        reg.push(ref=info.ref, repo="alice/llama")
    assert hub.requests("POST", "/commit/") == []
