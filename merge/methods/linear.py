"""linear: sum_i w_i * dW_i, exactly, summed in adapter order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lorareg.merge.methods.base import MergeMethod

if TYPE_CHECKING:
    import torch
    from torch import Tensor


class Linear(MergeMethod):
    name = "linear"
    summary = "weighted sum of the deltas, exact (a single adapter at weight 1 is PEFT's merge)"
    params = ()
    random = False
    supports_subtract = True
    in_place = True

    def _combine(self, deltas: Sequence[Tensor], floats: list[float], *, params: dict[str, Any],
                 generator: torch.Generator, overwrite: bool = False) -> Tensor:
        import torch

        if len(deltas) == 1 and floats[0] == 1.0:
            # A single adapter at weight 1 must merge bit-identically to PEFT's merge_and_unload,
            # which never multiplies the delta by 1.
            return deltas[0]
        if overwrite:  # in place: the same products and sums, no full-size tensor allocated
            acc = deltas[0].mul_(floats[0])
            for delta, weight in zip(deltas[1:], floats[1:]):
                acc.add_(delta.mul_(weight))
            return acc
        # Plain left-to-right sum (no fused multiply-add, no pairwise tree): the order is
        # part of the recipe, so rebuilds reproduce the bytes.  For up to four adapters it
        # also equals peft's task_arithmetic, whose sum(dim=0) only regroups beyond that.
        acc = torch.mul(deltas[0], floats[0])
        term = torch.empty_like(acc) if len(deltas) > 1 else None
        for delta, weight in zip(deltas[1:], floats[1:]):
            torch.mul(delta, weight, out=term)
            acc.add_(term)
        return acc


LINEAR = Linear()
