"""What a merge is asked to do: the plan (a frozen value the registry stores as the recipe)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lorareg.errors import MergeError
from lorareg.merge.methods import get_method
from lorareg.merge.quantize import BaseQuantization

__all__ = ["ADAPTER_DTYPES", "DTYPES", "AdapterInput", "MergePlan", "tensor_seed", "validate_plan"]

DTYPES = ("auto", "bfloat16", "float16", "float32")
# "float32": the adapter weights take part in float32, as `PeftModel.from_pretrained` keeps them
# (and as `AutoPeftModel*.from_pretrained(..., low_cpu_mem_usage=True)` does too).
# "base": they are first rounded to the dtype the model is merged in, as PEFT does when loaded
# with `autocast_adapter_dtype=False`.
ADAPTER_DTYPES = ("float32", "base")


@dataclass(frozen=True)
class AdapterInput:
    path: Path
    weight: float = 1.0


@dataclass(frozen=True)
class MergePlan:
    base: Path
    adapters: tuple[AdapterInput, ...]
    method: str = "linear"
    # The method's parameters by name (e.g. {"density": 0.5}), as the method declares them.
    # Held as a read-only view of a private copy: the caller's dict can change afterwards and
    # the plan cannot, while ``plan.params`` stays a Mapping (a sorted tuple of pairs would
    # not).  Left out of the hash (a mapping is not hashable); equality still compares it.
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    seed: int = 0
    dtype: str = "auto"  # auto|bfloat16|float16|float32
    adapter_dtype: str = "float32"  # float32|base
    max_shard_size: int = 5 * 2**30
    allow_noop: bool = False  # merge an untrained adapter, or one whose changes round away
    # Side-file group -> index of the adapter it comes from (side_files.py); the base supplies
    # the groups not named.  None: chosen by side_files.choose_side_files (conflicts refused).
    side_files: Mapping[str, int] | None = field(default=None, hash=False)
    # QLoRA: merge into dequantize(quantize(base)) (quantize.py); None: the base as stored
    base_quantization: BaseQuantization | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.params, Mapping):
            raise MergeError(f"params must be a mapping of names to values, got {self.params!r}",
                             hint="pass e.g. params={'density': 0.5}")
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    # A mappingproxy cannot be pickled or deep-copied; its plain copy can, and comes back frozen.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "params": dict(self.params)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "params", MappingProxyType(dict(state["params"])))


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one tensor, so random methods do not depend on tensor order."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def validate_plan(plan: MergePlan) -> dict[str, Any]:
    """Raise MergeError for a plan that cannot be carried out, before any bytes are read.

    Returns the method's parameters resolved (defaults filled in), as ``combine`` takes them.
    """
    if not plan.adapters:
        raise MergeError("the merge plan has no adapters", hint="pass at least one adapter")
    if plan.dtype not in DTYPES:
        raise MergeError(f"unknown output dtype {plan.dtype!r}", hint="use one of: " + ", ".join(DTYPES))
    if plan.adapter_dtype not in ADAPTER_DTYPES:
        raise MergeError(
            f"unknown adapter_dtype {plan.adapter_dtype!r}", hint="use one of: " + ", ".join(ADAPTER_DTYPES)
        )
    if isinstance(plan.max_shard_size, bool) or not isinstance(plan.max_shard_size, int) or plan.max_shard_size < 1:
        raise MergeError(
            f"max_shard_size must be a positive number of bytes, got {plan.max_shard_size!r}",
            hint="pass e.g. 5 * 2**30 for 5 GiB shards",
        )
    if isinstance(plan.seed, bool) or not isinstance(plan.seed, int):
        raise MergeError(f"seed must be an integer, got {plan.seed!r}", hint="pass an integer seed")
    if plan.base_quantization is not None and not isinstance(plan.base_quantization, BaseQuantization):
        raise MergeError(f"base_quantization must be a BaseQuantization, got {plan.base_quantization!r}",
                         hint="pass e.g. BaseQuantization('nf4', double_quant=True)")
    if plan.side_files is not None:
        from lorareg.merge.side_files import GROUPS

        for group, index in plan.side_files.items():
            if group not in GROUPS or not isinstance(index, int) or not 0 <= index < len(plan.adapters):
                raise MergeError(f"side_files: {group!r} -> {index!r} names no side-file group and adapter",
                                 hint="groups: " + ", ".join(GROUPS) + "; values: an index into the adapters")
    for a in plan.adapters:
        w = a.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise MergeError(f"adapter {a.path}: weight must be a finite number, got {w!r}", hint="pass e.g. 0.5")
    return get_method(plan.method).resolve_params(plan.params, n_adapters=len(plan.adapters))
