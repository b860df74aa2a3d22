"""The merge engine around the arithmetic: output folder, sharding, determinism, multi-adapter
merges, refusals and adapter fit checks."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from factories import make_gpt2, make_llama, make_lora, minilm_path
from lorareg.errors import IncompatibleAdapterError, MergeError, UnsupportedFeatureError
from lorareg.merge import AdapterInput, MergePlan, check_adapter_fits, inspect_adapter, merge
from lorareg.merge.adapter import load_adapter
from lorareg.merge.keys import NameResolver
from lorareg.merge.plan import tensor_seed

from .helpers import auto_class, config, forward, mismatches, peft_merged, peft_model, read_folder, state


def _plan(base, *adapters, **kwargs) -> MergePlan:
    items = tuple(a if isinstance(a, AdapterInput) else AdapterInput(a) for a in adapters)
    return MergePlan(base=base, adapters=items, **kwargs)


@pytest.fixture(scope="module")
def llama_bf16(merge_models):
    return merge_models("llama", "bfloat16")


@pytest.fixture(scope="module")
def lora_a(llama_bf16, tmp_path_factory):
    return make_lora(llama_bf16, tmp_path_factory.mktemp("a") / "a", seed=1)


@pytest.fixture(scope="module")
def lora_b(llama_bf16, tmp_path_factory):
    return make_lora(llama_bf16, tmp_path_factory.mktemp("b") / "b", seed=2, r=2, lora_alpha=4,
                     target_modules=["q_proj", "v_proj", "down_proj"])


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
    assert out.digest == checkpoint_digest(out.path).digest  # the store's digest of the same folder
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
    plan = _plan(base, AdapterInput(a, 0.7), AdapterInput(b, -0.4), method="dare_ties", density=0.5, seed=5)
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
    plan = _plan(llama_bf16, lora_a, lora_b, method="dare_linear", density=0.5, seed=1)
    first = merge(plan, tmp_path / "a")
    again = merge(plan, tmp_path / "b")
    other = merge(_plan(llama_bf16, lora_a, lora_b, method="dare_linear", density=0.5, seed=2), tmp_path / "c")
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


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes,match",
    [({"dtype": "int8"}, "output dtype"), ({"adapter_dtype": "bf16"}, "adapter_dtype"),
     ({"adapters": ()}, "no adapters"), ({"max_shard_size": 0}, "max_shard_size")],
)
def test_bad_plans_are_refused_before_reading(llama_bf16, lora_a, tmp_path, changes, match):
    import dataclasses

    plan = dataclasses.replace(_plan(llama_bf16, lora_a), **changes)
    with pytest.raises(MergeError, match=match):
        merge(plan, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_finite_weights_are_refused(llama_bf16, lora_a, tmp_path):
    with pytest.raises(MergeError, match="finite"):
        merge(_plan(llama_bf16, AdapterInput(lora_a, float("nan"))), tmp_path / "out")


def test_lora_on_a_convolution_is_refused(tmp_path):
    from safetensors.torch import save_file

    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    adapter.mkdir()
    save_file({"conv.weight": torch.zeros(8, 4, 3, 3)}, base / "model.safetensors")
    (base / "config.json").write_text(json.dumps({"architectures": ["ToyConv"], "model_type": "toy"}))
    save_file({"base_model.model.conv.lora_A.weight": torch.zeros(2, 4, 3, 3),
               "base_model.model.conv.lora_B.weight": torch.zeros(8, 2, 1, 1)}, adapter / "adapter_model.safetensors")
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["conv"]}))
    with pytest.raises(UnsupportedFeatureError, match="LoRA on conv, a 4-D weight"):
        merge(_plan(base, adapter), tmp_path / "out")


def _edit_config(adapter: Path, **changes) -> Path:
    path = adapter / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))
    return adapter


def test_other_peft_types_are_refused(llama_bf16, tmp_path):
    from peft import LoHaConfig, get_peft_model

    model = auto_class(llama_bf16).from_pretrained(llama_bf16)
    get_peft_model(model, LoHaConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "loha")
    with pytest.raises(UnsupportedFeatureError, match="LOHA"):
        merge(_plan(llama_bf16, tmp_path / "loha"), tmp_path / "out")


def test_pissa_init_is_refused(llama_bf16, tmp_path):
    """PiSSA rewrites the base weights when PEFT loads the adapter: not reproducible from the base."""
    adapter = make_lora(llama_bf16, tmp_path / "pissa", init_lora_weights="pissa", target_modules=["q_proj"])
    peft_model(llama_bf16, adapter, torch.bfloat16)  # PEFT can load it...
    with pytest.raises(UnsupportedFeatureError, match="pissa"):  # ...lorareg will not approximate it
        merge(_plan(llama_bf16, adapter), tmp_path / "out")


@pytest.mark.parametrize(
    "field,value,what",
    [("use_bdlora", {"nblocks": 2}, "block-diagonal"), ("alora_invocation_tokens", [5], "activated LoRA"),
     ("some_future_field", 3, "some_future_field")],
)
def test_variants_and_unknown_fields_are_refused(llama_bf16, lora_a, tmp_path, field, value, what):
    import shutil

    adapter = shutil.copytree(lora_a, tmp_path / "variant")
    _edit_config(adapter, **{field: value})
    with pytest.raises(UnsupportedFeatureError, match=what):
        inspect_adapter(adapter)


def test_lora_bias_on_a_layer_without_bias_is_refused(llama_bf16, tmp_path):
    adapter = make_lora(llama_bf16, tmp_path / "bias", target_modules=["q_proj"], lora_bias=True)
    with pytest.raises(UnsupportedFeatureError, match="lora_bias on model.layers.0.self_attn.q_proj"):
        merge(_plan(llama_bf16, adapter), tmp_path / "out")


def test_rank_pattern_peft_cannot_reload_is_refused(llama_bf16, tmp_path):
    """PEFT saves rank_pattern with sorted keys but matched them in the caller's order while
    training; when the two orders pick different patterns PEFT's own reload fails too."""
    adapter = make_lora(llama_bf16, tmp_path / "adapter",
                        rank_pattern={"q_proj": 2, r"layers\.1\.self_attn\.q_proj": 8})
    with pytest.raises(RuntimeError, match="size mismatch"):
        peft_model(llama_bf16, adapter, torch.bfloat16)
    with pytest.raises(IncompatibleAdapterError, match="layers.1.self_attn.q_proj.*rank 8 but lora_A has 2"):
        check_adapter_fits(base=llama_bf16, adapter=adapter)


