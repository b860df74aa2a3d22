"""What every registry module works with: the home folder, the database and the blob store.

Modules behind the ``Registry`` facade take a ``Context`` and call each other, never the
facade, so a road through the registry passes the facade once, on the way in."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lorareg.registry.home import Home

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlmodel import Session

    from lorareg.store.blobs import BlobStore
    from lorareg.store.remote_blobs import RemoteBlobStore


@dataclass(frozen=True)
class Context:
    home: Home
    db: "Engine"
    blobs: "BlobStore | RemoteBlobStore"

    @classmethod
    def open(cls, *, home: str | os.PathLike[str] | None = None, database_url: str | None = None,
             blobs: str | os.PathLike[str] | None = None) -> "Context":
        """Create the folders if needed and bring the database schema to head."""
        # The whole database layer (SQLAlchemy, SQLModel, the tables) loads here, in one piece
        # (every caller queries tables next), so the CLI can keep it out of the garbage
        # collector's passes (cli/common.py, _loading_for_good).
        from lorareg.registry import models  # noqa: F401
        from lorareg.registry.db import make_engine, sqlite_url, upgrade
        from lorareg.store.scratch import sweep

        h = Home.resolve(home, blobs)
        h.ensure()
        url = database_url or os.environ.get("LORAREG_DATABASE_URL") or sqlite_url(h.db_path)
        engine = make_engine(url)
        upgrade(engine, blobs=h.blobs)
        blobs_store = _blob_store(h)
        # What crashed runs left: their run folders' locks are free.  A listing of two folders.
        sweep(h.tmp)
        blobs_store.clean_temp()
        return cls(home=h, db=engine, blobs=blobs_store)

    @property
    def blobs_location(self) -> str:
        """The blob store as a user names it: a folder, or ``s3://bucket/prefix``."""
        return self.home.blob_url or str(self.home.blobs)

    def scratch(self) -> Path:
        """This process's run folder under LORAREG_HOME/tmp: every temporary file goes here, so a
        run killed at any point leaves nothing the next command does not remove."""
        from lorareg.store.scratch import run_folder

        return run_folder(self.home.tmp)

    def session(self) -> "Session":
        """A session whose rows stay readable after commit (they are turned into results)."""
        from sqlmodel import Session

        return Session(self.db, expire_on_commit=False)

    def close(self) -> None:
        try:
            self.blobs.close()
        finally:
            self.db.dispose()


def _blob_store(h: Home):
    from lorareg.store.blobs import BlobStore

    if not h.blob_url:
        return BlobStore(h.blobs)
    from lorareg.registry.leases import lease_seconds
    from lorareg.store.remote_blobs import DEFAULT_CACHE_MAX, RemoteBlobStore, parse_size

    limit = parse_size(os.environ.get("LORAREG_CACHE_MAX") or DEFAULT_CACHE_MAX)
    # A multipart upload older than a lease belongs to a writer that is gone.
    return RemoteBlobStore(h.blob_url, h.cache, cache_max=limit, stale_upload_s=lease_seconds())
