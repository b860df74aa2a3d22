"""The little architecture knowledge a header-only merge needs.

Which modules are GPT-2 style ``Conv1D`` (weights stored transposed, so PEFT forces
``fan_in_fan_out`` on them), which tensor is the input embedding, and whether the output
head is tied to it (and so absent from the checkpoint).  All of it comes from config.json and
tensor names, never from building the model.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["TiedPair", "input_embedding", "is_conv1d", "tied_pair"]

# transformers models built from `transformers.pytorch_utils.Conv1D`, and the module names
# that are Conv1D in them (every other 2-D weight in them is an Embedding or nn.Linear).
CONV1D_MODEL_TYPES = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer"}
CONV1D_CLASSES = ("GPT2", "OpenAIGPT", "ImageGPT", "DecisionTransformer")
CONV1D_LEAVES = {"c_attn", "q_attn", "c_proj", "c_fc"}
_EMBEDDING_LEAVES = ("embed_tokens", "wte", "word_embeddings", "embed_in", "tok_embeddings", "shared")
_HEAD = "lm_head.weight"
_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass(frozen=True)
class TiedPair:
    embedding: str  # the input embedding tensor the checkpoint stores
    head: str  # the output head tensor it ties to, absent from the checkpoint


def is_conv1d(module: str, *, config: Mapping[str, Any] | None, model_class: str | None = None) -> bool:
    """Whether ``module`` (a module path) is a transformers Conv1D in this model."""
    if module.rpartition(".")[2] not in CONV1D_LEAVES:
        return False
    if config is not None:
        return config.get("model_type") in CONV1D_MODEL_TYPES
    return bool(model_class) and model_class.startswith(CONV1D_CLASSES)


def input_embedding(names: Collection[str]) -> str | None:
    """The input embedding's tensor name, when exactly one tensor looks like one."""
    found = [n for n in names if n.endswith(".weight") and n[: -len(".weight")].rpartition(".")[2] in _EMBEDDING_LEAVES]
    found = [n for n in found if "position" not in n]
    return found[0] if len(found) == 1 else None


def tied_pair(config: Mapping[str, Any], names: Collection[str]) -> TiedPair | None:
    """The (embedding, head) pair of a causal LM whose head is tied and so not stored."""
    archs = config.get("architectures") or []
    if not any(str(a).endswith(_LM_SUFFIXES) for a in archs):
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    tie = config.get("tie_word_embeddings", text.get("tie_word_embeddings", True))
    if not tie or _HEAD in names:
        return None
    embedding = input_embedding(names)
    return TiedPair(embedding=embedding, head=_HEAD) if embedding else None
