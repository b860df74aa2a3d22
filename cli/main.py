"""``lorareg``: the command-line shell over ``Registry``.  It parses, calls, renders;
no SQL and no torch live here."""

from __future__ import annotations

import os

import click

from lorareg.cli.errors import LoraregGroup


@click.group(cls=LoraregGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False), envvar="LORAREG_HOME",
              help="Registry folder (default ~/.lorareg, or LORAREG_HOME).")
@click.option("--database-url", envvar="LORAREG_DATABASE_URL", help="SQLAlchemy URL of a shared registry database.")
@click.option("--blobs", type=click.Path(file_okay=False), envvar="LORAREG_BLOBS",
              help="Blob folder shared by a team (default HOME/blobs).")
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.version_option(package_name="lorareg")
@click.pass_context
def cli(ctx: click.Context, home: str | None, database_url: str | None, blobs: str | None, debug: bool) -> None:
    """lorareg: a registry and merge engine for LoRA adapters."""
    if debug:
        os.environ["LORAREG_DEBUG"] = "1"
    ctx.obj = {"home": home, "database_url": database_url, "blobs": blobs}


def _register() -> None:
    from lorareg.cli import cmd_hub, cmd_merge, cmd_registry

    for module in (cmd_registry, cmd_merge, cmd_hub):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="lorareg")


if __name__ == "__main__":  # pragma: no cover
    main()
