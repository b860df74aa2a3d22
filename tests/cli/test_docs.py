"""Every command documents itself (like sqlite-utils' test_docs.py): help text, at least one
example, help on every option; and the README's command list is what `lorareg --help` lists."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lorareg.cli.main import cli

README = Path(__file__).resolve().parents[2] / "README.md"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # the root group imports its commands when asked for them
        command = group.get_command(ctx, name)
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))


COMMANDS = list(_commands(cli))
IDS = [" ".join(path) for path, _ in COMMANDS]


@pytest.mark.parametrize("path,command", COMMANDS, ids=IDS)
def test_command_has_help_and_an_example(path, command):
    assert command.help and command.help.strip(), f"lorareg {' '.join(path)} has no help"
    text = CliRunner().invoke(cli, [*path, "--help"], terminal_width=100).output
    assert "Example" in text, f"lorareg {' '.join(path)} --help shows no example"
    examples = [line.strip() for line in text.splitlines() if line.strip().startswith("lorareg ")]
    assert examples, f"lorareg {' '.join(path)} --help has no `lorareg ...` example line"
    if not isinstance(command, click.Group):  # an example runs the command itself
        assert any(line.startswith(f"lorareg {' '.join(path)}") for line in examples), examples


@pytest.mark.parametrize("path,command", COMMANDS, ids=IDS)
def test_every_option_has_help(path, command):
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"lorareg {' '.join(path)} {param.opts[0]} has no help"


def test_top_level_list_shows_whole_first_lines():
    text = CliRunner().invoke(cli, ["--help"], terminal_width=80).output
    listing = text.split("Commands:")[1].splitlines()
    assert not [line for line in listing if line.rstrip().endswith("...")]  # click's default cuts with "..."
    joined = " ".join(text.split())
    for name, command in cli.commands.items():
        first = " ".join(command.help.strip().split("\n\n")[0].split())
        assert first in joined, f"{name}: {first!r} not shown whole"


def _readme_commands() -> set[str]:
    """The verbs of the README's "Using it" command list."""
    section = README.read_text().split("## Using it", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return {m.group(1) for m in re.finditer(r"^lorareg (?:--\S+ )*([a-z][a-z-]*)", block, re.MULTILINE)}


def test_readme_command_list_matches_help():
    listed = _readme_commands()
    help_text = CliRunner().invoke(cli, ["--help"]).output
    in_help = {line.split()[0] for line in help_text.split("Commands:")[1].splitlines() if line.startswith("  ")
               and not line.startswith("   ")}
    assert in_help == set(cli.commands)
    assert listed == in_help, f"README lacks {sorted(in_help - listed)}; README has extra {sorted(listed - in_help)}"


def test_readme_documents_shell_completion():
    text = README.read_text()
    assert "_LORAREG_COMPLETE=bash_source lorareg" in text
    out = CliRunner(env={"_LORAREG_COMPLETE": "bash_source"}).invoke(cli, [], prog_name="lorareg").output
    assert "_lorareg_completion" in out  # the script the README tells people to eval
