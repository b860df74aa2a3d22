"""`lorareg check`, `lorareg config` and the `--require-check` gates from the command line:
exit codes, one-line errors, the table and the JSON, the `ls` mark and the `show` list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lorareg.cli.main import cli
from lorareg.merge.behaviour import FACTOR

README = Path(__file__).resolve().parents[2] / "README.md"


def run(*args, code: int = 0):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == code, (r.stdout, r.stderr)
    return r


@pytest.fixture
def merged(reg, llama, llama_lora, llama_lora2):
    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=llama_lora, base="llama", name="chat")
    reg.add_adapter(path=llama_lora2, base="llama", name="code")
    reg.merge(base="llama", adapters=["chat", "code:0.5"], name="assistant", dtype="bfloat16")
    return reg


def test_check_passes_with_a_table_and_json(merged):
    out = run("check", "assistant", "--samples", "2").stdout
    assert "check assistant@1: passed" in out and "max |difference|" in out and "rounding alone" in out
    data = json.loads(run("check", "assistant", "--samples", "2", "--json").stdout)
    assert {"ref", "passed", "max_abs_diff", "mean_abs_diff", "tolerance", "top1_agreement", "generation_agreement",
            "samples", "seed", "reference"} <= set(data)
    assert (data["ref"], data["passed"], data["reference"], data["samples"], data["seed"]) == \
        ("assistant@1", True, "peft-unmerged", 2, 0)
    assert data["generation_agreement"] is None and 0 <= data["top1_agreement"] <= 1
    assert data["max_abs_diff"] <= data["tolerance"]


def test_ls_marks_and_show_lists_checks(merged):
    merged.merge(base="llama", adapters=["chat"], name="other", dtype="bfloat16")
    run("check", "assistant", "--samples", "2")
    rows = {line.split()[0]: line for line in run("ls", "merges").stdout.splitlines()[1:]}
    assert "passed" in rows["assistant@1"] and "passed" not in rows["other@1"]
    shown = run("show", "assistant").stdout
    assert "checks (lorareg check)" in shown and "2 drawn, seed 0" in shown
    assert json.loads(run("show", "assistant", "--json").stdout)["details"]["checks"][0]["passed"] is True


def test_a_failing_check_exits_1_and_says_by_how_much(merged):
    merged.merge(base="llama", adapters=["chat", "code:0.5"], name="small", as_adapter="svd", rank=1)
    r = run("check", "small", "--samples", "2", "--json", code=1)
    data = json.loads(r.stdout)  # the numbers on stdout, the reason on stderr
    assert data["passed"] is False and data["adapter_error"] > 0.1
    err = r.stderr.strip().splitlines()
    assert err[0].startswith("Error: small@1 failed its check: max |difference|") and "x the tolerance" in err[0]
    assert err[1].startswith("Hint: --as-adapter svd is lossy") and len(err) == 2
    assert [c["passed"] for c in merged.get(ref="small").details["checks"]] == [False]


@pytest.mark.parametrize("args,message", [
    (["check", "llama"], "Error: llama@1 is a base: there is nothing to compare it with"),
    (["check", "assistant", "--samples", "0"], "Error: --samples must be at least 1, got 0"),
    (["check", "assistant", "--prompts", "missing.txt"], "Error: prompts file missing.txt does not exist"),
])
def test_bad_input_is_one_line_and_records_nothing(merged, args, message):
    r = run(*args, code=1)
    lines = r.stderr.strip().splitlines()
    assert lines[0] == message and lines[1].startswith("Hint: ") and len(lines) == 2
    assert "checks" not in merged.get(ref="assistant").details


def test_config_and_the_require_check_gates(merged):
    assert run("config", "get", "require-check").stdout.strip() == "false"
    assert run("config", "set", "require-check", "true").stdout.strip() == "require-check = true"
    assert json.loads(run("config", "get", "--json").stdout) == {"require-check": "true"}
    r = run("alias", "set", "assistant", "prod", "1", code=1)
    assert r.stderr.splitlines() == ["Error: assistant@1 has no check, and alias set assistant prod requires a passing "
                                     "one", "Hint: run: lorareg check assistant@1"]
    r = run("push", "assistant", "--repo", "alice/assistant", code=1)  # refused before the Hub is contacted
    assert "requires a passing one" in r.stderr and "lorareg check assistant@1" in r.stderr
    run("alias", "set", "assistant", "prod", "1", "--no-require-check")
    run("check", "assistant", "--samples", "2")
    assert run("alias", "set", "assistant", "canary", "1", "--require-check").stdout.strip() == "assistant@canary -> 1"
    r = run("config", "set", "require-check", "perhaps", code=1)
    assert r.stderr.startswith("Error: 'perhaps' is not true or false")


def test_help_and_readme_state_the_same_rule():
    help_text = " ".join(run("check", "--help").stdout.split())
    assert f"must be at most {FACTOR:g}x the difference rounding alone makes" in help_text
    readme = " ".join(README.read_text().split())
    assert "## Before you ship" in README.read_text()
    assert f"at most {FACTOR:g}x the difference rounding alone makes" in readme
    assert "push assistant --repo acme/assistant --require-check" in readme
