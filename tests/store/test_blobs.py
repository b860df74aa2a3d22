from __future__ import annotations

import errno
import hashlib
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lorareg.errors import IntegrityError, InvalidDigestError, LoraregError, NotFoundError
from lorareg.store.blobs import BlobStore, GcReport, StoredBlob


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def _temp_files(store: BlobStore) -> list[Path]:
    """Temp files of every writer (each process writes in its own run folder under tmp/)."""
    return sorted(store.tmp.rglob("*.incomplete")) if store.tmp.is_dir() else []


def test_layout_and_read_only_blobs(store):
    blob = store.put_bytes(b"hello")
    h = sha(b"hello")
    assert blob == StoredBlob(sha256=h, size=5, path=store.root / "sha256" / h[:2] / h[2:])
    assert store.path_for(h) == blob.path == store.path_for("sha256:" + h.upper())
    assert stat.S_IMODE(blob.path.stat().st_mode) == 0o444
    assert store.has(h) and not store.has("0" * 64)
    with store.open(h) as f:
        assert f.read() == b"hello"
    assert _temp_files(store) == []


def test_bad_digests_and_missing_blobs(store):
    for bad in ("abc", "sha256:" + "g" * 64, "md5:" + "a" * 64, "a" * 65):
        with pytest.raises(InvalidDigestError):
            store.path_for(bad)
    with pytest.raises(NotFoundError, match="is not in the store"):
        store.open("a" * 64)
    with pytest.raises(NotFoundError):
        store.verify("a" * 64)


def test_put_file_copies_and_dedupes(store, tmp_path):
    src = tmp_path / "src.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(data)
    seen: list[int] = []
    blob = store.put_file(src, progress=seen.append)
    assert blob.sha256 == sha(data) and blob.size == len(data)
    assert blob.path.read_bytes() == data
    assert src.read_bytes() == data  # a copy: the source stays
    assert sum(seen) == len(data)

    before = blob.path.stat()
    again = store.put_file(src)
    also = store.put_file(src, expected_sha256=sha(data))
    after = blob.path.stat()
    assert again == also == blob
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    assert _temp_files(store) == []
    assert list(store.iter_blobs()) == [(sha(data), len(data))]


