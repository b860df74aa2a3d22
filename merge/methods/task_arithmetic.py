"""Generalised task arithmetic: one method class whose instances are ties, dare_linear,
dare_ties and magnitude_prune (as mergekit's ``GeneralizedTaskArithmeticMerge``), each
configured by how it prunes, whether it rescales and whether it elects a sign.

Each step mirrors peft.utils.merge_utils (PEFT 0.21) operation for operation, because the
promise is bit-for-bit parity with PEFT's functions applied to the same deltas: the same
ops in the same order on the same dtypes give the same bytes.  The one deliberate change is
that random masks draw from the caller's generator instead of the global RNG, in the same
order (adapter by adapter, one Bernoulli draw per element), so a seeded global RNG in PEFT
and a generator seeded alike here yield identical masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from lorareg.merge.methods.base import MergeMethod, Param

if TYPE_CHECKING:
    import torch
    from torch import Tensor


# Rows per block of the steps after pruning: about 1 MiB of float32 per adapter.
_BLOCK_ELEMENTS = 1 << 18


def magnitude_pruned(tensor: Tensor, density: float) -> Tensor:
    """Keep the int(density * numel) largest-magnitude entries (peft: magnitude_based_pruning)."""
    if density >= 1:  # peft's prune() returns the tensor itself here
        return tensor
    return tensor * _magnitude_mask(tensor, density).to(tensor.dtype)


def _magnitude_mask(tensor: Tensor, density: float, *, scratch: Tensor | None = None) -> Tensor:
    """The entries magnitude pruning keeps, as a bool mask shaped like ``tensor`` (top-k is
    over the whole tensor, so this needs all of it at once).  ``scratch``, a tensor of the same
    shape and dtype that is free until the mask is made, holds the magnitudes instead of a new one."""
    import torch

    k = int(density * tensor.numel())
    magnitudes = torch.abs(tensor, out=scratch) if scratch is not None else tensor.abs()
    return _top_k_mask(magnitudes.reshape(-1), k).reshape(tensor.shape)


def _top_k_mask(magnitudes: Tensor, k: int) -> Tensor:
    """The entries peft's ``topk(magnitudes, k)`` selects, as a bool mask.

    A threshold (the k-th largest magnitude) is ~3x faster than topk with k in the millions.  It selects
    the same entries unless several share the threshold magnitude: then the pick among them
    is topk's own tie-break, so topk decides.  Ties at magnitude 0 do not matter (a kept and
    a dropped zero give the same bits), and NaNs never pass the count check.
    """
    import torch

    if k <= 0:
        return torch.zeros_like(magnitudes, dtype=torch.bool)
    threshold = _kth_largest(magnitudes, k)
    if threshold == 0:
        return magnitudes > threshold
    # One bool temporary, not two (">" and "=="): the entries at or above the threshold are
    # topk's exactly when there are k of them; otherwise ties at the threshold, and topk decides.
    kept = magnitudes >= threshold
    if int(torch.count_nonzero(kept)) == k:  # not .sum(): that makes an int64 copy of the mask
        return kept
    del kept
    mask = torch.zeros_like(magnitudes, dtype=torch.bool)
    mask[torch.topk(magnitudes, k=k, largest=True).indices] = True
    return mask


_BITS = {"float32": "int32", "float64": "int64", "float16": "int16", "bfloat16": "int16"}


def _kth_largest(magnitudes: Tensor, k: int) -> Tensor:
    """``kthvalue(magnitudes, n - k + 1).values`` without its two full-size temporaries (a
    copy and int64 indices: 3x the tensor): magnitudes are >= 0 (or NaN, which sorts last as
    kthvalue sorts it), so their bit patterns order as their values, and the k-th largest is
    found by a binary search over bit patterns, one counting pass per bit."""
    import torch

    name = str(magnitudes.dtype).removeprefix("torch.")
    if name not in _BITS:
        return torch.kthvalue(magnitudes, magnitudes.numel() - k + 1).values
    bits = magnitudes.view(getattr(torch, _BITS[name]))
    lo, hi = 0, torch.iinfo(bits.dtype).max  # the largest pattern t with count(bits >= t) >= k
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(torch.count_nonzero(bits >= mid)) >= k:
            lo = mid
        else:
            hi = mid - 1
    return torch.tensor(lo, dtype=bits.dtype).view(magnitudes.dtype)


def random_pruned(tensor: Tensor, density: float, *, rescale: bool, generator: torch.Generator) -> Tensor:
    """Keep each entry with probability density (peft: random_pruning), drawing from generator."""
    import torch

    if density >= 1:  # no draws at all, exactly like peft's prune()
        return tensor
    mask = torch.bernoulli(torch.full_like(input=tensor, fill_value=density), generator=generator)
    pruned = tensor * mask
    if rescale:
        pruned = pruned / density
    return pruned


def _random_mask(tensor: Tensor, density: float, *, generator: torch.Generator, step: int) -> Tensor:
    """The entries random pruning keeps, as a bool mask: the same Bernoulli draws as
    ``random_pruned``, made row block by row block in element order (CPU bernoulli draws one
    sample per element, serially, so the blocks consume the generator exactly as one call)."""
    import torch

    mask = torch.empty(tensor.shape, dtype=torch.bool)
    for s in range(0, tensor.shape[0], step):
        block = tensor[s : s + step]
        mask[s : s + step] = torch.bernoulli(torch.full_like(input=block, fill_value=density), generator=generator)
    return mask


def majority_sign_mask(stacked: Tensor, method: str) -> Tensor:
    """peft: calculate_majority_sign_mask on deltas stacked along dim 0."""
    import torch

    sign = stacked.sign()
    if method == "total":
        sign_magnitude = stacked.sum(dim=0)
    else:  # "frequency"; checked against MAJORITY_SIGN_METHOD.choices
        sign_magnitude = sign.sum(dim=0)
    majority_sign = torch.where(sign_magnitude >= 0, 1, -1)
    return sign == majority_sign


def generalized_task_arithmetic(
    deltas: Sequence[Tensor],
    weights: Sequence[float],
    *,
    prune: Literal["magnitude", "random"],
    density: float,
    rescale: bool,
    elect_sign: bool,
    majority_sign_method: str | None,
    generator: torch.Generator,
) -> Tensor:
    """Sparsify each delta, optionally elect a sign, then weight and combine (peft's pipeline).

    Pruning is decided over each whole delta (top-k needs all of it) but kept as a bool mask;
    every step after it is elementwise along the rows, so it runs row block by row block into
    one output tensor.  Peak memory: the n masks (a byte per entry), the output and one block's
    temporaries, instead of several float32 copies of every delta.  Each block gets the same
    ops on the same values as PEFT's whole-tensor pipeline, so the same bits.
    """
    import torch

    shape = tuple(deltas[0].shape)
    if any(tuple(d.shape) != shape for d in deltas) or not shape:
        return _whole(deltas, weights, prune=prune, density=density, rescale=rescale, elect_sign=elect_sign,
                      majority_sign_method=majority_sign_method, generator=generator)
    rows = shape[0]
    step = max(1, _BLOCK_ELEMENTS // max(1, deltas[0][0].numel()))
    # peft builds weights with torch.tensor(list) (float32) and views them as (n, 1, ..., 1).
    w = torch.tensor(list(weights), dtype=torch.float32)
    w = w.view(w.shape + (1,) * len(shape))
    out = torch.empty(shape, dtype=torch.result_type(deltas[0], w))
    masks: list[Tensor | None] = []
    for d in deltas:  # adapter by adapter, as peft prunes them (the random draws' order)
        if density >= 1:
            masks.append(None)
        elif prune == "magnitude":
            # The output is not written before the masks are made: it holds each delta's magnitudes.
            masks.append(_magnitude_mask(d, density, scratch=out if out.dtype == d.dtype else None))
        else:
            masks.append(_random_mask(d, density, generator=generator, step=step))
    for s in range(0, rows, step):
        pruned = []
        for d, mask in zip(deltas, masks):
            block = d[s : s + step]
            if mask is not None:
                block = block * mask[s : s + step].to(block.dtype)
                if rescale:
                    block = block / density
            pruned.append(block)
        stacked = torch.stack(pruned, dim=0)
        del pruned
        if not elect_sign:
            out[s : s + step] = (stacked * w).sum(dim=0)
            continue
        sign_mask = majority_sign_mask(stacked, str(majority_sign_method))
        weighted = stacked * w
        del stacked
        mixed = (weighted * sign_mask).sum(dim=0)
        kept = sign_mask.sum(dim=0)
        out[s : s + step] = mixed / torch.clamp(kept, min=1.0)
    return out


def _whole(deltas: Sequence[Tensor], weights: Sequence[float], *, prune: str, density: float, rescale: bool,
           elect_sign: bool, majority_sign_method: str | None, generator: torch.Generator) -> Tensor:
    """PEFT's pipeline on whole tensors (scalars, or deltas of different shapes, which
    ``torch.stack`` refuses just as PEFT does)."""
    import torch

    if prune == "magnitude":
        pruned = [magnitude_pruned(d, density) for d in deltas]
    else:
        pruned = [random_pruned(d, density, rescale=rescale, generator=generator) for d in deltas]
    stacked = torch.stack(pruned, dim=0)
    del pruned
    sign_mask = majority_sign_mask(stacked, str(majority_sign_method)) if elect_sign else None
    w = torch.tensor(list(weights), dtype=torch.float32, device=stacked.device)
    w = w.view(w.shape + (1,) * (stacked.dim() - w.dim()))
    weighted = stacked * w
    del stacked
    if sign_mask is None:
        return weighted.sum(dim=0)
    mixed = (weighted * sign_mask).sum(dim=0)
    kept = sign_mask.sum(dim=0)
    return mixed / torch.clamp(kept, min=1.0)


DENSITY = Param(
    "density", float, None, "the fraction of each delta kept", low=0.0, high=1.0, low_open=True,
)
MAJORITY_SIGN_METHOD = Param(
    "majority_sign_method", str, "total",
    "how each entry's sign is elected: by the sum of its values (total) or the count of its signs (frequency)",
    choices=("total", "frequency"),
)


class TaskArithmetic(MergeMethod):
    """Sparsify each delta (prune), optionally rescale and elect a sign, weight and sum.

    Every instance takes ``density``; those that elect a sign also take
    ``majority_sign_method``.  ``random`` follows from the pruning: random pruning draws
    from the generator, magnitude pruning does not.
    """

    def __init__(
        self,
        *,
        name: str,
        summary: str,
        prune: Literal["magnitude", "random"],
        rescale: bool,
        elect_sign: bool,
    ) -> None:
        if prune not in ("magnitude", "random"):
            raise ValueError(f"{name}: prune must be 'magnitude' or 'random', not {prune!r}")
        if rescale and prune != "random":
            raise ValueError(f"{name}: only random pruning rescales (by 1/density)")
        self.name = name
        self.summary = summary
        self.prune = prune
        self.rescale = rescale
        self.elect_sign = elect_sign
        self.random = prune == "random"
        self.params = (DENSITY, MAJORITY_SIGN_METHOD) if elect_sign else (DENSITY,)

    def __repr__(self) -> str:
        return (f"TaskArithmetic(name={self.name!r}, prune={self.prune!r}, rescale={self.rescale}, "
                f"elect_sign={self.elect_sign})")

    def _combine(self, deltas: Sequence[Tensor], weights: list[float], *, params: dict[str, Any],
                 generator: torch.Generator) -> Tensor:
        return generalized_task_arithmetic(
            deltas,
            weights,
            prune=self.prune,
            density=params["density"],
            rescale=self.rescale,
            elect_sign=self.elect_sign,
            majority_sign_method=params.get("majority_sign_method"),  # declared only with elect_sign
            generator=generator,
        )
