from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import lorareg.store.snapshot as snapshot_mod
from lorareg.errors import CheckpointError, NotFoundError
from lorareg.store import BlobStore, checkpoint_digest, link_snapshot
from lorareg.store.snapshot import read_snapshot, remove_snapshot


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def blobs(home) -> BlobStore:
    return BlobStore(home / "blobs")


def _put(blobs: BlobStore, files: dict[str, bytes]) -> dict[str, str]:
    return {name: blobs.put_bytes(data).sha256 for name, data in files.items()}


def _siblings(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir() if p.name != dest.name)


def test_links_are_relative_and_nested(blobs, home):
    files = _put(blobs, {"config.json": b"{}", "sub/deep/vocab.txt": b"a\nb\n"})
    dest = link_snapshot(blobs, home / "versions" / "m" / "1", files)
    assert dest == home / "versions" / "m" / "1"
    assert (dest / "config.json").read_bytes() == b"{}"
    assert (dest / "sub" / "deep" / "vocab.txt").read_bytes() == b"a\nb\n"
    for name, hexdigest in files.items():
        link = dest / name
        assert link.is_symlink()
        target = os.readlink(link)
        assert not os.path.isabs(target)
        assert (link.parent / target).resolve() == blobs.path_for(hexdigest).resolve()
    assert set(read_snapshot(dest)) == set(files)
    assert _siblings(dest) == []


def test_identical_snapshot_is_left_alone(blobs, home):
    files = _put(blobs, {"a.txt": b"a"})
    dest = link_snapshot(blobs, home / "v", files)
    before = (dest.stat().st_ino, (dest / "a.txt").lstat().st_ino)
    link_snapshot(blobs, dest, files)
    assert (dest.stat().st_ino, (dest / "a.txt").lstat().st_ino) == before


@pytest.mark.parametrize("atomic_exchange", [True, False])
def test_different_content_is_replaced(blobs, home, monkeypatch, atomic_exchange):
    calls: list[bool] = []
    real = snapshot_mod.exchange_paths

    def exchange(a, b):
        calls.append(real(a, b) if atomic_exchange else False)
        return calls[-1]

    monkeypatch.setattr(snapshot_mod, "exchange_paths", exchange)
    dest = link_snapshot(blobs, home / "v", _put(blobs, {"a.txt": b"old", "gone.txt": b"x"}))
    link_snapshot(blobs, dest, _put(blobs, {"a.txt": b"new", "b/c.txt": b"c"}))
    assert (dest / "a.txt").read_bytes() == b"new"
    assert (dest / "b" / "c.txt").read_bytes() == b"c"
    assert not (dest / "gone.txt").exists()
    assert _siblings(dest) == ["blobs"]  # no temp or old folders left beside it
    assert calls == [atomic_exchange and sys.platform == "linux"]


def test_a_file_in_the_way_is_replaced(blobs, home):
    home.mkdir(parents=True)
    (home / "v").write_text("stray")
    dest = link_snapshot(blobs, home / "v", _put(blobs, {"a.txt": b"a"}))
    assert (dest / "a.txt").read_bytes() == b"a"


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../escape", "a/../../b", "", "a//b", "./a", "a/.", "a\\b"]
)
def test_refuses_unsafe_names(blobs, home, name):
    hexdigest = blobs.put_bytes(b"x").sha256
    with pytest.raises(CheckpointError, match="refusing snapshot file name"):
        link_snapshot(blobs, home / "v", {name: hexdigest})
    assert not (home / "v").exists()


def test_refuses_file_and_folder_with_one_name(blobs, home):
    hexdigest = blobs.put_bytes(b"x").sha256
    with pytest.raises(CheckpointError, match="both as a file and as a folder"):
        link_snapshot(blobs, home / "v", {"a": hexdigest, "a/b/c": hexdigest})


def test_missing_blob_builds_nothing(blobs, home):
    with pytest.raises(NotFoundError, match="'model.safetensors' needs blob"):
        link_snapshot(blobs, home / "v", {"model.safetensors": "f" * 64})
    assert not (home / "v").exists()


def test_remove_snapshot_keeps_blobs(blobs, home):
    files = _put(blobs, {"a.txt": b"a", "s/b.txt": b"b"})
    dest = link_snapshot(blobs, home / "v", files)
    remove_snapshot(dest)
    assert not dest.exists()
    assert all(blobs.has(h) for h in files.values())
    assert _siblings(dest) == ["blobs"]
    remove_snapshot(dest)  # already gone: fine


def test_remove_snapshot_refuses_real_folders(tmp_path):
    real = tmp_path / "my-model"
    real.mkdir()
    (real / "weights.bin").write_bytes(b"mine")
    with pytest.raises(CheckpointError, match="not a snapshot folder"):
        remove_snapshot(real)
    assert (real / "weights.bin").read_bytes() == b"mine"


def test_moving_home_keeps_links_working(blobs, home, tmp_path):
    dest = link_snapshot(blobs, home / "versions" / "v1", _put(blobs, {"sub/a.txt": b"a"}))
    moved = tmp_path / "moved-home"
    home.rename(moved)
    assert (moved / dest.relative_to(home) / "sub" / "a.txt").read_bytes() == b"a"


def test_from_pretrained_loads_a_linked_model(blobs, home, tmp_path):
    import torch
    from transformers import AutoModel, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=99)
    original = BertModel(config).eval()
    src = tmp_path / "saved"
    original.save_pretrained(src)

    digest = checkpoint_digest(src)
    files = {name: blobs.put_file(src / name, expected_sha256=fd.sha256).sha256 for name, fd in digest.files.items()}
    dest = link_snapshot(blobs, home / "versions" / "bert" / "1", files)

    loaded = AutoModel.from_pretrained(dest).eval()
    assert type(loaded).__name__ == "BertModel"
    want, got = original.state_dict(), loaded.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(want[k], got[k]) for k in want)
    ids = torch.tensor([[1, 5, 7, 2]])
    with torch.no_grad():
        assert torch.equal(original(ids).last_hidden_state, loaded(ids).last_hidden_state)
    assert checkpoint_digest(dest).digest == digest.digest  # links are followed when digesting
