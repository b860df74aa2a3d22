"""What the engine refuses (plans, PEFT types and variants it cannot merge exactly), the adapter
fit checks the registry runs before registering, and adapter key mapping."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lorareg.errors import IncompatibleAdapterError, MergeError, UnsupportedFeatureError
from lorareg.merge import AdapterInput, check_adapter_fits, inspect_adapter, merge
from lorareg.merge.adapter import load_adapter
from lorareg.merge.keys import NameResolver
from tests.support.factories import make_gpt2, make_llama, make_lora, minilm_path

from .helpers import auto_class, config, mismatches, peft_model, plan as _plan, read_folder


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
