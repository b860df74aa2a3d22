"""Content-addressed blob store: ``root/sha256/ab/cdef...``, read-only files.

Bytes only enter by write-to-temp (``root/tmp/*.incomplete``), hash, fsync, rename, so a
crash leaves at worst a temp file, never a blob whose name does not match its bytes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lorareg.errors import IntegrityError, InvalidDigestError, LoraregError, NotFoundError
from lorareg.store.atomic import INCOMPLETE_SUFFIX, fsync_dir
from lorareg.store.digest import CHUNK_SIZE, file_sha256
from lorareg.store.scratch import run_folder, sweep

LEGACY_TEMP_AGE_S = 3600

__all__ = ["BlobStore", "BlobWriter", "GcReport", "StoredBlob", "normalize_sha256"]

Progress = Callable[[int], None]
BLOB_MODE = 0o444
_HEX = re.compile(r"[0-9a-f]{64}")


def normalize_sha256(value: str) -> str:
    """``"sha256:ABC..."`` or ``"abc..."`` -> 64 lower-case hex characters."""
    hexdigest = value.removeprefix("sha256:").lower() if isinstance(value, str) else ""
    if not _HEX.fullmatch(hexdigest):
        raise InvalidDigestError(f"not a sha256 digest: {value!r}")
    return hexdigest


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    size: int
    path: Path


@dataclass(frozen=True)
class GcReport:
    removed: tuple[str, ...]
    bytes_freed: int
    temp_files_removed: int


class BlobWriter:
    """Hashes what is written; the store commits it when the ``with`` block ends cleanly."""

    def __init__(self, fileobj: BinaryIO, temp_path: Path) -> None:
        self._file = fileobj
        self.temp_path = temp_path
        self._hash = hashlib.sha256()
        self.size = 0
        self._result: StoredBlob | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.hash_part(data)
        return self.write_part(data)

    # ``write`` in two halves, so a caller can hash one chunk in another thread while this one
    # writes it (``checkpoint_digest(sink=)``): each half must see the chunks in the same order.
    def hash_part(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)

    def write_part(self, data: bytes | bytearray | memoryview) -> int:
        written = self._file.write(data)
        self.size += memoryview(data).nbytes
        return written

    def copy_from(self, source: BinaryIO, *, progress: Progress | None = None) -> int:
        """Write everything ``source`` yields; returns the byte count.

        Hashing runs in a second thread on one buffer while this thread writes it and reads
        the next into the other buffer (hashlib releases the GIL), so a copy costs about
        max(hash, I/O) rather than their sum.
        """
        buffers = [bytearray(CHUNK_SIZE), bytearray(CHUNK_SIZE)]
        total, turn = 0, 0
        pending: Future[None] | None = None
        with ThreadPoolExecutor(max_workers=1) as pool:
            while True:
                view = memoryview(buffers[turn])
                turn ^= 1
                n = source.readinto(view)  # type: ignore[attr-defined]
                if not n:
                    break
                chunk = view[:n]
                if pending is not None:
                    pending.result()  # keeps hash order, and frees the buffer we read into next
                pending = pool.submit(self._hash.update, chunk)
                self._file.write(chunk)
                self.size += n
                total += n
                if progress is not None:
                    progress(n)
            if pending is not None:
                pending.result()
        return total

    @property
    def result(self) -> StoredBlob:
        if self._result is None:
            raise LoraregError("blob not committed yet", hint="read .result after the with-block ends")
        return self._result


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.objects = self.root / "sha256"
        self.tmp = self.root / "tmp"
        # Called with a blob's hex before the store relies on it (before it appears under its
        # name, or before an existing copy is reused): the registry records the blob as pending
        # under the writer's lease (registry/leases.py), so a gc never removes it in between.
        self.claim: Callable[[str], None] | None = None

    def close(self) -> None:
        """End of a command: nothing to finish for a folder (an object store prunes its cache)."""

    def begin_upload(self, path: Path, sha256_hex: str) -> None:
        """An object store starts uploading a file that will be stored under this digest;
        a folder store has nothing to do until ``put_file``."""

    def _claim(self, hexdigest: str) -> None:
        if self.claim is not None:
            self.claim(hexdigest)

    def flush(self) -> None:
        """Wait until every blob put so far is durable where readers look for it (a no-op
        here: the rename is the commit; an object store waits for its uploads)."""

    def __repr__(self) -> str:
        return f"BlobStore({str(self.root)!r})"

    # -- lookup -----------------------------------------------------------------------
    def path_for(self, sha256_hex: str) -> Path:
        hexdigest = normalize_sha256(sha256_hex)
        return self.objects / hexdigest[:2] / hexdigest[2:]

    def has(self, sha256_hex: str) -> bool:
        return self.path_for(sha256_hex).is_file()

    def open(self, sha256_hex: str) -> BinaryIO:
        path = self.path_for(sha256_hex)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise NotFoundError(
                f"blob {normalize_sha256(sha256_hex)} is not in the store",
                hint="rebuild the version that needs it (lorareg rebuild REF) or run: lorareg verify --all",
            ) from None

    def ensure_local(self, sha256_hex: str, *, progress: Progress | None = None) -> Path:
        """The blob's path on this machine (an object store fetches it into its cache first)."""
        path = self.path_for(sha256_hex)
        if not path.is_file():
            raise NotFoundError(
                f"blob {normalize_sha256(sha256_hex)} is not in the store",
                hint="rebuild the version that needs it (lorareg rebuild REF) or run: lorareg verify --all",
            )
        return path

    def iter_blobs(self) -> Iterator[tuple[str, int]]:
        """(hex, size) of every well-formed blob, in hex order."""
        for path in self._iter_object_files():
            hexdigest = path.parent.name + path.name
            if _HEX.fullmatch(hexdigest):
                yield hexdigest, path.stat().st_size

    def size_of(self, hexes: Iterable[str]) -> int:
        """Bytes used by the given blobs, each counted once; absent ones count 0."""
        total = 0
        for hexdigest in {normalize_sha256(h) for h in hexes}:
            try:
                total += self.path_for(hexdigest).stat().st_size
            except FileNotFoundError:
                pass  # evicted (e.g. a recipe-only merge): it uses no space
        return total

    # -- writing ----------------------------------------------------------------------
    def _temp_file(self) -> tuple[int, Path]:
        # In this process's run folder: a crashed writer's temp files are swept by the next run.
        fd, name = tempfile.mkstemp(dir=run_folder(self.tmp), suffix=INCOMPLETE_SUFFIX)
        return fd, Path(name)

    def _existing(self, hexdigest: str, size: int) -> StoredBlob | None:
        final = self.path_for(hexdigest)
        try:
            if final.stat().st_size == size:
                return StoredBlob(sha256=hexdigest, size=size, path=final)
        except FileNotFoundError:
            pass
        return None  # absent, or of the wrong size (corrupt): the verified bytes replace it

    def _commit(self, temp_path: Path, hexdigest: str, size: int) -> StoredBlob:
        """Rename a fully written, fsynced file into place, unless the blob is already there."""
        self._claim(hexdigest)
        existing = self._existing(hexdigest, size)
        if existing is not None:
            temp_path.unlink(missing_ok=True)
            return existing
        final = self.path_for(hexdigest)
        if not final.parent.is_dir():
            final.parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(final.parent.parent)
        os.chmod(temp_path, BLOB_MODE)
        os.replace(temp_path, final)
        fsync_dir(final.parent)
        return StoredBlob(sha256=hexdigest, size=size, path=final)

    @contextmanager
    def writer(self) -> Iterator[BlobWriter]:
        """``with store.writer() as w: w.write(chunk)``; then ``w.result`` is the blob."""
        fd, temp_path = self._temp_file()
        fileobj = os.fdopen(fd, "wb")
        w = BlobWriter(fileobj, temp_path)
        try:
            yield w
            fileobj.flush()
            hexdigest = w._hash.hexdigest()
            if self._existing(hexdigest, w.size) is None:
                os.fsync(fileobj.fileno())  # skipped for duplicates: their bytes are thrown away
            fileobj.close()
            w._result = self._commit(temp_path, hexdigest, w.size)
        except BaseException:
            fileobj.close()
            temp_path.unlink(missing_ok=True)
            raise

    def put_bytes(self, data: bytes) -> StoredBlob:
        hexdigest = hashlib.sha256(data).hexdigest()
        self._claim(hexdigest)
        existing = self._existing(hexdigest, len(data))
        if existing is not None:
            return existing
        with self.writer() as w:
            w.write(data)
        return w.result

    def put_file(
        self,
        src: Path,
        *,
        expected_sha256: str | None = None,
        move: bool = False,
        progress: Progress | None = None,
    ) -> StoredBlob:
        """Store ``src``'s bytes.  ``move=True`` consumes ``src`` (a file we produced):
        renamed into place when on the same device, trusting ``expected_sha256``."""
        src = Path(src)
        expected = normalize_sha256(expected_sha256) if expected_sha256 is not None else None
        try:
            src_stat = src.stat()
        except FileNotFoundError:
            raise NotFoundError(f"{src}: no such file", hint="check the path") from None
        if not stat.S_ISREG(src_stat.st_mode):
            raise LoraregError(f"{src}: not a regular file", hint="pass a file, not a folder")

        if move and expected is None:
            expected = file_sha256(src, progress=progress)  # no copy, so one read is all it costs
            progress = None
        if expected is not None:
            self._claim(expected)
            existing = self.path_for(expected)
            existing_size = existing.stat().st_size if existing.is_file() else None
            if existing_size == src_stat.st_size:
                if not move:
                    self._check_hash(src, expected, progress)
                else:
                    src.unlink()
                return StoredBlob(sha256=expected, size=src_stat.st_size, path=existing)
            # A link (or a file with other hard links) would let someone else change the blob.
            # A stored blob of another size is corrupt or `expected` is wrong: copy and check.
            if move and existing_size is None and not src.is_symlink() and src_stat.st_nlink == 1:
                blob = self._move_into_place(src, expected, src_stat.st_size)
                if blob is not None:
                    return blob
        blob = self._copy_in(src, expected, progress)
        if move:
            src.unlink()
        return blob

    def _check_hash(self, src: Path, expected: str, progress: Progress | None) -> None:
        actual = file_sha256(src, progress=progress)
        if actual != expected:
            raise IntegrityError(
                f"{src}: sha256 is {actual}, expected {expected}",
                hint="the file changed or is corrupt; re-create or re-download it",
            )

    def _move_into_place(self, src: Path, hexdigest: str, size: int) -> StoredBlob | None:
        """Rename ``src`` to its blob path; None when ``src`` is on another device."""
        final = self.path_for(hexdigest)
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as f:
            os.fsync(f.fileno())  # the producer may not have; the rename must not outrun the data
        os.chmod(src, BLOB_MODE)
        try:
            os.replace(src, final)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            os.chmod(src, 0o644)
            return None
        moved_size = final.stat().st_size
        if moved_size != size:  # someone was still writing the file: never keep a blob that may be partial
            self._unlink_blob(final)
            raise IntegrityError(
                f"{src}: {moved_size} bytes after the move, {size} before",
                hint="finish writing the file before storing it",
            )
        fsync_dir(final.parent)
        return StoredBlob(sha256=hexdigest, size=size, path=final)

    def _copy_in(self, src: Path, expected: str | None, progress: Progress | None) -> StoredBlob:
        with open(src, "rb", buffering=0) as f, self.writer() as w:
            w.copy_from(f, progress=progress)
            actual = w._hash.hexdigest()
            if expected is not None and actual != expected:
                raise IntegrityError(  # raised inside the with-block, so the temp file goes
                    f"{src}: sha256 is {actual}, expected {expected}",
                    hint="the file changed or is corrupt; re-create or re-download it",
                )
        return w.result

    # -- checking and cleaning --------------------------------------------------------
    def verify(self, sha256_hex: str) -> None:
        """Re-hash one blob; IntegrityError if its bytes no longer match its name."""
        hexdigest = normalize_sha256(sha256_hex)
        if not self.has(hexdigest):
            raise NotFoundError(f"blob {hexdigest} is not in the store", hint="run: lorareg verify --all")
        actual = file_sha256(self.path_for(hexdigest))
        if actual != hexdigest:
            raise IntegrityError(f"blob {hexdigest} is corrupt: its bytes hash to {actual}")

    def verify_all(self, *, progress: Progress | None = None) -> list[str]:
        """Names (``ab`` + rest) of blobs that are corrupt or not named like a sha256."""
        bad: list[str] = []
        for path in self._iter_object_files():
            name = path.parent.name + path.name
            if not _HEX.fullmatch(name) or file_sha256(path, progress=progress) != name:
                bad.append(name)
        return bad

    def gc(self, referenced: set[str], *, dry_run: bool = False,
           listed: list[tuple[str, int]] | None = None) -> GcReport:
        """Remove blobs not in ``referenced`` (of ``listed``, a listing taken earlier, when given)
        and the temp files of writers that are gone."""
        keep = {normalize_sha256(h) for h in referenced}
        removed: list[str] = []
        freed = 0
        for hexdigest, size in list(self.iter_blobs()) if listed is None else listed:
            if hexdigest in keep:
                continue
            removed.append(hexdigest)
            freed += size
            if not dry_run:
                self._unlink_blob(self.path_for(hexdigest))
        temps = self._stale_temp_files(LEGACY_TEMP_AGE_S)
        if dry_run:
            return GcReport(removed=tuple(removed), bytes_freed=freed, temp_files_removed=len(temps))
        for path in temps:
            path.unlink(missing_ok=True)
        swept = sweep(self.tmp)
        return GcReport(removed=tuple(removed), bytes_freed=freed, temp_files_removed=len(temps) + swept)

    def clean_temp(self) -> int:
        """Remove what crashed writers left: their run folders (at once: their lock is free)
        and loose ``*.incomplete`` files of older lorareg versions; returns how many."""
        temps = self._stale_temp_files(LEGACY_TEMP_AGE_S)
        for path in temps:
            path.unlink(missing_ok=True)
        return len(temps) + sweep(self.tmp)

    def _stale_temp_files(self, max_age_s: float) -> list[Path]:
        """Loose temp files directly in tmp/: written by lorareg before run folders, whose
        writer cannot be told alive or dead, so only old ones go."""
        if not self.tmp.is_dir():
            return []
        cutoff = time.time() - max_age_s
        stale = []
        for path in sorted(self.tmp.glob("*" + INCOMPLETE_SUFFIX)):
            try:
                if path.stat().st_mtime <= cutoff:
                    stale.append(path)
            except FileNotFoundError:
                pass  # its writer committed or cleaned it meanwhile
        return stale

    def _unlink_blob(self, path: Path) -> None:
        try:
            os.chmod(path, 0o644)  # Windows refuses to delete read-only files
            path.unlink()
        except FileNotFoundError:
            return
        try:
            path.parent.rmdir()  # tidy empty "ab/" folders; fails harmlessly when not empty
        except OSError:
            pass

    def _iter_object_files(self) -> Iterator[Path]:
        if not self.objects.is_dir():
            return
        for prefix in sorted(self.objects.iterdir()):
            if prefix.is_dir():
                for path in sorted(prefix.iterdir()):
                    if path.is_file():
                        yield path
