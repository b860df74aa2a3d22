"""Methods declare their parameters; MergePlan carries them as a mapping; a new method with a
new parameter works through the plan and the engine without touching any other file."""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
import subprocess
import sys

import pytest
import torch

from lorareg.errors import MergeError
from lorareg.merge import METHODS, AdapterInput, MergePlan, Param, get_method, merge
from lorareg.merge import methods as methods_module
from lorareg.merge.methods import MergeMethod, TaskArithmetic
from lorareg.merge.methods.linear import LINEAR
from lorareg.merge.plan import validate_plan

# A valid value for every required parameter any registered method declares.
REQUIRED_SAMPLES = {"density": 0.5}


def _required(method: MergeMethod) -> dict:
    return {p.name: REQUIRED_SAMPLES[p.name] for p in method.params if p.required}


# --- declarations --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_declares_its_parameters_fully(name):
    method = METHODS[name]
    assert method.summary.strip() and "\n" not in method.summary
    assert isinstance(method.params, tuple)
    assert len({p.name for p in method.params}) == len(method.params)
    for p in method.params:
        assert isinstance(p, Param)
        assert p.help.strip(), p.name
        assert p.type in (float, int, str, bool)
        assert p.required == (p.default is None)
        if p.required:
            assert p.name in REQUIRED_SAMPLES  # so the tests here can fill it in
        else:
            assert p.check(p.default, method=name) == p.default
        if p.choices is not None:
            assert p.default is None or p.default in p.choices


@pytest.mark.parametrize("name", list(METHODS))
def test_resolve_params_fills_defaults(name):
    method = METHODS[name]
    resolved = method.resolve_params(_required(method), n_adapters=2)
    assert list(resolved) == [p.name for p in method.params]
    assert type(resolved) is dict
    for p in method.params:
        assert resolved[p.name] == (REQUIRED_SAMPLES[p.name] if p.required else p.default)
    # None counts as not given: an unset CLI option
    assert method.resolve_params({**_required(method), **{p.name: None for p in method.params if not p.required}},
                                 n_adapters=1) == resolved


@pytest.mark.parametrize("name", list(METHODS))
def test_an_undeclared_parameter_is_refused_naming_the_ones_it_takes(name):
    method = METHODS[name]
    with pytest.raises(MergeError) as err:
        method.resolve_params({**_required(method), "temperature": 0.7}, n_adapters=2)
    message = str(err.value)
    assert "\n" not in message
    assert f"the {name} method takes no temperature" in message
    assert all(p.name in message for p in method.params)
    assert err.value.hint
    with pytest.raises(MergeError, match="mapping"):
        method.resolve_params([("density", 0.5)], n_adapters=2)


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if any(p.name == "density" for p in m.params)])
@pytest.mark.parametrize("density", [0, 1.5, "x", True, -1, math.nan, math.inf, "0.5", [0.5]])
def test_bad_densities_are_refused_in_one_line(name, density):
    with pytest.raises(MergeError, match=r"density must be in \(0, 1\]") as err:
        METHODS[name].resolve_params({"density": density}, n_adapters=2)
    assert "\n" not in str(err.value)
    assert "0, 1]" in err.value.hint


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if any(p.name == "density" for p in m.params)])
def test_an_int_density_becomes_a_float_and_a_missing_one_is_refused(name):
    resolved = METHODS[name].resolve_params({"density": 1}, n_adapters=1)
    assert resolved["density"] == 1.0 and type(resolved["density"]) is float
    for given in ({}, {"density": None}):
        with pytest.raises(MergeError, match=f"the {name} method needs a density") as err:
            METHODS[name].resolve_params(given, n_adapters=1)
        assert "density" in err.value.hint


@pytest.mark.parametrize("value", ["bogus", "TOTAL", 1, True])
def test_bad_majority_sign_methods_are_refused(value):
    for name in ("ties", "dare_ties"):
        with pytest.raises(MergeError, match="majority_sign_method") as err:
            METHODS[name].resolve_params({"density": 0.5, "majority_sign_method": value}, n_adapters=2)
        assert "\n" not in str(err.value)
        assert err.value.hint == "use one of: total, frequency"


