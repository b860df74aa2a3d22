"""magnitude_prune: keep the top-density magnitudes of each delta, then the weighted sum.

Bit for bit peft.utils.merge_utils.magnitude_prune on the same deltas."""

from __future__ import annotations

from lorareg.merge.methods._task_arithmetic import TaskArithmeticMethod


class MagnitudePrune(TaskArithmeticMethod):
    name = "magnitude_prune"
    prune = "magnitude"
    rescale = False
    uses_sign = False
    random = False
