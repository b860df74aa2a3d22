"""Running the CLI in-process the way every CLI test does."""

from __future__ import annotations

from click.testing import CliRunner, Result


def run(*args, ok: bool = True, **kw) -> Result:
    """``lorareg ARGS`` through click's runner; with ``ok`` (default) it must exit 0."""
    from lorareg.cli.main import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], **kw)
    if ok:
        assert result.exit_code == 0, result.output
    return result
