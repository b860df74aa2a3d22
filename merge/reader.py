"""Read a base checkpoint one tensor at a time, with plain file reads into reused buffers.

``safe_open``'s mmap keeps every page it touched in the resident set (1.3 GB peak on a
2.2 GB model, measured); ``readinto`` a buffer we own keeps the peak at the largest tensor.
Headers are parsed without torch (``lorareg.store.safetensors_header``), so the registry can
check an adapter against a base without importing torch.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorareg.errors import CheckpointError, NotFoundError, PickleRefusedError
from lorareg.store.pickles import is_pickle
from lorareg.store.ranged import blob_exists, open_blob_file
from lorareg.store.safetensors_header import read_header

if TYPE_CHECKING:
    import torch

__all__ = ["BaseTensor", "Checkpoint", "TensorReader", "open_checkpoint", "torch_dtype"]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
FLOAT_DTYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class BaseTensor:
    name: str
    dtype: str  # safetensors dtype string: "BF16", "F32", ...
    shape: tuple[int, ...]
    file: str  # shard file name inside the checkpoint folder
    offset: int  # absolute byte offset of the data in that file
    nbytes: int


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    config: dict[str, Any]
    tensors: dict[str, BaseTensor]  # in file order: shard by shard, by offset within a shard
    files: tuple[str, ...]  # shard file names in order
    indexed: bool  # the folder has model.safetensors.index.json

    @property
    def largest(self) -> int:
        return max((t.nbytes for t in self.tensors.values()), default=0)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})", hint="re-download or re-save the checkpoint") from None


def open_checkpoint(folder: Path) -> Checkpoint:
    """Parse a HF model folder's config and safetensors headers (no tensor data is read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"{folder}: no such model folder", hint="pass a folder saved with save_pretrained")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: no config.json", hint="pass a folder saved with save_pretrained")
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: not a JSON object", hint="re-save the checkpoint")
    index_path = folder / INDEX_NAME
    if index_path.is_file():
        index = _read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_path}: has no weight_map", hint="re-download or re-save the checkpoint")
        files = tuple(sorted(set(map(str, weight_map.values()))))
        indexed = True
    elif blob_exists(folder / SINGLE_NAME):
        files, weight_map, indexed = (SINGLE_NAME,), None, False
    else:
        pickles = sorted(p.name for p in folder.iterdir() if is_pickle(p.name) and p.is_file())
        if pickles:
            raise PickleRefusedError(f"{folder}: holds {pickles[0]} and no safetensors weights")
        raise CheckpointError(f"{folder}: no {SINGLE_NAME} or {INDEX_NAME}", hint="save it with safe_serialization")
    tensors: dict[str, BaseTensor] = {}
    for file in files:
        path = folder / file
        if not blob_exists(path):  # a weight file may be a link to a blob only the object store holds
            raise CheckpointError(f"{index_path}: names missing shard {file}", hint="re-download the checkpoint")
        header = read_header(path)
        for info in header.in_file_order():
            if info.name in tensors:
                raise CheckpointError(
                    f"{folder}: tensor {info.name!r} is in both {tensors[info.name].file} and {file}",
                    hint="remove the stale shard, or re-save the checkpoint",
                )
            if weight_map is not None and weight_map.get(info.name) != file:
                continue  # the index is what from_pretrained trusts; a stray copy is ignored there too
            tensors[info.name] = BaseTensor(
                name=info.name, dtype=info.dtype, shape=info.shape, file=file,
                offset=header.data_offset + info.begin, nbytes=info.nbytes,
            )
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise CheckpointError(
                f"{index_path}: puts {missing[0]!r} in {weight_map[missing[0]]}, which does not hold it",
                hint="re-download or re-save the checkpoint",
            )
    return Checkpoint(folder=folder, config=config, tensors=tensors, files=files, indexed=indexed)


_TORCH_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "U16": "uint16", "U32": "uint32", "U64": "uint64",
}


def torch_dtype(st_dtype: str) -> torch.dtype:
    import torch

    name = _TORCH_DTYPES.get(st_dtype)
    if name is None or not hasattr(torch, name):
        raise CheckpointError(f"tensor dtype {st_dtype} is not supported by lorareg", hint="convert the checkpoint")
    return getattr(torch, name)


class TensorReader:
    """Open shard files once; read tensors into a buffer the caller owns and reuses."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self._ckpt = checkpoint
        self._files: dict[str, Any] = {}

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def _open(self, file: str) -> Any:
        f = self._files.get(file)
        if f is None:
            f = self._files[file] = open_blob_file(self._ckpt.folder / file)
            if hasattr(os, "posix_fadvise") and isinstance(f, io.FileIO):
                # tensors are read in file order: let the kernel read further ahead
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return f

    def read(
        self, t: BaseTensor, buf: bytearray | memoryview, *, start: int = 0, size: int | None = None
    ) -> memoryview:
        """The tensor's raw bytes (or ``size`` of them from byte ``start``), read into the front of ``buf``."""
        size = t.nbytes - start if size is None else size
        if start < 0 or size < 0 or start + size > t.nbytes:
            raise ValueError(f"bytes {start}..{start + size} outside {t.name!r} ({t.nbytes} bytes)")
        f = self._open(t.file)
        view = memoryview(buf)[:size]
        f.seek(t.offset + start)
        got = 0
        while got < size:
            n = f.readinto(view[got:])
            if not n:
                raise CheckpointError(
                    f"{self._ckpt.folder / t.file}: truncated while reading {t.name!r}",
                    hint="re-download or re-save the checkpoint",
                )
            got += n
        return view

    def tensor(self, t: BaseTensor, buf: bytearray | memoryview) -> torch.Tensor:
        """A tensor over ``buf``'s bytes (no copy: valid until the buffer is reused)."""
        import torch

        dtype = torch_dtype(t.dtype)
        if t.nbytes == 0:
            return torch.empty(t.shape, dtype=dtype)
        view = self.read(t, buf)
        return torch.frombuffer(view, dtype=dtype).view(t.shape)
