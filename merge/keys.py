"""Map PEFT adapter keys to the base checkpoint's tensor names.

Adapter keys look like ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``;
the base stores ``model.layers.0.self_attn.q_proj.weight``.  The module path between the
PEFT prefix and the LoRA suffix names a module of the model class the adapter was trained
on, which may carry a prefix the base checkpoint lacks (``bert.`` on a bare BertModel
checkpoint) or lack one it has.  Names are resolved by suffix match, one dotted component at
a time, and an ambiguous match is an error rather than a guess.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from lorareg.errors import IncompatibleAdapterError

__all__ = ["PEFT_PREFIX", "KeyRole", "NameResolver", "parse_key"]

PEFT_PREFIX = "base_model.model."

# suffix -> role; longest suffixes first so ".lora_B.bias" wins over a plain ".bias"
_ROLES = (
    (".lora_embedding_A", "embedding_A"),
    (".lora_embedding_B", "embedding_B"),
    (".lora_magnitude_vector.weight", "magnitude"),
    (".lora_magnitude_vector", "magnitude"),
    (".token_adapter.trainable_tokens_delta", "tokens"),
    (".lora_A.weight", "A"),
    (".lora_B.weight", "B"),
    (".lora_B.bias", "lora_bias"),
)


@dataclass(frozen=True)
class KeyRole:
    module: str  # module path as the adapter's model class names it
    role: str  # A | B | lora_bias | embedding_A | embedding_B | magnitude | tokens | replace | unused
    param: str | None = None  # for "replace": the parameter name ("weight", "bias", ...)


def parse_key(key: str) -> KeyRole:
    """What one adapter tensor is: a LoRA factor of a module, or a full replacement of a base tensor."""
    body = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
    for suffix, role in _ROLES:
        if body.endswith(suffix):
            return KeyRole(module=body[: -len(suffix)], role=role)
    module, _, param = body.rpartition(".")
    if module.endswith(".modules_to_save"):
        # A second copy of a modules_to_save module, which `save_embedding_layers` adds after
        # a vocabulary resize; its key lacks the adapter name, so PEFT loads it nowhere.
        return KeyRole(module=module.removesuffix(".modules_to_save"), role="unused", param=param)
    # `base_layer.<param>` / `original_module.<param>`: PEFT saved the wrapped base module's
    # own tensor (the embedding it saves alongside an embedding LoRA, or after a vocabulary
    # resize); loading it overwrites the base's.
    # (a trainable-tokens wrapper holds the embedding as `token_adapter.base_layer`)
    module = module.removesuffix(".base_layer").removesuffix(".token_adapter").removesuffix(".original_module")
    return KeyRole(module=module, role="replace", param=param)


class NameResolver:
    """Resolve adapter module paths against a fixed set of base tensor names."""

    def __init__(self, base_names: Iterable[str]) -> None:
        self._names = set(base_names)
        self._by_suffix: dict[str, list[str]] = defaultdict(list)
        for name in self._names:
            parts = name.split(".")
            for i in range(len(parts)):
                self._by_suffix[".".join(parts[i:])].append(name)

    def resolve(self, module: str, param: str = "weight", *, adapter: object = "") -> str | None:
        """The base tensor name for ``module.param``, None if the base has none."""
        wanted = f"{module}.{param}" if module else param
        if wanted in self._names:
            return wanted
        parts = wanted.split(".")
        # Drop leading components from the adapter side until something matches; the base
        # side may also carry extra leading components (matched by suffix).  At least the
        # module's own name and its parameter must remain, and a layer index is never dropped
        # (stripping `layers.0.` would let a one-layer base match any layer).
        digits = [i for i, p in enumerate(parts) if p.isdigit()]
        last = digits[0] if digits else len(parts) - 2
        for i in range(0, max(last, 0) + 1):
            suffix = ".".join(parts[i:])
            found = self._by_suffix.get(suffix, [])
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                shown = ", ".join(sorted(found)[:3])
                raise IncompatibleAdapterError(
                    f"{adapter}: adapter module {module!r} matches several base tensors ({shown})",
                    hint="the base holds more than one model with these names; pass the matching sub-model",
                )
        return None

    def has(self, name: str) -> bool:
        return name in self._names
