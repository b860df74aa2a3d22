"""dare_ties: DARE pruning (random keep with probability density, rescaled by 1/density),
then TIES sign election and disjoint averaging.

Bit for bit peft.utils.merge_utils.dare_ties on the same deltas, with the Bernoulli masks
drawn from the passed generator instead of the global RNG."""

from __future__ import annotations

from lorareg.merge.methods._task_arithmetic import TaskArithmeticMethod


class DareTies(TaskArithmeticMethod):
    name = "dare_ties"
    prune = "random"
    rescale = True
    uses_sign = True
    random = True
