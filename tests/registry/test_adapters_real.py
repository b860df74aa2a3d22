"""Real adapters through the registry (issue 11): chat tokens with their tokenizer and template,
untrained adapters, and SFT -> DPO chains (an adapter trained on a merged model's exported
folder), checked against PEFT and AutoTokenizer, not against lorareg itself."""

from __future__ import annotations

import warnings

import pytest
import torch

from lorareg.errors import IncompatibleAdapterError, MergeError
from lorareg.registry.recipe import Recipe
from tests.support.chat_adapters import ADDED, BASE_VOCAB, CHAT_TEMPLATE, make_chat_adapter, make_small_vocab_base
from tests.support.factories import make_llama, make_lora


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _tensors(folder):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _peft_merged(base, adapter, **resize):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if resize:
        model.resize_token_embeddings(resize["rows"], mean_resizing=False)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v for k, v in merged.state_dict().items()}


@pytest.fixture(scope="module")
def chat_family(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat-family")
    base = make_small_vocab_base(root / "base")
    chat = make_chat_adapter(base, root / "chat", seed=1, modules_to_save=["embed_tokens", "lm_head"])
    return base, chat


def test_chat_tokens_adapter_registers_and_merges_with_its_tokenizer(reg, chat_family, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    base, chat = chat_family
    reg.add_base(path=base, name="small")
    reg.add_adapter(path=chat, base="small", name="chat")  # refused before: lm_head.modules_to_save.weight
    info = reg.merge(base="small", adapters=["chat"], name="assistant")

    recipe = info.details["recipe"]
    assert recipe["side_files"] == {"tokenizer": "chat@1", "chat_template": "chat@1", "generation_config": "chat@1"}
    assert info.details["outcome"]["side_files"]["tokenizer"] == "chat@1"
    assert any("vocabulary grown from 100 to 102" in n for n in info.details["outcome"]["notes"])
    card = (info.path / "README.md").read_text()
    assert '"side_files"' in card and "chat@1" in card

    ours = _tensors(info.path)
    reference = _peft_merged(base, chat, rows=BASE_VOCAB + 2)
    assert all(torch.equal(reference[k], v) for k, v in ours.items()) and set(ours) == set(reference)
    tok = AutoTokenizer.from_pretrained(info.path)
    assert tok.convert_tokens_to_ids(list(ADDED)) == [BASE_VOCAB, BASE_VOCAB + 1]
    assert tok.chat_template == CHAT_TEMPLATE
    assert GenerationConfig.from_pretrained(info.path).eos_token_id == [2, BASE_VOCAB + 1]
    assert reg.rebuild(ref=info.ref).ok

    # --tokenizer-from the base: the base's files, a recipe of its own
    from lorareg.errors import LoraregError

    with pytest.raises(LoraregError, match="not an input of this merge"):
        reg.merge(base="small", adapters=["chat"], name="assistant", tokenizer_from="assistant@1")
    tok_base = reg.merge(base="small", adapters=["chat"], name="assistant", tokenizer_from="small")
    assert tok_base.version == 2 and "side_files" not in tok_base.details["recipe"]
    assert tok_base.details["recipe"]["tokenizer_from"] == "small@1"
    assert len(AutoTokenizer.from_pretrained(tok_base.path)) == BASE_VOCAB


def test_new_recipe_fields_stay_out_of_old_identities(reg, llama, llama_lora):
    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=llama_lora, base="llama", name="a")
    info = reg.merge(base="llama", adapters=["a"], name="m")
    stored = info.details["recipe"]
    assert not {"allow_noop", "tokenizer_from", "side_files"} & set(stored)
    recipe = Recipe.from_json(stored)
    assert not {"allow_noop", "tokenizer_from", "side_files"} & set(recipe.identity())
    assert recipe.digest() == info.details["recipe_digest"]


def test_untrained_adapter_is_refused_unless_allowed(reg, llama, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    get_peft_model(AutoModelForCausalLM.from_pretrained(llama), LoraConfig(target_modules=["q_proj"])
                   ).save_pretrained(tmp_path / "untrained")
    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=tmp_path / "untrained", base="llama", name="untrained")
    with pytest.raises(MergeError, match="every LoRA delta is exactly zero"):
        reg.merge(base="llama", adapters=["untrained"], name="m")
    assert reg.count(kind="merge") == 0
    info = reg.merge(base="llama", adapters=["untrained"], name="m", allow_noop=True)
    assert info.details["recipe"]["allow_noop"] is True
    assert any("every LoRA delta is zero" in n for n in info.details["outcome"]["notes"])


@pytest.fixture
def chain(reg, llama, tmp_path):
    """llama -> sft (two adapters merged) -> exported -> dpo trained with PEFT on the export."""
    sft, extra = (make_lora(llama, tmp_path / n, seed=s) for n, s in (("sft", 11), ("extra", 12)))
    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=sft, base="llama", name="sft")
    reg.add_adapter(path=extra, base="llama", name="extra")
    parent = reg.merge(base="llama", adapters=["sft", "extra:0.5"], name="sft-merged")
    exported = tmp_path / "sft-export"
    reg.export(ref=parent.ref, dest=exported)
    dpo = make_lora(exported, tmp_path / "dpo", seed=13, target_modules=["q_proj", "v_proj", "down_proj"])
    reg.add_adapter(path=dpo, base=parent.ref, name="dpo")
    return reg, exported, dpo


