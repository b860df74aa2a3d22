"""What the Registry returns: frozen dataclasses, never ORM rows."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class _AsDict:
    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))  # type: ignore[call-overload]


@dataclass(frozen=True)
class FileEntry(_AsDict):
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class VersionInfo(_AsDict):
    ref: str
    kind: str  # base | adapter | merge
    name: str
    version: int
    digest: str
    path: Path | None  # the folder from_pretrained loads (None while only the recipe is kept)
    size_bytes: int
    stored: bool  # bytes in the blob store (False: tracked by reference, or recipe only)
    created_at: datetime
    created_by: str
    aliases: tuple[str, ...] = ()
    files: tuple[FileEntry, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    existed: bool = False  # add/merge found identical content already registered


@dataclass(frozen=True)
class EventInfo(_AsDict):
    id: int
    time: datetime
    user: str
    action: str
    ref: str
    args: dict[str, Any]


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
    version: int
    updated_at: datetime


@dataclass(frozen=True)
class GcResult(_AsDict):
    blobs_removed: int
    bytes_freed: int
    temp_files_removed: int
    evicted: tuple[str, ...] = ()
