"""apply_delta adds in row blocks, and stops comparing old and new bits once a block changed:
the bytes must be those of PEFT's whole-tensor ``weight.data += delta`` either way."""

from __future__ import annotations

import pytest
import torch

from lorareg.merge import lora_math


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("embedding", [False, True])
@pytest.mark.parametrize("changed", [False, True])
def test_blocks_give_peft_bits(dtype, embedding, changed):
    gen = torch.Generator().manual_seed(0)
    base = (torch.randn(700, 900, generator=gen) * 0.02).to(dtype)  # ~2.4 default blocks
    delta = torch.randn(700, 900, generator=gen) * 1e-3
    delta[:300] = 0  # the first blocks change nothing: the comparison must go on past them
    ref = base.clone()
    ref.data += delta.to(dtype) if embedding else delta  # PEFT: Embedding rounds first, Linear not
    w = base.clone()
    assert lora_math.apply_delta(w, delta, embedding=embedding, changed=changed) is True
    assert torch.equal(_bits(w), _bits(ref))


def test_a_delta_that_rounds_away_is_reported_unchanged():
    w = torch.ones(600, 600, dtype=torch.bfloat16)
    assert lora_math.apply_delta(w, torch.full((600, 600), 1e-6), embedding=False) is False
    assert torch.equal(w, torch.ones(600, 600, dtype=torch.bfloat16))
