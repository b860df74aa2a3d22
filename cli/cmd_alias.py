"""alias: move, remove and list aliases (name@prod, name@current), and their history."""

from __future__ import annotations

import click

from lorareg.cli import render
from lorareg.cli.common import TimeParam, aware, complete_ref, json_option, utc_option, with_registry
from lorareg.cli.errors import HelpGroup
from lorareg.cli.render import Column


@click.group(cls=HelpGroup)
def alias() -> None:
    """Move, remove and list aliases (name@prod, name@current).

    \b
    Examples:
      lorareg alias set assistant prod 3
      lorareg alias history assistant --at "2026-11-17 12:00"
    """


@alias.command("set")
@click.argument("name", shell_complete=complete_ref())
@click.argument("alias_name", metavar="ALIAS")
@click.argument("version", type=int)
@click.option("--require-check/--no-require-check", "require_check", default=None,
              help="Refuse a merged version whose latest `lorareg check` did not pass "
                   "(default: the registry's require-check setting).")
@json_option
@with_registry
def alias_set(reg, name: str, alias_name: str, version: int, require_check: bool | None, as_json: bool) -> None:
    """Point NAME@ALIAS at VERSION.

    \b
    Examples:
      lorareg alias set assistant prod 3
      lorareg alias set assistant current 4     # what a bare `assistant` means
      lorareg alias set assistant prod 3 --require-check
    """
    a = reg.set_alias(name=name, alias=alias_name, version=version, require_check=require_check)
    render.print_json(a.to_dict()) if as_json else click.echo(f"{a.name}@{a.alias} -> {a.version}")


@alias.command("rm")
@click.argument("name", shell_complete=complete_ref())
@click.argument("alias_name", metavar="ALIAS")
@json_option
@with_registry
def alias_rm(reg, name: str, alias_name: str, as_json: bool) -> None:
    """Remove NAME@ALIAS (the history keeps it).

    \b
    Examples:
      lorareg alias rm assistant staging
    """
    reg.remove_alias(name=name, alias=alias_name)
    render.print_json({"name": name, "alias": alias_name, "removed": True}) if as_json else click.echo(
        f"removed {name}@{alias_name}")


@alias.command("ls")
@click.argument("name", required=False, shell_complete=complete_ref())
@json_option
@utc_option
@with_registry
def alias_ls(reg, name: str | None, as_json: bool) -> None:
    """List aliases and the versions they point at.

    \b
    Examples:
      lorareg alias ls
      lorareg alias ls assistant
    """
    items = reg.aliases(name=name)
    if as_json:
        render.print_json([a.to_dict() for a in items])
    else:
        render.table(None, [Column("name", keep=True), Column("alias"), Column("version", justify="right"),
                            Column("since", drop=1)],
                     [[a.name, a.alias, a.version, render.when(a.updated_at)] for a in items])


@alias.command("history")
@click.argument("name", shell_complete=complete_ref())
@click.option("--alias", "alias_name", help="Only this alias.")
@click.option("--at", "at", type=TimeParam(),
              help="Show what each alias pointed at at this time (local time unless --utc or an offset is given).")
@json_option
@utc_option
@with_registry
def alias_history(reg, name: str, alias_name: str | None, at, as_json: bool) -> None:
    """Every move of NAME's aliases, or with --at what was live then.

    \b
    Examples:
      lorareg alias history assistant
      lorareg alias history assistant --at "2026-11-17 12:00"        # your local time
      lorareg alias history assistant --at 2026-11-17T11:00Z --json
    """
    at = aware(at) if at is not None else None
    items = reg.alias_history(name=name, alias=alias_name, at=at)
    if as_json:
        render.print_json([a.to_dict() for a in items])
        return
    if at is not None:
        click.echo(f"live at {render.when(at, seconds=True)}:" if items else
                   f"no alias of {name} was live at {render.when(at, seconds=True)}")
        if not items:
            return
    render.table(None, [Column("time", drop=1), Column("alias", keep=True), Column("version", justify="right")],
                 [[render.when(a.updated_at, seconds=True), f"{a.name}@{a.alias}", a.version or "(removed)"]
                  for a in items])



COMMANDS = [alias]
