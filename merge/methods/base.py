"""The contract every merge method follows; the engine calls only this.

A method combines the full float32 deltas dW_i = s_i * B_i @ A_i of one base tensor (one per
adapter, already in the base weight's layout) into one float32 delta.  Methods are stateless
singletons registered by name in ``lorareg.merge.methods.METHODS``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from lorareg.errors import MergeError

if TYPE_CHECKING:  # torch stays out of `lorareg --help`
    import torch
    from torch import Tensor

SIGN_METHODS = ("total", "frequency")


class MergeMethod(ABC):
    name: ClassVar[str]
    uses_density: ClassVar[bool]
    # Only ties-style methods elect a sign; the others accept but ignore majority_sign_method.
    uses_sign: ClassVar[bool] = False
    random: ClassVar[bool]  # needs the generator
    # Rollback by subtracting one adapter's delta is exact (up to rounding) only for linear.
    supports_subtract: ClassVar[bool] = False

    def combine(
        self,
        deltas: Sequence[Tensor],
        weights: Sequence[float],
        *,
        density: float | None,
        majority_sign_method: str,
        generator: torch.Generator,
    ) -> Tensor:
        """Return the combined float32 delta of one base tensor (inputs checked here, once
        for every method)."""
        floats = check_inputs(self.name, deltas, weights)
        self.validate(density=density, majority_sign_method=majority_sign_method, n_adapters=len(deltas))
        return self._combine(deltas, floats, density=density, majority_sign_method=majority_sign_method,
                             generator=generator)

    @abstractmethod
    def _combine(self, deltas: Sequence[Tensor], weights: list[float], *, density: float | None,
                 majority_sign_method: str, generator: torch.Generator) -> Tensor:
        """The method itself, on checked inputs (``weights`` are Python floats)."""

    def validate(self, *, density: float | None, majority_sign_method: str, n_adapters: int) -> None:
        """Raise MergeError if these parameters cannot drive this method."""
        if isinstance(n_adapters, bool) or not isinstance(n_adapters, int) or n_adapters < 1:
            raise MergeError(
                f"a {self.name} merge needs at least one adapter, got {n_adapters!r}",
                hint="pass one or more adapters, e.g. --adapter NAME[:WEIGHT]",
            )
        if majority_sign_method not in SIGN_METHODS:
            raise MergeError(
                f"unknown majority_sign_method {majority_sign_method!r}",
                hint="use one of: " + ", ".join(SIGN_METHODS),
            )
        if not self.uses_density:
            if density is not None:
                raise MergeError(
                    f"the {self.name} method takes no density (got {density!r})",
                    hint="drop --density, or choose ties, dare_linear, dare_ties or magnitude_prune",
                )
            return
        if density is None:
            raise MergeError(
                f"the {self.name} method needs a density",
                hint="pass --density D with 0 < D <= 1 (the fraction of each delta kept)",
            )
        if (
            isinstance(density, bool)
            or not isinstance(density, (int, float))
            or not math.isfinite(density)
            or not 0.0 < density <= 1.0
        ):
            raise MergeError(
                f"density must be in (0, 1], got {density!r}",
                hint="pass --density D with 0 < D <= 1 (the fraction of each delta kept)",
            )


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
