"""Turning lorareg errors into one line on stderr (or a JSON object with --json) and an exit
code; a closed pipe (``lorareg ls | head -1``) into a quiet exit."""

from __future__ import annotations

import errno
import json
import os
import sys

import click

from lorareg.errors import LoraregError

BUG_HINT = "run again with --debug for the full traceback, and report it if it looks like a bug"


def debug_enabled() -> bool:
    return os.environ.get("LORAREG_DEBUG", "") not in ("", "0")


def json_wanted() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and (ctx.find_root().obj or {}).get("json"))


def quiet_broken_pipe() -> None:
    """The reader went away (``| head -1``): nothing more can be shown, and that is normal.
    stdout is pointed at /dev/null so the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (a test runner): nothing to redirect
        pass
    sys.exit(0)


def _is_broken_pipe(exc: BaseException) -> bool:
    return isinstance(exc, BrokenPipeError) or (isinstance(exc, OSError) and exc.errno == errno.EPIPE)


class HelpGroup(click.Group):
    """A group whose command list shows each command's whole first line (wrapped, not cut)."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            first = cmd.short_help or (cmd.help or "").strip().split("\n\n")[0]
            rows.append((name, " ".join(first.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class LoraregGroup(HelpGroup):
    """The root group: prints ``Error: ...`` plus a hint for lorareg errors (exit 1), a JSON
    error object instead with ``--json``, and a traceback only with ``--debug``."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LoraregError as exc:
            if debug_enabled():
                raise
            fail(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__, exc.hint,
                 kind=exc.__class__.__name__)
        except KeyboardInterrupt:
            click.echo("Interrupted: nothing half-written was registered.", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if _is_broken_pipe(exc):
                quiet_broken_pipe()
            if debug_enabled():
                raise
            fail(f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", BUG_HINT,
                 kind=exc.__class__.__name__)


def fail(message: str, hint: str | None = None, *, kind: str = "LoraregError") -> None:
    if json_wanted():  # the error where the caller's JSON parser is reading
        click.echo(json.dumps({"error": message, "hint": hint, "type": kind}, indent=2))
    else:
        click.echo(f"Error: {message}", err=True)
        if hint:
            click.echo(f"Hint: {hint}", err=True)
    sys.exit(1)