# --- adapter fit checks ----------------------------------------------------------------------


def test_check_adapter_fits_wrong_hidden_size(llama_bf16, tmp_path):
    wide = make_llama(tmp_path / "wide", hidden=64)
    adapter = make_lora(wide, tmp_path / "adapter")
    with pytest.raises(IncompatibleAdapterError) as err:
        check_adapter_fits(base=llama_bf16, adapter=adapter)
    message = str(err.value)
    assert "\n" not in message and err.value.hint
    assert "model.layers.0.mlp.down_proj" in message or "model.layers.0.self_attn.q_proj" in message
    assert "adapter expects" in message and "base has" in message


def test_check_adapter_fits_other_architecture(llama_bf16, tmp_path):
    gpt2 = make_gpt2(tmp_path / "gpt2")
    adapter = make_lora(gpt2, tmp_path / "adapter")
    with pytest.raises(IncompatibleAdapterError, match=r"transformer\.h\.0\.attn\.c_attn") as err:
        check_adapter_fits(base=llama_bf16, adapter=adapter)
    assert "GPT2LMHeadModel" in err.value.hint


def test_check_adapter_fits_missing_module(llama_bf16, tmp_path):
    deeper = make_llama(tmp_path / "deeper", layers=3)
    adapter = make_lora(deeper, tmp_path / "adapter", target_modules=["q_proj"])
    with pytest.raises(IncompatibleAdapterError, match=r"model\.layers\.2\.self_attn\.q_proj"):
        check_adapter_fits(base=llama_bf16, adapter=adapter)


