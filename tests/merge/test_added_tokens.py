"""Adapters trained after ``resize_token_embeddings``: the merge grows the vocabulary exactly as
``base.resize_token_embeddings(n)`` + ``PeftModel.from_pretrained`` + ``merge_and_unload()``.

PEFT is the oracle: its merged state dict is compared with ours bit for bit, and the merged
folder's logits with the unmerged PEFT model's.  The resize in the oracle draws its own random
rows (another seed than training's): equality shows every new row comes from the adapter.
"""

from __future__ import annotations

import pytest
import torch

from lorareg.errors import IncompatibleAdapterError
from lorareg.merge import AdapterInput, MergePlan, check_adapter_fits, merge
from tests.support.chat_adapters import BASE_VOCAB, make_chat_adapter, make_small_vocab_base, vocab_rows

from .helpers import config, forward, mismatches, read_folder, state

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ROWS = BASE_VOCAB + 2

# how the new rows reach the adapter -> LoraConfig kwargs
SETUPS = {
    "modules_to_save": {"modules_to_save": ["embed_tokens", "lm_head"]},
    "embedding_lora": {"target_modules": ["q_proj", "embed_tokens", "lm_head"]},
    "trainable_tokens": {"trainable_token_indices": [3, BASE_VOCAB, BASE_VOCAB + 1]},
}


@pytest.fixture(scope="module")
def small_bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("small-vocab")
    cache = {}

    def get(kind: str, dtype: str):
        if (kind, dtype) not in cache:
            cache[kind, dtype] = make_small_vocab_base(root / f"{kind}-{dtype}", kind=kind, dtype=DTYPES[dtype])
        return cache[kind, dtype]

    return get


def _peft_resized(base, adapter, dtype, *, seed: int = 12345):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    torch.manual_seed(seed)
    model.resize_token_embeddings(ROWS, mean_resizing=False)
    return PeftModel.from_pretrained(model, adapter).eval()


# Tied (qwen2) + embedding LoRA is test_tied_lora_grown: there lorareg follows the adapter
# model and unties the pair, where PEFT adds both deltas into the shared weight.
CASES = [(k, s) for k in ("llama", "qwen2") for s in SETUPS if (k, s) != ("qwen2", "embedding_lora")]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind,setup", CASES)
def test_grown_vocabulary_bit_identical_to_peft(small_bases, tmp_path, kind, setup, dtype):
    base = small_bases(kind, dtype)
    # the adapter is trained in float32 on the float32 base, as usual
    adapter = make_chat_adapter(small_bases(kind, "float32"), tmp_path / "adapter", seed=3, **SETUPS[setup])
    check_adapter_fits(base=base, adapter=adapter)  # registrable

    out = merge(MergePlan(base=base, adapters=(AdapterInput(adapter),)), tmp_path / "out")
    peft = _peft_resized(base, adapter, DTYPES[dtype])
    unmerged_logits = forward(peft, torch.tensor([[4, 99, 100, 101, 7, 100]]))
    reference = state(peft.merge_and_unload())
    ours = read_folder(out.path)
    assert mismatches(reference, ours) == [] and set(ours) == set(reference)
    assert ours["model.embed_tokens.weight"].shape[0] == ROWS
    assert vocab_rows(out.path) == ROWS and config(out.path)["vocab_size"] == ROWS
    assert any("vocabulary grown from 100 to 102" in n for n in out.notes)

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out.path, dtype=DTYPES[dtype]).eval()
    assert merged.get_input_embeddings().weight.shape[0] == ROWS
    tol = 1e-4 if dtype == "float32" else 0.1
    torch.testing.assert_close(forward(merged, torch.tensor([[4, 99, 100, 101, 7, 100]])), unmerged_logits,
                               atol=tol, rtol=tol)


def test_rows_left_to_the_resize_are_refused(small_bases, tmp_path):
    """Only the embedding saved: the untied head's new rows would be resize_token_embeddings' random ones."""
    base = small_bases("llama", "float32")
    adapter = make_chat_adapter(base, tmp_path / "adapter", modules_to_save=["embed_tokens"],
                                save_embedding_layers=False)
    with pytest.raises(IncompatibleAdapterError, match=r"saves no values for rows 100\.\.101 of lm_head.weight"):
        check_adapter_fits(base=base, adapter=adapter)
    with pytest.raises(IncompatibleAdapterError, match="random"):
        merge(MergePlan(base=base, adapters=(AdapterInput(adapter),)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("targets", [["q_proj", "embed_tokens"], ["q_proj", "embed_tokens", "lm_head"]],
                         ids=["embedding", "embedding_and_head"])
def test_tied_lora_grown(small_bases, tmp_path, targets):
    """Qwen2 ties lm_head to embed_tokens.  An embedding LoRA (with the grown base layer PEFT
    saves) unties the pair, as for an ungrown vocabulary (test_parity): each side equals PEFT's
    merge of that layer alone into the resized model, and the logits follow the adapter model."""
    base = small_bases("qwen2", "float32")
    adapter = make_chat_adapter(base, tmp_path / "adapter", target_modules=targets)
    out = merge(MergePlan(base=base, adapters=(AdapterInput(adapter),)), tmp_path / "out")
    ours = read_folder(out.path)
    assert config(out.path)["tie_word_embeddings"] is False and vocab_rows(out.path) == ROWS

    for name, module in (("model.embed_tokens.weight", "model.embed_tokens"), ("lm_head.weight", "lm_head")):
        peft = _peft_resized(base, adapter, torch.float32)
        layer = peft.base_model.model.get_submodule(module)
        if hasattr(layer, "merge") and module.rpartition(".")[2] in targets:
            layer.merge()  # this layer's delta only, into the shared (tied) weight
        expected = peft.base_model.model.get_submodule(module)
        expected = getattr(expected, "base_layer", expected).weight
        assert torch.equal(ours[name], expected), name

    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[4, 99, 100, 101, 7, 100]])
    adapter_logits = forward(_peft_resized(base, adapter, torch.float32), ids)
    ours_logits = forward(AutoModelForCausalLM.from_pretrained(out.path).eval(), ids)
    assert (ours_logits - adapter_logits).abs().max().item() < 1e-4


def test_growth_needs_one_vocabulary(small_bases, tmp_path):
    base = small_bases("llama", "float32")
    grown = make_chat_adapter(base, tmp_path / "grown", **SETUPS["modules_to_save"])
    plain = make_chat_adapter(base, tmp_path / "plain", target_modules=["embed_tokens"], save_side_files=False)
    # `plain` was made on the resized model too, so it also has 102 rows: together they merge
    # only where both are exact single merges... which two adapters are not.
    with pytest.raises(Exception, match="modules_to_save|merge it on its own"):
        merge(MergePlan(base=base, adapters=(AdapterInput(grown), AdapterInput(plain))), tmp_path / "out")
