"""Merges that change nothing: an untrained adapter, or deltas that round away.

An adapter saved before training (every ``lora_B`` still zero, PEFT's default init) merges
"successfully" into a copy of the base; users then ship it as a fine-tune.  The engine
refuses such a merge unless it is asked for (``allow_noop``), and tells which modules of an
adapter have a zero delta when only some do.
"""

from __future__ import annotations

from lorareg.errors import MergeError
from lorareg.merge.adapter import AdapterModule, LoadedAdapter

__all__ = ["ALLOW_HINT", "check_untrained", "zero_modules"]

ALLOW_HINT = "pass --allow-noop (allow_noop=True) to merge it anyway; it is recorded in the recipe"
_SHOWN = 5


def _is_zero(m: AdapterModule) -> bool:
    if m.magnitude is not None:
        return False  # DoRA renormalises the weight even with a zero delta
    if m.lora_bias is not None and bool(m.lora_bias.any()):
        return False
    return not bool(m.lora_B.any()) or not bool(m.lora_A.any())


def zero_modules(adapter: LoadedAdapter) -> list[str]:
    """The adapter's LoRA modules whose delta ``B @ A`` is exactly zero."""
    return sorted(m.module for m in adapter.modules.values() if _is_zero(m))


def _untrained(adapter: LoadedAdapter, zeros: list[str]) -> bool:
    # saved module copies, token rows or base-layer copies change weights without a LoRA delta
    return bool(adapter.modules) and len(zeros) == len(adapter.modules) and not (
        adapter.replacements or adapter.tokens or adapter.overrides)


def check_untrained(adapters: list[LoadedAdapter], *, allow: bool) -> list[str]:
    """Refuse an adapter whose every delta is zero (unless ``allow``); returns notes naming
    the zero modules of adapters where only some are."""
    notes = []
    for adapter in adapters:
        zeros = zero_modules(adapter)
        if not zeros:
            continue
        if _untrained(adapter, zeros):
            if not allow:
                raise MergeError(
                    f"{adapter.path}: every LoRA delta is exactly zero (lora_B or lora_A all zeros in all "
                    f"{len(zeros)} modules): an untrained adapter", hint="check that training saved the trained "
                    "weights, or " + ALLOW_HINT)
            notes.append(f"{adapter.path.name}: every LoRA delta is zero (merged anyway: allow_noop)")
            continue
        shown = ", ".join(zeros[:_SHOWN]) + (f" (+{len(zeros) - _SHOWN} more)" if len(zeros) > _SHOWN else "")
        notes.append(f"{adapter.path.name}: zero delta in {len(zeros)} of {len(adapter.modules)} modules: {shown}")
    return notes
