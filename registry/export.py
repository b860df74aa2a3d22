"""``export``: a version's files as a plain folder of real files (no links into the store)."""

from __future__ import annotations

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


def export(ctx: Context, *, ref: str, dest: Path, progress: Progress = None) -> VersionInfo:
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
        _copy_out(sorted(info.files), src, dest)
    finally:
        if produced is not None:
            produced.discard()
    with ctx.session() as session:
        events.record(session, "export", ref=info.ref, dest=str(dest))
        session.commit()
    return info


def _copy_out(names: list[str], src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.incomplete")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in names:
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, target)  # follows the link into the store
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
