"""``combine(..., overwrite=True)``, the engine's call: the methods prune and combine inside the
deltas they are given, and must still give PEFT's bits (and the random draws PEFT's order)."""

from __future__ import annotations

import pytest
import torch

from lorareg.merge.methods import METHODS, task_arithmetic
from tests.merge.test_methods import _cases, _deltas, _params, _peft, _same_bits


def _in_place(name, deltas, weights, density, msm, seed):
    return METHODS[name].combine([d.clone() for d in deltas], weights, params=_params(name, density, msm),
                                 generator=torch.Generator().manual_seed(seed), overwrite=True)


@pytest.mark.parametrize(("name", "shape", "weights", "density", "msm"),
                         [c for c in _cases() if c.values[2] != [1.0] and c.values[4] == "total"])
def test_overwrite_matches_peft_bit_for_bit(name, shape, weights, density, msm):
    deltas = _deltas(shape, len(weights), seed=len(weights))
    seed = 4321 + len(weights)
    assert _same_bits(_in_place(name, deltas, weights, density, msm, seed),
                      _peft(name, deltas, weights, density, msm, seed))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_overwrite_with_tiny_blocks_and_ties_at_the_threshold(monkeypatch, name):
    """16-element blocks over a transposed delta whose quantised copies tie at the k-th largest
    magnitude (the topk path) and a random one (the threshold path)."""
    monkeypatch.setattr(task_arithmetic, "_BLOCK_ELEMENTS", 16)
    deltas = _deltas("transposed", 3, seed=11)
    ours = _in_place(name, deltas, [0.8, -0.5, 1.2], 0.4, "total", 5)
    assert _same_bits(ours, _peft(name, deltas, [0.8, -0.5, 1.2], 0.4, "total", 5))


def test_overwrite_uses_the_deltas_and_plain_combine_leaves_them_alone():
    deltas = _deltas((40, 30), 2, seed=3)
    kept = [d.clone() for d in deltas]
    params = {"density": 0.5, "majority_sign_method": "total"}
    METHODS["ties"].combine(deltas, [1.0, 0.5], params=params, generator=torch.Generator())
    assert all(_same_bits(a, b) for a, b in zip(deltas, kept))
    out = METHODS["ties"].combine(deltas, [1.0, 0.5], params=params, generator=torch.Generator(), overwrite=True)
    assert out.data_ptr() == deltas[0].data_ptr()
