"""Merge methods, one file each, registered by name.  The engine looks them up here."""

from __future__ import annotations

from lorareg.errors import MergeError
from lorareg.merge.methods.base import MergeMethod
from lorareg.merge.methods.dare_linear import DareLinear
from lorareg.merge.methods.dare_ties import DareTies
from lorareg.merge.methods.linear import Linear
from lorareg.merge.methods.magnitude_prune import MagnitudePrune
from lorareg.merge.methods.ties import Ties

METHODS: dict[str, MergeMethod] = {
    method.name: method for method in (Linear(), Ties(), DareLinear(), DareTies(), MagnitudePrune())
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


__all__ = ["METHODS", "MergeMethod", "get_method"]
