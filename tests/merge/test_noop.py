"""Merges that change nothing are refused: an untrained adapter (PEFT's own init, every lora_B
zero), or deltas too small to move a single bf16 weight.  ``allow_noop`` merges them anyway."""

from __future__ import annotations

import pytest
import torch

from lorareg.errors import MergeError
from lorareg.merge import AdapterInput, MergePlan, merge
from tests.support.factories import make_lora

from .helpers import read_folder


def _untrained(base, dest, **kwargs):
    """An adapter saved straight after get_peft_model, as a run that never trained leaves it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **kwargs)
                   ).save_pretrained(dest)
    return dest


def _scaled(adapter, factor: float, *, zero: tuple[str, ...] = ()):
    """Rescale an adapter's lora_B in place; modules named in ``zero`` get lora_B = 0."""
    from safetensors.torch import load_file, save_file

    path = adapter / "adapter_model.safetensors"
    sd = load_file(path)
    for k in sd:
        if "lora_B" in k:
            sd[k] = sd[k] * (0.0 if any(z in k for z in zero) else factor)
    save_file(sd, path, metadata={"format": "pt"})
    return adapter


def test_untrained_adapter_is_refused(llama_bf16, tmp_path):
    adapter = _untrained(llama_bf16, tmp_path / "untrained")
    with pytest.raises(MergeError, match="every LoRA delta is exactly zero") as err:
        merge(MergePlan(base=llama_bf16, adapters=(AdapterInput(adapter),)), tmp_path / "out")
    assert "allow-noop" in err.value.hint
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))

    out = merge(MergePlan(base=llama_bf16, adapters=(AdapterInput(adapter),), allow_noop=True), tmp_path / "out")
    assert out.tensors_differing == 0
    assert any("every LoRA delta is zero" in n for n in out.notes)
    base = read_folder(llama_bf16)
    assert all(torch.equal(base[k], v) for k, v in read_folder(out.path).items())


def test_deltas_that_round_away_are_refused(llama_bf16, tmp_path):
    """Non-zero deltas ~1e-9: not one bf16 weight moves, so the output would be the base."""
    adapter = _scaled(make_lora(llama_bf16, tmp_path / "tiny", seed=3), 1e-7)
    with pytest.raises(MergeError, match="merged weights equal the base's.*rounds away in bfloat16"):
        merge(MergePlan(base=llama_bf16, adapters=(AdapterInput(adapter),)), tmp_path / "out")
    # in float32 they do move the weights
    out = merge(MergePlan(base=llama_bf16, adapters=(AdapterInput(adapter),), dtype="float32"), tmp_path / "f32")
    assert out.tensors_differing == out.tensors_changed > 0
    out = merge(MergePlan(base=llama_bf16, adapters=(AdapterInput(adapter),), allow_noop=True), tmp_path / "out")
    assert out.tensors_differing == 0 and any("equal the base's" in n for n in out.notes)


def test_multi_adapter_merge_names_zero_modules(llama_bf16, lora_a, tmp_path):
    partial = _scaled(make_lora(llama_bf16, tmp_path / "partial", seed=5, target_modules=["q_proj", "v_proj"]),
                      1.0, zero=("layers.1.self_attn.q_proj",))
    out = merge(MergePlan(base=llama_bf16, adapters=(AdapterInput(lora_a), AdapterInput(partial, 0.5))),
                tmp_path / "out")
    assert "partial: zero delta in 1 of 4 modules: model.layers.1.self_attn.q_proj" in out.notes

    untrained = _untrained(llama_bf16, tmp_path / "untrained")
    with pytest.raises(MergeError, match="untrained.*every LoRA delta|every LoRA delta.*untrained"):
        merge(MergePlan(base=llama_bf16, adapters=(AdapterInput(lora_a), AdapterInput(untrained))), tmp_path / "o2")