def test_check_adapter_fits_modules_to_save_shape(llama_bf16, tmp_path):
    from safetensors.torch import load_file, save_file

    adapter = make_lora(llama_bf16, tmp_path / "adapter", target_modules=["q_proj"], modules_to_save=["lm_head"])
    tensors = load_file(adapter / "adapter_model.safetensors")
    tensors["base_model.model.lm_head.weight"] = torch.zeros(100, 32)
    save_file(tensors, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    with pytest.raises(IncompatibleAdapterError, match=r"module lm_head .*\(100, 32\).*\(128, 32\)"):
        check_adapter_fits(base=llama_bf16, adapter=adapter)


def test_check_adapter_fits_gpt2_conv1d_and_embedding(merge_models, tmp_path):
    gpt2 = merge_models("gpt2")
    adapter = make_lora(gpt2, tmp_path / "adapter", target_modules=["c_attn", "c_fc", "wte"], use_dora=True)
    summary = check_adapter_fits(base=gpt2, adapter=adapter)
    assert summary.use_dora and summary.target_modules == ("c_attn", "c_fc", "wte")


def test_check_adapter_fits_needs_no_torch(llama_bf16, lora_a):
    code = (
        "import sys\n"
        "from lorareg.merge import check_adapter_fits\n"
        f"s = check_adapter_fits(base={str(llama_bf16)!r}, adapter={str(lora_a)!r})\n"
        "assert s.r == 4, s\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_inspect_adapter_summary(llama_bf16, tmp_path):
    adapter = make_lora(llama_bf16, tmp_path / "adapter", target_modules=["v_proj", "q_proj"], r=8, lora_alpha=16,
                        use_rslora=True, modules_to_save=["lm_head"], layers_to_transform=[1],
                        alpha_pattern={"v_proj": 4})
    s = inspect_adapter(adapter)
    assert (s.peft_type, s.r, s.lora_alpha, s.use_rslora, s.use_dora) == ("LORA", 8, 16, True, False)
    assert s.target_modules == ("q_proj", "v_proj")
    assert s.modules_to_save == ("lm_head",) and s.layers_to_transform == (1,)
    assert s.alpha_pattern == {"v_proj": 4} and s.base_model_name_or_path == str(llama_bf16)
    assert s.normalized_config["target_modules"] == ["q_proj", "v_proj"]
    assert "lora_dropout" not in s.normalized_config and "base_model_name_or_path" not in s.normalized_config
    json.dumps(s.normalized_config)  # the registry hashes it as canonical JSON


# --- key mapping and load_adapter ------------------------------------------------------------


def test_name_resolver_prefixes_and_ambiguity():
    r = NameResolver(["encoder.layer.0.attention.self.query.weight", "lm.model.layers.0.q_proj.weight",
                      "lm.model.layers.1.q_proj.weight", "a.x.proj.weight", "b.x.proj.weight"])
    assert r.resolve("bert.encoder.layer.0.attention.self.query") == "encoder.layer.0.attention.self.query.weight"
    assert r.resolve("model.layers.1.q_proj") == "lm.model.layers.1.q_proj.weight"
    assert r.resolve("model.layers.2.q_proj") is None  # never matched by dropping the layer index
    with pytest.raises(IncompatibleAdapterError, match="matches several base tensors"):
        r.resolve("x.proj")


def test_adapter_with_extra_prefix_merges_into_bare_checkpoint(tmp_path):
    """An adapter trained on BertForSequenceClassification (keys carry `bert.`) merges into the
    bare BertModel checkpoint of all-MiniLM-L6-v2, bit-identical to PEFT on the full model."""
    from transformers import AutoModelForSequenceClassification

    base = minilm_path()
    adapter = make_lora(base, tmp_path / "adapter", seed=2, auto_class=AutoModelForSequenceClassification,
                        target_modules=["query", "value"])
    from safetensors import safe_open

    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        assert all(k.startswith("base_model.model.bert.") for k in f.keys())
    out = merge(_plan(base, adapter), tmp_path / "out")
    assert out.tensors_changed == 12
    from peft import PeftModel

    model = AutoModelForSequenceClassification.from_pretrained(base)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    reference = {k.removeprefix("bert."): v for k, v in merged.state_dict().items() if k.startswith("bert.")}
    assert mismatches(reference, read_folder(out.path)) == []


@pytest.mark.parametrize("kind,target", [("llama", "q_proj"), ("gpt2", "c_attn"), ("llama", "embed_tokens")])
def test_load_adapter_deltas_equal_peft(merge_models, tmp_path, kind, target):
    """load_adapter's per-module float32 delta (what --as-adapter builds on) is PEFT's delta."""
    base = merge_models(kind)
    adapter = make_lora(base, tmp_path / "adapter", seed=4, target_modules=[target])
    names = read_folder(base).keys()
    loaded = load_adapter(adapter, base_names=names, base_config=config(base))
    model = peft_model(base, adapter, torch.float32)
    expected = {}
    for name, module in model.base_model.model.named_modules():
        if name.endswith(target) and hasattr(module, "get_delta_weight"):
            expected[f"{name}.weight"] = module.get_delta_weight("default")
    assert set(loaded.modules) == set(expected)
    for name, module in loaded.modules.items():
        assert module.kind == {"q_proj": "linear", "c_attn": "conv1d", "embed_tokens": "embedding"}[target]
        assert torch.equal(module.delta("float32"), expected[name])
        assert module.lora_A.dtype == torch.float32
