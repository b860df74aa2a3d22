"""Where a registry keeps its things: ``LORAREG_HOME`` (default ``~/.lorareg``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lorareg.errors import LoraregError


@dataclass(frozen=True)
class Home:
    root: Path
    # A blob store shared by a team, next to a shared database: a mounted folder, or
    # ``blob_url`` (``s3://bucket/prefix``) read through this home's cache; default LORAREG_HOME/blobs.
    blob_root: Path | None = None
    blob_url: str | None = None

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None,
                blobs: str | os.PathLike[str] | None = None) -> "Home":
        raw = home if home is not None else os.environ.get("LORAREG_HOME") or Path.home() / ".lorareg"
        root = Path(raw).expanduser().resolve()
        shared = blobs if blobs is not None else os.environ.get("LORAREG_BLOBS")
        if not shared:
            return cls(root)
        text = os.fspath(shared)
        if text.startswith("s3://"):
            from lorareg.store.objects import parse_object_url

            return cls(root, blob_url=str(parse_object_url(text)))
        # "gs://...", or an s3 URL mistyped ("s3:/b", "s3//b", "S3://b"): never a folder made by accident.
        if "://" in text or text.lower().startswith(("s3:", "s3/")):
            raise LoraregError(f"LORAREG_BLOBS={text!r} is neither a folder nor an s3:// URL",
                               hint="set LORAREG_BLOBS (or --blobs) to a folder path or to s3://BUCKET/PREFIX")
        folder = Path(text).expanduser().resolve()
        if folder.exists() and not folder.is_dir():
            raise LoraregError(f"LORAREG_BLOBS={text!r} is a file, not a folder",
                               hint="set LORAREG_BLOBS (or --blobs) to a folder path or to s3://BUCKET/PREFIX")
        return cls(root, blob_root=folder)

    @property
    def db_path(self) -> Path:
        return self.root / "registry.db"

    @property
    def blobs(self) -> Path:
        """The local blob folder; with an object store, this machine's cache of it."""
        return self.cache if self.blob_url else self.blob_root or self.root / "blobs"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

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
