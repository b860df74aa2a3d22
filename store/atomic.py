"""Crash-safe file system steps: write to a temp name, fsync, rename, fsync the folder.

A rename is only durable once the folder holding it is fsynced; without that a power cut
can leave a blob whose name exists but whose bytes do not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import tempfile
from pathlib import Path

__all__ = ["INCOMPLETE_SUFFIX", "atomic_write_bytes", "exchange_paths", "fsync_dir"]

INCOMPLETE_SUFFIX = ".incomplete"
_RENAME_EXCHANGE = 2  # linux/fs.h


def fsync_dir(path: Path) -> None:
    """Persist the entries of folder ``path`` (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # Windows: folder metadata is journaled with the rename itself
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (e.g. certain network mounts) refuse fsync on folders
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that readers see either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=INCOMPLETE_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


_libc: ctypes.CDLL | None = None


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2``).

    Returns False where the platform or file system cannot, so callers fall back to two
    renames (a short window where neither name exists).
    """
    global _libc
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:
        return False  # glibc < 2.28
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))
