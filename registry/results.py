"""Everything the ``Registry`` returns: frozen dataclasses, never ORM rows.

``lorareg`` re-exports every name in ``__all__``.  A file's hash is one record everywhere,
``FileDigest`` (from ``lorareg.store``): results map a file's relative path to it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Mapping

from lorareg.registry.refs import Kind
from lorareg.store.digest import FileDigest

__all__ = [
    "AliasInfo", "DiffResult", "Edge", "EventInfo", "FileDigest", "GcResult", "Kind", "Lineage", "MetricPoint",
    "Node", "PushInfo", "RebuildResult", "RecipeChange", "RegistryLocation", "SearchHit", "TensorDiff", "Tracked",
    "VerifyResult", "VersionInfo",
]

def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class _AsDict:
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (paths and times as strings): what ``--json`` prints."""
        return _jsonable(asdict(self))  # type: ignore[call-overload]


@dataclass(frozen=True)
class RegistryLocation(_AsDict):
    home: Path
    database: str  # the SQLAlchemy URL, password hidden
    blobs: Path


@dataclass(frozen=True)
class VersionInfo(_AsDict):
    ref: str
    kind: Kind
    name: str
    version: int
    digest: str
    path: Path | None  # the folder from_pretrained loads (None while only the recipe is kept)
    size_bytes: int
    stored: bool  # bytes in the blob store (False: tracked by reference, or recipe only)
    created_at: datetime
    created_by: str
    message: str | None = None
    aliases: tuple[str, ...] = ()
    files: Mapping[str, FileDigest] = field(default_factory=dict)  # relative path -> hash
    details: Mapping[str, Any] = field(default_factory=dict)
    existed: bool = False  # add/merge found identical content already registered


@dataclass(frozen=True)
class EventInfo(_AsDict):
    id: int
    time: datetime
    user: str
    action: str
    ref: str
    args: Mapping[str, Any]


@dataclass(frozen=True)
class VerifyResult(_AsDict):
    ref: str
    ok: bool
    checked_files: int
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class AliasInfo(_AsDict):
    name: str
    alias: str
    version: int  # 0 in a history entry: the alias was removed
    updated_at: datetime


@dataclass(frozen=True)
class GcResult(_AsDict):
    blobs_removed: int
    bytes_freed: int
    temp_files_removed: int
    evicted: tuple[str, ...] = ()


@dataclass(frozen=True)
class TensorDiff(_AsDict):
    name: str
    elements_differing: int
    max_abs: float
    max_ulp: int
    note: str = ""


@dataclass(frozen=True)
class RebuildResult(_AsDict):
    ref: str
    ok: bool
    recorded_digest: str
    rebuilt_digest: str
    tensors: tuple[TensorDiff, ...] = ()
    library_changes: Mapping[str, Any] = field(default_factory=dict)
    materialized: bool = False


@dataclass(frozen=True)
class RecipeChange(_AsDict):
    field: str
    a: Any
    b: Any


@dataclass(frozen=True)
class DiffResult(_AsDict):
    a: str
    b: str
    same_digest: bool
    recipe: tuple[RecipeChange, ...] = ()
    tensors: tuple[TensorDiff, ...] | None = None  # None: a side has no files to compare


@dataclass(frozen=True)
class Node(_AsDict):
    ref: str
    kind: Kind
    digest: str
    source: str = ""  # a base's path or hf://repo@commit
    stored: bool = True


@dataclass(frozen=True)
class Edge(_AsDict):
    src: str  # the derived version
    dst: str  # what it was derived from
    role: str  # base | adapter | parent | trained_on
    weight: float | None = None
    position: int | None = None


@dataclass(frozen=True)
class Lineage(_AsDict):
    root: str
    direction: Literal["up", "down"]
    nodes: tuple[Node, ...] = ()
    edges: tuple[Edge, ...] = ()


@dataclass(frozen=True)
class MetricPoint(_AsDict):
    key: str
    value: float
    step: int | None
    time: datetime


@dataclass(frozen=True)
class Tracked(_AsDict):
    ref: str
    params: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)  # latest value (highest step) per key
    history: tuple[MetricPoint, ...] = ()


@dataclass(frozen=True)
class SearchHit(_AsDict):
    ref: str
    info: VersionInfo
    tracked: Tracked


@dataclass(frozen=True)
class PushInfo(_AsDict):
    ref: str
    repo_id: str
    tag: str
    branch: str
    commit_sha: str
    endpoint: str
    adapter_only: bool
    pushed_at: datetime
    noop: bool = False
    uploaded: tuple[str, ...] = ()
    reused: tuple[str, ...] = ()
    url: str = ""
