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


def magnitude_pruned(tensor: Tensor, density: float) -> Tensor:
    """Keep the int(density * numel) largest-magnitude entries (peft: magnitude_based_pruning)."""
    if density >= 1:  # peft's prune() returns the tensor itself here
        return tensor
    k = int(density * tensor.numel())
    mask = _top_k_mask(tensor.abs().reshape(-1), k).to(tensor.dtype)
    return tensor * mask.reshape(tensor.shape)


def _top_k_mask(magnitudes: Tensor, k: int) -> Tensor:
    """The entries peft's ``topk(magnitudes, k)`` selects, as a bool mask.

    A threshold from kthvalue is ~3x faster than topk with k in the millions.  It selects
    the same entries unless several share the threshold magnitude: then the pick among them
    is topk's own tie-break, so topk decides.  Ties at magnitude 0 do not matter (a kept and
    a dropped zero give the same bits), and NaNs never pass the count check.
    """
    import torch

    n = magnitudes.numel()
    if k <= 0:
        return torch.zeros_like(magnitudes, dtype=torch.bool)
    threshold = torch.kthvalue(magnitudes, n - k + 1).values
    above = magnitudes > threshold
    n_above = int(above.sum())
    if threshold == 0:
        return above
    at = magnitudes == threshold
    if n_above + int(at.sum()) == k:
        return above | at
    mask = torch.zeros_like(magnitudes, dtype=torch.bool)
    mask[torch.topk(magnitudes, k=k, largest=True).indices] = True
    return mask


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
    """Sparsify each delta, optionally elect a sign, then weight and combine (peft's pipeline)."""
    import torch

    if prune == "magnitude":
        pruned = [magnitude_pruned(d, density) for d in deltas]
    else:
        pruned = [random_pruned(d, density, rescale=rescale, generator=generator) for d in deltas]
    stacked = torch.stack(pruned, dim=0)
    del pruned  # the stack is a copy; free the per-adapter tensors before the next temporaries
    sign_mask = majority_sign_mask(stacked, str(majority_sign_method)) if elect_sign else None
    # peft builds weights with torch.tensor(list) (float32) and views them as (n, 1, ..., 1).
    w = torch.tensor(list(weights), dtype=torch.float32, device=stacked.device)
    w = w.view(w.shape + (1,) * (stacked.dim() - w.dim()))
    weighted = stacked * w
    del stacked
    if sign_mask is None:
        return weighted.sum(dim=0)
    # peft: disjoint_merge
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
