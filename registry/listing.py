"""Reading the registry: one version, all versions, the event log, a version's folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lorareg.errors import LoraregError
from lorareg.registry import events, lookup
from lorareg.registry.context import Context
from lorareg.registry.refs import KINDS, check_name
from lorareg.registry.results import EventInfo, VersionInfo
from lorareg.registry.version_info import version_info

def get(ctx: Context, *, ref: str) -> VersionInfo:
    with ctx.session() as session:
        return version_info(session, ctx.home, lookup.resolve(session, ref))


def _check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise LoraregError(f"unknown kind {kind!r}", hint="use one of: bases, adapters, merges")


def ls(ctx: Context, *, kind: str | None = None, name: str | None = None, limit: int | None = None,
       offset: int = 0) -> list[VersionInfo]:
    _check_kind(kind)
    with ctx.session() as session:
        rows = lookup.versions(session, kind=kind, name=check_name(name) if name else None, limit=limit,
                               offset=offset)
        return [version_info(session, ctx.home, r, with_files=False) for r in rows]


def count(ctx: Context, *, kind: str | None = None, name: str | None = None) -> int:
    _check_kind(kind)
    with ctx.session() as session:
        return lookup.count_versions(session, kind=kind, name=check_name(name) if name else None)


def log(ctx: Context, *, ref: str | None = None, limit: int = 50) -> list[EventInfo]:
    with ctx.session() as session:
        return events.recent(session, ref=ref, limit=limit)


def folder(ctx: Context, *, ref: str, progress: Callable[[int, int, str], None] | None = None) -> Path:
    """The folder ``from_pretrained`` loads; a recipe-only merge is rebuilt, checked and stored first."""
    from lorareg.registry.rebuild import materialize
    from lorareg.registry.register import folder_of

    materialize(ctx, ref=ref, progress=progress)
    with ctx.session() as session:
        return folder_of(ctx, session, lookup.resolve(session, ref))
