"""One advisory lock per LORAREG_HOME so garbage collection never races a writer.

Writers (add, merge, rollback) put blobs into the store *before* committing the rows that
reference them; a gc running in between would see those blobs as unreferenced.  Writers
take the lock shared (they can run together), gc takes it exclusive."""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def _locked(root: Path, mode: int) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as f:
        fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def writing(root: Path):
    """Held from the first blob written to the commit of the rows that reference it."""
    return _locked(root, fcntl.LOCK_SH)


def collecting(root: Path):
    """Held by gc: no writer is between its blobs and its rows."""
    return _locked(root, fcntl.LOCK_EX)
