"""Version folders of relative symlinks into the blob store, loadable by ``from_pretrained``.

Like the Hugging Face cache, a snapshot holds no bytes of its own: ``config.json ->
../../blobs/sha256/ab/cdef...``.  Relative links keep working when ``LORAREG_HOME`` is
moved or mounted elsewhere as a whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from lorareg.errors import CheckpointError, NotFoundError
from lorareg.store.atomic import exchange_paths, fsync_dir
from lorareg.store.blobs import BlobStore

__all__ = ["link_snapshot", "read_snapshot", "remove_snapshot"]


def _check_names(files: Mapping[str, str]) -> None:
    for name in files:
        parts = name.split("/") if isinstance(name, str) else [""]
        if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
            raise CheckpointError(
                f"refusing snapshot file name {name!r}",
                hint="use relative posix names without '..', like 'config.json' or 'sub/x.json'",
            )
    for name in files:
        parent = PurePosixPath(name).parent
        while parent != PurePosixPath("."):
            if str(parent) in files:
                raise CheckpointError(
                    f"snapshot names {str(parent)!r} both as a file and as a folder of {name!r}",
                    hint="rename one of the two files",
                )
            parent = parent.parent


def read_snapshot(dest: Path) -> dict[str, str] | None:
    """The link targets of a snapshot folder by relative name; None if ``dest`` is not one."""
    dest = Path(dest)
    if dest.is_symlink() or not dest.is_dir():
        return None
    links: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath) / name
            if not path.is_symlink():
                return None
            links[path.relative_to(dest).as_posix()] = os.readlink(path)
    return links


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)  # unlinks symlinks, never follows them into the blobs
    else:
        path.unlink(missing_ok=True)


def link_snapshot(blobs: BlobStore, dest: Path, files: Mapping[str, str], *, scratch: Path | None = None) -> Path:
    """Make ``dest`` a folder whose files (relative name -> blob hex) link into ``blobs``.

    Built beside ``dest`` and renamed into place, so readers see the old folder or the new
    one, never half of one.  An identical existing folder is left untouched.
    """
    dest = Path(dest)
    _check_names(files)
    for name, hexdigest in files.items():
        if not blobs.has(hexdigest):
            raise NotFoundError(
                f"snapshot file {name!r} needs blob {hexdigest}, which is not in the store",
                hint="rebuild the version (lorareg rebuild REF) or run: lorareg verify --all",
            )
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Resolve both ends so the relative links hold even when LORAREG_HOME is itself a link.
    real_dest = Path(os.path.realpath(dest.parent)) / dest.name
    wanted = {
        name: os.path.relpath(os.path.realpath(blobs.path_for(hexdigest)), real_dest / PurePosixPath(name).parent)
        for name, hexdigest in files.items()
    }
    if read_snapshot(dest) == wanted:
        return dest

    # Built in ``scratch`` (a run folder on the same file system, swept when its writer dies)
    # or, without one, beside ``dest``.
    tmp = Path(tempfile.mkdtemp(dir=scratch or dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        os.chmod(tmp, 0o755)
        for name, target in sorted(wanted.items()):
            link = tmp / name
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, link)
        fsync_dir(tmp)
        _swap_into_place(tmp, dest, scratch=scratch)
    except BaseException:
        _remove_tree(tmp)
        raise
    fsync_dir(dest.parent)
    return dest


def _swap_into_place(tmp: Path, dest: Path, *, scratch: Path | None = None) -> None:
    """Rename ``tmp`` to ``dest``; whatever was at ``dest`` ends up at ``tmp`` and is removed."""
    if not os.path.lexists(dest):
        try:
            os.rename(tmp, dest)
            return
        except OSError:
            if not os.path.lexists(dest):
                raise
            # Another process created dest meanwhile: replace it like any existing one.
    if exchange_paths(tmp, dest):
        _remove_tree(tmp)
        return
    # No atomic exchange here (not Linux, or the file system lacks it): a brief gap.
    aside = Path(tempfile.mkdtemp(dir=scratch or dest.parent, prefix=f".{dest.name}.old-"))
    os.rename(dest, aside / "old")
    os.rename(tmp, dest)
    _remove_tree(aside)


def remove_snapshot(dest: Path) -> None:
    """Remove a snapshot folder (its links only; blobs stay).  Missing is fine."""
    dest = Path(dest)
    if not os.path.lexists(dest):
        return
    if read_snapshot(dest) is None:
        raise CheckpointError(
            f"{dest} is not a snapshot folder (it holds more than links)",
            hint="remove it by hand if it is really yours to delete",
        )
    aside = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
    os.rename(dest, aside / "old")  # one rename, so nobody sees a half-removed folder
    _remove_tree(aside)
    fsync_dir(dest.parent)
