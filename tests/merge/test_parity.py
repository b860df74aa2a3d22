"""Merged weights are bit-identical to PEFT 0.21 ``merge_and_unload()`` on the same inputs.

PEFT is the oracle: every test merges with lorareg and with PEFT and compares every tensor of
the state dict with ``torch.equal`` (untouched tensors included).
"""

from __future__ import annotations

import pytest
import torch

from lorareg.merge import AdapterInput, MergePlan, merge
from tests.support.factories import make_lora
from .helpers import (
    auto_class,
    config,
    forward,
    mismatches,
    peft_merged,
    peft_model,
    read_folder,
    state,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# feature -> (base kind, LoraConfig kwargs).  Every one runs in every dtype on Llama.
LLAMA_FEATURES = {
    "plain": ("llama", {}),
    "rslora": ("llama", {"use_rslora": True, "r": 8, "lora_alpha": 16}),
    "rank_alpha_pattern": (
        "llama",
        # first match wins: layer 1's q_proj also matches "q_proj".  PEFT saves the patterns
        # with sorted keys and matches them in file order on reload, so an order that is not
        # sorted makes an adapter PEFT itself cannot load (see test_engine).
        {"rank_pattern": {"down_proj": 6, r"layers\.1\.self_attn\.q_proj": 8, "q_proj": 2},
         "alpha_pattern": {"v_proj": 3, r"layers\.0\..*o_proj": 32}},
    ),
    "embedding": ("llama", {"target_modules": ["embed_tokens", "q_proj", "lm_head"]}),
    "lora_bias": ("llama_bias", {"target_modules": ["q_proj", "v_proj", "down_proj"], "lora_bias": True}),
    "dora": ("llama", {"use_dora": True, "target_modules": ["q_proj", "v_proj", "gate_proj", "embed_tokens"]}),
    "modules_to_save": ("llama", {"target_modules": ["q_proj"], "modules_to_save": ["lm_head", "norm"]}),
    "trainable_tokens": ("llama", {"target_modules": ["q_proj"], "trainable_token_indices": [1, 5, 100]}),
    "layers_to_transform": ("llama", {"target_modules": ["q_proj", "v_proj"], "layers_to_transform": [1]}),
}


def _merge(base, adapter, out, **plan_kwargs):
    return merge(MergePlan(base=base, adapters=(AdapterInput(adapter),), **plan_kwargs), out)


def _reference(base, adapter, dtype: torch.dtype, adapter_dtype: str) -> dict[str, torch.Tensor]:
    """PEFT's merged state dict on the path each adapter_dtype promises parity with."""
    if adapter_dtype == "float32":
        model = peft_model(base, adapter, dtype)
        lora = [p for n, p in model.named_parameters() if "lora_" in n]
        assert lora and {p.dtype for p in lora} == {torch.float32}
        return state(model.merge_and_unload())
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(adapter, dtype=dtype, low_cpu_mem_usage=True)
    # This path *assigns* tensors saved in the adapter (embedding copies, modules_to_save), so
    # PEFT leaves those in float32 inside a bf16 model; lorareg writes every tensor in the
    # output dtype, which equals PEFT's tensor rounded once.
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state(model.merge_and_unload()).items()}


