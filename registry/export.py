"""``export``: a version's files as a plain folder (no symlinks into the store).

Bytes are not copied when they need not be: each file is a reflink of its blob (copy on
write: the store cannot be changed through it) where the file system supports one, else a
hard link to the read-only blob (the file stays read-only; ``verify`` catches a blob changed
through it anyway), else a copy.  ``copy=True`` forces copies; a rebuilt recipe-only version's
scratch files are moved, not copied."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from lorareg.errors import LoraregError
from lorareg.registry import events, lookup
from lorareg.registry.context import Context
from lorareg.registry.register import CARD, folder_of
from lorareg.registry.results import VersionInfo
from lorareg.registry.version_info import version_info

Progress = Callable[[int, int, str], None] | None
CopyProgress = Callable[[int, int], None] | None  # (bytes just copied, bytes of the version)
COPY_CHUNK = 64 * 1024 * 1024


def export(ctx: Context, *, ref: str, dest: Path, copy: bool = False, progress: Progress = None,
           copy_progress: CopyProgress = None) -> VersionInfo:
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise LoraregError(f"{dest} exists and is not empty", hint="pick a new folder to export into")
    with ctx.session() as session:
        row = lookup.resolve(session, ref)
        info = version_info(session, ctx.home, row)
        src = folder_of(ctx, session, row) if row.stored or row.kind == "base" else None
    produced = None
    if src is None:
        # Rebuilt and digest-checked into a scratch folder; the version stays recipe only.
        # (Imported here: an export of stored files, the usual case, needs neither.)
        from lorareg.registry.card import merge_card
        from lorareg.registry.produce import produce_version
        from lorareg.registry.version_info import stored_recipe

        row, produced = produce_version(ctx, info.ref, progress=progress)
        src = produced.folder
        with ctx.session() as session:
            card = merge_card(session, stored_recipe(session, row), name=row.name, version=row.version,
                              output_digest=row.digest)
        (src / CARD).write_text(card, encoding="utf-8")
    try:
        how = _copy_out(sorted(info.files), src, dest, scratch=ctx.scratch(),
                        mode="move" if produced is not None else ("copy" if copy else "link"),
                        progress=_bytes_of(info, copy_progress))
    finally:
        if produced is not None:
            produced.discard()
    with ctx.session() as session:
        events.record(session, "export", ref=info.ref, dest=str(dest), how=how)
        session.commit()
    return info


def _bytes_of(info: VersionInfo, copy_progress: CopyProgress) -> Callable[[int], None] | None:
    if copy_progress is None:
        return None
    total = sum(f.size for f in info.files.values())
    return lambda n: copy_progress(n, total)


def _copy_out(names: list[str], src: Path, dest: Path, *, scratch: Path, mode: str,
              progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Copy into a folder that appears at ``dest`` complete or not at all.  It is built in the
    run folder (swept if this process is killed) when that is on dest's file system, else
    beside ``dest``."""
    import tempfile

    dest.parent.mkdir(parents=True, exist_ok=True)
    same_fs = os.stat(scratch).st_dev == os.stat(dest.parent).st_dev
    if same_fs:
        tmp = Path(tempfile.mkdtemp(dir=scratch, prefix="export-"))
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 is for scratch, not for the user's folder
    else:
        tmp = dest.with_name(f".{dest.name}.incomplete")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    how: dict[str, int] = {}
    try:
        for name in names:
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            kind = _place(src / name, target, mode=mode, progress=progress)
            how[kind] = how.get(kind, 0) + 1
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return how


def _place(src: Path, target: Path, *, mode: str, progress: Callable[[int], None] | None = None) -> str:
    """Put ``src``'s bytes at ``target`` the cheapest safe way; returns how."""
    real = Path(os.path.realpath(src))  # the blob behind the version folder's link
    if mode == "move":
        os.replace(real, target)
        return "move"
    if mode == "link":
        if _reflink(real, target):
            return "reflink"
        try:
            os.link(real, target)
            return "hardlink"
        except OSError:
            pass  # another file system, or links not allowed: copy
    _copy_file(real, target, progress)
    return "copy"


def _copy_file(src: Path, target: Path, progress: Callable[[int], None] | None) -> None:
    """A plain copy in 64 MiB steps, so a copy to another file system shows its progress;
    ``copy_file_range`` keeps the bytes in the kernel where it can."""
    kernel = hasattr(os, "copy_file_range")
    with open(src, "rb", buffering=0) as s, open(target, "wb", buffering=0) as t:
        while True:
            n = 0
            if kernel:
                try:
                    n = os.copy_file_range(s.fileno(), t.fileno(), COPY_CHUNK)
                except OSError:  # not between these file systems: user space from here on (the
                    kernel = False  # offsets are the fds' own, so both ways continue the same file)
            if not kernel:
                data = memoryview(s.read(COPY_CHUNK))
                n, done = len(data), 0
                while done < n:  # a raw file may write short
                    done += t.write(data[done:])
            if not n:
                break
            if progress is not None:
                progress(n)


def _reflink(src: Path, target: Path) -> bool:
    """A copy-on-write clone (Linux FICLONE: btrfs, XFS, bcachefs, ...); False where unsupported."""
    import fcntl

    ficlone = 0x40049409
    try:
        with open(src, "rb") as s, open(target, "wb") as t:
            fcntl.ioctl(t.fileno(), ficlone, s.fileno())
        return True
    except OSError:
        target.unlink(missing_ok=True)
        return False
