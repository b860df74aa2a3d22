"""Write safetensors shards one tensor at a time, hashing as the bytes go out.

Every tensor's name, dtype and shape is known before the first byte is written, so each
shard's header is computed up front and tensors are streamed into place in header order:
no shard is ever assembled in memory.  Each tensor's sha256 (for the manifest digest) and
each file's sha256 (the blob's name) come from the same single pass, a tensor's bytes possibly
in pieces; a shard that is not written (``write=False``) gets no file sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorareg.errors import MergeError
from lorareg.store.digest import FileDigest, TensorEntry
from lorareg.store.safetensors_header import DTYPE_BITS

if TYPE_CHECKING:
    import torch

__all__ = ["OutTensor", "Shard", "ShardWriter", "plan_shards", "tensor_bytes"]

INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: str  # safetensors dtype string
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BITS[self.dtype] // 8


@dataclass(frozen=True)
class Shard:
    file: str
    tensors: tuple[OutTensor, ...]


def plan_shards(
    tensors: list[OutTensor], *, max_shard_size: int, keep_files: dict[str, str] | None = None
) -> list[Shard]:
    """Group tensors (in the given order) into shards.

    ``keep_files`` (tensor -> file) reproduces an input layout as is; otherwise tensors are
    packed greedily in order, a new shard starting when the next tensor would pass
    ``max_shard_size`` (a tensor larger than that gets a shard of its own).
    """
    if keep_files is not None:
        by_file: dict[str, list[OutTensor]] = {}
        for t in tensors:
            by_file.setdefault(keep_files[t.name], []).append(t)
        return [Shard(file=f, tensors=tuple(ts)) for f, ts in by_file.items()]
    groups: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if groups[-1] and size + t.nbytes > max_shard_size:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    if len(groups) == 1:
        return [Shard(file="model.safetensors", tensors=tuple(groups[0]))]
    n = len(groups)
    return [Shard(file=f"model-{i + 1:05d}-of-{n:05d}.safetensors", tensors=tuple(g)) for i, g in enumerate(groups)]


def _header(shard: Shard, metadata: dict[str, str]) -> bytes:
    doc: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for t in shard.tensors:
        doc[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the safetensors convention: data starts 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


def tensor_bytes(t: torch.Tensor) -> Any:
    """A zero-copy byte view of a tensor (little-endian, C order), for write() and hashlib."""
    import torch

    t = t.contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy()


class ShardWriter:
    """Writes the planned shards into ``folder``; tensors must come in plan order.

    A tensor is written whole (``write``) or piece by piece (``begin``, ``feed``..., ``end``).
    """

    def __init__(self, folder: Path, shards: list[Shard], *, metadata: dict[str, str], write: bool = True,
                 on_shard: Callable[[Path, str], None] | None = None) -> None:
        self._folder = Path(folder)
        # Called with each finished, fsynced shard and its sha256 (an object store starts
        # uploading it while the next shard is written).
        self._on_shard = on_shard
        # write=False: a recipe-only merge keeps the digest, not the bytes: nothing is written
        # or fsynced, and only the tensors are hashed (the manifest).  A shard's own sha256
        # would name a blob that is never kept, so its FileDigest has sha256 None.
        self._write = write
        self._shards = shards
        self._metadata = metadata
        self._order = [(si, t) for si, s in enumerate(shards) for t in s.tensors]
        self._pos = 0
        self._file: Any = None
        self._file_hash: Any = None
        self._tensor_hash: Any = None
        self._fed = 0
        self._size = 0
        self._current = -1
        self.entries: list[TensorEntry] = []
        self.files: dict[str, FileDigest] = {}
        # The tensor's sha256 and the file's sha256 run beside the write (hashlib and file
        # writes release the GIL): two hashes of every byte are a third of a merge's time.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lorareg-hash")
        # A finished shard is fsynced in the background while the next one is written.
        self._syncs: list[Any] = []
        self._sync_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorareg-fsync")

    @property
    def expected(self) -> OutTensor:
        return self._order[self._pos][1]

    def _open(self, si: int) -> None:
        self._close()
        self._current = si
        self._file = open(self._folder / self._shards[si].file, "wb") if self._write else _NullFile()
        self._file_hash = hashlib.sha256() if self._write else None
        self._size = 0
        self._emit(_header(self._shards[si], self._metadata))

    def _emit(self, data: Any, tensor_hash: Any = None) -> None:
        # The hash objects are only ever updated here, one piece at a time, in order.
        if not self._write:  # hash only: the one hash runs right here, nothing to overlap it with
            if tensor_hash is not None:
                tensor_hash.update(data)
            self._size += len(memoryview(data).cast("B"))
            return
        hashes = [self._pool.submit(h.update, data) for h in (self._file_hash, tensor_hash) if h is not None]
        try:
            self._file.write(data)
        finally:
            for h in hashes:
                h.result()
        self._size += len(memoryview(data).cast("B"))

    def _close(self) -> None:
        if self._file is None:
            return
        self._file.flush()
        name = self._shards[self._current].file
        sha256 = self._file_hash.hexdigest() if self._file_hash is not None else None
        self.files[name] = FileDigest(sha256=sha256, size=self._size)
        if self._write:
            self._syncs.append(self._sync_pool.submit(_sync_close, self._file, self._folder / name,
                                                      self.files[name].sha256, self._on_shard))
        self._file = None

    def begin(self, name: str, nbytes: int) -> None:
        """Start the next tensor, of ``nbytes`` bytes, to be given by ``feed`` calls."""
        if self._tensor_hash is not None:
            raise MergeError(f"writer: {name!r} begun inside another tensor", hint="this is a lorareg bug; report it")
        if self._pos >= len(self._order):
            raise MergeError(f"writer: unexpected extra tensor {name!r}", hint="this is a lorareg bug; report it")
        si, t = self._order[self._pos]
        if name != t.name or nbytes != t.nbytes:
            raise MergeError(
                f"writer: got {name!r} ({nbytes} bytes), expected {t.name!r} ({t.nbytes} bytes)",
                hint="this is a lorareg bug; report it",
            )
        if si != self._current:
            self._open(si)
        self._tensor_hash = hashlib.sha256()
        self._fed = 0

    def feed(self, data: Any) -> None:
        """The next piece of the current tensor's raw bytes (a bytes-like object)."""
        t = self._order[self._pos][1]
        n = len(data) if isinstance(data, bytes) else len(memoryview(data).cast("B"))
        if self._tensor_hash is None or self._fed + n > t.nbytes:
            raise MergeError(f"writer: unexpected bytes for {t.name!r}", hint="this is a lorareg bug; report it")
        if n:
            self._emit(data, self._tensor_hash)
        self._fed += n

    def end(self) -> None:
        si, t = self._order[self._pos]
        if self._tensor_hash is None or self._fed != t.nbytes:
            raise MergeError(
                f"writer: {t.name!r} got {self._fed} of its {t.nbytes} bytes", hint="this is a lorareg bug; report it"
            )
        sha256 = self._tensor_hash.hexdigest()
        self._tensor_hash = None
        self.entries.append(TensorEntry(name=t.name, dtype=t.dtype, shape=t.shape, sha256=sha256))
        self._pos += 1
        if self._pos == len(self._order) or self._order[self._pos][0] != si:
            self._close()

    def write(self, name: str, data: Any) -> None:
        """Append the next tensor's raw bytes (a bytes-like object)."""
        n = len(data) if isinstance(data, bytes) else len(memoryview(data).cast("B"))
        self.begin(name, n)
        self.feed(data)
        self.end()

    def finish(self, *, index: bool) -> None:
        """Check every tensor was written and synced; write ``model.safetensors.index.json`` if asked."""
        if self._pos != len(self._order):
            raise MergeError(f"writer: {len(self._order) - self._pos} tensors never written", hint="report this bug")
        for si, s in enumerate(self._shards):
            if not s.tensors and s.file not in self.files:
                self._open(si)  # a shard of empty tensors still needs its header on disk
                self._close()
        self._pool.shutdown()
        self._sync_pool.shutdown()
        for f in self._syncs:
            f.result()  # re-raises a failed fsync
        if index:
            weight_map = {t.name: s.file for s in self._shards for t in s.tensors}
            total = sum(t.nbytes for s in self._shards for t in s.tensors)
            doc = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (self._folder / INDEX_NAME).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")

    def abort(self) -> None:
        self._pool.shutdown()
        self._sync_pool.shutdown()
        if self._file is not None:
            self._file.close()
            self._file = None


class _NullFile:
    """Where a hash-only writer's bytes go."""

    def write(self, data: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _sync_close(f: Any, path: Path, sha256: str, on_shard: Callable[[Path, str], None] | None) -> None:
    try:
        os.fsync(f.fileno())
    finally:
        f.close()
    if on_shard is not None:
        on_shard(path, sha256)
