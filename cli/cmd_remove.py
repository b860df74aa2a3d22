"""rm and rename."""

from __future__ import annotations

import sys

import click

from lorareg.cli import describe, render
from lorareg.cli.common import complete_ref, json_option, with_registry


def interactive() -> bool:
    """Someone at a terminal, who can answer a question (a script or a pipe never is asked)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


@click.command()
@click.argument("refs", nargs=-1, required=True, metavar="REF...", shell_complete=complete_ref())
@click.option("--force", is_flag=True,
              help="Remove even what a merge, an adapter, an alias or a Hub push still uses: it stays as a "
                   "tombstone (row and lineage kept, bytes evicted, shown as removed).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation (it is asked only on a terminal).")
@click.option("-m", "--message", help="Why; kept in the event log.")
@json_option
@with_registry
def rm(reg, refs: tuple[str, ...], force: bool, yes: bool, message: str | None, as_json: bool) -> None:
    """Remove versions: their bytes are evicted; the event log keeps the removal.

    A version that something still uses (a merge made from it, an adapter trained on it, a
    rollback's child, an alias, a Hub push) is refused, naming what uses it, unless --force.
    Version numbers are never given out again.

    \b
    Examples:
      lorareg rm chat@2
      lorareg rm assistant@1 assistant@2 --yes -m "superseded by @3"
      lorareg rm chat@1 --force        # assistant@1 was merged from it: keep a tombstone
    """
    if not yes and not as_json and interactive():
        infos = [reg.get(ref=r) for r in refs]
        listed = ", ".join(f"{i.ref} ({describe.kind_label(i)}, {render.human_size(i.size_bytes)})" for i in infos)
        click.confirm(f"Remove {listed}?", abort=True)
    res = reg.remove(refs=refs, force=force, message=message)
    if as_json:
        render.print_json(res.to_dict())
        return
    for ref in res.removed:
        kept = res.kept_for.get(ref)
        click.echo(f"removed {ref}" + (f" (kept as a tombstone: used by {', '.join(kept)})" if kept else ""))
    for a in res.aliases_removed:
        click.echo(f"  alias {a} removed with it")
    click.echo(f"  freed {render.human_size(res.bytes_freed)} ({res.blobs_removed} blobs)")


@click.command()
@click.argument("old", shell_complete=complete_ref())
@click.argument("new")
@json_option
@with_registry
def rename(reg, old: str, new: str, as_json: bool) -> None:
    """Rename OLD (every version of it) to NEW; recorded recipes follow, the event log keeps the old name.

    \b
    Examples:
      lorareg rename chat chat-v1
    """
    res = reg.rename(old=old, new=new)
    if as_json:
        render.print_json(res.to_dict())
        return
    recipes = f", {res.recipes_updated} recorded recipe{'s' * (res.recipes_updated != 1)} updated"
    click.echo(f"renamed {res.old} to {res.new} ({res.versions} version{'s' * (res.versions != 1)}"
               + (recipes if res.recipes_updated else "") + ")")


COMMANDS = [rm, rename]
