from __future__ import annotations

import hashlib
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import lorareg.store.digest as digest_mod
from lorareg.errors import CheckpointError, LoraregError, NotFoundError, PickleRefusedError
from lorareg.store.model_digest import model_digest
from lorareg.store.digest import (
    CheckpointDigest,
    FileDigest,
    TensorEntry,
    checkpoint_digest,
    digest_json,
    file_sha256,
    manifest_digest,
    manifest_text,
    sha256_bytes,
    tensor_entries,
)


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "embed.weight": rng.standard_normal((40, 16)).astype(np.float32),
        "layers.0.q.weight": rng.standard_normal((16, 16)).astype(np.float16),
        "layers.0.q.bias": rng.standard_normal(16).astype(np.float32),
        "layers.1.mask": (rng.standard_normal((3, 5)) > 0),
        "layers.1.ids": np.arange(7, dtype=np.int64),
        "norm.empty": np.zeros((0,), dtype=np.float32),
    }


def _expected(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    return {name: hashlib.sha256(arr.tobytes()).hexdigest() for name, arr in arrays.items()}


def write_ordered(path: Path, arrays: dict[str, np.ndarray], order: list[str], *, pad: int = 0) -> Path:
    """Hand-written safetensors with tensors laid out in ``order`` (save_file picks its own)."""
    dtypes = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64", np.dtype(bool): "BOOL"}
    header, data, pos = {}, b"", 0
    for name in order:
        raw = arrays[name].tobytes()
        header[name] = {"dtype": dtypes[arrays[name].dtype], "shape": list(arrays[name].shape), "data_offsets": [pos, pos + len(raw)]}
        data += raw + b"\0" * pad
        pos += len(raw) + pad
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def test_sha256_bytes_and_file_sha256(tmp_path):
    data = bytes(range(256)) * 1000
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    seen: list[int] = []
    assert file_sha256(path, progress=seen.append) == hashlib.sha256(data).hexdigest() == sha256_bytes(data)
    assert sum(seen) == len(data)
    with pytest.raises(NotFoundError):
        file_sha256(tmp_path / "missing")


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 8 * 1024 * 1024])
def test_tensor_hashes_match_raw_bytes_across_chunk_boundaries(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(digest_mod, "CHUNK_SIZE", chunk)
    arrays = _arrays()
    path = write_ordered(tmp_path / "m.safetensors", arrays, list(arrays), pad=5)  # gaps between tensors
    entries = tensor_entries([path])
    assert [e.name for e in entries] == sorted(arrays)
    assert {e.name: e.sha256 for e in entries} == _expected(arrays)
    assert {e.name: e.shape for e in entries} == {n: a.shape for n, a in arrays.items()}
    # checkpoint_digest hashes the whole file in the same pass; both must agree with hashlib.
    result = checkpoint_digest(tmp_path)
    assert result.files["m.safetensors"] == FileDigest(
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(), size=path.stat().st_size
    )
    assert list(result.tensors) == entries


def test_manifest_format_is_the_documented_one():
    entries = [
        TensorEntry(name="b", dtype="F16", shape=(2, 3), sha256="11" * 32),
        TensorEntry(name="a", dtype="F32", shape=(), sha256="22" * 32),
    ]
    text = f"a\tF32\t\t{'22' * 32}\nb\tF16\t2,3\t{'11' * 32}\n"
    assert manifest_text(entries) == text
    assert manifest_digest(entries) == "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    assert manifest_digest(reversed(entries)) == manifest_digest(entries)


def test_digest_does_not_depend_on_sharding_or_order(tmp_path):
    arrays = _arrays()
    names = sorted(arrays)
    one = tmp_path / "one"
    one.mkdir()
    save_file(arrays, str(one / "model.safetensors"))
    three = tmp_path / "three"
    three.mkdir()
    parts = [names[0::3], names[1::3], names[2::3]]
    weight_map = {}
    for i, part in enumerate(parts):
        shard = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({n: arrays[n] for n in part}, str(three / shard))
        weight_map.update({n: shard for n in part})
    (three / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    reordered = tmp_path / "reordered"
    reordered.mkdir()
    write_ordered(reordered / "model.safetensors", arrays, names[::-1], pad=3)

    d1, d3, dr = (checkpoint_digest(p) for p in (one, three, reordered))
    assert d1.digest == d3.digest == dr.digest
    assert d1.digest.startswith("sha256:") and len(d1.digest) == 7 + 64
    assert d1.files["model.safetensors"].sha256 != dr.files["model.safetensors"].sha256
    assert set(d3.files) == {f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)} | {"model.safetensors.index.json"}
    assert {e.name: e.sha256 for e in d1.tensors} == _expected(arrays)


def test_one_changed_byte_changes_the_digest(tmp_path):
    arrays = _arrays()
    path = tmp_path / "model.safetensors"
    save_file(arrays, str(path))
    before = checkpoint_digest(tmp_path)
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    data = bytearray(path.read_bytes())
    data[8 + header_len + 100] ^= 0x01
    path.write_bytes(bytes(data))
    after = checkpoint_digest(tmp_path)
    assert after.digest != before.digest
    changed = [a.name for a, b in zip(after.tensors, before.tensors) if a.sha256 != b.sha256]
    assert len(changed) == 1


def test_dtype_or_shape_change_changes_the_digest():
    base = [TensorEntry(name="w", dtype="F32", shape=(4, 2), sha256="ab" * 32)]
    assert manifest_digest(base) != manifest_digest([TensorEntry(name="w", dtype="I32", shape=(4, 2), sha256="ab" * 32)])
    assert manifest_digest(base) != manifest_digest([TensorEntry(name="w", dtype="F32", shape=(2, 4), sha256="ab" * 32)])


def test_checkpoint_files_skip_dot_names_and_follow_links(tmp_path):
    ckpt = tmp_path / "ckpt"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / ".cache" / "huggingface").mkdir(parents=True)
    save_file({"w": np.ones(4, dtype=np.float32)}, str(ckpt / "model.safetensors"))
    (ckpt / "config.json").write_text('{"a": 1}')
    (ckpt / "sub" / "notes.txt").write_text("hi")
    (ckpt / ".gitattributes").write_text("*")
    (ckpt / ".cache" / "huggingface" / "x.lock").write_text("")
    elsewhere = tmp_path / "blob"
    elsewhere.write_text("tokenizer bytes")
    (ckpt / "tokenizer.json").symlink_to(elsewhere)  # HF cache snapshots are links
    # A safetensors file in a subfolder is a file, but not part of the manifest.
    save_file({"other": np.zeros(2, dtype=np.float32)}, str(ckpt / "sub" / "extra.safetensors"))

    seen: list[int] = []
    result = checkpoint_digest(ckpt, progress=seen.append)

    assert isinstance(result, CheckpointDigest)
    assert sorted(result.files) == ["config.json", "model.safetensors", "sub/extra.safetensors", "sub/notes.txt", "tokenizer.json"]
    assert result.files["tokenizer.json"] == FileDigest(sha256=sha256_bytes(b"tokenizer bytes"), size=15)
    assert result.files["config.json"].sha256 == sha256_bytes(b'{"a": 1}')
    assert [e.name for e in result.tensors] == ["w"]
    assert sum(seen) == sum(f.size for f in result.files.values())
    assert result.weights_digest == manifest_digest(tensor_entries([ckpt / "model.safetensors"]))
    # the whole model: the weights and the defining files at the top level (not sub/notes.txt)
    assert result.digest == model_digest(result.weights_digest, {
        "config.json": digest_json({"a": 1}), "tokenizer.json": "sha256:" + sha256_bytes(b"tokenizer bytes")})


