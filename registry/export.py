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
from lorareg.registry.produce import produce_version
from lorareg.registry.card import merge_card
from lorareg.registry.register import CARD, folder_of
from lorareg.registry.results import VersionInfo
from lorareg.registry.version_info import stored_recipe, version_info

Progress = Callable[[int, int, str], None] | None


def export(ctx: Context, *, ref: str, dest: Path, copy: bool = False, progress: Progress = None) -> VersionInfo:
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
        row, produced = produce_version(ctx, info.ref, progress=progress)
        src = produced.folder
        with ctx.session() as session:
            card = merge_card(session, stored_recipe(session, row), name=row.name, version=row.version,
                              output_digest=row.digest)
        (src / CARD).write_text(card, encoding="utf-8")
    try:
        how = _copy_out(sorted(info.files), src, dest, scratch=ctx.scratch(),
                        mode="move" if produced is not None else ("copy" if copy else "link"))
    finally:
        if produced is not None:
            produced.discard()
    with ctx.session() as session:
        events.record(session, "export", ref=info.ref, dest=str(dest), how=how)
        session.commit()
    return info


def _copy_out(names: list[str], src: Path, dest: Path, *, scratch: Path, mode: str) -> dict[str, int]:
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
            kind = _place(src / name, target, mode=mode)
            how[kind] = how.get(kind, 0) + 1
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return how


def _place(src: Path, target: Path, *, mode: str) -> str:
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
    shutil.copyfile(real, target)
    return "copy"


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
