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
    "VerifyResult", "VersionInfo", "QueryHit", "RemoveResult", "RenameResult", "VersionPage",
    "CheckResult",
    "CacheEntry", "CacheReport",
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
    blobs: Path | str  # a folder, or the object store's URL (``s3://bucket/prefix``)
    cache: Path | None = None  # with an object store: this machine's cache of it


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
    weights_digest: str | None = None  # the tensors alone: "same weights, different config"
    digest_state: str | None = None  # None, "pending" or "reference-changed" (registries upgraded by 0003)
    aliases: tuple[str, ...] = ()
    files: Mapping[str, FileDigest] = field(default_factory=dict)  # relative path -> hash
    details: Mapping[str, Any] = field(default_factory=dict)
    existed: bool = False  # add/merge found identical content already registered
    removed_at: datetime | None = None  # ``lorareg rm``: row and lineage kept, bytes evicted


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
    leases_expired: int = 0  # writers' leases that had lapsed, cleared with their pending blobs


@dataclass(frozen=True)
class CacheEntry(_AsDict):
    """One blob in this machine's cache of the object store."""
    sha256: str
    size: int
    last_used: datetime  # UTC; a read through the cache touches it (eviction is least recently used first)
    refs: tuple[str, ...] = ()  # the versions whose files (or tensor manifest) it is
    paths: tuple[str, ...] = ()  # those files' relative paths ("(manifest)" for a tensor manifest)


@dataclass(frozen=True)
class CacheReport(_AsDict):
    """``cache ls`` (``entries``: least recently used first) and ``cache prune`` (``removed``)."""
    location: Path  # the cache folder (LORAREG_HOME/cache)
    store: str  # the object store it caches, ``s3://bucket/prefix``
    limit: int | None  # LORAREG_CACHE_MAX in bytes (or prune's --max-size)
    total_bytes: int  # what the cache holds (after a prune: what is left)
    entries: tuple[CacheEntry, ...] = ()
    removed: tuple[CacheEntry, ...] = ()
    bytes_freed: int = 0


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
    same_weights: bool  # same tensors (the weights digest), whatever the config or tokenizer
    recipe: tuple[RecipeChange, ...] = ()
    tensors: tuple[TensorDiff, ...] | None = None  # None: a side has no files to compare


@dataclass(frozen=True)
class Node(_AsDict):
    ref: str
    kind: Kind
    digest: str
    source: str = ""  # a base's path or hf://repo@commit
    stored: bool = True
    removed: bool = False  # ``lorareg rm`` removed it; kept for the lineage through it


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
    truncated: bool = False  # max_nodes was reached: more versions are linked than listed
    more: Mapping[str, int] = field(default_factory=dict)  # ref -> edges down from it left out (per_node, max_nodes)


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
class VersionPage(_AsDict):
    """One page of the versions a filter matches (``Registry.browse``); ``total`` counts them all."""

    items: tuple[VersionInfo, ...]  # without their file lists
    total: int
    offset: int
    limit: int
    tags: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # ref -> tags, for the items
    sort_values: Mapping[str, float | None] = field(default_factory=dict)  # ref -> the metric sorted by


@dataclass(frozen=True)
class RemoveResult(_AsDict):
    """What ``rm`` did: the versions removed (rows kept as tombstones, bytes evicted)."""

    removed: tuple[str, ...]
    kept_for: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # ref -> what still refers to it (--force)
    aliases_removed: tuple[str, ...] = ()  # name@alias that pointed at a removed version
    blobs_removed: int = 0
    bytes_freed: int = 0


@dataclass(frozen=True)
class RenameResult(_AsDict):
    old: str
    new: str
    versions: int  # how many versions now carry the new name
    recipes_updated: int  # recorded recipes whose references were rewritten to the new name


@dataclass(frozen=True)
class QueryHit(_AsDict):
    """One version ``Registry.query`` matched, with the value of each metric or param that its
    ``where`` and ``sort`` named (None: the version has none)."""

    ref: str
    info: VersionInfo
    values: Mapping[str, Any] = field(default_factory=dict)


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


@dataclass(frozen=True)
class CheckResult(_AsDict):
    """One ``lorareg check``: a merged version against the float32 unmerged model its recipe
    describes, and the rule's verdict.  ``rounding`` holds the same measures for the unmerged
    model run in the merged dtype (float64 for float32 merges): how far rounding alone moves it."""

    id: int
    ref: str
    passed: bool
    reference: str  # "peft-unmerged" (base + adapters through PEFT) or "float64-deltas"
    compared: str  # what ran as the merged side, in words
    dtype: str
    outputs: str  # "logits", or "last hidden state" for an encoder
    max_abs_diff: float  # inf when the merged output was not finite
    mean_abs_diff: float
    tolerance: float  # factor x the rounding baseline's max_abs_diff
    factor: float
    top1_agreement: float | None  # None for an encoder
    generation_agreement: float | None  # None without max_new_tokens
    rounding: Mapping[str, Any]  # max_abs_diff, mean_abs_diff, top1_agreement, ... of the baseline
    samples: int
    seed: int | None  # drawn inputs; None with a prompts file
    prompts_sha256: str | None
    chat: bool
    max_new_tokens: int | None
    positions: int  # token positions compared
    device: str
    checked_at: datetime
    checked_by: str
    versions: Mapping[str, str] = field(default_factory=dict)  # libraries that ran it
    failures: tuple[str, ...] = ()  # why it did not pass, one line each
    adapter_error: float | None = None  # cat/svd outputs: max relative error of the combined deltas
    top1_decisive: Mapping[str, Any] = field(default_factory=dict)  # positions rounding cannot flip, agreements

    def to_dict(self) -> dict[str, Any]:
        """As ``_AsDict``, with a non-finite number written as the string "inf" or "nan" (strict JSON)."""
        import math

        def finite(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
            if isinstance(value, dict):
                return {k: finite(v) for k, v in value.items()}
            return value

        return finite(super().to_dict())
