"""Adapters trained after ``resize_token_embeddings(n)``: the vocabulary they add.

The usual recipe for chat tokens grows the base's embedding and output head from the base's
rows to ``n`` before training, and saves full copies of both in the adapter
(``modules_to_save``, or ``save_embedding_layers`` next to an embedding LoRA or trainable
tokens).  PEFT users merge such an adapter with ``base.resize_token_embeddings(n)`` +
``PeftModel.from_pretrained`` + ``merge_and_unload()``: the resize gives the new rows random
values and loading the adapter overwrites them.  lorareg grows the same tensors to ``n``
rows and requires that every new row is written by the adapter; where it is not, PEFT's
result would hold the resize's random rows, which no recipe can rebuild, so it is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorareg.errors import IncompatibleAdapterError, UnsupportedFeatureError
from lorareg.merge.arch import input_embedding

if TYPE_CHECKING:
    import torch

    from lorareg.merge.adapter import AdapterLayout
    from lorareg.merge.worklist import Op

__all__ = ["VocabGrowth", "check_rows_defined", "find_growth", "grow_rows", "grown_shapes", "vocab_tensors"]

# Output heads whose rows are the vocabulary (GPT-NeoX calls it embed_out).
_HEADS = ("lm_head.weight", "embed_out.weight")


@dataclass(frozen=True)
class VocabGrowth:
    base_rows: int
    rows: int  # the vocabulary the adapter was trained with
    tensors: tuple[str, ...]  # the base tensors (tied head included) that grow to ``rows``

    @property
    def added(self) -> int:
        return self.rows - self.base_rows


def vocab_tensors(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, ...]:
    """The input embedding and output head, when their rows are one vocabulary."""
    emb = input_embedding(shapes)
    if emb is None or len(shapes[emb]) != 2:
        return ()
    rows = shapes[emb][0]
    heads = [h for h in _HEADS if h in shapes and len(shapes[h]) == 2 and shapes[h][0] == rows]
    return (emb, *heads)


def _rows_implied(layout: AdapterLayout, name: str) -> list[int]:
    """Row counts the adapter's tensors for ``name`` were saved with."""
    shp = layout.shapes
    out = [shp[k][0] for k in (layout.replacements.get(name), layout.overrides.get(name)) if k is not None]
    m = layout.modules.get(name)
    if m is not None:
        # an embedding LoRA's A is (r, num_embeddings); a head's B is (vocab, r)
        out.append(shp[m.keys["A"]][1] if m.kind == "embedding" else shp[m.keys["B"]][0])
    return out


def find_growth(adapter: Path, layout: AdapterLayout, shapes: Mapping[str, tuple[int, ...]]) -> VocabGrowth | None:
    """The vocabulary growth the adapter's saved tensors imply, or None."""
    names = vocab_tensors(shapes)
    if not names:
        return None
    base_rows = shapes[names[0]][0]
    implied = [r for n in names for r in _rows_implied(layout, n)]
    rows = max(implied, default=base_rows)
    if rows <= base_rows:
        beyond = [(t, max(idx)) for t, (_, idx) in layout.tokens.items() if t in names and idx and max(idx) >= base_rows]
        if beyond:
            raise UnsupportedFeatureError(
                f"{adapter}: trainable tokens for row {beyond[0][1]} of {beyond[0][0]}, beyond the base's "
                f"{base_rows} rows, and no saved embedding that says how many rows it was trained with",
                hint="re-save the adapter with save_embedding_layers=True, or register it against the resized base")
        return None
    return VocabGrowth(base_rows=base_rows, rows=rows, tensors=names)


def grown_shapes(shapes: Mapping[str, tuple[int, ...]], growth: VocabGrowth | None) -> dict[str, tuple[int, ...]]:
    out = dict(shapes)
    if growth is not None:
        for name in (n for n in growth.tensors if n in shapes):  # a tied head is not stored
            out[name] = (growth.rows, *shapes[name][1:])
    return out


def check_rows_defined(adapters: list[Any], growth: VocabGrowth, ops: Mapping[str, list[Op]],
                       written: Mapping[str, str]) -> None:
    """Refuse unless every added row of every grown output tensor is written by an adapter.

    ``written``: each grown tensor the output stores -> the base tensor it starts from (a tied
    head left tied is not stored: it is the embedding)."""
    new_rows = set(range(growth.base_rows, growth.rows))
    for name in written:
        defined: set[int] = set()
        for op in ops.get(name, []):
            if op.kind in ("override", "replace"):
                defined = new_rows  # a full copy of the tensor
                break
            if op.kind == "tokens":
                defined |= set(op.payload[0])
        missing = sorted(new_rows - defined)
        if missing:
            who = adapters[0].path if len(adapters) == 1 else "the adapters"
            raise IncompatibleAdapterError(
                f"{who}: trained with {growth.rows} tokens (the base has {growth.base_rows}), but saves no values "
                f"for rows {missing[0]}..{missing[-1]} of {name}: PEFT would leave resize_token_embeddings' random "
                "rows there",
                hint=f"retrain with {name.rpartition('.')[0].rpartition('.')[2]} in modules_to_save (or "
                     "save_embedding_layers=True), or register the resized base and the adapter against it")


def grow_rows(w: torch.Tensor, rows: int) -> torch.Tensor:
    """``w`` with zero rows appended up to ``rows``; the adapter's ops then write every new row."""
    import torch

    out = torch.zeros((rows, *w.shape[1:]), dtype=w.dtype)
    out[: w.shape[0]].copy_(w)
    return out
