"""Tokenizer, chat template and generation config: the adapter's take precedence over the base's,
and the merged folder loads with plain ``AutoTokenizer`` / ``GenerationConfig``."""

from __future__ import annotations

import json

import pytest

from lorareg.errors import MergeError
from lorareg.merge import AdapterInput, MergePlan, merge
from lorareg.merge.side_files import choose_side_files, tokenizer_size
from tests.support.chat_adapters import ADDED, BASE_VOCAB, CHAT_TEMPLATE, make_chat_adapter, make_small_vocab_base
from tests.support.factories import make_lora

MESSAGES = [{"role": "user", "content": "w5 w6"}]


@pytest.fixture(scope="module")
def small_base(tmp_path_factory):
    return make_small_vocab_base(tmp_path_factory.mktemp("side") / "base")


@pytest.fixture(scope="module")
def chat_adapter(small_base, tmp_path_factory):
    return make_chat_adapter(small_base, tmp_path_factory.mktemp("chat") / "chat",
                             modules_to_save=["embed_tokens", "lm_head"])


def test_chat_adapter_side_files_win(small_base, chat_adapter, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    out = merge(MergePlan(base=small_base, adapters=(AdapterInput(chat_adapter),)), tmp_path / "out")
    assert out.side_files == {"tokenizer": 0, "chat_template": 0, "generation_config": 0}

    tok, trained = AutoTokenizer.from_pretrained(out.path), AutoTokenizer.from_pretrained(chat_adapter)
    assert len(tok) == BASE_VOCAB + 2 == len(trained)
    assert tok.convert_tokens_to_ids(list(ADDED)) == [BASE_VOCAB, BASE_VOCAB + 1]
    assert tok.chat_template == CHAT_TEMPLATE
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == trained.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert tok(text)["input_ids"] == trained(text)["input_ids"]
    assert GenerationConfig.from_pretrained(out.path).eos_token_id == [2, BASE_VOCAB + 1]
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out.path / name).read_bytes() == (chat_adapter / name).read_bytes()
        assert name in out.files


def test_a_template_alone_keeps_the_base_tokenizer(llama, tmp_path):
    from transformers import AutoTokenizer

    adapter = make_lora(llama, tmp_path / "adapter", seed=1, target_modules=["q_proj"])
    (adapter / "chat_template.jinja").write_text(CHAT_TEMPLATE.replace("<|im_start|>", "<s>").replace(
        "<|im_end|>", "</s>"))
    out = merge(MergePlan(base=llama, adapters=(AdapterInput(adapter),)), tmp_path / "out")
    assert out.side_files == {"chat_template": 0}
    assert (out.path / "tokenizer.json").read_bytes() == (llama / "tokenizer.json").read_bytes()
    assert (out.path / "generation_config.json").read_bytes() == (llama / "generation_config.json").read_bytes()
    tok = AutoTokenizer.from_pretrained(out.path)
    assert tok.apply_chat_template(MESSAGES, tokenize=False) == "<s>user w5 w6</s> "


def _with_generation(adapter, eos):
    from transformers import GenerationConfig

    GenerationConfig(bos_token_id=1, eos_token_id=eos).save_pretrained(adapter)
    return adapter


def test_conflicting_side_files_need_a_choice(llama, lora_pair, tmp_path):
    a, b = (_with_generation(x, eos) for x, eos in zip(lora_pair, ([2, 7], [2, 9])))
    plan = MergePlan(base=llama, adapters=(AdapterInput(a), AdapterInput(b)))
    with pytest.raises(MergeError, match="carry different generation config files") as err:
        merge(plan, tmp_path / "out")
    assert "--tokenizer-from" in err.value.hint and not (tmp_path / "out").exists()

    chosen = choose_side_files([a, b], prefer=1)
    assert chosen == {"generation_config": 1}
    out = merge(MergePlan(base=llama, adapters=plan.adapters, side_files=chosen), tmp_path / "out")
    assert json.loads((out.path / "generation_config.json").read_text())["eos_token_id"] == [2, 9]
    assert choose_side_files([a, b], prefer=-1) == {}  # the base's

    _with_generation(b, [2, 7])  # the same bytes in both: no conflict
    assert choose_side_files([a, b]) == {"generation_config": 0}


@pytest.fixture
def lora_pair(llama, tmp_path):
    return (make_lora(llama, tmp_path / "a", seed=1, target_modules=["q_proj"]),
            make_lora(llama, tmp_path / "b", seed=2, target_modules=["v_proj"]))


def test_tokenizer_larger_than_the_embedding_is_refused(small_base, tmp_path):
    """Added tokens, but the adapter saved no grown embedding: ids 100 and 101 have no rows."""
    adapter = make_chat_adapter(small_base, tmp_path / "adapter", save_embedding_layers=False)
    assert tokenizer_size(adapter) == BASE_VOCAB + 2
    with pytest.raises(MergeError, match="its tokenizer has 102 tokens, the merged embedding 100 rows"):
        merge(MergePlan(base=small_base, adapters=(AdapterInput(adapter),)), tmp_path / "out")
    out = merge(MergePlan(base=small_base, adapters=(AdapterInput(adapter),), side_files={}), tmp_path / "out")
    assert (out.path / "tokenizer.json").read_bytes() == (small_base / "tokenizer.json").read_bytes()
