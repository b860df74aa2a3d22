"""The token sequences a behaviour check runs: seeded draws from the vocabulary, or prompts.

Both are recorded with the check (the seed, or the prompt file's sha256), so a check can be
repeated on the same inputs.  Nothing is downloaded: the tokenizer is the one in the model
folder, and without one the draws come from the config's vocabulary size.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorareg.errors import LoraregError

__all__ = ["DEFAULT_LENGTH", "DEFAULT_SAMPLES", "CheckInputs", "prompt_inputs", "random_inputs", "read_prompts"]

DEFAULT_SAMPLES = 8
DEFAULT_LENGTH = 32  # tokens per drawn sequence, capped by the model's context


@dataclass(frozen=True)
class CheckInputs:
    sequences: tuple[tuple[int, ...], ...]
    seed: int | None  # drawn sequences: the seed; prompts: None
    prompts_sha256: str | None  # prompts: sha256 of the file's bytes
    chat: bool = False

    @property
    def positions(self) -> int:
        return sum(len(s) for s in self.sequences)


def read_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise LoraregError(f"{folder} has no config.json", hint="check a merged model folder or a base")
    return json.loads(path.read_text(encoding="utf-8"))


def _context(config: dict[str, Any]) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return config[key]
    return None


def _tokenizer(folder: Path):
    """The folder's tokenizer, or None when it has none (the draws then need no tokenizer)."""
    from transformers import AutoTokenizer

    if not any((Path(folder) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                                                         "tokenizer.model")):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # a broken or exotic tokenizer: say which, do not guess
        raise LoraregError(f"cannot load the tokenizer in {folder}: {str(exc).splitlines()[0]}",
                           hint="check with --prompts on a model whose tokenizer transformers can load") from exc


def _first_special(tok) -> int | None:
    for attr in ("bos_token_id", "cls_token_id"):
        value = getattr(tok, attr, None) if tok is not None else None
        if isinstance(value, int):
            return value
    return None


def random_inputs(folder: Path, *, samples: int, seed: int, length: int = DEFAULT_LENGTH,
                  room: int = 0) -> CheckInputs:
    """``samples`` sequences of ``length`` tokens (fewer when the context is shorter, leaving
    ``room`` positions for generation), drawn uniformly from the ordinary tokens of the
    vocabulary by a generator seeded with ``seed``; each starts with the BOS/CLS token when
    the tokenizer has one, as a tokenized text would."""
    import torch

    config = read_config(folder)
    tok = _tokenizer(folder)
    vocab = int(config.get("vocab_size") or 0)
    size = min(vocab, len(tok)) if tok is not None and vocab else (vocab or (len(tok) if tok is not None else 0))
    special = set(getattr(tok, "all_special_ids", []) or []) if tok is not None else set()
    allowed = torch.tensor([i for i in range(size) if i not in special], dtype=torch.long)
    if allowed.numel() == 0:
        raise LoraregError(f"{folder}: no ordinary tokens to draw inputs from",
                           hint="pass --prompts FILE with one prompt per line")
    context = _context(config)
    if context is not None:
        length = max(2, min(length, context - room))
    first = _first_special(tok)
    gen = torch.Generator().manual_seed(int(seed))
    sequences = []
    for _ in range(samples):
        ids = allowed[torch.randint(len(allowed), (length,), generator=gen)].tolist()
        if first is not None:
            ids[0] = first
        sequences.append(tuple(ids))
    return CheckInputs(sequences=tuple(sequences), seed=int(seed), prompts_sha256=None)


def read_prompts(path: Path) -> tuple[list[str], str]:
    """One prompt per non-blank line, and the sha256 of the file's bytes."""
    import hashlib

    path = Path(path)
    if not path.is_file():
        raise LoraregError(f"prompts file {path} does not exist", hint="pass a text file with one prompt per line")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise LoraregError(f"prompts file {path} is not UTF-8 text", hint="save it as UTF-8, one prompt per line") \
            from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise LoraregError(f"prompts file {path} is empty", hint="write one prompt per line")
    return prompts, hashlib.sha256(data).hexdigest()


def prompt_inputs(folder: Path, prompts: Sequence[str], *, sha256: str, chat: bool, room: int = 0,
                  label: str | None = None) -> CheckInputs:
    """The prompts tokenized by the folder's tokenizer (with its chat template when ``chat``);
    ``label`` names the model in errors (default: the folder)."""
    label = label or str(folder)
    tok = _tokenizer(folder)
    if tok is None:
        raise LoraregError(f"{label} has no tokenizer to encode the prompts with",
                           hint="drop --prompts: the check then draws token sequences from the vocabulary")
    if chat and not getattr(tok, "chat_template", None):
        raise LoraregError(f"{label}'s tokenizer has no chat template, so --chat cannot apply one",
                           hint="drop --chat to use the prompts as plain text")
    context = _context(read_config(folder))
    sequences = []
    for prompt in prompts:
        if chat:
            encoded = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                              tokenize=True)
            ids = list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
        else:
            ids = list(tok(prompt)["input_ids"])
        if not ids:
            raise LoraregError(f"the prompt {prompt[:40]!r} encodes to no tokens", hint="remove that line")
        if context is not None and len(ids) + room > context:
            raise LoraregError(f"the prompt {prompt[:40]!r} is {len(ids)} tokens; with {room} new tokens that "
                               f"exceeds the model's context of {context}",
                               hint="shorten it, or lower --max-new-tokens")
        sequences.append(tuple(int(i) for i in ids))
    return CheckInputs(sequences=tuple(sequences), seed=None, prompts_sha256=sha256, chat=chat)
