"""Options and helpers every command shares."""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, Callable

import click


def _root_flag(name: str) -> Callable[[click.Context, click.Parameter, bool], bool]:
    """A flag accepted before the verb (``lorareg --json ls``) and after it (``ls --json``):
    either place sets it on the root context, where errors and rendering look."""
    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        root = ctx.find_root()
        if root.obj is None:
            root.obj = {}
        if value:
            root.obj[name] = True
        return bool(root.obj.get(name))

    return callback


json_option = click.option("--json", "as_json", is_flag=True, callback=_root_flag("json"),
                           help="Print machine-readable JSON (errors too, as {\"error\": ..., \"hint\": ...}).")
utc_option = click.option("--utc", is_flag=True, expose_value=False, callback=_root_flag("utc"),
                          help="Show (and read) times in UTC instead of local time.")


def open_registry(ctx: click.Context):
    obj = ctx.find_root().obj or {}
    with _loading_for_good():
        from lorareg.registry.api import Registry

        return Registry.open(home=obj.get("home"), database_url=obj.get("database_url"), blobs=obj.get("blobs"))


@contextlib.contextmanager
def _loading_for_good() -> Iterator[None]:
    """The first open of a registry in a process loads the database layer: ~100,000 objects the
    garbage collector tracks, hardly any garbage among them, all kept to the end.  Its passes
    over them as they load took ~60 ms of a ~0.45 s `lorareg ls` (10 ms with this; 30-45 ms
    less CPU end to end, bench/README.md), so the collector pauses while they load and leaves
    them out of its passes from then on (``gc.freeze``).  Once per process: a test run calling
    ``cli()`` again and again freezes nothing more."""
    if "lorareg.registry.models" in sys.modules:
        yield
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def with_registry(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Open the registry for the command and close it afterwards."""

    @functools.wraps(fn)
    @click.pass_context
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        reg = open_registry(ctx)
        try:
            return fn(reg, *args, **kwargs)
        finally:
            reg.close()

    return wrapper


def complete_ref(kind: str | None = None) -> Callable[[click.Context, click.Parameter, str], list]:
    """Shell completion of registered names (and ``NAME@`` versions and aliases), read through
    the Registry.  A completion must never print an error into the user's prompt."""
    def complete(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list:
        from click.shell_completion import CompletionItem

        try:
            reg = open_registry(ctx)
            try:
                return [CompletionItem(r) for r in reg.ref_candidates(prefix=incomplete, kind=kind)]
            finally:
                reg.close()
        except Exception:
            return []

    return complete


def parse_assignments(items: tuple[str, ...], *, what: str, example: str) -> dict[str, str]:
    """``key=value`` arguments -> a dict (a usage error names the bad one)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. {example})", param_hint=what)
        out[key.strip()] = value
    return out


def json_value(text: str) -> Any:
    """A param from the shell: a number, true/false/null, or JSON if it parses; else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class TimeParam(click.ParamType):
    """``2026-11-17``, ``2026-11-17 12:00[:SS]`` (local time, or UTC with --utc), or ISO 8601
    with an offset (``2026-11-17T12:00+01:00``, ``...Z``)."""

    name = "TIME"

    def convert(self, value, param, ctx):
        if isinstance(value, datetime):
            return value
        try:
            return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is not a time; write YYYY-MM-DD[ HH:MM[:SS]], optionally with an offset "
                      f"(+01:00) or Z", param, ctx)


def aware(dt: datetime) -> datetime:
    """A time typed without a zone is the reader's local time, or UTC with --utc."""
    from lorareg.cli.render import use_utc

    if dt.tzinfo is not None:
        return dt
    return dt.replace(tzinfo=timezone.utc) if use_utc() else dt.astimezone()
