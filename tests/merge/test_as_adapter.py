"""Adapters out: a weighted combination written as one PEFT adapter (cat: exact, svd: rank k).

The oracle is the linear merge of the inputs: lorareg's engine (bit-identical to PEFT for one
adapter) for weights, and PEFT's own per-adapter ``get_delta_weight`` for the deltas.
"""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lorareg.errors import MergeError, UnsupportedFeatureError
from lorareg.merge import AdapterInput, MergePlan, merge
from lorareg.merge.adapter_config import pattern_value
from lorareg.merge.as_adapter import _patterns, combine_to_adapter
from tests.support.factories import make_lora

from .helpers import auto_class, forward, read_folder


@pytest.fixture(scope="module")
def llama(merge_models):
    return merge_models("llama")


@pytest.fixture(scope="module")
def gpt2(merge_models):
    return merge_models("gpt2")


@pytest.fixture(scope="module")
def llama_adapters(llama, tmp_path_factory):
    """Two adapters that differ in targets, rank, alpha and scaling rule (rsLoRA + embedding LoRA)."""
    root = tmp_path_factory.mktemp("as-adapter-llama")
    a = make_lora(llama, root / "a", seed=1)  # all-linear, r 4, alpha 8
    b = make_lora(llama, root / "b", seed=2, r=2, lora_alpha=6, use_rslora=True,
                  target_modules=["q_proj", "v_proj", "embed_tokens"])
    return a, b


@pytest.fixture(scope="module")
def gpt2_adapters(gpt2, tmp_path_factory):
    root = tmp_path_factory.mktemp("as-adapter-gpt2")
    a = make_lora(gpt2, root / "a", seed=3, target_modules=["c_attn"], fan_in_fan_out=True)
    b = make_lora(gpt2, root / "b", seed=4, r=3, lora_alpha=5, target_modules=["c_attn", "c_proj", "c_fc"],
                  fan_in_fan_out=True)
    return a, b


def _linear_merge(base, adapters, out):
    plan = MergePlan(base=base, adapters=tuple(AdapterInput(p, w) for p, w in adapters), dtype="float32")
    return merge(plan, out)


def _peft_merge(base, adapter):
    from peft import PeftModel

    model = PeftModel.from_pretrained(auto_class(base).from_pretrained(base, dtype=torch.float32), adapter)
    return model.eval(), model.merge_and_unload()


