"""The merge engine around the arithmetic: output folder, sharding, determinism and weighted
multi-adapter merges (refusals and adapter checks: test_adapter_checks.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from lorareg.errors import MergeError, UnsupportedFeatureError
from lorareg.merge import AdapterInput, MergePlan, merge
from lorareg.merge.plan import tensor_seed
from tests.support.factories import make_llama, make_lora

from .helpers import auto_class, config, forward, mismatches, peft_merged, peft_model, plan as _plan, read_folder, state


# --- the output folder ---------------------------------------------------------------------


def test_output_folder_is_a_standard_hf_model(llama_bf16, lora_a, tmp_path):
    from safetensors import safe_open

    from lorareg.store.digest import checkpoint_digest

    calls = []
    out = merge(_plan(llama_bf16, lora_a), tmp_path / "out", recipe_digest="sha256:" + "ab" * 32,
                progress=lambda done, total, name: calls.append((done, total, name)))
    names = sorted(p.name for p in out.path.iterdir())
    assert names == ["README.md", "config.json", "generation_config.json", "model.safetensors",
                     "tokenizer.json", "tokenizer_config.json"]
    assert sorted(out.files) == names
    for name, info in out.files.items():
        data = (out.path / name).read_bytes()
        assert (info.sha256, info.size) == (hashlib.sha256(data).hexdigest(), len(data))
    # the engine reports the tensor manifest: the store's weights digest of the same folder
    assert out.digest == checkpoint_digest(out.path).weights_digest
    with safe_open(out.path / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt", "lorareg_recipe": "sha256:" + "ab" * 32}
    assert config(out.path)["dtype"] == "bfloat16" and out.dtype == "bfloat16"
    readme = (out.path / "README.md").read_text()
    assert readme.startswith("---\n") and "base_model_relation: merge" in readme
    assert all(f"- {tag}" in readme for tag in ("lora", "merge", "lorareg"))
    assert [c[0] for c in calls] == list(range(1, out.tensors_total + 1))
    assert {c[1] for c in calls} == {21} and out.tensors_total == 21 and out.tensors_changed == 14
    # loads with plain transformers, no PEFT and no lorareg involved
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out.path)("w5 w6")["input_ids"] == [5, 6]
    assert forward(auto_class(out.path).from_pretrained(out.path)).shape == (2, 8, 128)


def test_model_card_is_written_as_given(llama_bf16, lora_a, tmp_path):
    out = merge(_plan(llama_bf16, lora_a), tmp_path / "out", model_card="# my card\n")
    assert (out.path / "README.md").read_text() == "# my card\n"
    assert out.files["README.md"].size == len("# my card\n")


def test_out_dir_must_not_exist(llama_bf16, lora_a, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(MergeError, match="already exists") as err:
        merge(_plan(llama_bf16, lora_a), tmp_path / "out")
    assert err.value.hint


def test_failed_merge_leaves_nothing_behind(llama_bf16, lora_a, tmp_path):
    def boom(done, total, name):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        merge(_plan(llama_bf16, lora_a), tmp_path / "out", progress=boom)
    assert list(tmp_path.iterdir()) == []


# --- sharding and determinism --------------------------------------------------------------


def test_sharded_base_gives_the_same_digest(tmp_path):
    one = make_llama(tmp_path / "one", dtype=torch.bfloat16, seed=3)
    sharded = make_llama(tmp_path / "sharded", dtype=torch.bfloat16, seed=3, max_shard_size="20KB")
    base_shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(base_shards) > 2
    adapter = make_lora(one, tmp_path / "adapter", seed=4)
    a = merge(_plan(one, adapter), tmp_path / "out-one")
    b = merge(_plan(sharded, adapter), tmp_path / "out-sharded")
    assert a.digest == b.digest
    # same dtype in and out: every output shard mirrors its input shard, index included
    assert sorted(p.name for p in b.path.glob("*.safetensors")) == base_shards
    index = json.loads((b.path / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    # re-sharding by max_shard_size keeps the digest too, and loads with transformers
    c = merge(_plan(one, adapter, max_shard_size=12_000), tmp_path / "out-resharded")
    assert c.digest == a.digest
    assert len(list(c.path.glob("model-*-of-*.safetensors"))) > 2
    assert torch.equal(forward(auto_class(c.path).from_pretrained(c.path)),
                       forward(auto_class(a.path).from_pretrained(a.path)))


def _thread_runs(plan: MergePlan, out: Path) -> list:
    before = torch.get_num_threads()
    outputs = []
    try:
        for i, threads in enumerate((1, 2, 1, 2)):
            torch.set_num_threads(threads)
            outputs.append(merge(plan, out / f"out{i}"))
    finally:
        torch.set_num_threads(before)
    return outputs


def test_same_plan_same_bytes_with_1_or_2_threads(tmp_path):
    base = make_llama(tmp_path / "base", dtype=torch.bfloat16, hidden=64)
    a = make_lora(base, tmp_path / "a", seed=1, r=16, lora_alpha=16)
    b = make_lora(base, tmp_path / "b", seed=2, r=8, lora_alpha=32)
    plan = _plan(base, AdapterInput(a, 0.7), AdapterInput(b, -0.4), method="dare_ties", params={"density": 0.5}, seed=5)
    outputs = _thread_runs(plan, tmp_path)
    assert len({o.digest for o in outputs}) == 1
    assert len({tuple(sorted((k, v.sha256) for k, v in o.files.items())) for o in outputs}) == 1


def test_same_bytes_with_1_or_2_threads_on_matrices_large_enough_to_split(tmp_path):
    from .test_memory import _build

    base, adapter = _build(tmp_path / "toy", tensors=2, rows=1024, cols=2048)
    outputs = _thread_runs(_plan(base, adapter), tmp_path)
    assert len({o.digest for o in outputs}) == 1
    assert outputs[0].tensors_changed == 2


def test_random_methods_depend_on_the_seed_only(llama_bf16, lora_a, lora_b, tmp_path):
    plan = _plan(llama_bf16, lora_a, lora_b, method="dare_linear", params={"density": 0.5}, seed=1)
    first = merge(plan, tmp_path / "a")
    again = merge(plan, tmp_path / "b")
    other = merge(_plan(llama_bf16, lora_a, lora_b, method="dare_linear", params={"density": 0.5}, seed=2),
                  tmp_path / "c")
    assert first.digest == again.digest != other.digest


def test_tensor_seed():
    s = tensor_seed(0, "model.layers.0.q_proj.weight")
    assert s == tensor_seed(0, "model.layers.0.q_proj.weight")
    assert 0 <= s < 2**63
    assert s != tensor_seed(1, "model.layers.0.q_proj.weight") != tensor_seed(0, "model.layers.1.q_proj.weight")
    digest = hashlib.sha256(b"0:model.layers.0.q_proj.weight").digest()
    assert s == int.from_bytes(digest[:8], "big") & (2**63 - 1)


# --- weighted multi-adapter merges -----------------------------------------------------------


def _peft_deltas(base, adapter, dtype) -> dict[str, torch.Tensor]:
    """PEFT's own get_delta_weight for every LoRA layer, keyed by base weight name."""
    model = peft_model(base, adapter, dtype)
    out = {}
    for name, module in model.base_model.model.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "lora_A") and "default" in module.lora_A:
            out[f"{name}.weight"] = module.get_delta_weight("default")
    return out