@pytest.mark.parametrize("adapter_dtype", ["float32", "base"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("feature", list(LLAMA_FEATURES))
def test_llama_features_bit_identical(merge_models, tmp_path, feature, dtype, adapter_dtype):
    kind, kwargs = LLAMA_FEATURES[feature]
    base = merge_models(kind, dtype)
    adapter = make_lora(base, tmp_path / "adapter", seed=7, **kwargs)
    out = _merge(base, adapter, tmp_path / "out", adapter_dtype=adapter_dtype)

    reference = _reference(base, adapter, DTYPES[dtype], adapter_dtype)
    ours = read_folder(out.path)
    assert mismatches(reference, ours) == []
    assert set(ours) == set(reference)
    assert out.tensors_changed > 0
    assert {str(t.dtype) for t in ours.values()} == {str(DTYPES[dtype])}


def test_adapter_dtype_paths_differ_in_half_precision(merge_models, tmp_path):
    """The two paths are really different computations on a bf16 base (else the test above
    would not tell them apart)."""
    base = merge_models("llama", "bfloat16")
    adapter = make_lora(base, tmp_path / "adapter", seed=7)
    a = _merge(base, adapter, tmp_path / "f32")
    b = _merge(base, adapter, tmp_path / "base", adapter_dtype="base")
    assert a.digest != b.digest
    assert a.tensors_changed == b.tensors_changed == 14


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", ["gpt2", "qwen2", "bert", "minilm"])
def test_architectures_plain_lora_bit_identical(merge_models, tmp_path, kind, dtype):
    base = merge_models(kind, dtype)
    adapter = make_lora(base, tmp_path / "adapter", seed=3)
    # MiniLM ships in float32: the other dtypes are a dtype conversion during the merge.
    plan_dtype = dtype if kind == "minilm" else "auto"
    out = _merge(base, adapter, tmp_path / "out", dtype=plan_dtype)

    reference = state(peft_merged(base, adapter, DTYPES[dtype]))
    ours = read_folder(out.path)
    assert mismatches(reference, ours) == []
    # the only extra tensors are non-persistent buffers the base file itself carries
    extra = set(ours) - set(reference)
    assert all(not ours[k].is_floating_point() for k in extra)
    assert out.tensors_changed >= 4
    assert config(out.path)["dtype"] == dtype


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize(
    "kwargs",
    [
        {"use_dora": True},
        {"lora_bias": True, "target_modules": ["c_attn", "c_fc"]},
        {"use_rslora": True, "rank_pattern": {"c_fc": 2}, "alpha_pattern": {"h.1.attn.c_proj": 5}},
    ],
    ids=["dora", "lora_bias", "rslora_patterns"],
)
def test_gpt2_conv1d_features_bit_identical(merge_models, tmp_path, kwargs, dtype):
    """Conv1D stores weights transposed: fan_in_fan_out, also for DoRA's norm and lora_bias."""
    base = merge_models("gpt2", dtype)
    adapter = make_lora(base, tmp_path / "adapter", seed=5, **kwargs)
    out = _merge(base, adapter, tmp_path / "out")
    reference = state(peft_merged(base, adapter, DTYPES[dtype]))
    assert mismatches(reference, read_folder(out.path)) == []


def test_gpt2_conv1d_with_fan_in_fan_out_false_in_config(merge_models, tmp_path):
    """PEFT forces fan_in_fan_out on Conv1D whatever the config says; so must we."""
    import json

    base = merge_models("gpt2", "bfloat16")
    adapter = make_lora(base, tmp_path / "adapter", seed=5, target_modules=["c_attn", "c_proj"])
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["fan_in_fan_out"] = False
    cfg_path.write_text(json.dumps(cfg))
    out = _merge(base, adapter, tmp_path / "out")
    reference = state(peft_merged(base, adapter, torch.bfloat16))
    assert mismatches(reference, read_folder(out.path)) == []


@pytest.mark.parametrize("feature", ["plain", "dora", "embedding", "modules_to_save", "trainable_tokens"])
def test_merged_folder_logits_match_peft(merge_models, tmp_path, feature):
    """Loaded with plain transformers, the output gives PEFT's merged logits exactly, and is as
    close to the unmerged adapter model as PEFT's own merge is."""
    kind, kwargs = LLAMA_FEATURES[feature]
    base = merge_models(kind, "bfloat16")
    adapter = make_lora(base, tmp_path / "adapter", seed=4, **kwargs)
    out = _merge(base, adapter, tmp_path / "out")

    unmerged = peft_model(base, adapter, torch.bfloat16)
    adapter_logits = forward(unmerged)
    peft_logits = forward(unmerged.merge_and_unload())
    ours = forward(auto_class(out.path).from_pretrained(out.path).eval())
    assert torch.equal(ours, peft_logits)
    peft_error = (peft_logits - adapter_logits).abs().max()
    assert (ours - adapter_logits).abs().max() <= peft_error


def test_float32_output_from_bf16_base(merge_models, tmp_path):
    """dtype="float32" on a bf16 base equals PEFT on the base loaded in float32."""
    base = merge_models("llama", "bfloat16")
    adapter = make_lora(base, tmp_path / "adapter", seed=9, use_dora=True, target_modules=["q_proj", "k_proj"])
    out = _merge(base, adapter, tmp_path / "out", dtype="float32")
    reference = state(peft_merged(base, adapter, torch.float32))
    ours = read_folder(out.path)
    assert mismatches(reference, ours) == []
    assert config(out.path)["dtype"] == "float32"
    assert out.dtype == "float32"


# --- tied embeddings ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
        {"target_modules": ["q_proj"], "modules_to_save": ["embed_tokens"]},
        {"target_modules": ["q_proj"], "trainable_token_indices": [3, 7]},
    ],
    ids=["mts_head", "mts_embedding", "trainable_tokens"],
)
def test_tied_qwen2_matches_peft(merge_models, tmp_path, kwargs, dtype):
    """Where PEFT's merge keeps the adapter model's behaviour, we match it bit for bit,
    including whether the output unties the pair."""
    base = merge_models("qwen2", dtype)
    adapter = make_lora(base, tmp_path / "adapter", seed=6, **kwargs)
    out = _merge(base, adapter, tmp_path / "out")
    merged = peft_merged(base, adapter, DTYPES[dtype])
    reference = state(merged)
    ours = read_folder(out.path)
    assert mismatches(reference, ours) == []
    assert set(ours) == set(reference)
    assert config(out.path)["tie_word_embeddings"] == merged.config.tie_word_embeddings
    untied = "lm_head.weight" in ours
    assert untied == ("modules_to_save" in kwargs)
    assert any("untied" in n for n in out.notes) == untied


