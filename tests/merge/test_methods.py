"""Merge methods against peft.utils.merge_utils on the same deltas, bit for bit."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from peft.utils import merge_utils as peft_mu

from lorareg.errors import MergeError
from lorareg.merge.methods import METHODS, MergeMethod, get_method


def _peft_linear(deltas, weights, density, msm):
    return peft_mu.task_arithmetic(deltas, weights)


# peft's function for each registered method; a method added to METHODS without a reference
# here fails test_every_method_has_a_peft_reference.
PEFT_REFERENCE = {
    "linear": _peft_linear,
    "ties": lambda d, w, density, msm: peft_mu.ties(d, w, density, msm),
    "dare_linear": lambda d, w, density, msm: peft_mu.dare_linear(d, w, density),
    "dare_ties": lambda d, w, density, msm: peft_mu.dare_ties(d, w, density, msm),
    "magnitude_prune": lambda d, w, density, msm: peft_mu.magnitude_prune(d, w, density),
}

SHAPES = [(7,), (16, 24), (33, 17), (2, 5, 6), "transposed"]
# Up to four adapters (where peft's sum(dim=0) adds in adapter order), negative weights included.
WEIGHT_SETS = [[1.0], [-0.7], [0.5, 0.5], [1.3, -0.4, 0.25], [0.9, -1.1, 0.3, 2.0]]
DENSITIES = [0.07, 0.5, 0.9, 1.0]
SIGN_METHODS = ["total", "frequency"]


def _deltas(shape, n: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        if shape == "transposed":  # a Conv1D-style delta: a transposed, non-contiguous view
            t = torch.randn(24, 16, generator=gen).T
        else:
            t = torch.randn(shape, generator=gen)
        t = t * 10.0 ** (i - 1)  # different scales, so weighting and sign election matter
        if i % 2 == 1:
            # Quantised copy: many equal magnitudes (topk tie-breaking) and exact zeros (sign 0).
            t = torch.round(t * 2 / 10.0 ** (i - 1)) / 2
        out.append(t)
    return out


def _takes(method: MergeMethod, param: str) -> bool:
    return any(p.name == param for p in method.params)


def _params(name, density, msm):
    """The params a method declares, from the values the PEFT reference takes."""
    given = {"density": density, "majority_sign_method": msm}
    return {k: v for k, v in given.items() if _takes(METHODS[name], k)}


def _cases():
    for name, method in METHODS.items():
        for shape in SHAPES:
            for weights in WEIGHT_SETS:
                for density in DENSITIES if _takes(method, "density") else [None]:
                    for msm in SIGN_METHODS if _takes(method, "majority_sign_method") else ["total"]:
                        yield pytest.param(name, shape, weights, density, msm,
                                           id=f"{name}-{shape}-n{len(weights)}-{weights[0]}-d{density}-{msm}")


def _ours(name, deltas, weights, density, msm, seed):
    return METHODS[name].combine(
        deltas, weights, params=_params(name, density, msm),
        generator=torch.Generator().manual_seed(seed),
    )


def _peft(name, deltas, weights, density, msm, seed):
    torch.manual_seed(seed)  # peft's random_pruning draws from the global RNG
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns that density 1 prunes nothing
        return PEFT_REFERENCE[name](deltas, torch.tensor(weights), density, msm)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality: unlike torch.equal, tells -0.0 from 0.0 and compares NaNs."""
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
        a.contiguous().view(torch.int32), b.contiguous().view(torch.int32)
    )


def test_every_method_has_a_peft_reference():
    assert set(PEFT_REFERENCE) == set(METHODS)
    assert set(METHODS) == {"linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"}


@pytest.mark.parametrize(("name", "shape", "weights", "density", "msm"), list(_cases()))
def test_matches_peft_bit_for_bit(name, shape, weights, density, msm):
    deltas = _deltas(shape, len(weights), seed=len(weights))
    seed = 1234 + len(weights)
    ours = _ours(name, deltas, weights, density, msm, seed)
    ref = _peft(name, deltas, weights, density, msm, seed)
    assert ours.dtype == torch.float32
    assert ours.shape == deltas[0].shape
    assert _same_bits(ours, ref), f"max abs diff {(ours - ref).abs().max().item()}"
    if _takes(METHODS[name], "density") and density < 1:
        assert not torch.equal(ours, _ours("linear", deltas, weights, None, "total", 0))