def test_broken_link_is_an_error(tmp_path):
    save_file({"w": np.ones(4, dtype=np.float32)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").symlink_to(tmp_path / "gone")
    with pytest.raises(CheckpointError, match="config.json is a broken link"):
        checkpoint_digest(tmp_path)


def test_index_naming_a_missing_shard(tmp_path):
    save_file({"a": np.ones(2, dtype=np.float32)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="index names missing shard model-00002-of-00002.safetensors"):
        checkpoint_digest(tmp_path)


def test_index_placing_a_tensor_in_the_wrong_shard(tmp_path):
    save_file({"a": np.ones(2, dtype=np.float32)}, str(tmp_path / "model-00001-of-00001.safetensors"))
    index = {"weight_map": {"a": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="index puts tensor 'b'"):
        checkpoint_digest(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(CheckpointError, match="not a valid index"):
        checkpoint_digest(tmp_path)


def test_duplicate_tensor_across_files(tmp_path):
    save_file({"a": np.ones(2, dtype=np.float32)}, str(tmp_path / "x.safetensors"))
    save_file({"a": np.zeros(2, dtype=np.float32)}, str(tmp_path / "y.safetensors"))
    with pytest.raises(CheckpointError, match="tensor 'a' is in both"):
        checkpoint_digest(tmp_path)
    with pytest.raises(CheckpointError, match="tensor 'a' is in both"):
        tensor_entries([tmp_path / "x.safetensors", tmp_path / "y.safetensors"])


def test_folders_without_safetensors(tmp_path):
    with pytest.raises(NotFoundError):
        checkpoint_digest(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        checkpoint_digest(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(PickleRefusedError, match="pytorch_model.bin"):
        checkpoint_digest(tmp_path)


def test_corrupt_shard_fails_before_hashing(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        checkpoint_digest(tmp_path)


def test_transformers_sharded_save_has_the_same_digest(tmp_path):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=99)
    model = BertModel(config)
    model.save_pretrained(tmp_path / "single")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")

    single, sharded = checkpoint_digest(tmp_path / "single"), checkpoint_digest(tmp_path / "sharded")
    assert sum(name.endswith(".safetensors") for name in sharded.files) > 2
    assert "model.safetensors.index.json" in sharded.files
    assert single.digest == sharded.digest
    state = model.state_dict()
    assert {e.name for e in single.tensors} == {e.name for e in sharded.tensors} <= set(state)
    assert len(single.tensors) > 20
    for entry in single.tensors:
        assert entry.sha256 == hashlib.sha256(state[entry.name].contiguous().numpy().tobytes()).hexdigest()


def test_digest_json_is_canonical():
    a = {"b": [1, 2.5, None, True], "a": {"y": "ü", "x": 1}}
    b = {"a": {"x": 1, "y": "ü"}, "b": [1, 2.5, None, True]}
    text = '{"a":{"x":1,"y":"ü"},"b":[1,2.5,null,true]}'
    assert digest_json(a) == digest_json(b) == "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert digest_json({"w": 1}) != digest_json({"w": 1.0})  # 1 and 1.0 are different recipes
    with pytest.raises(LoraregError, match="canonical JSON"):
        digest_json({"w": math.nan})
    with pytest.raises(LoraregError, match="canonical JSON"):
        digest_json({"w": object()})


def test_store_imports_no_heavy_modules():
    code = (
        "import sys, lorareg; before = set(sys.modules); import lorareg.store; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(new & {'torch', 'numpy', 'sqlalchemy', 'sqlmodel', 'click', 'rich', 'transformers', 'safetensors', 'huggingface_hub'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _checkpoint_with_extras(tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    arrays = _arrays()
    names = sorted(arrays)
    save_file({n: arrays[n] for n in names[:3]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({n: arrays[n] for n in names[3:]}, str(folder / "model-00002-of-00002.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "sub" / "notes.txt").write_bytes(b"x" * 1000)
    return folder


@pytest.mark.parametrize("chunk", [7, 4096, 8 * 1024 * 1024])
def test_digest_with_a_sink_stores_every_file_in_the_same_read(tmp_path, monkeypatch, chunk):
    from lorareg.store import blobs as blobs_mod
    from lorareg.store.blobs import BlobStore

    monkeypatch.setattr(digest_mod, "CHUNK_SIZE", chunk)  # chunks that cut through tensors
    monkeypatch.setattr(blobs_mod, "CHUNK_SIZE", chunk)
    folder = _checkpoint_with_extras(tmp_path)
    plain = checkpoint_digest(folder)
    reads: list[int] = []
    store = BlobStore(tmp_path / "blobs")
    stored = checkpoint_digest(folder, sink=store, progress=reads.append)
    assert stored == plain  # same digests, manifest and file hashes as without a sink
    on_disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert sum(reads) == on_disk  # every byte read once, not once to hash and once to store
    for rel, f in plain.files.items():
        blob = store.path_for(f.sha256)
        assert blob.read_bytes() == (folder / rel).read_bytes() and f.size == blob.stat().st_size
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == f.sha256  # named by its bytes
        assert not blob.stat().st_mode & 0o222  # read-only like every blob
    assert not list(store.tmp.rglob("*.incomplete"))  # temp files renamed, none left behind


def test_a_shard_that_shrinks_while_stored_leaves_no_blob_and_no_temp_file(tmp_path, monkeypatch):
    from lorareg.store.blobs import BlobStore

    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file(_arrays(), str(folder / "model.safetensors"))
    real = digest_mod.read_header

    def read_then_truncate(path):
        header = real(path)
        with open(path, "r+b") as f:  # the file shrinks after its header was checked
            f.truncate(header.data_offset + 8)
        return header

    monkeypatch.setattr(digest_mod, "read_header", read_then_truncate)
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint_digest(folder, sink=store)
    assert list(store.iter_blobs()) == []
    assert not [p for p in store.tmp.rglob("*") if p.is_file() and not p.name.startswith(".")]
