"""Downloading with the Hub layer (pinned revisions, pickle refusal, offline from a warm cache)
and a pushed version loaded back with plain transformers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.hub_helpers import SHARDS
from tests.support.hub_helpers import assert_one_line as _assert_one_line
from tests.support.hub_helpers import checkpoint_folder as _folder
from tests.support.hub_helpers import push as _push
from tests.support.hub_state import ALICE
from lorareg.errors import CheckpointError, HubError, PickleRefusedError
from lorareg.registry.hub_client import download, push_folder


# -- download -------------------------------------------------------------------------------------
def test_download_at_tag_branch_and_commit(hub, tmp_path):
    v1 = _folder(tmp_path / "v1", extra={"pytorch_model.bin": b"pickle", "notes.md": b"x"})
    v2 = _folder(tmp_path / "v2", seed=2)
    r1, r2 = _push(v1, tag="v1"), _push(v2, tag="v2")

    snap = download(repo_id="alice/merged", revision="v1", cache_dir=tmp_path / "cache")
    assert (snap.repo_id, snap.revision, snap.commit_sha) == ("alice/merged", "v1", r1.commit_sha)
    assert snap.path.name == r1.commit_sha
    assert sorted(p.name for p in snap.path.iterdir()) == sorted(["config.json", *SHARDS])  # no .bin, no .md
    assert (snap.path / SHARDS[0]).read_bytes() == (v1 / SHARDS[0]).read_bytes()

    by_sha = download(repo_id="alice/merged", revision=r2.commit_sha, cache_dir=tmp_path / "cache")
    assert by_sha.commit_sha == r2.commit_sha and by_sha.revision == r2.commit_sha
    assert (by_sha.path / SHARDS[0]).read_bytes() == (v2 / SHARDS[0]).read_bytes()
    main = download(repo_id="alice/merged", revision=None, cache_dir=tmp_path / "cache")
    assert (main.revision, main.commit_sha) == ("main", r2.commit_sha)

    pickled = download(repo_id="alice/merged", revision="v1", cache_dir=tmp_path / "cache", allow_pickle=True)
    assert (pickled.path / "pytorch_model.bin").read_bytes() == b"pickle"
    with pytest.raises(HubError) as err:
        download(repo_id="alice/merged", revision="v7", cache_dir=tmp_path / "cache")
    assert "v7" in _assert_one_line(err).message


def test_download_without_weights(hub, tmp_path):
    pickle_only = tmp_path / "pickle"
    pickle_only.mkdir()
    (pickle_only / "config.json").write_text("{}")
    (pickle_only / "pytorch_model.bin").write_bytes(b"pickle")
    _push(pickle_only, tag="v1")
    with pytest.raises(PickleRefusedError) as err:
        download(repo_id="alice/merged", revision="v1", cache_dir=tmp_path / "cache")
    assert "--allow-pickle" in err.value.hint
    assert download(repo_id="alice/merged", revision="v1", cache_dir=tmp_path / "c2", allow_pickle=True).commit_sha
    with pytest.raises(CheckpointError) as err:  # a base's weights are no adapter
        download(repo_id="alice/merged", revision="v1", cache_dir=tmp_path / "c3", kind="adapter",
                 allow_pickle=True)
    assert "adapter_model" in err.value.message and err.value.hint


def test_download_offline_from_a_warm_cache(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    pushed = _push(_folder(tmp_path / "v1"))
    online = download(repo_id="alice/merged", revision="v1", cache_dir=tmp_path / "cache")
    seen = len(hub.requests())

    # Set after huggingface_hub was imported, so only a read at call time honours it; the
    # server stays up, so a single request would show in its log.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert constants.HF_HUB_OFFLINE is False
    offline = download(repo_id="alice/merged", revision="v1", cache_dir=tmp_path / "cache")
    assert offline == online and offline.commit_sha == pushed.commit_sha
    with pytest.raises(HubError) as err:
        download(repo_id="alice/merged", revision="v1", cache_dir=tmp_path / "cold")
    e = _assert_one_line(err)
    assert "HF_HUB_OFFLINE" in e.message and "online" in e.hint
    assert len(hub.requests()) == seen

    # As a process started with HF_HUB_OFFLINE=1 sees it: huggingface_hub's own flag is set.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert download(repo_id="alice/merged", revision="v1", cache_dir=tmp_path / "cache") == online
    with pytest.raises(HubError) as err:
        push_folder(folder=tmp_path / "v1", repo_id="alice/merged", tag="v2", token=ALICE, commit_message="m")
    assert "HF_HUB_OFFLINE" in _assert_one_line(err).message
    assert len(hub.requests()) == seen

    # No offline flag but no network either: the warm cache still answers.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub.stop()
    assert download(repo_id="alice/merged", revision="v1", cache_dir=tmp_path / "cache") == online


def test_endpoint_argument_without_hf_endpoint(hub, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT")
    result = _push(_folder(tmp_path / "v1"), endpoint=hub.url)
    assert result.url.startswith(hub.url)
    snap = download(repo_id="alice/merged", revision="v1", endpoint=hub.url, cache_dir=tmp_path / "cache")
    assert snap.commit_sha == result.commit_sha


# -- a real model, end to end -----------------------------------------------------------------------
def _bert(path: Path, seed: int) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                        vocab_size=99)
    BertModel(config).save_pretrained(path)
    return path


def test_pushed_version_loads_with_plain_transformers(hub, tmp_path):
    import torch
    from huggingface_hub import snapshot_download
    from safetensors.torch import load_file
    from transformers import AutoModel

    from lorareg.registry.card import render_card

    v1, v2 = _bert(tmp_path / "v1", seed=0), _bert(tmp_path / "v2", seed=1)
    assert (v1 / "config.json").read_bytes() == (v2 / "config.json").read_bytes()
    cards = {v: render_card(kind="merge", name="tiny", version=v, base_model="alice/tiny-base", recipe={},
                            inputs=[], output_digest=f"sha256:{v}", lorareg_version="0.1.0") for v in (1, 2)}
    for v, folder in ((1, v1), (2, v2)):
        r = push_folder(folder=folder, repo_id="alice/tiny", tag=f"v{v}", token=ALICE,
                        commit_message=f"tiny v{v}", card=cards[v])
    assert r.uploaded == ("README.md", "model.safetensors") and r.reused == ("config.json",)

    path = snapshot_download("alice/tiny", revision="v2", cache_dir=tmp_path / "cache", endpoint=hub.url)
    model = AutoModel.from_pretrained(path)
    expected = load_file(v2 / "model.safetensors")
    for name, tensor in model.state_dict().items():
        if name in expected:
            assert torch.equal(tensor, expected[name]), name
    assert Path(path, "README.md").read_text() == cards[2]
    old = hub.files_at("alice/tiny", "v1")
    assert old["model.safetensors"] == (v1 / "model.safetensors").read_bytes()
    assert os.path.basename(path) == hub.repo("alice/tiny").tags["v2"]