TIE_CASES = {
    "equal_magnitudes": torch.tensor([3.0, -3.0, 3.0, 1.0, 0.0, -0.0, -1.0, 2.0, 3.0, -2.0]),
    "all_same": torch.where(torch.arange(60) % 3 == 0, -1.0, 1.0).reshape(6, 10),
    "mostly_zero": torch.cat([torch.zeros(50), torch.tensor([0.5, -0.25, 4.0])]),
    "with_nan": torch.tensor([1.0, float("nan"), -2.0, 0.5, 2.0, float("nan")]),
}


@pytest.mark.parametrize("case", list(TIE_CASES))
@pytest.mark.parametrize("density", [0.1, 0.25, 0.3, 0.5, 0.75, 0.95])
def test_magnitude_pruning_ties_break_like_peft(case, density):
    # Magnitude pruning takes a kthvalue shortcut unless the threshold magnitude is shared;
    # these tensors hit every branch (shared threshold, zero threshold, NaN).
    delta = TIE_CASES[case]
    for name in ("magnitude_prune", "ties"):
        ours = _ours(name, [delta, -0.5 * delta], [1.0, 0.5], density, "total", 0)
        ref = _peft(name, [delta, -0.5 * delta], [1.0, 0.5], density, "total", 0)
        assert _same_bits(ours, ref), (name, ours, ref)


@pytest.mark.parametrize("n", [5, 7])
def test_linear_sums_in_adapter_order(n):
    # Beyond four adapters peft's sum(dim=0) regroups the additions; ours stays left to right.
    deltas = _deltas((40, 30), n, seed=3)
    weights = [0.3 * (-1) ** i + 0.1 * i for i in range(n)]
    expected = deltas[0] * weights[0]
    for d, w in zip(deltas[1:], weights[1:]):
        expected = expected + d * w
    ours = _ours("linear", deltas, weights, None, "total", 0)
    assert torch.equal(ours, expected)
    exact = sum(d.double() * w for d, w in zip(deltas, weights))
    torch.testing.assert_close(ours.double(), exact, rtol=1e-6, atol=1e-6)


def test_linear_single_adapter_at_weight_one_is_untouched():
    delta = torch.randn(8, 4)
    before = delta.clone()
    out = METHODS["linear"].combine([delta], [1.0], params={}, generator=torch.Generator())
    assert out is delta
    neg = METHODS["linear"].combine([delta], [-1.0], params={}, generator=torch.Generator())
    assert torch.equal(neg, -delta)
    assert torch.equal(delta, before)  # negation did not act in place


def test_inputs_are_not_modified():
    deltas = _deltas((16, 24), 3, seed=9)
    copies = [d.clone() for d in deltas]
    for name, method in METHODS.items():
        method.combine(deltas, [0.5, -1.0, 2.0], params=_params(name, 0.3, "total"),
                       generator=torch.Generator().manual_seed(0))
        assert all(torch.equal(d, c) for d, c in zip(deltas, copies)), name


@pytest.mark.parametrize("name", list(METHODS))
def test_same_seed_same_bytes_and_global_rng_untouched(name):
    method = METHODS[name]
    deltas = _deltas((64, 48), 3, seed=5)
    kwargs = {"params": _params(name, 0.4, "frequency")}
    state = torch.get_rng_state()
    a = method.combine(deltas, [1.0, -0.5, 0.8], generator=torch.Generator().manual_seed(7), **kwargs)
    b = method.combine(deltas, [1.0, -0.5, 0.8], generator=torch.Generator().manual_seed(7), **kwargs)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.numpy().tobytes() == b.numpy().tobytes()
    c = method.combine(deltas, [1.0, -0.5, 0.8], generator=torch.Generator().manual_seed(8), **kwargs)
    assert torch.equal(a, c) != method.random  # only the random methods depend on the seed


