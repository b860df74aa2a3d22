"""Checking the folders a user hands us before anything is written: is it a checkpoint or
an adapter, safetensors or pickle (converted by ``lorareg.merge.pickle_convert``, under the
one pickle policy in ``lorareg.store.pickles``); and the facts ``show`` prints of a base."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorareg.errors import CheckpointError, NotFoundError, PickleRefusedError
from lorareg.store.pickles import is_pickle

ADAPTER_CONFIG = "adapter_config.json"
TRAINER_STATE = "trainer_state.json"
# What a transformers Trainer checkpoint holds besides the model: optimizer, scheduler, grad
# scaler and RNG states, the pickled TrainingArguments, the trainer's log, DeepSpeed's
# per-step folders.  Not part of the model, often twice its size, and pickles.
TRAINING_STATE = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "rng_state.pth", "rng_state_*.pth",
                  "training_args.bin", TRAINER_STATE, "global_step*/*", "latest", "zero_to_fp32.py")


@dataclass(frozen=True)
class Checked:
    folder: Path  # the folder to hash: the user's, or a converted copy in LORAREG_HOME/tmp
    converted_from_pickle: bool
    skipped: tuple[str, ...] = ()  # training-state files left out (relative names)
    trainer_state: dict[str, Any] | None = None  # trainer_state.json, when the folder is a Trainer checkpoint


def training_state(folder: Path) -> tuple[str, ...]:
    """Relative names of the training-state files in ``folder`` (``TRAINING_STATE``)."""
    import fnmatch

    found = []
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and any(fnmatch.fnmatchcase(rel, p) for p in TRAINING_STATE):
            found.append(rel)
    return tuple(found)


def _trainer_state(folder: Path) -> dict[str, Any] | None:
    path = folder / TRAINER_STATE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable training log: skipped like the rest, nothing recorded from it
    return data if isinstance(data, dict) else None


def _require_folder(path: Path, what: str) -> Path:
    if not path.exists():
        raise NotFoundError(f"no such {what} folder: {path}", hint="check the path, or use hf://org/name for the Hub")
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is a file, not a {what} folder", hint=f"pass the folder that holds the {what}'s files"
        )
    return path.resolve()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc.__class__.__name__})",
                              hint="re-download or re-save the checkpoint") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object", hint="re-download or re-save the checkpoint")
    return data


def _weights(folder: Path, *, allow_pickle: bool, stem: str) -> tuple[list[Path], list[Path]]:
    safetensors = sorted(folder.glob("*.safetensors"))
    state = set(training_state(folder))
    pickles = sorted(p for p in folder.iterdir() if is_pickle(p.name) and p.is_file() and p.name not in state)
    if not safetensors and pickles and not allow_pickle:
        raise PickleRefusedError(f"{folder} holds only pickle weights ({pickles[0].name}); pickle can run code when loaded")
    if not safetensors and not pickles:
        raise CheckpointError(f"{folder} has no weights: no *.safetensors file",
                              hint=f"pass the folder that holds {stem}.safetensors")
    return safetensors, pickles


def check_base(path: Path, *, allow_pickle: bool, scratch: Path) -> Checked:
    folder = _require_folder(Path(path), "checkpoint")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not a Hugging Face checkpoint: no config.json",
                              hint="pass a folder written by save_pretrained()")
    _read_json(folder / "config.json")
    safetensors, pickles = _weights(folder, allow_pickle=allow_pickle, stem="model")
    _refuse_quantized(folder, safetensors)
    if safetensors:
        return Checked(folder, False, training_state(folder), _trainer_state(folder))
    return Checked(_converted(folder, pickles, scratch, out_name="model.safetensors"), True,
                   training_state(folder), _trainer_state(folder))


def _refuse_quantized(folder: Path, safetensors: list[Path]) -> None:
    """bitsandbytes/GPTQ/AWQ checkpoints are refused as bases (merge/quantize.py says why)."""
    from lorareg.merge.quantize import refuse_quantized_base
    from lorareg.store.safetensors_header import read_header

    refuse_quantized_base(folder, [name for f in safetensors for name in read_header(f).tensors])


def check_adapter(path: Path, *, allow_pickle: bool, scratch: Path) -> Checked:
    folder = _require_folder(Path(path), "adapter")
    if not (folder / ADAPTER_CONFIG).is_file():
        raise CheckpointError(f"{folder} is not a PEFT adapter: no {ADAPTER_CONFIG}",
                              hint="pass a folder written by PeftModel.save_pretrained()")
    _read_json(folder / ADAPTER_CONFIG)
    safetensors, pickles = _weights(folder, allow_pickle=allow_pickle, stem="adapter_model")
    if safetensors:
        return Checked(folder, False, training_state(folder), _trainer_state(folder))
    return Checked(_converted(folder, pickles, scratch, out_name="adapter_model.safetensors"), True,
                   training_state(folder), _trainer_state(folder))


def _converted(folder: Path, pickles: list[Path], scratch: Path, *, out_name: str) -> Path:
    from lorareg.merge.pickle_convert import convert_pickle  # torch: only when there is a pickle

    return convert_pickle(folder, pickles, scratch, out_name=out_name)


def describe_base(folder: Path, tensors: Any) -> dict[str, Any]:
    """architecture, dtype and parameter count from config.json and the tensor headers."""
    config = _read_json(folder / "config.json")
    archs = config.get("architectures") or []
    counts: dict[str, int] = {}
    params = 0
    for t in tensors:
        n = math.prod(t.shape)
        params += n
        counts[t.dtype] = counts.get(t.dtype, 0) + n
    dtype = max(counts, key=counts.get) if counts else ""
    return {
        "architecture": archs[0] if archs else config.get("model_type", ""),
        "model_type": config.get("model_type", ""),
        "dtype": dtype,
        "param_count": params,
        "hidden_size": config.get("hidden_size", config.get("n_embd")),
        "num_layers": config.get("num_hidden_layers", config.get("n_layer")),
        "tie_word_embeddings": config.get("tie_word_embeddings"),
    }
