"""ties (TIES-Merging, Yadav et al. 2023): keep the top-density magnitudes of each delta,
elect a sign per entry, average the weighted entries that agree with it.

Bit for bit peft.utils.merge_utils.ties on the same deltas."""

from __future__ import annotations

from lorareg.merge.methods._task_arithmetic import TaskArithmeticMethod


class Ties(TaskArithmeticMethod):
    name = "ties"
    prune = "magnitude"
    rescale = False
    uses_sign = True
    random = False
