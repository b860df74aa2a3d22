"""The blob store of a team: objects in S3-compatible storage, read through a per-machine cache.

``RemoteBlobStore`` has ``BlobStore``'s interface, so the registry's roads do not change.  The
cache (``LORAREG_HOME/cache``) is itself a ``BlobStore``: a blob is hashed as it enters it,
whether it comes from a local file (``add``, a merge's output) or from the object store, so a
cache never serves bytes that do not match their name.  Version folders link into the cache; a
link whose blob was evicted dangles until the next command that needs the folder fetches it
again.  A merge need not fetch its base at all: a dangling weight link is read with ranged
requests (``store/ranged.py``), one tensor at a time, into the reader's own buffer.

Bytes reach the object store only after a blob is complete and hashed in the cache, under its
final key (atomic on S3), after the registry has claimed it (``claim``); uploads run in the
background while the writer goes on, and ``flush`` waits for them before any row names them."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from lorareg.errors import IntegrityError, LoraregError, NotFoundError
from lorareg.store.blobs import BlobStore, BlobWriter, GcReport, StoredBlob, normalize_sha256
from lorareg.store.objects import ObjectStore
from lorareg.store.ranged import RangedFile, register_cache

__all__ = ["CachedBlob", "RemoteBlobStore", "parse_size"]

Progress = Callable[[int], None] | None
DEFAULT_CACHE_MAX = "100G"
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}



def parse_size(text: str, *, name: str = "LORAREG_CACHE_MAX") -> int:
    """``"50G"``, ``"512M"``, ``"1.5T"``, ``"1000000"`` -> bytes (binary units)."""
    raw = str(text).strip().upper().removesuffix("IB").removesuffix("B") or "0"
    unit = raw[-1] if raw[-1] in _UNITS else ""
    try:
        value = float(raw[:-1] if unit else raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise LoraregError(f"{name}={text!r} is not a size", hint=f"set {name} like 50G, 512M or a byte count")
    return int(value * _UNITS[unit])


@dataclass(frozen=True)
class CachedBlob:
    sha256: str
    size: int
    last_used: float  # seconds since the epoch


class RemoteBlobStore:
    def __init__(self, url: str, cache_root: Path, *, cache_max: int | None = None,
                 stale_upload_s: float = 3600.0) -> None:
        self.objects = ObjectStore(url)
        self.cache = BlobStore(cache_root)
        self.cache_max = cache_max
        self.stale_upload_s = stale_upload_s
        self.claim: Callable[[str], None] | None = None
        self._uploads: dict[str, Future[None]] = {}
        # Blobs this process put in the bucket or saw there: ``has`` needs no request for them
        # (registering a version links every file it just uploaded).
        self._in_bucket: set[str] = set()
        self._grew = False  # this command added to the cache: prune it at the end
        self._uploads_lock = threading.Lock()
        self._upload_pool: ThreadPoolExecutor | None = None
        self._read_pool: ThreadPoolExecutor | None = None
        register_cache(self.cache.objects, self)  # dangling links into this cache read from this store

    def __repr__(self) -> str:
        return f"RemoteBlobStore({self.objects.url!r}, cache={str(self.cache.root)!r})"

    @property
    def root(self) -> Path:  # where gc's and verify's local parts live
        return self.cache.root

    @property
    def url(self) -> str:
        return self.objects.url

    @property
    def read_pool(self) -> ThreadPoolExecutor:
        if self._read_pool is None:
            self._read_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="lorareg-read")
        return self._read_pool

    def _claim(self, hexdigest: str) -> None:
        if self.claim is not None:
            self.claim(hexdigest)

    # -- lookup -------------------------------------------------------------------------
    def path_for(self, sha256_hex: str) -> Path:
        """Where the blob lives in this machine's cache (it may not be there yet)."""
        return self.cache.path_for(sha256_hex)

    def has(self, sha256_hex: str) -> bool:
        """In the object store: the team's copy is the one that counts."""
        hexdigest = normalize_sha256(sha256_hex)
        with self._uploads_lock:
            if hexdigest in self._uploads or hexdigest in self._in_bucket:
                return True
        return self.objects.size(hexdigest) is not None

    def iter_blobs(self) -> Iterator[tuple[str, int]]:
        return self.objects.iter_objects()

    def open(self, sha256_hex: str) -> BinaryIO:
        return open(self.ensure_local(sha256_hex), "rb")

    def open_ranged(self, sha256_hex: str) -> BinaryIO:
        hexdigest = normalize_sha256(sha256_hex)
        local = self.cache.path_for(hexdigest)
        if local.is_file():
            _touch(local)
            return open(local, "rb", buffering=0)
        size = self.objects.size(hexdigest)
        if size is None:
            raise self._missing(hexdigest)
        return RangedFile(self.objects, self.read_pool, hexdigest, size)  # type: ignore[return-value]

    def ensure_local(self, sha256_hex: str, *, progress: Progress = None) -> Path:
        """The cached copy's path, fetched (and hashed as it enters the cache) when absent."""
        hexdigest = normalize_sha256(sha256_hex)
        local = self.cache.path_for(hexdigest)
        if local.is_file():
            _touch(local)
            return local
        size = self.objects.size(hexdigest)
        if size is None:
            raise self._missing(hexdigest)
        with self.cache.writer() as w:
            self.objects.download(hexdigest, size, w.write, progress=progress)
            if w._hash.hexdigest() != hexdigest:
                raise IntegrityError(f"object {self.objects.key(hexdigest)} in {self.url} is corrupt: "
                                     f"its bytes hash to {w._hash.hexdigest()}", hint="run: lorareg verify --all")
        self._grew = True
        return w.result.path

    def _missing(self, hexdigest: str) -> NotFoundError:
        return NotFoundError(f"blob {hexdigest} is not in {self.url}",
                             hint="rebuild the version that needs it (lorareg rebuild REF) or run: lorareg verify --all")

    # -- writing --------------------------------------------------------------------------
    def put_file(self, src: Path, *, expected_sha256: str | None = None, move: bool = False,
                 progress: Progress = None) -> StoredBlob:
        blob = self.cache.put_file(src, expected_sha256=expected_sha256, move=move, progress=progress)
        self._upload_later(blob)
        return blob

    def put_bytes(self, data: bytes) -> StoredBlob:
        """Small blobs (a model card, a manifest) go up at once: a card is put inside the rows'
        transaction, after ``flush``, so it must be in the object store when this returns."""
        blob = self.cache.put_bytes(data)
        self._claim(blob.sha256)
        if self.objects.size(blob.sha256) != blob.size:
            self.objects.put_bytes(data, blob.sha256)
        with self._uploads_lock:
            self._in_bucket.add(blob.sha256)
        self._grew = True
        return blob

    @contextmanager
    def writer(self) -> Iterator[BlobWriter]:
        with self.cache.writer() as w:
            yield w
        self._upload_later(w.result)

    def begin_upload(self, path: Path, sha256_hex: str) -> None:
        """Start uploading a file that will be stored under this digest (a merge's shard, as
        soon as it is written), so the upload overlaps the rest of the merge.  The file is
        opened now, so it may be moved meanwhile.  Only under a writer's lease (``claim`` set):
        an unclaimed object could be collected before its rows exist."""
        hexdigest = normalize_sha256(sha256_hex)
        if self.claim is None:
            return
        self._claim(hexdigest)
        fd = os.open(path, os.O_RDONLY)

        def upload() -> None:
            try:
                size = os.fstat(fd).st_size
                if self.objects.size(hexdigest) != size:
                    self.objects.upload(fd, hexdigest, size=size)
            finally:
                os.close(fd)

        with self._uploads_lock:
            if hexdigest in self._uploads:
                os.close(fd)
                return
            self._uploads[hexdigest] = self._pool().submit(upload)

    def _pool(self) -> ThreadPoolExecutor:
        if self._upload_pool is None:
            self._upload_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorareg-upload")  # parts run in parallel
        return self._upload_pool

    def _upload_later(self, blob: StoredBlob) -> None:
        self._grew = True
        self._claim(blob.sha256)  # before the object store is asked whether it has the blob
        with self._uploads_lock:
            if blob.sha256 in self._uploads:
                return  # begun earlier (begin_upload), or the same bytes put twice
            self._uploads[blob.sha256] = self._pool().submit(self._upload, blob)

    def _upload(self, blob: StoredBlob) -> None:
        if self.objects.size(blob.sha256) == blob.size:
            return  # another machine (or an earlier run) uploaded the same bytes
        self.objects.upload(blob.path, blob.sha256)

    def flush(self) -> None:
        """Wait for every upload started so far; the first failure is raised (after all end)."""
        with self._uploads_lock:
            pending = dict(self._uploads)
        first: BaseException | None = None
        for hexdigest, future in pending.items():
            ok = False
            try:
                future.result()
                ok = True
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others ended
                first = first or exc
            with self._uploads_lock:
                if self._uploads.get(hexdigest) is future:
                    del self._uploads[hexdigest]
                    if ok:
                        self._in_bucket.add(hexdigest)
        if first is not None:
            raise first

    # -- the cache --------------------------------------------------------------------------
    def cached(self) -> list[CachedBlob]:
        """What this machine's cache holds, least recently used first."""
        out = []
        for hexdigest, size in self.cache.iter_blobs():
            try:
                used = self.cache.path_for(hexdigest).stat().st_mtime
            except FileNotFoundError:
                continue
            out.append(CachedBlob(sha256=hexdigest, size=size, last_used=used))
        return sorted(out, key=lambda b: (b.last_used, b.sha256))

    def prune(self, *, max_bytes: int | None = None) -> list[CachedBlob]:
        """Evict least recently used blobs until the cache holds at most ``max_bytes``
        (default: the cache's limit); blobs still uploading stay.  Returns what went."""
        limit = self.cache_max if max_bytes is None else max_bytes
        if limit is None:
            return []
        entries = self.cached()
        total = sum(b.size for b in entries)
        with self._uploads_lock:
            busy = set(self._uploads)
        removed = []
        for b in entries:
            if total <= limit:
                break
            if b.sha256 in busy:
                continue
            self.cache._unlink_blob(self.cache.path_for(b.sha256))
            total -= b.size
            removed.append(b)
        return removed

    def close(self) -> None:
        """At the end of a command: wait for uploads, then bring the cache within its limit.
        Pruning only here, never between a fetch and its use, lets one command use a version
        larger than the limit (a cache of 1 byte still exports)."""
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - a command that registered anything flushed before its commit;
            pass  # these are the uploads of one that failed, which has said why already
        finally:
            if self.cache_max is not None and self._grew:  # a command that only read rows walks no cache
                self.prune()
            for pool in (self._upload_pool, self._read_pool):
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)
            self._upload_pool = self._read_pool = None

    # -- checking and cleaning ------------------------------------------------------------------
    def _remote_sha256(self, hexdigest: str, size: int, progress: Progress = None) -> str:
        import hashlib

        h = hashlib.sha256()
        self.objects.download(hexdigest, size, h.update, progress=progress)
        return h.hexdigest()

    def _check_cached(self, hexdigest: str) -> None:
        """A cached copy that no longer matches its name is dropped and fetched again."""
        local = self.cache.path_for(hexdigest)
        if local.is_file():
            from lorareg.store.digest import file_sha256

            if file_sha256(local) != hexdigest:
                self.cache._unlink_blob(local)
                self.ensure_local(hexdigest)

    def verify(self, sha256_hex: str) -> None:
        hexdigest = normalize_sha256(sha256_hex)
        size = self.objects.size(hexdigest)
        if size is None:
            raise self._missing(hexdigest)
        actual = self._remote_sha256(hexdigest, size)
        if actual != hexdigest:
            raise IntegrityError(f"blob {hexdigest} in {self.url} is corrupt: its bytes hash to {actual}")
        self._check_cached(hexdigest)

    def verify_all(self, *, progress: Progress = None) -> list[str]:
        """Every object re-hashed (names of corrupt ones); corrupt cached copies re-fetched."""
        bad = [h for h, size in self.objects.iter_objects() if self._remote_sha256(h, size, progress) != h]
        for h, _ in list(self.cache.iter_blobs()):
            if h not in bad:
                try:
                    self._check_cached(h)
                except NotFoundError:
                    self.cache._unlink_blob(self.cache.path_for(h))  # gone from the team's store
        return bad

    def gc(self, referenced: set[str], *, dry_run: bool = False,
           listed: list[tuple[str, int]] | None = None) -> GcReport:
        """Delete objects not in ``referenced`` (of ``listed``, a listing taken earlier, outside
        the gc lock: a blob uploaded since is not in it, and one claimed since is in ``referenced``)."""
        keep = {normalize_sha256(h) for h in referenced}
        listed = list(self.objects.iter_objects()) if listed is None else listed
        doomed = [(h, size) for h, size in listed if h not in keep]
        if dry_run:
            return GcReport(removed=tuple(h for h, _ in doomed), bytes_freed=sum(s for _, s in doomed),
                            temp_files_removed=0)
        self.objects.delete(h for h, _ in doomed)
        for h, _ in doomed:
            self._in_bucket.discard(h)
            self.cache._unlink_blob(self.cache.path_for(h))
        aborted = self.objects.abort_stale_uploads(self.stale_upload_s, keep=keep)
        return GcReport(removed=tuple(h for h, _ in doomed), bytes_freed=sum(s for _, s in doomed),
                        temp_files_removed=aborted + self.cache.clean_temp())

    def clean_temp(self) -> int:
        return self.cache.clean_temp()


def _touch(path: Path) -> None:
    """Mark a cached blob as just used (the cache evicts by last use)."""
    try:
        os.utime(path, None)
    except OSError:
        pass  # a cache on a read-only mount: eviction order is then by arrival
