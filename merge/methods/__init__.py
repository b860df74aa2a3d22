"""Merge methods, one file each, registered by name.  The engine looks them up here."""

from __future__ import annotations

from lorareg.errors import MergeError
from lorareg.merge.methods.base import MergeMethod, Param
from lorareg.merge.methods.dare_linear import DARE_LINEAR
from lorareg.merge.methods.dare_ties import DARE_TIES
from lorareg.merge.methods.linear import LINEAR
from lorareg.merge.methods.magnitude_prune import MAGNITUDE_PRUNE
from lorareg.merge.methods.task_arithmetic import TaskArithmetic
from lorareg.merge.methods.ties import TIES

METHODS: dict[str, MergeMethod] = {
    method.name: method for method in (LINEAR, TIES, DARE_LINEAR, DARE_TIES, MAGNITUDE_PRUNE)
}


def get_method(name: str) -> MergeMethod:
    """The registered method called ``name``."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise MergeError(
            f"unknown merge method {name!r}",
            hint="use one of: " + ", ".join(METHODS),
        ) from None


__all__ = ["METHODS", "MergeMethod", "Param", "TaskArithmetic", "get_method"]
