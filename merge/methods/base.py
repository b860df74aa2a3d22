"""The contract every merge method follows; the engine calls only this.

A method combines the full float32 deltas dW_i = s_i * B_i @ A_i of one base tensor (one per
adapter, already in the base weight's layout) into one float32 delta.  Methods are stateless
objects registered by name in ``lorareg.merge.methods.METHODS``.

Each method declares its parameters (``params``, a tuple of ``Param``); ``resolve_params``
checks what a caller passes against them, so a method with a new parameter changes only its
own file: the plan, the engine, the recipe and the CLI carry ``params`` as a mapping.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lorareg.errors import MergeError

if TYPE_CHECKING:  # torch stays out of `lorareg --help`
    import torch
    from torch import Tensor

_TYPE_NAMES = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}


@dataclass(frozen=True)
class Param:
    """One parameter a merge method takes.  ``default=None`` means it is required."""

    name: str
    type: type  # float | int | str | bool
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None  # numbers only: the allowed range, closed unless *_open
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __post_init__(self) -> None:
        # A mistake in a method's declaration fails when the method is defined, not at merge time.
        if self.type not in _TYPE_NAMES:
            raise TypeError(f"Param {self.name!r}: type must be float, int, str or bool, not {self.type!r}")
        if (self.low is not None or self.high is not None) and self.type not in (float, int):
            raise TypeError(f"Param {self.name!r}: only numbers take a range")
        if self.default is not None:
            try:
                self.check(self.default, method="declaring")
            except MergeError as exc:
                raise TypeError(f"Param {self.name!r}: bad default: {exc}") from None

    @property
    def required(self) -> bool:
        return self.default is None

    def describe(self) -> str:
        """The values it takes, e.g. ``in (0, 1]`` or ``one of total, frequency``."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        if self.low is None and self.high is None:
            return _TYPE_NAMES[self.type]
        left = "(-inf" if self.low is None else ("(" if self.low_open else "[") + f"{self.low:g}"
        right = "inf)" if self.high is None else f"{self.high:g}" + (")" if self.high_open else "]")
        return f"in {left}, {right}"

    def usage(self) -> str:
        """A hint: e.g. ``density is the fraction of each delta kept; it must be in (0, 1]``."""
        return f"{self.name} is {self.help}; it must be {self.describe()}"

    def check(self, value: Any, *, method: str) -> Any:
        """``value`` as this parameter's type (an int given for a float becomes a float), or
        MergeError with one line saying what it takes."""
        if self.type in (float, int):
            # bool is an int to Python, never a number here; NaN and inf are in no range
            number = not isinstance(value, bool) and isinstance(value, (int, float) if self.type is float else int)
            if not (number and math.isfinite(value) and self._in_range(value)):
                raise MergeError(f"{self.name} must be {self.describe()}, got {value!r}", hint=self.usage())
            value = self.type(value)
        elif type(value) is not self.type and self.choices is None:
            raise MergeError(f"{self.name} must be {self.describe()}, got {value!r}", hint=self.usage())
        if self.choices is not None and (type(value) is not self.type or value not in self.choices):
            raise MergeError(f"unknown {self.name} {value!r} for the {method} method",
                             hint="use one of: " + ", ".join(map(str, self.choices)))
        return value

    def _in_range(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


class MergeMethod(ABC):
    """A merge method.  Subclasses set these as class attributes, or per instance (as
    ``TaskArithmetic`` does), and implement ``_combine``."""

    name: str
    summary: str  # one line, for --help
    params: tuple[Param, ...] = ()
    random: bool = False  # draws from the generator
    # Rollback by subtracting one adapter's delta is exact (up to rounding) only for linear.
    supports_subtract: bool = False
    # ``_combine`` takes ``overwrite``: it may then use the deltas as its scratch (see ``combine``)
    in_place: bool = False

    def __repr__(self) -> str:
        return f"<merge method {self.name}>"

    def resolve_params(self, given: Mapping[str, Any], *, n_adapters: int) -> dict[str, Any]:
        """Every declared parameter's value: ``given`` checked, defaults filled in.

        A value of None counts as not given (a CLI option left unset), so a required
        parameter given as None is refused as missing.  Raises MergeError, one line and a hint.
        """
        if isinstance(n_adapters, bool) or not isinstance(n_adapters, int) or n_adapters < 1:
            raise MergeError(
                f"a {self.name} merge needs at least one adapter, got {n_adapters!r}",
                hint="pass one or more adapters, e.g. --adapter NAME[:WEIGHT]",
            )
        if not isinstance(given, Mapping):
            raise MergeError(f"{self.name}: parameters must be a mapping of names to values, got {given!r}",
                             hint="pass e.g. {'density': 0.5}")
        declared = {p.name: p for p in self.params}
        unknown = [k for k in given if k not in declared]
        if unknown:
            raise MergeError(
                f"the {self.name} method takes no {', '.join(map(str, unknown))} ({self._takes()})",
                hint=_unknown_hint(unknown[0]),
            )
        resolved: dict[str, Any] = {}
        for p in self.params:
            value = given.get(p.name)
            if value is None and p.required:
                raise MergeError(f"the {self.name} method needs a {p.name}", hint=p.usage())
            resolved[p.name] = p.default if value is None else p.check(value, method=self.name)
        return resolved

    def _takes(self) -> str:
        if not self.params:
            return "it takes no parameters"
        return "its parameters: " + ", ".join(p.name for p in self.params)

    def combine(
        self,
        deltas: Sequence[Tensor],
        weights: Sequence[float],
        *,
        params: Mapping[str, Any],
        generator: torch.Generator,
        overwrite: bool = False,
    ) -> Tensor:
        """Return the combined float32 delta of one base tensor (inputs and parameters checked
        here, once for every method).

        ``overwrite=True``: the caller will not read ``deltas`` again (the engine computes them
        afresh for each tensor), so a method may prune and combine in them and return one of
        them, instead of allocating full-size tensors (a few deltas' worth at peak otherwise)."""
        floats = check_inputs(self.name, deltas, weights)
        resolved = self.resolve_params(params, n_adapters=len(deltas))
        if overwrite and self.in_place:
            return self._combine(deltas, floats, params=resolved, generator=generator, overwrite=True)
        return self._combine(deltas, floats, params=resolved, generator=generator)

    @abstractmethod
    def _combine(self, deltas: Sequence[Tensor], weights: list[float], *, params: dict[str, Any],
                 generator: torch.Generator) -> Tensor:
        """The method itself, on checked inputs (``weights`` are Python floats, ``params``
        holds every declared parameter)."""


def _unknown_hint(key: str) -> str:
    from lorareg.merge.methods import METHODS  # the registry imports this module

    takers = [name for name, m in METHODS.items() if any(p.name == key for p in m.params)]
    if takers:
        return f"drop {key}, or choose a method that takes it: " + ", ".join(takers)
    return f"drop {key}; `lorareg merge --help` lists each method's parameters"


def check_inputs(method: str, deltas: Sequence[Tensor], weights: Sequence[float]) -> list[float]:
    """Guard the engine's side of the contract; returns the weights as Python floats."""
    import torch

    if len(deltas) == 0:
        raise MergeError(f"{method}: no deltas to combine", hint="pass one delta per adapter")
    if len(deltas) != len(weights):
        raise MergeError(
            f"{method}: {len(deltas)} deltas but {len(weights)} weights",
            hint="pass exactly one weight per adapter",
        )
    shape = deltas[0].shape
    for i, delta in enumerate(deltas):
        if delta.dtype != torch.float32:
            raise MergeError(
                f"{method}: delta {i} is {delta.dtype}, expected torch.float32",
                hint="upcast deltas to float32 before combining them",
            )
        if delta.shape != shape:
            raise MergeError(
                f"{method}: delta {i} has shape {tuple(delta.shape)}, delta 0 has {tuple(shape)}",
                hint="all adapters must target the same base tensor",
            )
    floats = [float(w) for w in weights]
    if not all(math.isfinite(w) for w in floats):
        raise MergeError(f"{method}: weights must be finite, got {floats}", hint="pass finite weights")
    return floats
