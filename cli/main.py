"""``lorareg``: the command-line shell over ``Registry``.  It parses, calls, renders;
no SQL and no torch live here."""

from __future__ import annotations

import os
import sys

import click

from lorareg.cli.common import json_option, utc_option
from lorareg.cli.errors import LoraregGroup, quiet_broken_pipe


@click.group(cls=LoraregGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False), envvar="LORAREG_HOME",
              help="Registry folder (default ~/.lorareg, or LORAREG_HOME).")
@click.option("--database-url", envvar="LORAREG_DATABASE_URL", help="SQLAlchemy URL of a shared registry database.")
@click.option("--blobs", envvar="LORAREG_BLOBS", metavar="FOLDER|URL",
              help="Blobs shared by a team: a folder, or s3://BUCKET/PREFIX (default HOME/blobs).")
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@json_option
@utc_option
@click.version_option(package_name="lorareg")
@click.pass_context
def cli(ctx: click.Context, home: str | None, database_url: str | None, blobs: str | None, debug: bool,
        as_json: bool) -> None:
    """lorareg: a registry and merge engine for LoRA adapters.

    References are NAME (the version NAME@current points at, else the latest), NAME@3 and
    NAME@ALIAS.  --json and --utc work before the command or after it.

    \b
    Examples:
      lorareg add base ./Llama-3.2-1B --name llama
      lorareg merge llama chat code:0.5 --name assistant
      lorareg --json ls merges
    """
    if debug:
        os.environ["LORAREG_DEBUG"] = "1"
    ctx.ensure_object(dict).update(home=home, database_url=database_url, blobs=blobs)


def _register() -> None:
    from lorareg.cli import cmd_alias, cmd_hub, cmd_merge, cmd_registry, cmd_remove, cmd_show, cmd_tracking

    for module in (cmd_registry, cmd_show, cmd_alias, cmd_merge, cmd_hub, cmd_tracking, cmd_remove):
        for command in module.COMMANDS:
            cli.add_command(command)
    from lorareg.cli import cmd_check  # check, config

    for command in cmd_check.COMMANDS:
        cli.add_command(command)
    from lorareg.cli import cmd_cache  # cache ls, cache prune

    for command in cmd_cache.COMMANDS:
        cli.add_command(command)
    from lorareg.cli.cmd_ui import ui  # its web stack is imported only when `lorareg ui` runs
    cli.add_command(ui)


_register()


def main() -> None:
    code: int | str | None = 0
    try:
        cli(prog_name="lorareg")
    except SystemExit as exc:
        code = exc.code
    try:  # the interpreter's own last flush would report a reader that went away as an error
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_broken_pipe()
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
