"""ties (TIES-Merging, Yadav et al. 2023): keep the top-density magnitudes of each delta,
elect a sign per entry, average the weighted entries that agree with it.

Bit for bit peft.utils.merge_utils.ties on the same deltas."""

from __future__ import annotations

from lorareg.merge.methods.task_arithmetic import TaskArithmetic

TIES = TaskArithmetic(
    name="ties",
    summary="keep the largest entries, elect a sign per entry, average those that agree (TIES)",
    prune="magnitude",
    rescale=False,
    elect_sign=True,
)
