"""Content digests: files, tensors, checkpoints and canonical JSON.

A checkpoint's *weights digest* hashes a manifest of its tensors (name, dtype, shape, sha256
of the raw bytes) rather than its files, so re-sharding the same weights keeps it.  Its
*digest* names the whole model: the weights digest plus the files that define behaviour
(``model_digest.py``).  Each file's own sha256 (the Hub's LFS oid) is recorded too, computed
in the same read pass.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorareg.errors import CheckpointError, LoraregError, NotFoundError, PickleRefusedError
from lorareg.store.pickles import is_pickle
from lorareg.store.safetensors_header import SafetensorsHeader, read_header

__all__ = [
    "CHUNK_SIZE",
    "CheckpointDigest",
    "FileDigest",
    "TensorEntry",
    "checkpoint_digest",
    "digest_json",
    "file_sha256",
    "manifest_digest",
    "manifest_text",
    "sha256_bytes",
    "tensor_entries",
]

CHUNK_SIZE = 8 * 1024 * 1024
Progress = Callable[[int], None]
_REDOWNLOAD = "re-download the checkpoint"


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    sha256: str


@dataclass(frozen=True)
class FileDigest:
    sha256: str | None  # None: a recipe-only merge's shard, hashed per tensor only (its bytes are not kept)
    size: int


@dataclass(frozen=True)
class CheckpointDigest:
    digest: str  # "sha256:<hex>" of the whole model: weights and defining files (model_digest.py)
    weights_digest: str  # "sha256:<hex>" of the tensor manifest alone
    tensors: tuple[TensorEntry, ...]  # sorted by name
    files: dict[str, FileDigest]  # relative posix name -> digest, every regular file


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_json(obj: Any) -> str:
    """``sha256:<hex>`` of canonical JSON (sorted keys, no spaces, UTF-8, no NaN)."""
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LoraregError(
            f"cannot digest as canonical JSON: {exc}",
            hint="use only dicts with string keys, lists, strings, finite numbers, booleans and None",
        ) from None
    return "sha256:" + sha256_bytes(text.encode("utf-8"))


def file_sha256(path: Path, *, progress: Progress | None = None) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks; ``progress`` gets each chunk's size."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    try:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
                if progress is not None:
                    progress(n)
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file", hint="check the path") from None
    return h.hexdigest()


def manifest_text(entries: Iterable[TensorEntry]) -> str:
    """The canonical manifest: one tab-separated line per tensor, sorted by name."""
    lines = []
    for e in sorted(entries, key=lambda e: e.name):
        lines.append(f"{e.name}\t{e.dtype}\t{','.join(map(str, e.shape))}\t{e.sha256}\n")
    return "".join(lines)


def manifest_digest(entries: Iterable[TensorEntry]) -> str:
    return "sha256:" + sha256_bytes(manifest_text(entries).encode("utf-8"))


def _hash_safetensors(
    header: SafetensorsHeader, *, whole_file: bool, progress: Progress | None, out: Any = None
) -> tuple[str | None, int, list[TensorEntry]]:
    """One sequential read of the file, feeding the file hash and the current tensor's hash.
    With ``out`` (a blob writer, which hashes what it writes) each chunk goes to ``out``
    instead of a file hash: the file is stored and hashed in that same read.  The file hash
    is ``out.hash_part`` in the second thread, the write ``out.write_part`` in this one, so
    the two threads carry about equal work (a tensor hash + the write, the file hash).

    Returns (file sha256 or None, bytes read, tensor entries in file order).
    """
    ordered = header.in_file_order()  # read_header guarantees no overlaps
    hashers = [hashlib.sha256() for _ in ordered]
    file_hash = hashlib.sha256() if whole_file and out is None else None
    whole = file_hash.update if file_hash is not None else (out.hash_part if out is not None else None)
    base = header.data_offset
    stop_at = None if whole_file else base + max((t.end for t in ordered), default=0)
    pos = 0 if whole_file else base
    first_open = 0  # index of the first tensor not fully hashed yet
    # The file hash runs in a second thread (hashlib releases the GIL) on the previous chunk
    # while this thread reads and tensor-hashes the next one: digesting costs about one hash
    # pass of wall time instead of two.  Two buffers, so neither is overwritten while the
    # other thread still reads it.
    buffers = [bytearray(CHUNK_SIZE) for _ in range(2 if whole is not None else 1)]
    pool = ThreadPoolExecutor(max_workers=1) if whole is not None else None
    pending: Future[None] | None = None
    try:
        with open(header.path, "rb", buffering=0) as f:
            f.seek(pos)
            turn = 0
            while stop_at is None or pos < stop_at:
                view = memoryview(buffers[turn])
                turn = (turn + 1) % len(buffers)
                want = CHUNK_SIZE if stop_at is None else min(CHUNK_SIZE, stop_at - pos)
                n = f.readinto(view[:want])
                if not n:
                    break
                chunk = view[:n]
                end = pos + n
                i = first_open
                while i < len(ordered):
                    t_begin, t_end = base + ordered[i].begin, base + ordered[i].end
                    if t_begin >= end and t_end > t_begin:
                        break
                    lo, hi = max(t_begin, pos), min(t_end, end)
                    if hi > lo:
                        hashers[i].update(chunk[lo - pos : hi - pos])
                    if t_end > end:
                        break
                    i += 1
                    first_open = i
                if pool is not None:
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(whole, chunk)  # type: ignore[arg-type]
                    if out is not None:
                        out.write_part(chunk)  # reads the buffer the other thread hashes: both only read
                pos = end
                if progress is not None:
                    progress(n)
        if pending is not None:
            pending.result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    while first_open < len(ordered) and base + ordered[first_open].end <= pos:
        first_open += 1  # empty tensors past the last byte read
    if first_open < len(ordered):
        # The header was checked against the size at open; the file shrank while we read it.
        raise CheckpointError(
            f"{header.path}: truncated while reading tensor {ordered[first_open].name!r}",
            hint="re-download or re-save the checkpoint",
        )
    entries = [
        TensorEntry(name=t.name, dtype=t.dtype, shape=t.shape, sha256=h.hexdigest())
        for t, h in zip(ordered, hashers)
    ]
    return (file_hash.hexdigest() if file_hash else None), pos, entries


def _merge_entries(per_file: Mapping[Path, list[TensorEntry]]) -> list[TensorEntry]:
    seen: dict[str, Path] = {}
    merged: list[TensorEntry] = []
    for path, entries in per_file.items():
        for e in entries:
            if e.name in seen:
                raise CheckpointError(
                    f"tensor {e.name!r} is in both {seen[e.name]} and {path}",
                    hint="remove the stale shard, or re-save the checkpoint",
                )
            seen[e.name] = path
            merged.append(e)
    return sorted(merged, key=lambda e: e.name)


def tensor_entries(paths: Sequence[Path], *, progress: Progress | None = None) -> list[TensorEntry]:
    """Entries for every tensor of the given safetensors files, sorted by name."""
    per_file: dict[Path, list[TensorEntry]] = {}
    for path in paths:
        header = read_header(Path(path))
        per_file[Path(path)] = _hash_safetensors(header, whole_file=False, progress=progress)[2]
    return _merge_entries(per_file)


def _list_files(folder: Path) -> dict[str, Path]:
    """Every regular file under ``folder`` by relative posix name, skipping dot-names."""
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            try:
                is_file = path.is_file()  # follows symlinks: HF cache snapshots are links to blobs
            except OSError:
                is_file = False
            if not is_file:
                if path.is_symlink():
                    raise CheckpointError(f"{folder}: {rel} is a broken link", hint="re-download the checkpoint")
                continue
            found[rel] = path
    return found


def _check_indexes(folder: Path, files: Mapping[str, Path], headers: Mapping[str, SafetensorsHeader]) -> None:
    for rel in files:
        if "/" in rel or not rel.endswith(".safetensors.index.json"):
            continue
        try:
            weight_map = json.loads(files[rel].read_text(encoding="utf-8"))["weight_map"]
            pairs = [(str(k), str(v)) for k, v in weight_map.items()]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{folder / rel}: not a valid index ({exc})", hint=_REDOWNLOAD) from None
        for tensor, shard in pairs:
            if shard not in headers:
                raise CheckpointError(f"{folder / rel}: index names missing shard {shard}", hint=_REDOWNLOAD)
            if tensor not in headers[shard].tensors:
                raise CheckpointError(
                    f"{folder / rel}: index puts tensor {tensor!r} in {shard}, which does not hold it",
                    hint="re-download or re-save the checkpoint",
                )


def checkpoint_digest(folder: Path, *, progress: Progress | None = None, skip: Sequence[str] = (),
                      extra: Mapping[str, Any] | None = None, sink: Any = None) -> CheckpointDigest:
    """Digest of a checkpoint folder: tensor manifest over its top-level ``*.safetensors``,
    the whole-model digest (``extra`` joins it), and the sha256 and size of every regular
    file (recursive, dot-names and the relative names in ``skip`` left out).

    ``sink`` (a ``BlobStore``: its ``writer()`` yields a ``BlobWriter``) stores every
    file as a blob in the same read that hashes it, so each byte is read once; each file's
    sha256 is then its blob's name.  The caller holds the registry's writer lock: the blobs
    are not referenced by any row yet.

    Only top-level shards go into the manifest, because that is what ``from_pretrained``
    loads; copies in subfolders (``original/``, ``checkpoint-500/``) are still in ``files``.
    """
    from lorareg.store.model_digest import folder_identities, model_digest

    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"{folder}: no such folder", hint="check the path")
    files = {rel: path for rel, path in _list_files(folder).items() if rel not in set(skip)}
    shards = [rel for rel in files if "/" not in rel and rel.endswith(".safetensors")]
    if not shards:
        pickles = [rel for rel in files if is_pickle(rel)]
        if pickles:
            raise PickleRefusedError(f"{folder}: holds pickle weights ({pickles[0]}) and no *.safetensors")
        raise CheckpointError(f"{folder}: no *.safetensors files", hint="point at a folder saved with save_pretrained")

    headers = {rel: read_header(files[rel]) for rel in shards}  # all headers first: fail before hashing GBs
    _check_indexes(folder, files, headers)
    digests: dict[str, FileDigest] = {}
    per_file: dict[Path, list[TensorEntry]] = {}
    for rel, path in files.items():
        if sink is not None:
            digests[rel] = _store_file(sink, path, headers.get(rel), per_file, progress)
            continue
        if rel in headers:
            sha, size, entries = _hash_safetensors(headers[rel], whole_file=True, progress=progress)
            assert sha is not None
            per_file[path] = entries
        else:
            sha, size = file_sha256(path, progress=progress), path.stat().st_size
        digests[rel] = FileDigest(sha256=sha, size=size)
    entries = _merge_entries(per_file)
    weights = manifest_digest(entries)
    return CheckpointDigest(digest=model_digest(weights, folder_identities(folder, files), extra), weights_digest=weights,
                            tensors=tuple(entries), files=digests)


def _store_file(sink: Any, path: Path, header: SafetensorsHeader | None,
                per_file: dict[Path, list[TensorEntry]], progress: Progress | None) -> FileDigest:
    """Hash ``path`` (its tensors too, for a shard) while writing it to a blob of ``sink``.
    A failure inside the ``with`` (a file that shrank, a vanished file) removes the temp file."""
    with sink.writer() as w:
        if header is not None:
            per_file[path] = _hash_safetensors(header, whole_file=True, progress=progress, out=w)[2]
        else:
            try:
                with open(path, "rb", buffering=0) as f:
                    w.copy_from(f, progress=progress)
            except FileNotFoundError:
                raise NotFoundError(f"{path}: no such file", hint="check the path") from None
    return FileDigest(sha256=w.result.sha256, size=w.result.size)
