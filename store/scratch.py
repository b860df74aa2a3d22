"""Scratch folders that the next run can tell dead from alive, without any age threshold.

Every process that writes temporary files (blob temp files, merge outputs in the making,
converted pickles, link folders being built) writes them inside its own *run folder*
``ROOT/run-<id>/``.  The process holds an exclusive ``flock`` on ``ROOT/.run-<id>.lock`` for
as long as it lives; the kernel drops the lock when the process dies, ``kill -9`` included.
``sweep(ROOT)`` removes the run folders whose lock it can take: their writer is gone.  A live
writer's folder is never touched, however old.

The lock file is created and locked *before* its run folder exists, and the lock is checked
to still be on the file at that path (a sweeper may unlink a lock file between our open and
our flock), so there is no moment at which a live run's folder looks dead.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import uuid
from pathlib import Path

__all__ = ["RunFolder", "run_folder", "sweep"]

_PREFIX = "run-"


class RunFolder:
    """This process's scratch folder under ``root`` (created on first use)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._fd: int | None = None
        self._path: Path | None = None

    @property
    def path(self) -> Path:
        if self._path is None or self._fd is None:
            self._open()
        assert self._path is not None
        return self._path

    def _open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        while True:
            run_id = uuid.uuid4().hex[:12]
            lock = self.root / f".{_PREFIX}{run_id}.lock"
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # a sweeper removed it between our open and our lock: take another
        path = self.root / f"{_PREFIX}{run_id}"
        path.mkdir()
        self._fd, self._path = fd, path
        atexit.register(self.close)

    def close(self) -> None:
        """Remove the folder and release the lock (at exit; a killed process leaves both to sweep)."""
        if self._fd is None or self._path is None:
            return
        shutil.rmtree(self._path, ignore_errors=True)
        lock = self.root / f".{self._path.name}.lock"
        lock.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = self._path = None


_RUNS: dict[tuple[int, Path], RunFolder] = {}


def run_folder(root: Path) -> Path:
    """This process's run folder under ``root`` (one per process and root; a forked child
    gets its own)."""
    key = (os.getpid(), Path(root).resolve())
    run = _RUNS.get(key)
    if run is None:
        run = _RUNS[key] = RunFolder(key[1])
    return run.path


def sweep(root: Path) -> int:
    """Remove the run folders (and stray lock files) of processes that are gone; returns how
    many run folders were removed."""
    root = Path(root)
    if not root.is_dir():
        return 0
    removed = 0
    ids = {p.name[len(_PREFIX):] for p in root.glob(f"{_PREFIX}*") if p.is_dir()}
    ids |= {p.name[len(_PREFIX) + 1:-len(".lock")] for p in root.glob(f".{_PREFIX}*.lock")}
    for run_id in sorted(ids):
        folder, lock = root / f"{_PREFIX}{run_id}", root / f".{_PREFIX}{run_id}.lock"
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            fd = None  # a folder without its lock file: its process died before or after locking
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # alive
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
            lock.unlink(missing_ok=True)
        finally:
            if fd is not None:
                os.close(fd)
    return removed
