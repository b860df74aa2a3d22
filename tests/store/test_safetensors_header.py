from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from lorareg.errors import CheckpointError, NotFoundError
from lorareg.store.safetensors_header import DTYPE_BITS, read_header


def write_raw(path: Path, header: object, data: bytes = b"", *, raw_header: bytes | None = None) -> Path:
    """A safetensors file built by hand, so tests can make headers that lie."""
    blob = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def test_reads_real_file_written_by_safetensors(tmp_path):
    arrays = {
        "b.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "a.bias": np.arange(5, dtype=np.int64),
        "c.empty": np.zeros((0, 3), dtype=np.float16),
    }
    path = tmp_path / "m.safetensors"
    save_file(arrays, str(path), metadata={"format": "pt"})

    header = read_header(path)

    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert header.path == path
    assert header.data_offset == 8 + header_len
    assert header.metadata == {"format": "pt"}
    assert set(header.tensors) == set(arrays)
    raw = path.read_bytes()[header.data_offset :]
    for name, arr in arrays.items():
        info = header.tensors[name]
        assert info.name == name
        assert info.shape == arr.shape
        assert raw[info.begin : info.end] == arr.tobytes()
    assert header.tensors["b.weight"].dtype == "F32"
    assert header.tensors["a.bias"].dtype == "I64"
    assert [t.name for t in header.in_file_order()] == sorted(
        arrays, key=lambda n: (header.tensors[n].begin, header.tensors[n].end, n)
    )


@pytest.mark.parametrize("dtype", sorted(DTYPE_BITS))
def test_every_dtype_size_is_checked(tmp_path, dtype):
    shape = [2, 4]  # 8 elements: whole bytes even for 4- and 6-bit dtypes
    nbytes = 8 * DTYPE_BITS[dtype] // 8
    ok = write_raw(tmp_path / "ok.safetensors", {"t": {"dtype": dtype, "shape": shape, "data_offsets": [0, nbytes]}}, b"x" * nbytes)
    assert read_header(ok).tensors["t"].end == nbytes

    bad = write_raw(
        tmp_path / "bad.safetensors",
        {"t": {"dtype": dtype, "shape": shape, "data_offsets": [0, nbytes + 1]}},
        b"x" * (nbytes + 1),
    )
    with pytest.raises(CheckpointError, match=f"needs {nbytes}"):
        read_header(bad)


def test_brief_dtypes_are_known():
    assert {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2"} <= set(DTYPE_BITS)
    assert {"U16", "U32", "U64"} <= set(DTYPE_BITS)


def _t(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


BAD_HEADERS = {
    "unknown dtype": ({"w": _t(dtype="F12")}, b"x" * 8, "unknown dtype 'F12'"),
    "size mismatch": ({"w": _t(shape=(3,))}, b"x" * 8, "spans 8 bytes but F32 [3] needs 12"),
    "truncated": ({"w": _t(shape=(4,), offsets=(0, 16))}, b"x" * 8, "truncated"),
    "overlap": ({"a": _t(), "b": _t(offsets=(4, 12))}, b"x" * 12, "overlap"),
    "backwards": ({"w": _t(offsets=(8, 0))}, b"x" * 8, "run backwards"),
    "negative dim": ({"w": _t(shape=(-2,))}, b"x" * 8, "invalid shape"),
    "bool dim": ({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"x" * 4, "invalid shape"),
    "bad offsets": ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, b"x" * 8, "invalid data_offsets"),
    "not an object": ({"w": [1, 2]}, b"", "is not an object"),
    "list header": ([1, 2], b"", "JSON list, not an object"),
    "metadata not str": ({"__metadata__": {"a": 1}}, b"", "__metadata__"),
    "sub-byte": ({"w": _t(dtype="F4", shape=(3,), offsets=(0, 1))}, b"x", "whole bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_lying_headers_are_refused_naming_file_and_tensor(tmp_path, case):
    header, data, message = BAD_HEADERS[case]
    path = write_raw(tmp_path / "lies.safetensors", header, data)
    with pytest.raises(CheckpointError) as info:
        read_header(path)
    text = str(info.value)
    assert message in text
    assert str(path) in text
    assert "\n" not in text
    assert info.value.hint == "re-download or re-save the checkpoint"
    if isinstance(header, dict) and "w" in header:
        assert "'w'" in text


def test_duplicate_keys_are_refused(tmp_path):
    raw = b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}'
    path = write_raw(tmp_path / "dup.safetensors", None, b"x", raw_header=raw)
    with pytest.raises(CheckpointError, match="duplicate key 'w'"):
        read_header(path)


def test_invalid_json(tmp_path):
    path = write_raw(tmp_path / "j.safetensors", None, b"", raw_header=b"{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_header(path)
    path = write_raw(tmp_path / "u.safetensors", None, b"", raw_header=b"\xff\xfe{}")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_header(path)


def test_short_file(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(CheckpointError, match="shorter than the 8-byte length"):
        read_header(path)


def test_header_longer_than_file(tmp_path):
    path = tmp_path / "long.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(CheckpointError, match="runs past the end of the 10-byte file"):
        read_header(path)


def test_absurd_header_length(tmp_path):
    path = tmp_path / "absurd.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(CheckpointError, match="absurd"):
        read_header(path)


def test_gaps_and_empty_tensors_are_fine(tmp_path):
    header = {"a": _t(), "gap_then_b": _t(offsets=(12, 20)), "empty": _t(shape=(0,), offsets=(8, 8))}
    info = read_header(write_raw(tmp_path / "g.safetensors", header, b"x" * 20))
    assert info.tensors["empty"].nbytes == 0
    assert info.tensors["gap_then_b"].begin == 12


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(NotFoundError):
        read_header(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_header(tmp_path)
