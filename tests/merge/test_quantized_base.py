"""QLoRA: merging into dequantize(quantize(base)) equals, bit for bit, what transformers' own
4-bit load gives (dequantized into a bf16 copy of the base) with PEFT's merge on top.
bitsandbytes is in the ``test`` extra: it runs on CPU, so nothing here is skipped.

The adapter is made the QLoRA way: PEFT wraps the model transformers loaded with
``BitsAndBytesConfig(load_in_4bit=True, ...)`` on CPU."""

from __future__ import annotations

import pytest
import torch

from lorareg.errors import MergeError
from lorareg.merge import AdapterInput, MergePlan, merge
from lorareg.merge.quantize import BaseQuantization, quantized_checkpoint, roundtrip
from tests.support.chat_adapters import make_small_vocab_base

from .helpers import mismatches, read_folder, state


def _bnb_config(q: BaseQuantization):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                              bnb_4bit_use_double_quant=q.double_quant, bnb_4bit_compute_dtype=torch.bfloat16)


def _load_4bit(base, q):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base, quantization_config=_bnb_config(q), device_map="cpu",
                                                dtype=torch.bfloat16)


def _qlora_adapter(base, dest, q, seed=0):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_load_4bit(base, q), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                                             "down_proj"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * 0.05)
    model.save_pretrained(dest)
    return dest


def _reference(base, adapter, q):
    """transformers' 4-bit weights, dequantized into a bf16 copy of the base, then PEFT's merge."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    quantized = _load_4bit(base, q)
    copy = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    n = 0
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                copy.get_submodule(name).weight.copy_(F.dequantize_4bit(module.weight.data, module.weight.quant_state))
                n += 1
    assert n == 14  # every linear layer but lm_head, targeted by the adapter or not
    return state(PeftModel.from_pretrained(copy, adapter).merge_and_unload())


@pytest.mark.parametrize("q", [BaseQuantization("nf4"), BaseQuantization("nf4", double_quant=True),
                               BaseQuantization("fp4")], ids=["nf4", "nf4-double", "fp4"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_matches_transformers_4bit_load(tmp_path_factory, tmp_path, kind, q):
    # rows of 64 and 128 values: whole 4-bit blocks (see test_rows_that_split_blocks)
    base = make_small_vocab_base(tmp_path_factory.mktemp("qbase") / kind, kind=kind, dtype=torch.bfloat16,
                                 hidden=64)
    adapter = _qlora_adapter(base, tmp_path / "adapter", q, seed=2)
    out = merge(MergePlan(base=base, adapters=(AdapterInput(adapter),), base_quantization=q), tmp_path / "out")
    reference = _reference(base, adapter, q)
    ours = read_folder(out.path)
    assert mismatches(reference, ours) == [] and set(ours) == set(reference)
    assert any("14 linear layers dequantized" in n for n in out.notes)
    # without the quantization the merge is a different (16-bit) model
    plain = read_folder(merge(MergePlan(base=base, adapters=(AdapterInput(adapter),)), tmp_path / "plain").path)
    assert mismatches(reference, plain)

    again = merge(MergePlan(base=base, adapters=(AdapterInput(adapter),), base_quantization=q), tmp_path / "again")
    assert again.digest == out.digest  # deterministic: rebuilt bit for bit


def test_rows_that_split_blocks():
    """bitsandbytes numbers its 4-bit blocks over the flattened weight.  Where a row is not a
    whole number of blocks (32 values, blocksize 64), bitsandbytes 0.50.2's fast CPU
    dequantize kernel reads the wrong absmax for part of the row (errors 4-5x larger,
    measured), so transformers' CPU 4-bit load disagrees with its GPU one there; lorareg
    follows the blocks as quantize_4bit made them, which is bitsandbytes' own reference
    implementation of dequantize_4bit."""
    import bitsandbytes.functional as F
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    w = torch.randn(96, 32, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    for q in (BaseQuantization("nf4"), BaseQuantization("fp4", double_quant=True)):
        packed, state = F.quantize_4bit(w, blocksize=q.blocksize, quant_type=q.quant_type,
                                        compress_statistics=q.double_quant)
        absmax = state.absmax
        if state.nested:
            absmax = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
        reference = _dequantize_4bit_compute(packed.reshape(-1), absmax.float(), _get_4bit_code(q.quant_type, w.device),
                                             q.blocksize, w.shape, w.dtype)
        assert torch.equal(roundtrip(w, q), reference)


def test_roundtrip_blocksize_and_dtypes():
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        x = w.to(dtype)
        small, large = roundtrip(x, BaseQuantization("nf4", blocksize=64)), roundtrip(x, BaseQuantization("nf4",
                                                                                                          blocksize=256))
        assert small.dtype == dtype and small.shape == x.shape and not torch.equal(small, large)
    # a weight of 8 pieces goes through bitsandbytes piece by piece: the same bits as one call
    import bitsandbytes.functional as F

    big = torch.randn(2048, 1024, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    for q in (BaseQuantization("nf4", double_quant=True), BaseQuantization("fp4", blocksize=128)):
        packed, state = F.quantize_4bit(big, blocksize=q.blocksize, quant_type=q.quant_type,
                                        compress_statistics=q.double_quant)
        assert torch.equal(roundtrip(big, q), F.dequantize_4bit(packed, state))
    with pytest.raises(MergeError, match="blocksize 100"):
        BaseQuantization("nf4", blocksize=100)
    with pytest.raises(MergeError, match="unknown base quantization"):
        BaseQuantization("int8")


def test_quantized_checkpoint_is_recognised(tmp_path):
    base = make_small_vocab_base(tmp_path / "base", dtype=torch.bfloat16)
    assert quantized_checkpoint(base) is None
    _load_4bit(base, BaseQuantization("nf4")).save_pretrained(tmp_path / "q4")
    assert quantized_checkpoint(tmp_path / "q4") == "bitsandbytes"
