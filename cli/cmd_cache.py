"""cache ls and cache prune: this machine's cache of the team's object store.

Sizes here are binary (KiB, MiB, GiB), as LORAREG_CACHE_MAX and --max-size are read: a limit
of 10G shows as 10.0 GiB, not 10.7 GB."""

from __future__ import annotations

import click

from lorareg.cli import render
from lorareg.cli.common import json_option, utc_option, with_registry
from lorareg.cli.errors import HelpGroup
from lorareg.cli.render import Column


def binary_size(n: int | None) -> str:
    return render.human_size(n, binary=True, none="no limit")


COLUMNS = [
    (Column("blob", keep=True), lambda e: render.short(e.sha256)),
    (Column("size", justify="right"), lambda e: binary_size(e.size)),
    (Column("last used", drop=2), lambda e: render.when(e.last_used)),
    (Column("used by", fold=True), lambda e: ", ".join(e.refs) or "(no version)"),
    (Column("files", fold=True, drop=1), lambda e: ", ".join(e.paths)),
]


def _footer(report) -> str:
    n = len(report.entries)
    return (f"{n} blob{'s' * (n != 1)}, {binary_size(report.total_bytes)} of {binary_size(report.limit)} "
            f"in {report.location} (caching {report.store})")


@click.group(cls=HelpGroup)
def cache() -> None:
    """This machine's cache of the object store (LORAREG_BLOBS=s3://...): list it, prune it.

    Blobs read or written through an object store are kept in LORAREG_HOME/cache, hashed as
    they enter, least recently used evicted beyond LORAREG_CACHE_MAX (default 100G). Pruning
    only drops local copies: a version that needs a blob again fetches it.

    \b
    Examples:
      lorareg cache ls
      lorareg cache prune --max-size 10G
    """


@cache.command("ls")
@json_option
@utc_option
@with_registry
def cache_ls(reg, as_json: bool) -> None:
    """List the cached blobs, least recently used first, with the versions whose files they are.

    \b
    Examples:
      lorareg cache ls
      lorareg cache ls --json
      lorareg cache ls | head -5
    """
    report = reg.cache_ls()
    if as_json:
        render.print_json(report.to_dict())
        return
    if report.entries:
        render.table(None, [c for c, _ in COLUMNS], [[get(e) for _, get in COLUMNS] for e in report.entries])
    # On a terminal the total closes the table; piped, stdout holds only the table (for head,
    # grep, awk) and the total goes to stderr.
    terminal = render.is_terminal()
    if terminal and report.entries:
        click.echo()
    click.echo(_footer(report) if report.entries else f"the cache is empty: {_footer(report)}", err=not terminal)


@cache.command("prune")
@click.option("--max-size", metavar="SIZE",
              help="Keep at most this much (e.g. 10G, 512M, 0 for nothing); default LORAREG_CACHE_MAX.")
@json_option
@with_registry
def cache_prune(reg, max_size: str | None, as_json: bool) -> None:
    """Evict cached blobs, least recently used first, down to the limit (the object store keeps them).

    Blobs still being uploaded stay.

    \b
    Examples:
      lorareg cache prune
      lorareg cache prune --max-size 10G
      lorareg cache prune --max-size 0      # drop every local copy
    """
    max_bytes = None
    if max_size is not None:
        from lorareg.store.remote_blobs import parse_size

        max_bytes = parse_size(max_size, name="--max-size")
    report = reg.cache_prune(max_bytes=max_bytes)
    if as_json:
        render.print_json(report.to_dict())
        return
    for e in report.removed:
        click.echo(f"evicted {render.short(e.sha256)}  {binary_size(e.size)}  {', '.join(e.refs) or '(no version)'}")
    n = len(report.removed)
    head = (f"evicted {n} blob{'s' * (n != 1)}, freed {binary_size(report.bytes_freed)}" if n
            else "nothing to evict")
    click.echo(f"{head}; the cache holds {binary_size(report.total_bytes)} of {binary_size(report.limit)} "
               f"({report.location})")


COMMANDS = [cache]
