"""lorareg: a registry and merge engine for LoRA adapters.

``Registry`` is the entry point; everything it returns is a frozen dataclass from
``lorareg.registry.results``, re-exported here.  Imports are lazy so that ``lorareg --help``
does not pay for SQLModel's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lorareg.errors import LoraregError

if TYPE_CHECKING:
    from lorareg.registry.api import Registry
    from lorareg.registry.results import (AliasInfo, DiffResult, Edge, EventInfo, FileDigest, GcResult, Lineage,
                                          MetricPoint, Node, PushInfo, RebuildResult, RecipeChange, RegistryLocation,
                                          SearchHit, TensorDiff, Tracked, VerifyResult, VersionInfo,
                                          VersionPage)
    from lorareg.registry.results import QueryHit, RemoveResult, RenameResult
    from lorareg.registry.results import CheckResult
    from lorareg.registry.results import CacheEntry, CacheReport

_RESULTS = ("AliasInfo", "DiffResult", "Edge", "EventInfo", "FileDigest", "GcResult", "Lineage", "MetricPoint", "Node",
            "PushInfo", "RebuildResult", "RecipeChange", "RegistryLocation", "SearchHit", "TensorDiff", "Tracked",
            "VerifyResult", "VersionInfo", "VersionPage", "QueryHit", "RemoveResult", "RenameResult",
            "CheckResult", "CacheEntry", "CacheReport")
__all__ = ["LoraregError", "Registry", "__version__", *_RESULTS]



def __getattr__(name: str):
    if name == "__version__":  # from the installed package's metadata, never typed by hand
        from importlib.metadata import version

        return version("lorareg")
    if name == "Registry":
        from lorareg.registry.api import Registry

        return Registry
    if name in _RESULTS:
        from lorareg.registry import results

        return getattr(results, name)
    raise AttributeError(f"module 'lorareg' has no attribute {name!r}")