@pytest.mark.parametrize(
    "target,changed",
    [("embed_tokens", "model.embed_tokens.weight"), ("lm_head", "lm_head.weight")],
)
def test_tied_lora_on_one_side_unties(merge_models, tmp_path, target, changed):
    """A LoRA on only the embedding (or only lm_head) of a tied model changes one of the two.

    PEFT adds it into the shared weight, so its merged model leaves the adapter model
    (logits off by ~0.5).  lorareg unties: the changed side equals PEFT's merged tensor bit
    for bit, the other side keeps the base's bits, and the logits follow the adapter model.
    """
    base = merge_models("qwen2", "float32")
    adapter = make_lora(base, tmp_path / "adapter", seed=8, target_modules=[target, "q_proj"])
    out = _merge(base, adapter, tmp_path / "out")
    ours = read_folder(out.path)
    base_emb = read_folder(base)["model.embed_tokens.weight"]

    unmerged = peft_model(base, adapter, torch.float32)
    adapter_logits = forward(unmerged)
    merged = unmerged.merge_and_unload()
    peft_logits = forward(merged)
    peft_shared = merged.get_input_embeddings().weight

    assert torch.equal(ours[changed], peft_shared)
    other = ({"model.embed_tokens.weight", "lm_head.weight"} - {changed}).pop()
    assert torch.equal(ours[other], base_emb)
    assert config(out.path)["tie_word_embeddings"] is False
    ours_logits = forward(auto_class(out.path).from_pretrained(out.path).eval())
    our_error = (ours_logits - adapter_logits).abs().max().item()
    peft_error = (peft_logits - adapter_logits).abs().max().item()
    assert our_error < 1e-4 < peft_error


def test_tied_ensure_weight_tying_applies_delta_once(merge_models, tmp_path):
    """ensure_weight_tying ties the head's LoRA to the embedding's: the output stays tied and
    the delta is added once (PEFT's merge_and_unload adds it twice)."""
    base = merge_models("qwen2", "float32")
    adapter = make_lora(base, tmp_path / "adapter", seed=8, target_modules=["embed_tokens", "q_proj"],
                        ensure_weight_tying=True)
    out = _merge(base, adapter, tmp_path / "out")
    ours = read_folder(out.path)
    assert "lm_head.weight" not in ours
    assert config(out.path)["tie_word_embeddings"] is True
    adapter_logits = forward(peft_model(base, adapter, torch.float32))
    ours_logits = forward(auto_class(out.path).from_pretrained(out.path).eval())
    assert (ours_logits - adapter_logits).abs().max().item() < 1e-4
    assert any("ensure_weight_tying" in n for n in out.notes)


def test_gpt2_tied_wte_stays_tied_without_embedding_changes(merge_models, tmp_path):
    base = merge_models("gpt2", "float32")
    adapter = make_lora(base, tmp_path / "adapter", seed=1)
    out = _merge(base, adapter, tmp_path / "out")
    ours = read_folder(out.path)
    assert "lm_head.weight" not in ours
    assert config(out.path)["tie_word_embeddings"] is True
    assert out.notes == ()
    assert torch.equal(forward(auto_class(out.path).from_pretrained(out.path)),
                       forward(peft_merged(base, adapter, torch.float32)))
