from __future__ import annotations

import stat
import sys

import pytest

from lorareg.store.atomic import atomic_write_bytes, exchange_paths, fsync_dir


def test_atomic_write_bytes_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "config.json"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["config.json"]
    fsync_dir(target.parent)
    fsync_dir(tmp_path / "missing")  # best effort, never raises


@pytest.mark.skipif(sys.platform != "linux", reason="renameat2 is Linux only; other platforms fall back")
def test_exchange_paths_swaps_a_folder_and_a_file(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "inside").write_text("dir")
    b.write_text("file")
    assert exchange_paths(a, b) is True
    assert (b / "inside").read_text() == "dir"
    assert a.read_text() == "file"
    with pytest.raises(FileNotFoundError):
        exchange_paths(tmp_path / "nope", b)
