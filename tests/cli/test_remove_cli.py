"""rm, rename and shell completion from the shell (issue 14)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lorareg.cli import cmd_remove
from lorareg.cli.main import cli
from tests.support.cli import run


@pytest.fixture
def family(reg, llama, llama_lora, llama_lora2):
    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=llama_lora, base="llama", name="chat")
    reg.add_adapter(path=llama_lora2, base="llama", name="code")
    reg.merge(base="llama", adapters=["chat", "code:0.5"], name="assistant")
    return reg


def test_rm_refused_in_one_line_then_forced(family):
    r = run("rm", "chat@1", ok=False)
    lines = [line for line in r.output.splitlines() if line]
    assert r.exit_code == 1 and len(lines) == 2
    assert lines[0] == "Error: chat@1 is still used by merge assistant@1 (an input)"
    assert lines[1].startswith("Hint: ") and "--force" in lines[1]
    out = run("rm", "chat@1", "--force").output
    assert "removed chat@1 (kept as a tombstone: used by merge assistant@1 (an input))" in out
    listed = run("ls").output
    assert any(line.split()[:3] == ["chat@1", "adapter", "(removed)"] for line in listed.splitlines())
    assert "removed" in run("show", "chat@1").output and "(removed)" in run("lineage", "assistant@1").output
    assert [e["action"] for e in json.loads(run("log", "--json").output)][:1] == ["rm"]


def test_rm_json_and_hidden_from_ls(family):
    res = json.loads(run("rm", "assistant@1", "--json").output)
    assert res["removed"] == ["assistant@1"] and res["bytes_freed"] > 0
    assert "assistant@1" not in run("ls").output
    assert "assistant@1" in run("ls", "--removed").output


def test_rm_asks_on_a_terminal_unless_yes(family, monkeypatch):
    monkeypatch.setattr(cmd_remove, "interactive", lambda: True)
    r = run("rm", "assistant@1", input="n\n", ok=False)
    assert r.exit_code == 1 and "Remove assistant@1 (merged model" in r.output and "Aborted" in r.output
    assert family.get(ref="assistant@1").removed_at is None
    run("rm", "assistant@1", input="y\n")
    assert family.get(ref="assistant@1").removed_at is not None
    monkeypatch.setattr(cmd_remove, "interactive", lambda: (_ for _ in ()).throw(AssertionError("asked")))
    run("rm", "code@1", "--yes", "--force")


def test_rename(family):
    assert "renamed chat to chat-v1 (1 version, 1 recorded recipe updated)" in run("rename", "chat", "chat-v1").output
    assert "chat-v1@1" in run("show", "assistant@1").output.split("inputs")[1]
    r = run("rename", "chat-v1", "code", ok=False)
    assert r.exit_code == 1 and "already taken" in r.output


def _complete(words: str, cword: int) -> list[str]:
    out = CliRunner().invoke(cli, [], prog_name="lorareg", env={
        "_LORAREG_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)}).output
    return [line.split(",", 1)[1] for line in out.splitlines() if line]


def test_shell_completion_of_commands_options_and_names(family):
    run("alias", "set", "assistant", "prod", "1")
    assert {"rebuild", "rename", "rm", "rollback"} <= set(_complete("lorareg r", 1))
    assert "--where" in _complete("lorareg ls --wh", 2)
    assert _complete("lorareg show ch", 2) == ["chat"]
    assert _complete("lorareg show assistant@", 2) == ["assistant@prod", "assistant@1"]
    assert _complete("lorareg merge llama ", 2 + 1) == ["chat", "code"]  # adapters only, after the base
    assert _complete("lorareg add adapter ./x --base ", 5) == ["llama"]
    run("rm", "code@1", "--force")
    assert "code" not in _complete("lorareg show c", 2)  # nothing of it left to use


def test_completion_never_prints_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAREG_HOME", str(tmp_path / "not-a-dir-file"))
    (tmp_path / "not-a-dir-file").write_text("a file where a folder should be")
    assert _complete("lorareg show ch", 2) == []
