"""Reading a blob that only the object store holds: a seekable file of ranged requests, and
the one place that turns a dangling link into a cache (a version folder's weight file that
this machine never fetched) into such a file.

A merge reads its base through ``open_blob_file`` / ``blob_exists`` (merge/reader.py,
store/safetensors_header.py): a local file is opened as usual; a link into the cache of an
open ``RemoteBlobStore`` whose blob is not there is read from the bucket, tensor by tensor,
with no local copy."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from lorareg.store.objects import READ_PART

if TYPE_CHECKING:
    from lorareg.store.objects import ObjectStore
    from lorareg.store.remote_blobs import RemoteBlobStore

__all__ = ["RangedFile", "blob_exists", "open_blob_file", "register_cache"]

# Open remote stores by the real path of their cache's objects folder.
_BY_CACHE: dict[str, "RemoteBlobStore"] = {}


def register_cache(objects_folder: Path, store: "RemoteBlobStore") -> None:
    _BY_CACHE[os.path.realpath(objects_folder)] = store


class RangedFile:
    """A read-only, seekable file over one object, read with ranged requests.

    Readers here go through a file in order (a merge reads its base tensor by tensor), so
    after each read the next READ_AHEAD parts are fetched in the background while the caller
    computes: the object store's latency overlaps the arithmetic, as the kernel's read-ahead
    does for a local file.  What a read finds prefetched is copied; the rest is fetched in
    parallel parts straight into the caller's buffer.  Memory: READ_AHEAD x READ_PART."""

    READ_AHEAD = 4

    def __init__(self, objects: "ObjectStore", pool: ThreadPoolExecutor, hexdigest: str, size: int) -> None:
        self._objects, self._pool, self._hex, self.size, self._pos = objects, pool, hexdigest, size, 0
        self.name = f"{objects.url}/{objects.key(hexdigest)}"
        self._ahead: dict[int, Future[bytearray]] = {}  # part index -> its bytes

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def _fetch(self, index: int) -> bytearray:
        start = index * READ_PART
        buf = bytearray(min(READ_PART, self.size - start))
        self._objects.read_range(self._hex, start, memoryview(buf))
        return buf

    def readinto(self, buf: bytearray | memoryview) -> int:
        view = memoryview(buf).cast("B")
        start = self._pos
        n = max(0, min(len(view), self.size - start))
        if not n:
            return 0
        end = start + n
        direct: list[tuple[int, int]] = []  # [from, to) not prefetched: fetched into ``view`` itself
        for index in range(start // READ_PART, (end - 1) // READ_PART + 1):
            lo, hi = max(start, index * READ_PART), min(end, (index + 1) * READ_PART)
            part = self._ahead.get(index)
            if part is None:
                if direct and direct[-1][1] == lo:
                    direct[-1] = (direct[-1][0], hi)
                else:
                    direct.append((lo, hi))
                continue
            data = part.result()
            view[lo - start:hi - start] = data[lo - index * READ_PART:hi - index * READ_PART]
        for lo, hi in direct:
            self._objects.read_range(self._hex, lo, view[lo - start:hi - start], pool=self._pool)
        for index in [i for i in self._ahead if (i + 1) * READ_PART <= end]:
            del self._ahead[index]  # wholly behind us
        first = end // READ_PART
        for index in range(first, min(first + self.READ_AHEAD, -(-self.size // READ_PART))):
            if index not in self._ahead:
                self._ahead[index] = self._pool.submit(self._fetch, index)
        self._pos = end
        return n

    def read(self, n: int = -1) -> bytes:
        n = self.size - self._pos if n is None or n < 0 else n
        buf = bytearray(max(0, min(n, self.size - self._pos)))
        got = self.readinto(buf)
        return bytes(buf[:got])

    def close(self) -> None:
        for part in self._ahead.values():
            part.cancel()
        self._ahead.clear()

    def __enter__(self) -> "RangedFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remote_for(path: Path) -> tuple["RemoteBlobStore", str] | None:
    target = Path(os.path.realpath(path))
    for root, store in _BY_CACHE.items():
        try:
            rel = target.relative_to(root)
        except ValueError:
            continue
        if len(rel.parts) == 2:
            return store, rel.parts[0] + rel.parts[1]
    return None


def open_blob_file(path: Path) -> BinaryIO:
    """Open a file for reading; a link to a blob this machine has not fetched is read from
    its object store with ranged requests instead (no local copy is made)."""
    try:
        return open(path, "rb", buffering=0)
    except FileNotFoundError:
        found = _remote_for(path)
        if found is None:
            raise
        store, hexdigest = found
        return store.open_ranged(hexdigest)


def blob_exists(path: Path) -> bool:
    """``path.is_file()``, true also for a link to a blob that only the object store holds."""
    if Path(path).is_file():
        return True
    return Path(path).is_symlink() and _remote_for(path) is not None
