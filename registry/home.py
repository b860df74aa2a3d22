"""Where a registry keeps its things: ``LORAREG_HOME`` (default ``~/.lorareg``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None) -> "Home":
        raw = home if home is not None else os.environ.get("LORAREG_HOME") or Path.home() / ".lorareg"
        return cls(Path(raw).expanduser().resolve())

    @property
    def db_path(self) -> Path:
        return self.root / "registry.db"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def version_dir(self, name: str, version: int) -> Path:
        return self.versions / name / str(version)

    def ensure(self) -> None:
        for p in (self.root, self.blobs, self.versions, self.tmp):
            p.mkdir(parents=True, exist_ok=True)
