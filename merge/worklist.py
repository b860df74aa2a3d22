"""Which base tensors each adapter changes, and how: the merge's per-tensor work list.

Also where tied embeddings are decided.  A causal LM whose head is tied stores only the
input embedding; the adapter's forward pass may still treat the two differently (a LoRA on
``embed_tokens`` does not touch ``lm_head``).  Each of the pair gets the operations the
adapter model applies to it; when the two lists differ the output unties them and writes
both tensors (``tie_word_embeddings: false``), as PEFT does for modules_to_save.  PEFT's
own ``merge_and_unload`` instead adds an embedding or lm_head LoRA into the shared weight,
changing the other tensor too (its merged logits then leave the adapter model's by ~0.5);
lorareg follows the adapter model there, on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lorareg.errors import UnsupportedFeatureError
from lorareg.merge.adapter import AdapterModule, LoadedAdapter
from lorareg.merge.arch import TiedPair

__all__ = ["Op", "TensorOps", "build_ops"]

_ONE_ADAPTER_HINT = "merge it on its own (one adapter, weight 1.0, method linear), then merge the rest into that"


@dataclass(frozen=True)
class Op:
    kind: str  # "override" | "lora" | "dora" | "bias" | "replace" | "tokens"
    adapter: int  # index into the plan's adapters
    payload: Any  # AdapterModule, a tensor, or (indices, values)

    def key(self) -> tuple[str, int, int]:
        return (self.kind, self.adapter, id(self.payload))


@dataclass(frozen=True)
class TensorOps:
    ops: dict[str, list[Op]]  # output tensor name -> operations, in application order
    untied: TiedPair | None  # the pair written as two tensors, if the merge unties it
    notes: tuple[str, ...]


def _adapter_ops(index: int, adapter: LoadedAdapter) -> dict[str, list[Op]]:
    ops: dict[str, list[Op]] = {}

    def add(name: str, op: Op) -> None:
        ops.setdefault(name, []).append(op)

    for target, tensor in adapter.overrides.items():
        add(target, Op("override", index, tensor))
    for target, m in adapter.modules.items():
        add(target, Op("dora" if m.magnitude is not None else "lora", index, m))
        if m.bias_target is not None:
            add(m.bias_target, Op("bias", index, m))
    for target, tensor in adapter.replacements.items():
        add(target, Op("replace", index, tensor))
    for target, rows in adapter.tokens.items():
        add(target, Op("tokens", index, rows))
    return ops


def _tie(index: int, adapter: LoadedAdapter, ops: dict[str, list[Op]], pair: TiedPair) -> list[str]:
    """Give the tied head the operations the adapter model applies to it."""
    notes = []
    emb, head = ops.get(pair.embedding, []), ops.get(pair.head, [])
    # PEFT loads a saved copy of either one into the single shared parameter.
    shared = [op for op in emb + head if op.kind == "override"]
    emb_main = [op for op in emb if op.kind != "override"]
    head_main = [op for op in head if op.kind != "override"]
    if adapter.summary.ensure_weight_tying and emb_main:
        # the head's LoRA (or saved module) is tied to the embedding's: one update for both
        head_main = list(emb_main)
        if any(op.kind in ("lora", "dora") for op in emb_main):
            notes.append(
                f"{adapter.path.name}: ensure_weight_tying: the embedding LoRA is applied once to the tied "
                "embedding/head (PEFT 0.21 merge_and_unload adds it twice)"
            )
    elif adapter.summary.ensure_weight_tying and head_main:
        raise UnsupportedFeatureError(
            f"{adapter.path}: ensure_weight_tying with a LoRA on {pair.head} but not on {pair.embedding}",
            hint="retrain with the embedding layer as the target, as PEFT expects",
        )
    elif any(op.kind == "tokens" for op in emb_main):
        if head_main and _same_tokens(emb_main, head_main):
            head_main = []  # the tied head's copy of the embedding's rows (saved after a resize)
        if head_main:
            raise UnsupportedFeatureError(
                f"{adapter.path}: trainable tokens on both tied tensors {pair.embedding} and {pair.head}",
                hint="give trainable_token_indices for the embedding only",
            )
        head_main = [op for op in emb_main if op.kind == "tokens"]  # PEFT ties the head's rows
    if shared or emb_main:
        ops[pair.embedding] = shared + emb_main
    if shared or head_main:
        ops[pair.head] = shared + head_main
    return notes


def _same_tokens(emb: list[Op], head: list[Op]) -> bool:
    import torch

    if len(emb) != 1 or len(head) != 1 or head[0].kind != "tokens":
        return False
    (ei, ev), (hi, hv) = emb[0].payload, head[0].payload
    return tuple(ei) == tuple(hi) and torch.equal(ev, hv)


def build_ops(adapters: list[LoadedAdapter], weights: list[float], method: str, pair: TiedPair | None) -> TensorOps:
    exact_single = len(adapters) == 1 and weights[0] == 1.0 and method == "linear"
    merged: dict[str, list[Op]] = {}
    notes: list[str] = []
    for i, adapter in enumerate(adapters):
        ops = _adapter_ops(i, adapter)
        if pair is not None:
            notes += _tie(i, adapter, ops, pair)
        for name, items in ops.items():
            for op in items:
                if op.kind in ("dora", "replace", "tokens") and not exact_single:
                    what = {"dora": "DoRA", "replace": "modules_to_save", "tokens": "trainable tokens"}[op.kind]
                    raise UnsupportedFeatureError(
                        f"{adapter.path}: {what} ({name}) has no defined weighted or multi-adapter merge",
                        hint=_ONE_ADAPTER_HINT,
                    )
            merged.setdefault(name, []).extend(items)
    untied = None
    if pair is not None and (pair.head in merged or pair.embedding in merged):
        emb = [op.key() for op in merged.get(pair.embedding, [])]
        head = [op.key() for op in merged.get(pair.head, [])]
        if emb == head:
            merged.pop(pair.head, None)  # same updates: the pair stays tied, the head is not stored
        else:
            untied = pair
            notes.append(
                f"untied {pair.head} from {pair.embedding}: the adapters change them differently; "
                "config.json now has tie_word_embeddings=false"
            )
    return TensorOps(ops=merged, untied=untied, notes=tuple(notes))


def main_kind(ops: list[Op]) -> str | None:
    kinds = {op.kind for op in ops if op.kind != "override"}
    if len(kinds) > 1:
        raise UnsupportedFeatureError(
            f"adapters change one tensor in incompatible ways ({', '.join(sorted(kinds))})",
            hint=_ONE_ADAPTER_HINT,
        )
    return kinds.pop() if kinds else None


def module_kind(ops: list[Op]) -> str:
    kinds = {op.payload.kind for op in ops if isinstance(op.payload, AdapterModule) and op.kind == "lora"}
    if len(kinds) > 1:
        raise UnsupportedFeatureError(
            f"adapters treat one tensor as different layer types ({', '.join(sorted(kinds))})",
            hint="merge adapters trained on the same architecture",
        )
    return kinds.pop() if kinds else "linear"