def test_weighted_linear_merge_sums_full_deltas(llama_bf16, lora_a, lora_b, tmp_path):
    out = merge(_plan(llama_bf16, AdapterInput(lora_a, 0.75), AdapterInput(lora_b, -1.5)), tmp_path / "out")
    ours = read_folder(out.path)
    base = read_folder(llama_bf16)
    da, db = _peft_deltas(llama_bf16, lora_a, torch.bfloat16), _peft_deltas(llama_bf16, lora_b, torch.bfloat16)
    assert set(db) < set(da)
    for name, w in base.items():
        combined = None
        if name in da:
            combined = da[name] * 0.75
        if name in db:
            combined = combined + db[name] * -1.5
        expected = w if combined is None else (w.float() + combined).to(torch.bfloat16)
        assert torch.equal(ours[name], expected), name
    assert out.tensors_changed == len(da)


def test_single_adapter_negative_weight(llama_bf16, lora_a, tmp_path):
    out = merge(_plan(llama_bf16, AdapterInput(lora_a, -1.0)), tmp_path / "out")
    ours, base = read_folder(out.path), read_folder(llama_bf16)
    for name, delta in _peft_deltas(llama_bf16, lora_a, torch.bfloat16).items():
        assert torch.equal(ours[name], (base[name].float() + delta * -1.0).to(torch.bfloat16))


def test_weight_one_linear_is_the_single_path(llama_bf16, lora_a, tmp_path):
    out = merge(_plan(llama_bf16, AdapterInput(lora_a, 1.0), method="linear"), tmp_path / "out")
    assert mismatches(state(peft_merged(llama_bf16, lora_a, torch.bfloat16)), read_folder(out.path)) == []


@pytest.mark.parametrize(
    "kwargs,what",
    [
        ({"use_dora": True, "target_modules": ["q_proj"]}, "DoRA"),
        ({"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"target_modules": ["q_proj"], "trainable_token_indices": [4]}, "trainable tokens"),
    ],
)
def test_features_without_multi_adapter_semantics_are_refused(llama_bf16, lora_a, tmp_path, kwargs, what):
    adapter = make_lora(llama_bf16, tmp_path / "adapter", seed=3, **kwargs)
    for plan in (_plan(llama_bf16, lora_a, adapter), _plan(llama_bf16, AdapterInput(adapter, 0.5))):
        with pytest.raises(UnsupportedFeatureError, match=what) as err:
            merge(plan, tmp_path / "out")
        assert err.value.hint
    assert not (tmp_path / "out").exists()