def test_put_file_wrong_expected_stores_nothing(store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    with pytest.raises(IntegrityError, match="expected " + "b" * 64):
        store.put_file(src, expected_sha256="b" * 64)
    assert list(store.iter_blobs()) == []
    assert _temp_files(store) == []
    # Same size as a stored blob but other bytes: still caught, the stored blob untouched.
    good = store.put_bytes(b"payloaX")
    with pytest.raises(IntegrityError):
        store.put_file(src, expected_sha256=good.sha256)
    assert good.path.read_bytes() == b"payloaX"


def test_put_file_move_renames_on_same_device(store, tmp_path):
    src = tmp_path / "merged.safetensors"
    src.write_bytes(b"merged weights")
    inode = src.stat().st_ino
    blob = store.put_file(src, expected_sha256=sha(b"merged weights"), move=True)
    assert not src.exists()
    assert blob.path.stat().st_ino == inode  # renamed, not copied
    assert stat.S_IMODE(blob.path.stat().st_mode) == 0o444
    assert blob.size == 14

    # Moving content that is already stored just consumes the source.
    src.write_bytes(b"merged weights")
    assert store.put_file(src, expected_sha256=blob.sha256, move=True) == blob
    assert not src.exists()
    assert blob.path.stat().st_ino == inode


def test_put_file_move_without_expected_hashes_first(store, tmp_path):
    src = tmp_path / "out.bin"
    src.write_bytes(b"abc")
    blob = store.put_file(src, move=True)
    assert blob.sha256 == sha(b"abc") and not src.exists()


def test_put_file_move_falls_back_to_copy_across_devices(store, tmp_path, monkeypatch):
    src = tmp_path / "out.bin"
    src.write_bytes(b"cross device")
    real_replace = os.replace

    def replace(a, b):
        if Path(a) == src:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    blob = store.put_file(src, expected_sha256=sha(b"cross device"), move=True)
    assert blob.path.read_bytes() == b"cross device"
    assert not src.exists()
    # The copy path verifies: a wrong expected hash is caught and the source is kept.
    src.write_bytes(b"cross device 2")
    with pytest.raises(IntegrityError):
        store.put_file(src, expected_sha256="c" * 64, move=True)
    assert src.exists() and not store.has("c" * 64)


def test_put_file_move_copies_hard_linked_sources(store, tmp_path):
    src = tmp_path / "out.bin"
    src.write_bytes(b"shared inode")
    other = tmp_path / "other-name.bin"
    os.link(src, other)
    blob = store.put_file(src, expected_sha256=sha(b"shared inode"), move=True)
    assert not src.exists()
    assert blob.path.stat().st_ino != other.stat().st_ino  # writing `other` cannot change the blob


def test_move_trusts_expected_but_verify_catches_a_lie(store, tmp_path):
    src = tmp_path / "out.bin"
    src.write_bytes(b"actual bytes")
    liar = "d" * 64
    store.put_file(src, expected_sha256=liar, move=True)
    with pytest.raises(IntegrityError, match=f"blob {liar} is corrupt"):
        store.verify(liar)
    assert store.verify_all() == [liar]


def test_writer_commits_on_clean_exit(store):
    with store.writer() as w:
        w.write(b"part one, ")
        w.write(memoryview(b"part two"))
        with pytest.raises(LoraregError, match="not committed"):
            w.result
    assert w.result.sha256 == sha(b"part one, part two")
    assert w.result.path.read_bytes() == b"part one, part two"
    assert w.result.size == 18
    assert _temp_files(store) == []


def test_writer_exception_leaves_no_blob_and_no_temp(store):
    with pytest.raises(RuntimeError, match="boom"):
        with store.writer() as w:
            w.write(b"half of it")
            assert w.temp_path.exists() and w.temp_path.name.endswith(".incomplete")
            raise RuntimeError("boom")
    assert list(store.iter_blobs()) == []
    assert _temp_files(store) == []


def test_killed_writer_leaves_only_a_temp_file_that_clean_temp_removes(store):
    code = textwrap.dedent(
        f"""
        import os, signal
        from lorareg.store.blobs import BlobStore
        store = BlobStore({str(store.root)!r})
        with store.writer() as w:
            w.write(b"x" * 100000)
            w._file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    temps = _temp_files(store)
    assert len(temps) == 1 and temps[0].name.endswith(".incomplete")
    assert list(store.iter_blobs()) == []
    assert store.clean_temp() == 1  # its writer is dead (its run folder's lock is free): no age needed
    assert _temp_files(store) == [] and list(store.tmp.iterdir()) == []


def test_clean_temp_never_touches_a_live_writer(store):
    code = textwrap.dedent(
        f"""
        import sys, time
        from lorareg.store.blobs import BlobStore
        store = BlobStore({str(store.root)!r})
        with store.writer() as w:
            w.write(b"y" * 1000)
            w._file.flush()
            print("writing", flush=True)
            sys.stdin.readline()  # alive until told
            w.write(b"z")
        print(w.result.sha256, flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert store.clean_temp() == 0 and len(_temp_files(store)) == 1
        assert store.gc(set()).temp_files_removed == 0 and len(_temp_files(store)) == 1
        out, _ = proc.communicate("go\n", timeout=30)
    finally:
        proc.kill()
    assert store.has(out.strip()) and _temp_files(store) == []


def test_gc_removes_stale_loose_temp_files_of_older_versions_only(store):
    store.tmp.mkdir(parents=True)
    stale, fresh, other = (store.tmp / n for n in ("a.incomplete", "b.incomplete", "keep.txt"))
    for p in (stale, fresh, other):
        p.write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    assert store.gc(set(), dry_run=True) == GcReport(removed=(), bytes_freed=0, temp_files_removed=1)
    assert stale.exists()
    assert store.gc(set()).temp_files_removed == 1
    assert not stale.exists() and fresh.exists() and other.exists()


def test_gc_removes_unreferenced_blobs(store):
    keep = store.put_bytes(b"keep me")
    drop1 = store.put_bytes(b"drop me")
    drop2 = store.put_bytes(b"drop me too!")
    referenced = {"sha256:" + keep.sha256}

    dry = store.gc(referenced, dry_run=True)
    assert sorted(dry.removed) == sorted([drop1.sha256, drop2.sha256])
    assert dry.bytes_freed == 7 + 12
    assert drop1.path.exists() and drop2.path.exists()

    report = store.gc(referenced)
    assert report == dry
    assert not drop1.path.exists() and not drop2.path.exists()
    assert all(any(prefix.iterdir()) for prefix in store.objects.iterdir())  # no empty "ab/" folders left
    assert keep.path.read_bytes() == b"keep me"
    assert [h for h, _ in store.iter_blobs()] == [keep.sha256]
    assert store.gc(referenced) == GcReport(removed=(), bytes_freed=0, temp_files_removed=0)


def test_verify_detects_corruption_without_deleting(store):
    blob = store.put_bytes(b"precious")
    store.verify(blob.sha256)
    os.chmod(blob.path, 0o644)
    blob.path.write_bytes(b"Precious")
    with pytest.raises(IntegrityError, match=f"blob {blob.sha256} is corrupt") as info:
        store.verify(blob.sha256)
    assert info.value.hint
    assert blob.path.exists()

    misnamed = store.objects / "zz" / "not-a-digest"
    misnamed.parent.mkdir()
    misnamed.write_bytes(b"?")
    fine = store.put_bytes(b"fine")
    seen: list[int] = []
    assert sorted(store.verify_all(progress=seen.append)) == sorted([blob.sha256, "zznot-a-digest"])
    assert sum(seen) == len(b"Precious") + len(b"fine")
    assert fine.sha256 not in store.verify_all()


def test_put_replaces_a_truncated_blob(store):
    blob = store.put_bytes(b"complete bytes")
    os.chmod(blob.path, 0o644)
    blob.path.write_bytes(b"comp")
    again = store.put_bytes(b"complete bytes")
    assert again.path.read_bytes() == b"complete bytes"
    store.verify(again.sha256)


def test_iter_blobs_and_size_of(store):
    a, b = store.put_bytes(b"a" * 10), store.put_bytes(b"b" * 20)
    assert sorted(store.iter_blobs()) == sorted([(a.sha256, 10), (b.sha256, 20)])
    assert store.size_of([a.sha256, "sha256:" + a.sha256, b.sha256]) == 30
    assert store.size_of([a.sha256, "e" * 64]) == 10  # absent blobs use no space
    assert store.size_of([]) == 0
    assert list(BlobStore(store.root / "nowhere").iter_blobs()) == []


def test_put_file_refuses_missing_and_folders(store, tmp_path):
    with pytest.raises(NotFoundError, match="no such file"):
        store.put_file(tmp_path / "missing.bin")
    with pytest.raises(LoraregError, match="not a regular file"):
        store.put_file(tmp_path)


def test_move_onto_a_corrupt_blob_copies_and_checks(store, tmp_path):
    blob = store.put_bytes(b"good bytes")
    os.chmod(blob.path, 0o644)
    blob.path.write_bytes(b"good")  # truncated on disk
    src = tmp_path / "out.bin"
    src.write_bytes(b"good bytes")
    again = store.put_file(src, expected_sha256=blob.sha256, move=True)
    assert again.path.read_bytes() == b"good bytes"
    assert not src.exists()
    store.verify(blob.sha256)
