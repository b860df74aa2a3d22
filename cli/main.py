"""``lorareg``: the command-line shell over ``Registry``.  It parses, calls, renders;
no SQL and no torch live here."""

from __future__ import annotations

import os
import sys

import click

from lorareg.cli.common import json_option, utc_option
from lorareg.cli.errors import LoraregGroup, quiet_broken_pipe


class _Commands(LoraregGroup):
    """Commands are imported from their module when first asked for (COMMAND_MODULES below)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMAND_MODULES:
            import importlib

            for command in importlib.import_module(f"lorareg.cli.{COMMAND_MODULES[name]}").COMMANDS:
                self.add_command(command)
        return self.commands.get(name)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand:  # "Did you mean ...?" from every name, not the loaded ones
            raise click.exceptions.NoSuchCommand(args[0], possibilities=list(COMMAND_MODULES), ctx=ctx) from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
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


# Which module defines each command, so that a command imports its own module alone
# (``lorareg ls`` never loads the merge options); tests/test_packaging.py checks the map.
COMMAND_MODULES = {
    **dict.fromkeys(("init", "add", "ls", "verify", "log"), "cmd_registry"),
    "show": "cmd_show", "alias": "cmd_alias",
    **dict.fromkeys(("merge", "export", "rebuild", "rollback", "lineage", "diff", "gc"), "cmd_merge"),
    "push": "cmd_hub", **dict.fromkeys(("tag", "untag", "metrics", "params"), "cmd_tracking"),
    "rm": "cmd_remove", "rename": "cmd_remove", "check": "cmd_check", "config": "cmd_check",
    "cache": "cmd_cache", "ui": "cmd_ui",
}


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
    _leave(code)


def _leave(code: int | str | None) -> None:
    """Exit without tearing the interpreter down.  Freeing torch's and SQLAlchemy's module
    state took 0.5-1.5 s after a merge had finished (2 cores), and a user waits for it.  By
    now the command has closed what it opened (the registry, its lease, its temp folders), so
    only the atexit handlers remain to run; should a thread still be working, the interpreter
    exits the usual way and waits for it."""
    import atexit
    import threading

    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    if isinstance(code, str):  # what sys.exit does with a message
        print(code, file=sys.stderr)
    status = 1 if isinstance(code, str) else (code or 0)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


if __name__ == "__main__":  # pragma: no cover
    main()
