"""dare_linear (DARE, Yu et al. 2023): keep each entry with probability density, rescale by
1/density, then the weighted sum.

Bit for bit peft.utils.merge_utils.dare_linear on the same deltas, with the Bernoulli masks
drawn from the passed generator instead of the global RNG."""

from __future__ import annotations

from lorareg.merge.methods.task_arithmetic import TaskArithmetic

DARE_LINEAR = TaskArithmetic(
    name="dare_linear",
    summary="keep random entries, rescale by 1/density, weighted sum (DARE; uses the seed)",
    prune="random",
    rescale=True,
    elect_sign=False,
)
