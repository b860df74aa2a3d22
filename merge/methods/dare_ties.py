"""dare_ties: DARE pruning (random keep with probability density, rescaled by 1/density),
then TIES sign election and disjoint averaging.

Bit for bit peft.utils.merge_utils.dare_ties on the same deltas, with the Bernoulli masks
drawn from the passed generator instead of the global RNG."""

from __future__ import annotations

from lorareg.merge.methods.task_arithmetic import TaskArithmetic

DARE_TIES = TaskArithmetic(
    name="dare_ties",
    summary="keep random entries, rescale by 1/density, then elect signs as ties does (uses the seed)",
    prune="random",
    rescale=True,
    elect_sign=True,
)