def _peft_deltas(base, adapters) -> dict[str, torch.Tensor]:
    """module path -> sum_i w_i * PEFT get_delta_weight_i, in LoRA layout (out, in)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora.layer import Embedding as LoraEmbedding

    model = auto_class(base).from_pretrained(base, dtype=torch.float32)
    names = [f"in{i}" for i in range(len(adapters))]
    model = PeftModel.from_pretrained(model, adapters[0][0], adapter_name=names[0])
    for name, (path, _) in zip(names[1:], adapters[1:]):
        model.load_adapter(path, adapter_name=name)
    out = {}
    for mod_name, layer in model.base_model.model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        total = None
        for name, (_, w) in zip(names, adapters):
            if name in layer.lora_A or name in layer.lora_embedding_A:
                d = layer.get_delta_weight(name) * w
                total = d if total is None else total + d
        # get_delta_weight is in the base weight's layout: transposed for Conv1D and Embedding
        transposed = isinstance(layer, LoraEmbedding) or getattr(layer, "fan_in_fan_out", False)
        out[mod_name] = total.T if transposed else total
    return out


def _check_files(out):
    assert set(out.files) == {"adapter_config.json", "adapter_model.safetensors"}
    for name, info in out.files.items():
        data = (out.path / name).read_bytes()
        assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == len(data)


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_cat_reproduces_the_linear_merge(model, request, tmp_path):
    base = request.getfixturevalue(model)
    a, b = request.getfixturevalue(f"{model}_adapters")
    inputs = [(a, 0.7), (b, -1.3)]
    out = combine_to_adapter(adapters=inputs, base=base, out_dir=tmp_path / "cat", kind="cat")
    _check_files(out)
    assert out.kind == "cat" and set(out.module_errors.values()) == {0.0}

    reference = _linear_merge(base, inputs, tmp_path / "linear")
    ref = read_folder(reference.path)
    adapter_model, merged = _peft_merge(base, out.path)
    state = merged.state_dict()
    original = read_folder(base)
    changed = 0
    for name, want in ref.items():
        got = state[name]
        assert got.shape == want.shape, name
        # same sums, grouped differently: equal up to float32 rounding of the folded scales
        assert (got - want).abs().max().item() <= 1e-6 * max(1.0, want.abs().max().item()), name
        changed += not torch.equal(want, original[name])
    assert changed >= 4  # the merge really changed the targeted weights
    want_logits = forward(auto_class(reference.path).from_pretrained(reference.path).eval())
    torch.testing.assert_close(forward(merged.eval()), want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(forward(adapter_model), want_logits, rtol=1e-4, atol=1e-4)


def test_cat_ranks_and_config(llama, llama_adapters, tmp_path):
    a, b = llama_adapters
    out = combine_to_adapter(adapters=[(a, 1.0), (b, 0.5)], base=llama, out_dir=tmp_path / "cat", kind="cat")
    cfg = json.loads((out.path / "adapter_config.json").read_text())
    ranks = out.module_ranks
    assert ranks["model.layers.0.self_attn.q_proj"] == 6  # both adapters: 4 + 2
    assert ranks["model.layers.1.mlp.down_proj"] == 4  # only the first
    assert ranks["model.embed_tokens"] == 2  # only the second
    assert cfg["r"] == out.rank == 4 and cfg["lora_alpha"] == 4 and not cfg["use_rslora"]
    assert cfg["target_modules"] == sorted(ranks)
    for module, r in ranks.items():  # PEFT's pattern rule resolves every module to its rank, alpha = r
        assert pattern_value(cfg["rank_pattern"], module, cfg["r"]) == r
        assert pattern_value(cfg["alpha_pattern"], module, cfg["lora_alpha"]) == r
    tensors = load_file(out.path / "adapter_model.safetensors")
    assert tensors["base_model.model.model.embed_tokens.lora_embedding_A"].shape == (2, 128)
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (6, 32)
    assert all(t.dtype == torch.float32 for t in tensors.values())


def test_cat_adapter_round_trips_through_lorareg(llama, llama_adapters, tmp_path):
    """The written adapter is itself a valid lorareg input: merging it equals merging the inputs."""
    a, b = llama_adapters
    out = combine_to_adapter(adapters=[(a, 0.7), (b, -1.3)], base=llama, out_dir=tmp_path / "cat", kind="cat")
    via_cat = read_folder(_linear_merge(llama, [(out.path, 1.0)], tmp_path / "m1").path)
    direct = read_folder(_linear_merge(llama, [(a, 0.7), (b, -1.3)], tmp_path / "m2").path)
    assert via_cat.keys() == direct.keys()
    for name in direct:
        torch.testing.assert_close(via_cat[name], direct[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_svd_at_full_rank_is_exact(model, request, tmp_path):
    base = request.getfixturevalue(model)
    a, b = request.getfixturevalue(f"{model}_adapters")
    inputs = [(a, 0.7), (b, -1.3)]
    out = combine_to_adapter(adapters=inputs, base=base, out_dir=tmp_path / "svd", kind="svd", rank=8)
    _check_files(out)
    cfg = json.loads((out.path / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == out.rank == 8 and cfg["rank_pattern"] == {}
    assert set(out.module_ranks.values()) == {8}
    assert max(out.module_errors.values()) < 1e-6  # every combined delta has rank <= 4 + 3
    ref = read_folder(_linear_merge(base, inputs, tmp_path / "linear").path)
    _, merged = _peft_merge(base, out.path)
    state = merged.state_dict()
    for name, want in ref.items():
        assert (state[name] - want).abs().max().item() < 1e-6, name


def test_svd_low_rank_records_the_measured_error(llama, llama_adapters, tmp_path):
    a, b = llama_adapters
    inputs = [(a, 0.7), (b, -1.3)]
    out = combine_to_adapter(adapters=inputs, base=llama, out_dir=tmp_path / "svd", kind="svd", rank=2)
    deltas = _peft_deltas(llama, inputs)
    tensors = load_file(out.path / "adapter_model.safetensors")
    assert set(out.module_errors) == set(deltas)
    for module, want in deltas.items():
        prefix = f"base_model.model.{module}"
        if f"{prefix}.lora_A.weight" in tensors:
            a_k, b_k = tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"]
        else:
            a_k, b_k = tensors[f"{prefix}.lora_embedding_A"], tensors[f"{prefix}.lora_embedding_B"]
        assert a_k.shape[0] == b_k.shape[1] == 2
        d = want.double()
        measured = ((d - b_k.double() @ a_k.double()).norm() / d.norm()).item()
        assert out.module_errors[module] == pytest.approx(measured, rel=1e-4, abs=1e-7), module
        # Eckart-Young: the error of the best rank-2 approximation, from the singular values
        s = torch.linalg.svdvals(d)
        assert measured == pytest.approx((s[2:].norm() / s.norm()).item(), rel=1e-4, abs=1e-7)
    q = out.module_errors["model.layers.0.self_attn.q_proj"]  # rank 6 squeezed to 2
    assert 0.05 < q < 1
    assert out.module_errors["model.embed_tokens"] < 1e-6  # rank 2 already


def test_svd_is_deterministic(llama, llama_adapters, tmp_path):
    a, b = llama_adapters
    runs = [combine_to_adapter(adapters=[(a, 0.7), (b, -1.3)], base=llama, out_dir=tmp_path / f"s{i}",
                               kind="svd", rank=3) for i in range(2)]
    assert runs[0].files == runs[1].files


def test_negative_weight_negates(llama, llama_adapters, tmp_path):
    a, _ = llama_adapters
    pos = combine_to_adapter(adapters=[(a, 1.0)], base=llama, out_dir=tmp_path / "p", kind="cat")
    neg = combine_to_adapter(adapters=[(a, -1.0)], base=llama, out_dir=tmp_path / "n", kind="cat")
    tp, tn = load_file(pos.path / "adapter_model.safetensors"), load_file(neg.path / "adapter_model.safetensors")
    for key in tp:
        assert torch.equal(tn[key], -tp[key] if ".lora_A" in key else tp[key]), key


def test_rank_pattern_keys_survive_nested_module_paths():
    ranks = {"vision.model.layers.0.q": 8, "model.layers.0.q": 4, "model.layers.1.q": 8, "model.layers.2.q": 2}
    pattern = _patterns(ranks, 8)
    assert list(pattern) == sorted(pattern)  # PEFT re-saves configs with sorted keys
    for order in (pattern, dict(reversed(pattern.items()))):
        for module, r in ranks.items():
            assert pattern_value(order, module, 8) == r, (module, order)
    assert _patterns({"a.q": 8, "a.k": 4}, 8) == {"a.k": 4}  # plain paths when nothing nests


@pytest.mark.parametrize(
    ("kwargs", "feature"),
    [
        ({"use_dora": True, "target_modules": ["q_proj"]}, "DoRA"),
        ({"lora_bias": True, "target_modules": ["q_proj"]}, "lora_bias"),
        ({"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"target_modules": ["q_proj"], "trainable_token_indices": [1, 5]}, "trainable tokens"),
    ],
)
def test_refuses_what_it_cannot_write_exactly(merge_models, llama, llama_adapters, tmp_path, kwargs, feature):
    base = merge_models("llama_bias") if kwargs.get("lora_bias") else llama
    bad = make_lora(base, tmp_path / "bad", seed=9, **kwargs)
    good = llama_adapters[0]
    with pytest.raises(UnsupportedFeatureError, match=feature) as err:
        combine_to_adapter(adapters=[(good, 1.0), (bad, 1.0)] if base == llama else [(bad, 1.0)],
                           base=base, out_dir=tmp_path / "out", kind="cat")
    assert err.value.hint
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".incomplete")]


@pytest.mark.parametrize(
    ("kind", "rank", "weights", "message"),
    [
        ("avg", None, [1.0], "unknown adapter combination"),
        ("cat", 4, [1.0], "cat takes no rank"),
        ("svd", None, [1.0], "positive integer rank"),
        ("svd", 0, [1.0], "positive integer rank"),
        ("svd", True, [1.0], "positive integer rank"),
        ("cat", None, [], "no adapters"),
        ("cat", None, [math.nan], "finite"),
    ],
)
def test_rejects_bad_arguments(llama, llama_adapters, tmp_path, kind, rank, weights, message):
    adapters = [(llama_adapters[0], w) for w in weights]
    with pytest.raises(MergeError, match=message) as err:
        combine_to_adapter(adapters=adapters, base=llama, out_dir=tmp_path / "out", kind=kind, rank=rank)
    assert err.value.hint
    assert not (tmp_path / "out").exists()


def test_refuses_an_existing_output_folder(llama, llama_adapters, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(MergeError, match="already exists"):
        combine_to_adapter(adapters=[(llama_adapters[0], 1.0)], base=llama, out_dir=tmp_path / "out", kind="cat")
