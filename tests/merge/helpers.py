"""Oracles and readers shared by the merge tests: PEFT is the reference, never our own formula."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lorareg.merge import AdapterInput, MergePlan


def auto_class(folder: Path):
    from tests.support import factories

    return factories._auto_class(folder)


def peft_model(base: Path, adapter: Path, dtype: torch.dtype, *, autocast: bool = True):
    """The unmerged PEFT adapter model, loaded the way users do."""
    from peft import PeftModel

    model = auto_class(base).from_pretrained(base, dtype=dtype)
    return PeftModel.from_pretrained(model, adapter, autocast_adapter_dtype=autocast).eval()


def peft_merged(base: Path, adapter: Path, dtype: torch.dtype, *, autocast: bool = True):
    return peft_model(base, adapter, dtype, autocast=autocast).merge_and_unload()


def read_folder(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor in a model folder's top-level safetensors files."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(path))
    return out


def mismatches(reference: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors are not bit-identical (missing ones included)."""
    bad = [k for k, v in reference.items() if k not in ours or not torch.equal(v, ours[k])]
    return bad


def state(model) -> dict[str, torch.Tensor]:
    """A model's state dict as save_pretrained writes it (tied duplicates dropped)."""
    sd = dict(model.state_dict())
    if getattr(model.config, "tie_word_embeddings", False) and "lm_head.weight" in sd:
        emb = model.get_input_embeddings().weight
        if sd["lm_head.weight"].data_ptr() == emb.data_ptr():
            del sd["lm_head.weight"]
    return sd


def config(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


INPUT_IDS = torch.tensor([[4, 9, 17, 30, 55, 1, 5, 127], [3, 8, 100, 64, 2, 77, 12, 40]])


def forward(model, input_ids: torch.Tensor = INPUT_IDS) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=input_ids)
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).float()


def plan(base, *adapters, **kwargs) -> MergePlan:
    items = tuple(a if isinstance(a, AdapterInput) else AdapterInput(a) for a in adapters)
    return MergePlan(base=base, adapters=items, **kwargs)
