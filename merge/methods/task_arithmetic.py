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


# Rows per block: about 1 MiB of float32 per adapter.
_BLOCK_ELEMENTS = 1 << 18


def magnitude_pruned(tensor: Tensor, density: float) -> Tensor:
    """Keep the int(density * numel) largest-magnitude entries (peft: magnitude_based_pruning)."""
    if density >= 1:  # peft's prune() returns the tensor itself here
        return tensor
    flat = tensor.reshape(-1).clone()
    _magnitude_prune_(flat, density, step=_BLOCK_ELEMENTS)
    return flat.reshape(tensor.shape)


def _magnitude_prune_(tensor: Tensor, density: float, *, step: int) -> None:
    """``magnitude_pruned`` in place, row block by row block: no full-size temporary unless
    several entries share the k-th largest magnitude (then ``torch.topk`` decides, as in PEFT).

    A threshold (the k-th largest magnitude) selects the same entries as peft's ``topk`` unless
    several share it: then the pick among them is topk's own tie-break, so topk decides.  Ties
    at magnitude 0 do not matter (a kept and a dropped zero give the same bits).  Multiplying in
    place by the 0/1 mask gives the bits of peft's ``tensor * mask``.
    """
    import torch

    k = int(density * tensor.numel())
    threshold = _kth_largest_bits(tensor, k, step=step) if k > 0 else None
    if threshold is not None and threshold != 0 and _count_at_least(tensor, threshold, step=step) != k:
        keep = _top_k_mask(tensor, k)
        for s in range(0, tensor.shape[0], step):
            block = tensor[s : s + step]
            block.mul_(keep[s : s + step].to(block.dtype))
        return
    blocks = _Blocks(tensor, step)
    for s, block in blocks:
        if threshold is None:  # k == 0: peft keeps nothing (x * 0, so -0.0 and NaN stay)
            block.mul_(0)
            continue
        bits = blocks.magnitude_bits(block)
        kept = torch.gt(bits, 0, out=blocks.mask) if threshold == 0 else torch.ge(bits, threshold, out=blocks.mask)
        block.mul_(kept.to(block.dtype))


def _top_k_mask(tensor: Tensor, k: int) -> Tensor:
    """The entries peft's ``topk(tensor.abs().reshape(-1), k)`` selects, as a bool mask shaped like
    ``tensor``.  topk copies the magnitudes into (value, index) pairs: ~4x the tensor for a moment."""
    import torch

    magnitudes = torch.empty(tensor.shape, dtype=tensor.dtype)
    torch.abs(tensor, out=magnitudes)  # contiguous: the flat order is peft's reshape(-1)
    # sorted=False: the same entries (topk picks them before it sorts), without sorting k of them
    indices = torch.topk(magnitudes.view(-1), k=k, largest=True, sorted=False).indices
    del magnitudes
    mask = torch.zeros(tensor.numel(), dtype=torch.bool)
    mask[indices] = True
    return mask.view(tensor.shape)


_BITS = {"float32": "int32", "float64": "int64", "float16": "int16", "bfloat16": "int16"}


class _Blocks:
    """Row blocks of a tensor, with reused scratch for one block's magnitudes (as their bit
    patterns: for values >= 0, and NaN, which sorts last as kthvalue and topk sort it, the
    patterns order as the values) and a bool mask."""

    def __init__(self, tensor: Tensor, step: int) -> None:
        import torch

        self.tensor, self.step = tensor, step
        size = min(tensor.shape[0], step) * (tensor[0].numel() if tensor.dim() else 1)
        self._magnitudes = torch.empty(size, dtype=tensor.dtype)
        self._bits = self._magnitudes.view(getattr(torch, _BITS[str(tensor.dtype).removeprefix("torch.")]))
        self._mask = torch.empty(size, dtype=torch.bool)
        self.mask = self._mask

    def __iter__(self):
        for s in range(0, self.tensor.shape[0], self.step):
            block = self.tensor[s : s + self.step]
            self.mask = self._mask[: block.numel()].view(block.shape)
            yield s, block

    def magnitude_bits(self, block: Tensor) -> Tensor:
        import torch

        torch.abs(block, out=self._magnitudes[: block.numel()].view(block.shape))
        return self._bits[: block.numel()].view(block.shape)


def _count_at_least(tensor: Tensor, threshold: int, *, step: int) -> int:
    """How many entries have a magnitude whose bit pattern is >= ``threshold``."""
    import torch

    blocks = _Blocks(tensor, step)
    return sum(int(torch.count_nonzero(torch.ge(blocks.magnitude_bits(b), threshold, out=blocks.mask)))
               for _, b in blocks)


