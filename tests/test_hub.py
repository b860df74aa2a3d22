"""The Hub layer against a local Hub look-alike, with the unmodified huggingface_hub client."""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
from pathlib import Path

import pytest

from lorareg.errors import CheckpointError, HubError, NotFoundError, PickleRefusedError
from lorareg.registry.hub import download, is_hub_uri, parse_hub_uri, push_folder

try:
    from tests.hub_server import ALICE, BOB, hub  # noqa: F401  (hub is the fixture)
except ModuleNotFoundError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from hub_server import ALICE, BOB, hub  # noqa: F401

SHARDS = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]


def _folder(path: Path, *, seed: int = 0, extra: dict[str, bytes] | None = None) -> Path:
    """A checkpoint-shaped folder: a config and three LFS-tracked shards of seeded bytes."""
    rng = random.Random(seed)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    for name in SHARDS:
        (path / name).write_bytes(rng.randbytes(4096))
    for name, data in (extra or {}).items():
        (path / name).write_bytes(data)
    return path


def _push(folder: Path, *, tag: str = "v1", repo_id: str = "alice/merged", token: str | None = ALICE, **kw):
    return push_folder(folder=folder, repo_id=repo_id, tag=tag, token=token,
                       commit_message=f"lorareg: merged {tag}", card=f"---\ntags: [lorareg]\n---\n# {tag}\n", **kw)


def _local_bytes(folder: Path, tag: str) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    files["README.md"] = f"---\ntags: [lorareg]\n---\n# {tag}\n".encode()
    return files


def _assert_one_line(err: pytest.ExceptionInfo) -> HubError:
    e = err.value
    assert isinstance(e, HubError)
    assert e.message and "\n" not in e.message
    assert e.hint and "\n" not in e.hint
    assert ALICE not in e.message + e.hint and BOB not in e.message + e.hint
    return e


# -- hf:// references --------------------------------------------------------------------------
def test_parse_hub_uri():
    assert parse_hub_uri("hf://acme/llama-3.2_1B") == ("acme/llama-3.2_1B", None)
    assert parse_hub_uri("hf://acme/llama@v2") == ("acme/llama", "v2")
    assert parse_hub_uri("hf://acme/llama@refs%2Fpr%2F3") == ("acme/llama", "refs/pr/3")
    assert parse_hub_uri("hf://acme/llama@" + "a" * 40) == ("acme/llama", "a" * 40)
    assert is_hub_uri("hf://acme/llama") and not is_hub_uri("acme/llama") and not is_hub_uri("/tmp/acme")
    for bad in ("acme/llama", "hf://llama", "hf://a/b/c", "hf://acme/llama@", "hf://acme/bad--name",
                "hf:///llama", "hf://acme/llama@v 2"):
        with pytest.raises(HubError) as err:
            parse_hub_uri(bad)
        assert "hf://ORG/NAME" in err.value.hint


# -- push -----------------------------------------------------------------------------------------
def test_push_creates_repo_and_one_tagged_commit(hub, tmp_path):
    folder = _folder(tmp_path / "v1")
    result = _push(folder)

    repo = hub.repo("alice/merged")
    assert result.commit_sha == repo.tags["v1"] == repo.branches["main"]
    assert len(repo.commits) == 2  # the Hub's seed commit, then ours
    assert len(hub.requests("POST", "/commit/")) == 1
    files = hub.files_at("alice/merged", "v1")
    assert set(files) == {*_local_bytes(folder, "v1"), ".gitattributes"}
    for name, data in _local_bytes(folder, "v1").items():
        assert files[name] == data
    assert not result.noop and result.branch == "main" and result.tag == "v1"
    assert result.uploaded == tuple(sorted([*SHARDS, "README.md", "config.json"]))
    assert result.reused == () and result.deleted == ()
    assert result.url == f"{hub.url}/alice/merged/tree/v1" and result.endpoint == hub.url
    assert len(hub.requests("PUT")) == 3  # the shards went through LFS, the rest inline
    assert ALICE not in repr(result)


def test_repush_same_version_is_a_noop(hub, tmp_path):
    folder = _folder(tmp_path / "v1")
    first = _push(folder)
    before = len(hub.requests())
    again = _push(folder)

    assert again.noop and again.commit_sha == first.commit_sha
    assert again.uploaded == () and set(again.reused) == set(first.uploaded)
    made = hub.requests()[before:]
    assert not [r for r in made if r.method in ("PUT", "DELETE") or "/commit/" in r.path or "/tag/" in r.path]
    assert len(hub.repo("alice/merged").commits) == 2


