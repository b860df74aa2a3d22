"""Where a registry keeps its things: ``LORAREG_HOME`` (default ``~/.lorareg``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Home:
    root: Path
    # A blob store shared by a team (a mounted folder), next to a shared database;
    # default: LORAREG_HOME/blobs.
    blob_root: Path | None = None

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None,
                blobs: str | os.PathLike[str] | None = None) -> "Home":
        raw = home if home is not None else os.environ.get("LORAREG_HOME") or Path.home() / ".lorareg"
        shared = blobs if blobs is not None else os.environ.get("LORAREG_BLOBS")
        return cls(Path(raw).expanduser().resolve(), Path(shared).expanduser().resolve() if shared else None)

    @property
    def db_path(self) -> Path:
        return self.root / "registry.db"

    @property
    def blobs(self) -> Path:
        return self.blob_root or self.root / "blobs"

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
