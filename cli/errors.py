"""Turning lorareg errors into one line on stderr and an exit code."""

from __future__ import annotations

import os
import sys

import click

from lorareg.errors import LoraregError


def debug_enabled() -> bool:
    return os.environ.get("LORAREG_DEBUG", "") not in ("", "0")


class LoraregGroup(click.Group):
    """A click group that prints ``Error: ...`` plus a hint for lorareg errors (exit 1)
    and shows a traceback only with ``--debug``."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LoraregError as exc:
            if debug_enabled():
                raise
            fail(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__, exc.hint)
        except KeyboardInterrupt:
            click.echo("Interrupted: nothing half-written was registered.", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if debug_enabled():
                raise
            fail(f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                 "run again with --debug for the full traceback, and report it if it looks like a bug")


def fail(message: str, hint: str | None = None) -> None:
    click.echo(f"Error: {message}", err=True)
    if hint:
        click.echo(f"Hint: {hint}", err=True)
    sys.exit(1)
