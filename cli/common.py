"""Options and helpers every command shares."""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def open_registry(ctx: click.Context):
    from lorareg.registry.api import Registry

    obj = ctx.find_root().obj or {}
    return Registry.open(home=obj.get("home"), database_url=obj.get("database_url"), blobs=obj.get("blobs"))


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