def _kth_largest(tensor: Tensor, k: int, *, step: int = _BLOCK_ELEMENTS) -> Tensor:
    """``kthvalue(tensor.abs().reshape(-1), n - k + 1).values`` (see ``_kth_largest_bits``)."""
    import torch

    bits = getattr(torch, _BITS[str(tensor.dtype).removeprefix("torch.")])
    return torch.tensor(_kth_largest_bits(tensor, k, step=step), dtype=bits).view(tensor.dtype)


def _kth_largest_bits(tensor: Tensor, k: int, *, step: int = _BLOCK_ELEMENTS) -> int:
    """The bit pattern of the k-th largest magnitude of ``tensor``, without kthvalue's two
    full-size temporaries (a copy and int64 indices) or any other: a binary search over bit
    patterns, one counting pass per bit, row block by row block."""
    import torch

    if str(tensor.dtype).removeprefix("torch.") not in _BITS:
        raise TypeError(f"magnitude pruning takes a floating-point tensor, not {tensor.dtype}")
    if tensor.dim() == 0:
        tensor = tensor.reshape(1)
    blocks = _Blocks(tensor, step)
    lo, hi = 0, torch.iinfo(blocks._bits.dtype).max  # the largest pattern t with count(>= t) >= k
    # One pass finds the largest pattern, which bounds the search (a few bits fewer to halve).
    hi = min(hi, max(int(blocks.magnitude_bits(b).max()) for _, b in blocks))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _count_at_least(tensor, mid, step=step) >= k:
            lo = mid
        else:
            hi = mid - 1
    return lo


def random_pruned(tensor: Tensor, density: float, *, rescale: bool, generator: torch.Generator) -> Tensor:
    """Keep each entry with probability density (peft: random_pruning), drawing from generator."""
    if density >= 1:  # no draws at all, exactly like peft's prune()
        return tensor
    flat = tensor.reshape(-1).clone()
    _random_prune_(flat, density, rescale=rescale, generator=generator, step=_BLOCK_ELEMENTS)
    return flat.reshape(tensor.shape)


def _random_prune_(tensor: Tensor, density: float, *, rescale: bool, generator: torch.Generator,
                   step: int) -> None:
    """``random_pruned`` in place, row block by row block in element order: CPU bernoulli draws
    one sample per element, serially, so the blocks consume the generator exactly as one call,
    and in-place ``mul_``/``div_`` give the bits of peft's ``tensor * mask`` and ``/ density``."""
    import torch

    for s in range(0, tensor.shape[0], step):
        block = tensor[s : s + step]
        block.mul_(torch.bernoulli(torch.full_like(input=block, fill_value=density), generator=generator))
        if rescale:
            block.div_(density)


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
    overwrite: bool = False,
) -> Tensor:
    """Sparsify each delta, optionally elect a sign, then weight and combine (peft's pipeline).

    Each delta is pruned in place, adapter by adapter as peft prunes them (the random draws'
    order); top-k is decided over the whole delta but counted row block by row block.  Every
    step after it is elementwise along the rows, so it runs block by block, and each result
    block goes into the first delta's rows, which that block has already been copied out of
    (``torch.stack``).  ``overwrite=False`` works on copies of the deltas; with True (the
    engine's deltas, computed afresh for each tensor) nothing of full size is allocated beyond
    the deltas themselves, unless a magnitude tie sends the choice to ``torch.topk``.
    Each block gets the same ops on the same values as PEFT's whole-tensor pipeline, so the
    same bits.
    """
    import torch

    shape = tuple(deltas[0].shape)
    if any(tuple(d.shape) != shape for d in deltas) or not shape:
        return _whole(deltas, weights, prune=prune, density=density, rescale=rescale, elect_sign=elect_sign,
                      majority_sign_method=majority_sign_method, generator=generator)
    if not overwrite:
        deltas = [d.clone() for d in deltas]
    rows = shape[0]
    step = max(1, _BLOCK_ELEMENTS // max(1, deltas[0][0].numel()))
    # peft builds weights with torch.tensor(list) (float32) and views them as (n, 1, ..., 1).
    w = torch.tensor(list(weights), dtype=torch.float32)
    w = w.view(w.shape + (1,) * len(shape))
    for d in deltas if density < 1 else ():
        if prune == "magnitude":
            _magnitude_prune_(d, density, step=step)
        else:
            _random_prune_(d, density, rescale=rescale, generator=generator, step=step)
    out = deltas[0]
    for s in range(0, rows, step):
        stacked = torch.stack([d[s : s + step] for d in deltas], dim=0)
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

    in_place = True  # prunes and combines in the engine's own delta buffers (``combine(overwrite=True)``)

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
                 generator: torch.Generator, overwrite: bool = False) -> Tensor:
        return generalized_task_arithmetic(
            deltas,
            weights,
            prune=self.prune,
            density=params["density"],
            rescale=self.rescale,
            elect_sign=self.elect_sign,
            majority_sign_method=params.get("majority_sign_method"),  # declared only with elect_sign
            generator=generator,
            overwrite=overwrite,
        )