def test_new_version_next_to_old_reuses_unchanged_files(hub, tmp_path):
    v1 = _folder(tmp_path / "v1", seed=1)
    v2 = _folder(tmp_path / "v2", seed=1)
    (v2 / SHARDS[0]).write_bytes(b"changed" * 100)
    first = _push(v1, tag="v1")
    puts_before = len(hub.requests("PUT"))
    second = _push(v2, tag="v2")

    assert second.commit_sha != first.commit_sha
    assert second.uploaded == ("README.md", SHARDS[0])
    assert second.reused == tuple(sorted(["config.json", *SHARDS[1:]]))
    assert len(hub.requests("PUT")) - puts_before == 1
    for tag, folder in (("v1", v1), ("v2", v2)):
        files = hub.files_at("alice/merged", tag)
        assert {n: files[n] for n in _local_bytes(folder, tag)} == _local_bytes(folder, tag)


def test_files_the_new_version_lacks_are_deleted(hub, tmp_path):
    v1 = _folder(tmp_path / "v1", extra={"model.safetensors.index.json": b"{}"})
    v2 = _folder(tmp_path / "v2")
    _push(v1, tag="v1")
    result = _push(v2, tag="v2")

    assert result.deleted == ("model.safetensors.index.json",)
    assert "model.safetensors.index.json" not in hub.files_at("alice/merged", "v2")
    assert "model.safetensors.index.json" in hub.files_at("alice/merged", "v1")
    assert ".gitattributes" in hub.files_at("alice/merged", "v2")


def test_push_to_a_new_branch_leaves_main_alone(hub, tmp_path):
    _push(_folder(tmp_path / "v1"), tag="v1")
    main = hub.repo("alice/merged").branches["main"]
    result = _push(_folder(tmp_path / "v2", seed=2), tag="v2", branch="release")

    repo = hub.repo("alice/merged")
    assert repo.branches["main"] == main
    assert repo.branches["release"] == repo.tags["v2"] == result.commit_sha
    assert result.branch == "release"


def test_private_repo_is_private(hub, tmp_path):
    _push(_folder(tmp_path / "v1"), private=True)
    assert hub.repo("alice/merged").private
    with pytest.raises(HubError) as err:
        download(repo_id="alice/merged", revision="v1", cache_dir=tmp_path / "anon")
    assert "not found" in _assert_one_line(err).message
    snap = download(repo_id="alice/merged", revision="v1", token=ALICE, cache_dir=tmp_path / "owner")
    assert (snap.path / SHARDS[0]).is_file()


def test_interrupted_lfs_upload_then_rerun_completes(hub, tmp_path):
    folder = _folder(tmp_path / "v1")
    hub.fail("lfs_put", skip=1, status=507)  # 507: a status the client does not retry by itself
    with pytest.raises(HubError) as err:
        _push(folder)
    assert "507" in _assert_one_line(err).message
    repo = hub.repo("alice/merged")
    assert "v1" not in repo.tags and len(repo.commits) == 1  # nothing reported, nothing committed
    stored = set(repo.lfs_oids)
    assert 1 <= len(stored) < len(SHARDS)

    puts_before = len(hub.requests("PUT"))
    result = _push(folder)
    already = {n for n in SHARDS if hashlib.sha256((folder / n).read_bytes()).hexdigest() in stored}
    assert len(hub.requests("PUT")) - puts_before == len(SHARDS) - len(already)
    assert already <= set(result.reused) and not already & set(result.uploaded)
    assert hub.repo("alice/merged").tags["v1"] == result.commit_sha
    files = hub.files_at("alice/merged", "v1")
    assert all(files[n] == d for n, d in _local_bytes(folder, "v1").items())


def test_failed_commit_then_rerun_reuses_every_upload(hub, tmp_path):
    folder = _folder(tmp_path / "v1")
    hub.fail("commit", status=500)
    with pytest.raises(HubError) as err:
        _push(folder)
    _assert_one_line(err)
    assert "v1" not in hub.repo("alice/merged").tags and len(hub.repo("alice/merged").commits) == 1

    puts_before = len(hub.requests("PUT"))
    result = _push(folder)
    assert len(hub.requests("PUT")) == puts_before  # every shard was already on the Hub
    assert set(SHARDS) <= set(result.reused)
    assert set(result.uploaded) == {"README.md", "config.json"}  # small files travel inside the commit
    assert hub.repo("alice/merged").tags["v1"] == result.commit_sha


