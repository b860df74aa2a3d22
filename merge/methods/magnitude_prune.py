"""magnitude_prune: keep the top-density magnitudes of each delta, then the weighted sum.

Bit for bit peft.utils.merge_utils.magnitude_prune on the same deltas."""

from __future__ import annotations

from lorareg.merge.methods.task_arithmetic import TaskArithmetic

MAGNITUDE_PRUNE = TaskArithmetic(
    name="magnitude_prune",
    summary="keep the largest entries of each delta, then the weighted sum",
    prune="magnitude",
    rescale=False,
    elect_sign=False,
)
