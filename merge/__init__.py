"""The merge engine: stream a base checkpoint through LoRA deltas, bit-identical to PEFT."""

from lorareg.merge.adapter import check_adapter_fits, inspect_adapter
from lorareg.merge.engine import merge
from lorareg.merge.methods import METHODS, Param, get_method
from lorareg.merge.output_folder import MergeOutput
from lorareg.merge.plan import AdapterInput, MergePlan

__all__ = [
    "METHODS",
    "AdapterInput",
    "MergeOutput",
    "MergePlan",
    "Param",
    "check_adapter_fits",
    "get_method",
    "inspect_adapter",
    "merge",
]
