"""The merge engine: stream a base checkpoint through LoRA deltas, bit-identical to PEFT.

Names load on first use, so that reading the merge methods' declarations (the CLI builds
``merge``'s options from them) does not load the engine."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lorareg.merge.adapter import inspect_adapter
    from lorareg.merge.adapter_fit import check_adapter_fits
    from lorareg.merge.engine import merge
    from lorareg.merge.methods import METHODS, Param, get_method
    from lorareg.merge.output_folder import MergeOutput
    from lorareg.merge.plan import AdapterInput, MergePlan
    from lorareg.merge.quantize import BaseQuantization

_WHERE = {
    "check_adapter_fits": "adapter_fit", "inspect_adapter": "adapter", "merge": "engine", "METHODS": "methods",
    "Param": "methods", "get_method": "methods", "MergeOutput": "output_folder", "AdapterInput": "plan",
    "MergePlan": "plan", "BaseQuantization": "quantize",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"lorareg.merge.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'lorareg.merge' has no attribute {name!r}")
