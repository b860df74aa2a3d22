"""Read and check a safetensors header with the stdlib only.

The header is the only part of a checkpoint we trust before hashing, so every claim it
makes (dtype, shape, byte range) is checked against the file's real size: a header that
lies would otherwise make the digest cover the wrong bytes.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from lorareg.errors import CheckpointError, NotFoundError

__all__ = ["DTYPE_BITS", "SafetensorsHeader", "TensorInfo", "read_header"]

# Bits per element, as the safetensors format defines them.  Sub-byte dtypes (F4, F6_*)
# are packed, so sizes are counted in bits and must fill whole bytes.
DTYPE_BITS: dict[str, int] = {
    "F64": 64,
    "F32": 32,
    "F16": 16,
    "BF16": 16,
    "I64": 64,
    "I32": 32,
    "I16": 16,
    "I8": 8,
    "U64": 64,
    "U32": 32,
    "U16": 16,
    "U8": 8,
    "BOOL": 8,
    "C64": 64,
    "F8_E4M3": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2": 8,
    "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "F4": 4,
}

# Real headers are kilobytes to a few MB; the safetensors library itself stops at 100 MB.
MAX_HEADER_BYTES = 100_000_000
_HINT = "re-download or re-save the checkpoint"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # relative to SafetensorsHeader.data_offset, as stored in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    data_offset: int  # 8 + header length: where tensor bytes start
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    def in_file_order(self) -> list[TensorInfo]:
        """Tensors sorted by where their bytes lie, for one sequential pass."""
        return sorted(self.tensors.values(), key=lambda t: (t.begin, t.end, t.name))


def _fail(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: {problem}", hint=_HINT)


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def read_header(path: Path) -> SafetensorsHeader:
    """Parse ``path``'s header and check every tensor's dtype, shape and byte range."""
    from lorareg.store.ranged import open_blob_file  # a link to a blob may be read from its object store

    path = Path(path)
    try:
        with open_blob_file(path) as f:
            file_size = f.size if hasattr(f, "size") else os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _fail(path, f"not a safetensors file ({file_size} bytes, shorter than the 8-byte length)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES:
                raise _fail(path, f"header length {header_len} is absurd (more than {MAX_HEADER_BYTES} bytes)")
            if 8 + header_len > file_size:
                raise _fail(path, f"header length {header_len} runs past the end of the {file_size}-byte file")
            raw = f.read(header_len)
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file", hint="check the path") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a safetensors file", hint="pass a .safetensors file") from None

    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _fail(path, f"header is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _fail(path, f"header is a JSON {type(doc).__name__}, not an object")

    data_offset = 8 + header_len
    data_size = file_size - data_offset
    metadata = _parse_metadata(path, doc.pop("__metadata__", None))
    tensors: dict[str, TensorInfo] = {}
    for name, entry in doc.items():
        tensors[name] = _parse_tensor(path, name, entry, data_size)
    _check_no_overlap(path, tensors.values())
    return SafetensorsHeader(path=path, data_offset=data_offset, tensors=tensors, metadata=metadata)


def _parse_metadata(path: Path, meta: object) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _fail(path, "__metadata__ must map strings to strings")
    return dict(meta)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_tensor(path: Path, name: str, entry: object, data_size: int) -> TensorInfo:
    where = f"tensor {name!r}"
    if not isinstance(entry, dict):
        raise _fail(path, f"{where} is not an object")
    dtype = entry.get("dtype")
    if dtype not in DTYPE_BITS:
        raise _fail(path, f"{where} has unknown dtype {dtype!r}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise _fail(path, f"{where} has an invalid shape {shape!r}")
    offsets = entry.get("data_offsets")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise _fail(path, f"{where} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if begin > end:
        raise _fail(path, f"{where} has data_offsets [{begin}, {end}] that run backwards")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8:
        raise _fail(path, f"{where} of {dtype} {shape} does not fill whole bytes")
    if end - begin != bits // 8:
        raise _fail(path, f"{where} spans {end - begin} bytes but {dtype} {shape} needs {bits // 8}")
    if end > data_size:
        raise _fail(path, f"{where} ends at byte {end} but the file holds {data_size} data bytes (truncated?)")
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _check_no_overlap(path: Path, tensors: object) -> None:
    # Gaps are tolerated (they hash nowhere); overlaps mean two tensors claim the same bytes.
    previous: TensorInfo | None = None
    for info in sorted(tensors, key=lambda t: (t.begin, t.end)):  # type: ignore[arg-type]
        if previous is not None and info.begin < previous.end and info.nbytes and previous.nbytes:
            raise _fail(path, f"tensors {previous.name!r} and {info.name!r} overlap in the data section")
        if info.nbytes:
            previous = info