def test_majority_sign_method_is_declared_only_where_a_sign_is_elected():
    for name, method in METHODS.items():
        sign = [p for p in method.params if p.name == "majority_sign_method"]
        assert bool(sign) == (name in ("ties", "dare_ties"))
        if sign:
            assert (sign[0].default, sign[0].choices) == ("total", ("total", "frequency"))
    with pytest.raises(MergeError, match="the magnitude_prune method takes no majority_sign_method") as err:
        METHODS["magnitude_prune"].resolve_params({"density": 0.5, "majority_sign_method": "total"}, n_adapters=1)
    assert "ties" in err.value.hint and "dare_ties" in err.value.hint


def test_task_arithmetic_instances_follow_their_configuration():
    assert {n for n, m in METHODS.items() if isinstance(m, TaskArithmetic)} == {
        "ties", "dare_linear", "dare_ties", "magnitude_prune"}
    ties, dare = METHODS["ties"], METHODS["dare_ties"]
    assert (ties.prune, ties.rescale, ties.elect_sign, ties.random) == ("magnitude", False, True, False)
    assert (dare.prune, dare.rescale, dare.elect_sign, dare.random) == ("random", True, True, True)
    with pytest.raises(ValueError, match="prune"):
        TaskArithmetic(name="x", summary="x", prune="top", rescale=False, elect_sign=False)
    with pytest.raises(ValueError, match="rescale"):
        TaskArithmetic(name="x", summary="x", prune="magnitude", rescale=True, elect_sign=False)
    # A new configuration is one line and behaves like the methods it mixes.
    magnitude_only = TaskArithmetic(name="magnitude_ties_free", summary="x", prune="magnitude", rescale=False,
                                elect_sign=False)
    deltas = [torch.randn(6, 5, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    gen = torch.Generator()
    assert torch.equal(magnitude_only.combine(deltas, [1.0, 0.5], params={"density": 0.4}, generator=gen),
                       METHODS["magnitude_prune"].combine(deltas, [1.0, 0.5], params={"density": 0.4}, generator=gen))


def test_param_declarations_are_checked_when_defined():
    with pytest.raises(TypeError, match="type"):
        Param("x", list, None, "a list")
    with pytest.raises(TypeError, match="range"):
        Param("x", str, None, "a string", low=0)
    with pytest.raises(TypeError, match="bad default"):
        Param("x", float, 2.0, "a fraction", low=0, high=1)
    with pytest.raises(TypeError, match="bad default"):
        Param("x", str, "c", "a letter", choices=("a", "b"))


def test_param_types():
    flag = Param("flag", bool, False, "a switch")
    count = Param("count", int, 3, "how many", low=1)
    label = Param("label", str, "a", "a name")
    assert flag.check(True, method="m") is True
    for bad in (1, "true", None):
        with pytest.raises(MergeError, match="flag must be true or false"):
            flag.check(bad, method="m")
    assert count.check(5, method="m") == 5
    for bad in (2.0, True, 0, "5"):
        with pytest.raises(MergeError, match=r"count must be in \[1, inf\)"):
            count.check(bad, method="m")
    with pytest.raises(MergeError, match="label must be a string"):
        label.check(1, method="m")


# --- the plan -------------------------------------------------------------------------------


def test_plan_params_are_a_frozen_copy(tmp_path):
    given = {"density": 0.5}
    plan = MergePlan(base=tmp_path, adapters=(AdapterInput(tmp_path / "a"),), method="ties", params=given)
    given["density"] = 0.9
    assert plan.params == {"density": 0.5}
    with pytest.raises(TypeError):
        plan.params["density"] = 0.9  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.params = {}  # type: ignore[misc]
    assert MergePlan(base=tmp_path, adapters=()).params == {}
    same = MergePlan(base=tmp_path, adapters=(AdapterInput(tmp_path / "a"),), method="ties", params={"density": 0.5})
    assert plan == same and hash(plan) == hash(same)
    assert plan != dataclasses.replace(plan, params={"density": 0.6})
    for copied in (copy.deepcopy(plan), pickle.loads(pickle.dumps(plan)), dataclasses.replace(plan)):
        assert copied == plan
        with pytest.raises(TypeError):
            copied.params["density"] = 0.9  # type: ignore[index]
    with pytest.raises(MergeError, match="mapping"):
        MergePlan(base=tmp_path, adapters=(), params=[("density", 0.5)])  # type: ignore[arg-type]


def test_validate_plan_returns_the_resolved_params(tmp_path):
    adapters = (AdapterInput(tmp_path / "a"), AdapterInput(tmp_path / "b"))
    plan = MergePlan(base=tmp_path, adapters=adapters, method="dare_ties", params={"density": 1})
    assert validate_plan(plan) == {"density": 1.0, "majority_sign_method": "total"}
    assert validate_plan(MergePlan(base=tmp_path, adapters=adapters)) == {}
    with pytest.raises(MergeError, match="unknown merge method 'slerp'"):
        validate_plan(MergePlan(base=tmp_path, adapters=adapters, method="slerp"))


@pytest.mark.parametrize(("method", "params", "match"), [
    ("linear", {"density": 0.5}, "the linear method takes no density"),
    ("ties", {}, "the ties method needs a density"),
    ("dare_linear", {"density": 0.5, "majority_sign_method": "total"}, "takes no majority_sign_method"),
    ("ties", {"density": 2}, r"density must be in \(0, 1\]"),
])
def test_bad_params_are_refused_before_reading(llama_bf16, lora_a, lora_b, tmp_path, method, params, match):
    plan = MergePlan(base=llama_bf16, adapters=(AdapterInput(lora_a), AdapterInput(lora_b)), method=method,
                     params=params)
    with pytest.raises(MergeError, match=match):
        merge(plan, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# --- a new method touches only its own file ---------------------------------------------------


class Scaled(MergeMethod):
    """The linear sum times a factor: a method with a parameter no other method has."""

    name = "scaled"
    summary = "linear, times a factor"
    params = (Param("factor", float, 1.0, "multiplies the summed delta", low=0.0, high=10.0),)
    seen: list = []

    def _combine(self, deltas, weights, *, params, generator):
        self.seen.append(params)
        return LINEAR._combine(deltas, [w * params["factor"] for w in weights], params={}, generator=generator)


def test_a_new_method_with_a_new_parameter_merges_end_to_end(llama_bf16, lora_a, lora_b, tmp_path, monkeypatch):
    scaled = Scaled()
    monkeypatch.setattr(methods_module, "METHODS", {**METHODS, "scaled": scaled})
    assert get_method("scaled") is scaled
    plan = MergePlan(base=llama_bf16, adapters=(AdapterInput(lora_a, 0.5), AdapterInput(lora_b, -1.0)),
                     method="scaled", params={"factor": 2}, seed=3)
    out = merge(plan, tmp_path / "scaled")
    assert scaled.seen and all(p == {"factor": 2.0} and type(p["factor"]) is float for p in scaled.seen)
    linear = MergePlan(base=llama_bf16, adapters=(AdapterInput(lora_a, 1.0), AdapterInput(lora_b, -2.0)))
    assert out.digest == merge(linear, tmp_path / "linear").digest
    assert out.tensors_changed > 0

    default = merge(dataclasses.replace(plan, params={}), tmp_path / "default")
    as_given = merge(dataclasses.replace(plan, adapters=(AdapterInput(lora_a, 0.5), AdapterInput(lora_b, -1.0)),
                                         method="linear", params={}), tmp_path / "as-given")
    assert default.digest == as_given.digest != out.digest
    with pytest.raises(MergeError, match=r"factor must be in \[0, 10\]"):
        merge(dataclasses.replace(plan, params={"factor": 11}), tmp_path / "refused")
    with pytest.raises(MergeError, match=r"the scaled method takes no density \(its parameters: factor\)"):
        merge(dataclasses.replace(plan, params={"density": 0.5}), tmp_path / "refused")
    with pytest.raises(MergeError, match="factor") as err:
        METHODS["ties"].resolve_params({"density": 0.5, "factor": 2}, n_adapters=1)
    assert "scaled" in err.value.hint  # the hint names the methods that do take it


def test_methods_import_no_torch():
    code = ("import sys; import lorareg.merge.methods, lorareg.store.pickles; "
            "from lorareg.merge.methods import METHODS; "
            "[m.resolve_params({'density': 0.5} if m.params else {}, n_adapters=2) for m in METHODS.values()]; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
