"""Pushing with the Hub layer against a local Hub look-alike and the unmodified huggingface_hub
client: commits, tags, reuse, resume, errors (downloads: test_hub_download.py)."""

from __future__ import annotations

import hashlib
import socket

import pytest

from lorareg.errors import HubError, NotFoundError
from lorareg.registry.hub_client import download, is_hub_uri, parse_hub_uri, push_folder

from tests.support.hub_helpers import SHARDS
from tests.support.hub_helpers import assert_one_line as _assert_one_line
from tests.support.hub_helpers import checkpoint_folder as _folder
from tests.support.hub_helpers import local_bytes as _local_bytes
from tests.support.hub_helpers import push as _push
from tests.support.hub_state import ALICE, BOB

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
