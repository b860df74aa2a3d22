"""Adapters built the way chat fine-tuning builds them: new special tokens, a resized
embedding, a chat template and a generation config saved into the adapter folder.

``make_small_vocab_base`` writes a base with 100 tokens (and a matching tokenizer), so that
an adapter trained with two added tokens has 102 rows where the base has 100.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

BASE_VOCAB = 100
ADDED = ("<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} {{ message['content'] }}<|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def small_tokenizer(vocab: int = BASE_VOCAB):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    words.update({f"w{i}": i for i in range(4, vocab)})
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def make_small_vocab_base(dest: Path, *, kind: str = "llama", dtype: torch.dtype = torch.float32,
                          seed: int = 0, hidden: int = 32) -> Path:
    """A Llama (untied) or Qwen2 (tied) base with BASE_VOCAB tokens, tokenizer included."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from tests.support.factories import _save

    torch.manual_seed(seed)
    common = dict(vocab_size=BASE_VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1,
                  eos_token_id=2, pad_token_id=3)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **common))
    dest = _save(model, Path(dest), dtype)
    small_tokenizer().save_pretrained(dest)  # replaces the 128-token one _save wrote
    return dest


def chat_tokenizer(base: Path):
    """The base's tokenizer with the chat tokens added and a chat template, as SFT scripts do."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    tok.add_special_tokens({"additional_special_tokens": list(ADDED)})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_chat_adapter(base: Path, dest: Path, *, seed: int = 0, save_embedding_layers: bool | str = "auto",
                      save_side_files: bool = True, eos_token_id=None, **lora_kwargs) -> Path:
    """Resize the base to the chat tokenizer, wrap it with PEFT, give every trainable value a
    random float32 (as in factories.make_lora) and save adapter, tokenizer and generation config."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GenerationConfig

    tok = chat_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed + 1000)  # the resize's own random rows: overwritten by what the adapter saves
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    kwargs = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    kwargs.update(lora_kwargs)
    peft_model = get_peft_model(model, LoraConfig(**kwargs))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(peft_model.named_parameters()):
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * 0.05)
    peft_model.save_pretrained(dest, save_embedding_layers=save_embedding_layers)
    if save_side_files:
        tok.save_pretrained(dest)
        im_end = tok.convert_tokens_to_ids(ADDED[1])
        GenerationConfig(bos_token_id=1, eos_token_id=eos_token_id or [2, im_end], pad_token_id=3).save_pretrained(dest)
    return Path(dest)


def vocab_rows(folder: Path) -> int:
    return json.loads((Path(folder) / "config.json").read_text())["vocab_size"]
