"""TIES/DARE/magnitude pruning run the steps after pruning in row blocks (to bound memory):
every block boundary must give PEFT's bits, and the random draws PEFT's order."""

from __future__ import annotations

import pytest
import torch

from lorareg.merge.methods import task_arithmetic
from tests.merge.test_methods import _cases, _deltas, _ours, _peft, _same_bits

PRUNING = {"ties", "dare_linear", "dare_ties", "magnitude_prune"}


@pytest.mark.parametrize(("name", "shape", "weights", "density", "msm"),
                         [c for c in _cases() if c.values[0] in PRUNING])
def test_tiny_blocks_match_peft_bit_for_bit(monkeypatch, name, shape, weights, density, msm):
    # 16 elements a block: every shape of test_methods spans several blocks, a row per block
    monkeypatch.setattr(task_arithmetic, "_BLOCK_ELEMENTS", 16)
    deltas = _deltas(shape, len(weights), seed=len(weights))
    seed = 1234 + len(weights)
    ours = _ours(name, deltas, weights, density, msm, seed)
    ref = _peft(name, deltas, weights, density, msm, seed)
    assert _same_bits(ours, ref), f"max abs diff {(ours - ref).abs().max().item()}"


@pytest.mark.parametrize("name", sorted(PRUNING))
def test_default_blocks_on_a_projection_sized_delta(name):
    """A 1100x700 delta spans several default blocks, with a short last one."""
    deltas = _deltas((1100, 700), 3, seed=5)
    assert deltas[0].numel() > 2 * task_arithmetic._BLOCK_ELEMENTS
    ours = _ours(name, deltas, [0.9, -0.6, 0.4], 0.3, "total", 77)
    ref = _peft(name, deltas, [0.9, -0.6, 0.4], 0.3, "total", 77)
    assert _same_bits(ours, ref)


def test_random_pruning_draws_in_peft_order_and_leaves_the_generator_alike():
    t = torch.randn(333, 65, generator=torch.Generator().manual_seed(1))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    whole = t * torch.bernoulli(torch.full_like(t, 0.4), generator=g1) / 0.4
    blocked = t.clone()
    task_arithmetic._random_prune_(blocked, 0.4, rescale=True, generator=g2, step=7)
    assert torch.equal(whole.view(torch.int32), blocked.view(torch.int32))
    assert torch.equal(torch.rand(5, generator=g1), torch.rand(5, generator=g2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_kth_largest_equals_kthvalue(dtype):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(10007, generator=gen) * 0.01).to(dtype).abs()
    x[::5] = 0
    x[3], x[8], x[9] = float("nan"), float("inf"), x[10]
    n = x.numel()
    for k in (1, 2, 17, n // 2, n - 1, n):
        ours, ref = task_arithmetic._kth_largest(x, k), torch.kthvalue(x, n - k + 1).values
        assert ours.dtype == ref.dtype and (ours == ref or (ours.isnan() and ref.isnan())), k