def test_adapter_chain_matches_peft_on_the_exported_parent(chain, tmp_path):
    reg, exported, dpo = chain
    final = reg.merge(base="sft-merged@1", adapters=["dpo"], name="dpo-merged")
    ours = _tensors(final.path)
    reference = _peft_merged(exported, dpo)
    assert all(torch.equal(reference[k], v) for k, v in ours.items()) and set(ours) == set(reference)
    assert final.details["recipe"]["base"]["ref"] == "sft-merged@1"

    g = reg.lineage(ref=final.ref)
    kinds = {n.ref: n.kind for n in g.nodes}
    assert kinds["sft-merged@1"] == "merge" and kinds["llama@1"] == "base"
    edges = {(e.src, e.dst, e.role) for e in g.edges}
    assert ("dpo-merged@1", "sft-merged@1", "base") in edges and ("sft-merged@1", "llama@1", "base") in edges
    assert ("dpo@1", "sft-merged@1", "trained_on") in edges


def test_evicted_chain_is_rebuilt_parent_first(chain, tmp_path):
    reg, exported, dpo = chain
    final = reg.merge(base="sft-merged@1", adapters=["dpo"], name="dpo-merged")
    before = _tensors(final.path)
    reg.gc(evict=["sft-merged@1", "dpo-merged@1"])
    assert not reg.get(ref="sft-merged@1").stored and not reg.get(ref="dpo-merged@1").stored

    assert reg.rebuild(ref="dpo-merged@1").ok  # rebuilds sft-merged@1 (digest checked) to read it
    reg.export(ref="dpo-merged@1", dest=tmp_path / "out")
    after = _tensors(tmp_path / "out")
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert not reg.get(ref="sft-merged@1").stored  # the parent was rebuilt for the run only

    # an adapter registered against a recipe-only merged model is checked against its rebuilt folder
    again = reg.add_adapter(path=dpo, base="sft-merged@1", name="dpo2")
    assert again.details["base"] == "sft-merged@1"
    with pytest.raises(IncompatibleAdapterError):
        reg.add_adapter(path=make_lora(make_llama(tmp_path / "other", hidden=48), tmp_path / "misfit"),
                        base="sft-merged@1", name="misfit")


def test_rollback_warns_about_adapters_trained_on_the_version(chain):
    reg, _, _ = chain
    out = reg.rollback_adapter(ref="sft-merged@1", adapter="extra")
    assert any("dpo@1 was trained on sft-merged@1" in n for n in out.details["outcome"]["notes"])
    assert not any("trained on" in n for n in reg.get(ref="sft-merged@1").details["outcome"]["notes"])


def test_an_adapter_output_is_not_a_base(reg, llama, llama_lora, llama_lora2):
    from lorareg.errors import LoraregError

    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=llama_lora, base="llama", name="a")
    reg.add_adapter(path=llama_lora2, base="llama", name="b")
    cat = reg.merge(base="llama", adapters=["a", "b"], name="combo", as_adapter="cat")
    with pytest.raises(LoraregError, match="trained on .and merged into. a base or a merged model"):
        reg.add_adapter(path=llama_lora, base=cat.ref, name="c")


def test_qlora_bases(reg, tmp_path):
    """A 4-bit checkpoint is refused as a base, with the flags that reproduce it; a QLoRA merge
    records its quantization (and bitsandbytes' version) and rebuilds bit for bit."""
    from click.testing import CliRunner
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from lorareg.cli.main import cli
    from lorareg.errors import CheckpointError

    base = make_small_vocab_base(tmp_path / "base", dtype=torch.bfloat16)
    (tmp_path / "q4").mkdir()
    (tmp_path / "q4" / "README.md").write_text("---\nbase_model: acme/small-16bit\n---\n")
    AutoModelForCausalLM.from_pretrained(
        base, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                     bnb_4bit_use_double_quant=True), device_map="cpu",
    ).save_pretrained(tmp_path / "q4")
    with pytest.raises(CheckpointError, match="bitsandbytes-quantized checkpoint") as err:
        reg.add_base(path=tmp_path / "q4", name="q4")
    assert err.value.hint == ("register its 16-bit original (acme/small-16bit) as the base, and merge QLoRA "
                              "adapters into it with --base-quantization nf4 --double-quant")

    reg.add_base(path=base, name="small")
    reg.add_adapter(path=make_lora(base, tmp_path / "qlora", seed=3, target_modules=["q_proj"]), base="small",
                    name="qlora")
    runner = CliRunner()
    res = runner.invoke(cli, ["merge", "small", "qlora", "--name", "q", "--base-quantization", "nf4",
                              "--double-quant", "--json"])
    assert res.exit_code == 0, res.output
    info = reg.get(ref="q@1")
    recipe = info.details["recipe"]
    assert recipe["base_quantization"] == {"quant_type": "nf4", "double_quant": True, "blocksize": 64}
    assert "bitsandbytes" in recipe["versions"]
    assert reg.rebuild(ref="q@1").ok
    plain = reg.merge(base="small", adapters=["qlora"], name="q")
    assert plain.version == 2 and plain.digest != info.digest
    res = runner.invoke(cli, ["merge", "small", "qlora", "--name", "q", "--blocksize", "128"])
    assert res.exit_code == 2 and "--base-quantization" in res.output