@pytest.mark.parametrize("name", list(METHODS))
def test_independent_of_thread_count(name):
    method = METHODS[name]
    # Large enough (2 x 300k elements) that torch splits every op across two threads.
    deltas = _deltas((600, 500), 2, seed=11) + _deltas((600, 500), 1, seed=12)
    kwargs = {"params": _params(name, 0.3, "total")}
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(method.combine(deltas, [0.7, -1.2, 0.4],
                                          generator=torch.Generator().manual_seed(3), **kwargs))
    finally:
        torch.set_num_threads(threads)
    assert results[0].numpy().tobytes() == results[1].numpy().tobytes()


def test_registry_and_flags():
    for name, method in METHODS.items():
        assert isinstance(method, MergeMethod)
        assert method.name == name
        assert get_method(name) is method
    assert [n for n, m in METHODS.items() if m.supports_subtract] == ["linear"]
    assert {n for n, m in METHODS.items() if m.random} == {"dare_linear", "dare_ties"}
    assert {n for n, m in METHODS.items() if not _takes(m, "density")} == {"linear"}
    assert {n for n, m in METHODS.items() if _takes(m, "majority_sign_method")} == {"ties", "dare_ties"}
    assert METHODS["linear"].params == ()


def test_unknown_method_names_the_known_ones():
    with pytest.raises(MergeError, match="unknown merge method 'slerp'") as err:
        get_method("slerp")
    assert all(name in err.value.hint for name in METHODS)


PRUNING = [n for n, m in METHODS.items() if _takes(m, "density")]


@pytest.mark.parametrize("name", PRUNING)
@pytest.mark.parametrize("density", [None, 0, 0.0, -0.1, 1.5, math.nan, math.inf, True, "0.5"])
def test_pruning_methods_reject_bad_density(name, density):
    with pytest.raises(MergeError, match="density") as err:
        METHODS[name].resolve_params({"density": density}, n_adapters=2)
    assert err.value.hint
    with pytest.raises(MergeError, match="density"):
        METHODS[name].combine([torch.ones(2, 2)], [1.0], params={"density": density},
                              generator=torch.Generator())


@pytest.mark.parametrize("name", PRUNING)
def test_pruning_methods_accept_density_in_range(name):
    for density in (1e-6, 0.5, 1, 1.0):
        resolved = METHODS[name].resolve_params(_params(name, density, "frequency"), n_adapters=1)
        assert resolved["density"] == density and type(resolved["density"]) is float


def test_linear_rejects_a_density():
    with pytest.raises(MergeError, match="takes no density") as err:
        METHODS["linear"].resolve_params({"density": 0.5}, n_adapters=2)
    assert "ties" in err.value.hint
    assert METHODS["linear"].resolve_params({}, n_adapters=2) == {}


@pytest.mark.parametrize("name", list(METHODS))
def test_validate_rejects_bad_sign_method_and_adapter_count(name):
    with pytest.raises(MergeError, match="majority_sign_method") as err:
        METHODS[name].resolve_params(_params(name, 0.5, "mean") | {"majority_sign_method": "mean"}, n_adapters=2)
    if _takes(METHODS[name], "majority_sign_method"):
        assert "total" in err.value.hint and "frequency" in err.value.hint
    else:  # only the methods that elect a sign take it; the others refuse it instead of ignoring it
        assert f"the {name} method takes no majority_sign_method" in str(err.value)
    for n in (0, -1, 1.5, None):
        with pytest.raises(MergeError, match="at least one adapter"):
            METHODS[name].resolve_params(_params(name, 0.5, "total"), n_adapters=n)


@pytest.mark.parametrize("name", list(METHODS))
def test_combine_rejects_inconsistent_inputs(name):
    method = METHODS[name]
    kw = {"params": _params(name, 0.5, "total"), "generator": torch.Generator()}
    a = torch.ones(3, 4)
    cases = [
        (([], []), "no deltas"),
        (([a, a], [1.0]), "2 deltas but 1 weights"),
        (([a, torch.ones(4, 3)], [1.0, 1.0]), "has shape"),
        (([a, a.half()], [1.0, 1.0]), "float16"),
        (([a, a], [1.0, math.nan]), "finite"),
    ]
    for (deltas, weights), message in cases:
        with pytest.raises(MergeError, match=message) as err:
            method.combine(deltas, weights, **kw)
        assert err.value.hint
