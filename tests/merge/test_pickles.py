"""Pickle weights: refused by the merge's readers, skipped by the output folder, and converted
to safetensors without running code (``convert_pickle``)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file

from lorareg.errors import CheckpointError, PickleRefusedError
from lorareg.merge.adapter_config import read_adapter_config
from lorareg.merge.output_folder import copy_side_files
from lorareg.merge.pickle_convert import convert_pickle
from lorareg.merge.reader import open_checkpoint


def _base_folder(folder, weights_name: str):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "tokenizer.json").write_text("{}")
    shared = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {"embed.weight": shared, "lm_head.weight": shared, "norm.weight": torch.ones(4, dtype=torch.bfloat16),
             "step": 7}
    torch.save(state, folder / weights_name)
    return folder, state


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.pt", "model.ckpt", "weights.pkl"])
def test_the_reader_refuses_a_pickle_checkpoint_by_name(tmp_path, weights):
    folder, _ = _base_folder(tmp_path / "base", weights)
    with pytest.raises(PickleRefusedError, match=weights):
        open_checkpoint(folder)


def test_the_reader_without_weights_is_a_plain_checkpoint_error(tmp_path):
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "tf_model.h5").write_bytes(b"hdf5")  # not a pickle, and not something lorareg reads
    with pytest.raises(CheckpointError, match="no model.safetensors") as err:
        open_checkpoint(folder)
    assert not isinstance(err.value, PickleRefusedError)


def test_an_adapter_with_only_pickle_weights_is_refused(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "training_args.bin").write_bytes(b"x")  # a pickle, but not the adapter's weights
    with pytest.raises(CheckpointError, match="no adapter_model.safetensors") as err:
        read_adapter_config(adapter)
    assert not isinstance(err.value, PickleRefusedError)
    (adapter / "adapter_model.bin").write_bytes(b"x")
    with pytest.raises(PickleRefusedError, match="adapter_model.bin"):
        read_adapter_config(adapter)


def test_side_files_skip_every_pickle(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    for name in ("tokenizer.json", "generation_config.json", "training_args.bin", "rng.pth", "opt.pt",
                 "last.ckpt", "x.pkl", "pytorch_model.bin.index.json", "config.json"):
        (base / name).write_text("x")
    dest = tmp_path / "dest"
    dest.mkdir()
    assert copy_side_files(base, dest) == {"generation_config.json": "base", "tokenizer.json": "base"}


def test_convert_pickle_writes_safetensors_next_to_the_other_files(tmp_path):
    folder, state = _base_folder(tmp_path / "base", "pytorch_model.bin")
    (folder / "pytorch_model.bin.index.json").write_text("{}")
    (folder / "training_args.bin").write_bytes(pickle.dumps({"lr": 1e-4}))  # not loaded: not in `pickles`
    scratch = tmp_path / "scratch"
    out = convert_pickle(folder, [folder / "pytorch_model.bin"], scratch, out_name="model.safetensors")
    assert out == scratch / "converted-base"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    tensors = load_file(out / "model.safetensors")
    assert sorted(tensors) == ["embed.weight", "lm_head.weight", "norm.weight"]  # non-tensors dropped
    for name, tensor in tensors.items():
        assert tensor.dtype == state[name].dtype and torch.equal(tensor, state[name])
    # converting again replaces the earlier copy
    (out / "stale.txt").write_text("x")
    again = convert_pickle(folder, [folder / "pytorch_model.bin"], scratch, out_name="model.safetensors")
    assert again == out and not (out / "stale.txt").exists()


class _Payload:
    def __reduce__(self):
        return (print, ("this ran",))


def test_convert_pickle_runs_no_code(tmp_path, capsys):
    folder = tmp_path / "adapter"
    folder.mkdir()
    torch.save({"w": _Payload()}, folder / "adapter_model.bin")
    with pytest.raises(CheckpointError, match="cannot load adapter_model.bin with weights_only=True") as err:
        convert_pickle(folder, [folder / "adapter_model.bin"], tmp_path / "scratch", out_name="a.safetensors")
    assert "safetensors" in err.value.hint
    assert "this ran" not in capsys.readouterr().out
    torch.save([torch.ones(2)], folder / "adapter_model.bin")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        convert_pickle(folder, [folder / "adapter_model.bin"], tmp_path / "scratch", out_name="a.safetensors")