def test_failed_tag_then_rerun_tags_the_existing_commit(hub, tmp_path):
    folder = _folder(tmp_path / "v1")
    hub.fail("create_tag", status=500)
    with pytest.raises(HubError) as err:
        _push(folder)
    e = _assert_one_line(err)
    head = hub.repo("alice/merged").branches["main"]
    assert head[:12] in e.message and "rerun" in e.hint

    result = _push(folder)
    assert result.commit_sha == head == hub.repo("alice/merged").tags["v1"]
    assert len(hub.repo("alice/merged").commits) == 2 and not result.noop


# -- errors ---------------------------------------------------------------------------------------
def test_push_without_token(hub, tmp_path):
    with pytest.raises(HubError) as err:
        _push(_folder(tmp_path / "v1"), token=None)
    e = _assert_one_line(err)
    assert e.message == "no Hugging Face token" and "HF_TOKEN" in e.hint
    assert hub.requests() == []


def test_push_uses_hf_token_from_the_environment(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ALICE)
    result = _push(_folder(tmp_path / "v1"), token=None)
    assert hub.repo("alice/merged").tags["v1"] == result.commit_sha
    assert ALICE not in repr(result)
    assert ALICE.encode() not in b"".join(hub.files_at("alice/merged", "v1").values())


def test_push_with_a_bad_token(hub, tmp_path):
    with pytest.raises(HubError) as err:
        _push(_folder(tmp_path / "v1"), token="hf_not_a_real_token_000000000000")
    e = _assert_one_line(err)
    assert "401" in e.message and "HF_TOKEN" in e.hint
    assert "hf_not_a_real_token" not in e.message + e.hint
    assert hub.state.repos == {}


def test_push_into_someone_elses_namespace(hub, tmp_path):
    _push(_folder(tmp_path / "bob"), repo_id="bob/model", token=BOB)
    commits = dict(hub.repo("bob/model").commits)
    for repo_id in ("bob/model", "bob/new-model"):  # an existing repo of bob's, and a new name
        with pytest.raises(HubError) as err:
            _push(_folder(tmp_path / repo_id.replace("/", "_"), seed=5), repo_id=repo_id, tag="v9")
        e = _assert_one_line(err)
        assert "403" in e.message and "--repo" in e.hint
    assert hub.repo("bob/model").commits == commits and "v9" not in hub.repo("bob/model").tags
    assert "bob/new-model" not in hub.state.repos


def test_tag_already_pointing_at_other_content(hub, tmp_path):
    first = _push(_folder(tmp_path / "v1"))
    with pytest.raises(HubError) as err:
        _push(_folder(tmp_path / "other", seed=9), tag="v1")
    e = _assert_one_line(err)
    assert e.message == "tag v1 on alice/merged already points at other content" and "--tag" in e.hint
    repo = hub.repo("alice/merged")
    assert repo.tags["v1"] == repo.branches["main"] == first.commit_sha and len(repo.commits) == 2


def test_server_down(hub, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(HubError) as err:
        _push(_folder(tmp_path / "v1"), endpoint=dead)
    e = _assert_one_line(err)
    assert "cannot reach the Hub" in e.message and dead in e.message
    with pytest.raises(HubError) as err:
        download(repo_id="alice/merged", revision="v1", endpoint=dead, cache_dir=tmp_path / "cache")
    assert "cannot reach the Hub" in _assert_one_line(err).message


def test_card_holding_the_token_is_refused(hub, tmp_path):
    with pytest.raises(HubError) as err:
        push_folder(folder=_folder(tmp_path / "v1"), repo_id="alice/merged", tag="v1", token=ALICE,
                    commit_message="m", card=f"oops {ALICE}")
    _assert_one_line(err)
    assert hub.requests() == []


def test_bad_arguments(hub, tmp_path):
    folder = _folder(tmp_path / "v1")
    for kw in ({"repo_id": "not-a-repo"}, {"tag": "a b"}, {"tag": "a" * 40}, {"branch": "x..y"}):
        args = {"repo_id": "alice/merged", "tag": "v1", **kw}
        with pytest.raises(HubError) as err:
            push_folder(folder=folder, token=ALICE, commit_message="m", **args)
        _assert_one_line(err)
    with pytest.raises(NotFoundError):
        push_folder(folder=tmp_path / "missing", repo_id="alice/merged", tag="v1", token=ALICE, commit_message="m")
    assert hub.requests() == []


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
