"""The rough edges a new user hit (issue 14), one test each: pipes, presentation, wording,
times, progress, and errors that help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from lorareg.cli import render
from tests.support.cli import run

EXE = Path(sys.executable).parent / "lorareg"


@pytest.fixture
def family(reg, llama, llama_lora, llama_lora2):
    """llama@1, adapters chat@1 and code@1, and one merge assistant@1 (chat + code x0.5)."""
    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=llama_lora, base="llama", name="chat")
    reg.add_adapter(path=llama_lora2, base="llama", name="code")
    reg.merge(base="llama", adapters=["chat", "code:0.5"], name="assistant", message="three skills")
    return reg


@pytest.fixture
def terminal(monkeypatch):
    """Render as on a terminal of the given width (CliRunner's stdout is not a tty)."""
    def at(columns: int) -> None:
        monkeypatch.setattr(render, "is_terminal", lambda: True)
        monkeypatch.setenv("COLUMNS", str(columns))
    return at


# -- pipes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["ls"], ["log"], ["show", "chat"], ["--json", "ls"]])
def test_closed_pipe_exits_quietly(family, lorareg_home, args):
    # The reader is gone before lorareg writes (what `| head -1` does to a longer output).
    env = dict(os.environ, LORAREG_HOME=str(lorareg_home))
    p = subprocess.Popen([str(EXE), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0 and err == "", err


def test_ls_into_head_in_a_shell(family, lorareg_home):
    for i in range(40):  # enough rows that head exits while ls is still writing
        family.set_tags(ref="chat@1", tags={f"k{i}": "v"})
    env = dict(os.environ, LORAREG_HOME=str(lorareg_home))
    out = subprocess.run(["bash", "-o", "pipefail", "-c", f"'{EXE}' ls | head -1; '{EXE}' log -n 1000 | head -2"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.splitlines()[0].startswith("ref")


# -- JSON -----------------------------------------------------------------------------------------
def test_json_before_the_verb(family):
    before = json.loads(run("--json", "ls").output)
    after = json.loads(run("ls", "--json").output)
    assert before == after and [i["ref"] for i in before][:1] == ["llama@1"]
    assert json.loads(run("--json", "show", "chat").output)["ref"] == "chat@1"


@pytest.mark.parametrize("args", [["show", "nosuch", "--json"], ["--json", "show", "nosuch"]])
def test_json_error_object(family, args):
    r = run(*args, ok=False)
    assert r.exit_code == 1
    err = json.loads(r.stdout)
    assert err["type"] == "NotFoundError" and "nosuch" in err["error"] and err["hint"]


# -- wording and presentation -----------------------------------------------------------------------
def test_diff_merge_against_adapter_is_refused(family):
    r = run("diff", "assistant@1", "chat", ok=False)
    assert r.exit_code == 1 and r.output.startswith("Error: ")
    assert "assistant@1 is a merged model and chat@1 is an adapter" in r.output
    assert "None" not in r.output and "nan" not in r.output


def test_diff_renders_adapter_changes_in_words(family):
    family.merge(base="llama", adapters=["chat"], name="assistant")
    out = run("diff", "assistant@1", "assistant@2").output
    assert "adapters: - code@1 x0.5" in out
    assert "{" not in out and "config_digest" not in out
    base_vs_merge = run("diff", "llama", "assistant@2").output  # both models: which tensors the merge changed
    assert "tensors that differ" in base_vs_merge and "q_proj" in base_vs_merge


def test_ls_no_match_is_not_an_empty_registry(family):
    r = run("ls", "--name", "asistant")
    assert "nothing registered yet" not in r.output
    assert "no versions match --name asistant (4 registered)" in r.output and "did you mean `assistant`?" in r.output


def test_empty_registry_says_how_to_start():
    assert "lorareg add base PATH" in run("ls").output


def test_show_has_no_python_reprs(reg, llama, llama_lora, llama_lora2):
    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=llama_lora, base="llama", name="chat")
    reg.add_adapter(path=llama_lora2, base="llama", name="code")
    reg.merge(base="llama", adapters=["chat", "code"], name="combo", as_adapter="cat")
    three = reg.merge(base="llama", adapters=["chat", "code:0.5"], name="assistant")
    reg.rollback_adapter(ref=three.ref, adapter="code", strategy="subtract")
    for ref in ("combo@1", "assistant@2", "chat", "llama"):
        out = run("show", ref).output
        assert "{'" not in out and "['" not in out, out  # no dict or list reprs
        assert "5368709120" not in out
    combo = run("show", "combo@1").output
    assert "5.4 GB (5 GiB)" in combo and "exact: relative error 0 in all" in combo
    sub = run("show", "assistant@2").output
    assert "ulp of the merged weights (the figure to judge)" in sub and "subtracted" in sub


def test_refs_are_never_cut_at_80_columns(family, terminal, reg, llama):
    reg.add_base(path=llama, name="big-llama-instruct-2026-long-name", reference=True)
    terminal(80)
    out = run("ls").output
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), out
    for ref in ("big-llama-instruct-2026-long-name@1", "assistant@1", "chat@1", "code@1"):
        assert any(ref in line.split() for line in lines), (ref, out)
    assert "…" not in out
    header = lines[0].split()
    assert "aliases" not in header  # an empty column takes no room
    terminal(160)
    wide = run("ls").output
    assert "created" in wide.splitlines()[0] and datetime.now().astimezone().tzname() in wide


def test_ls_shows_output_kind_and_how_made(family):
    family.merge(base="llama", adapters=["chat", "code"], name="combo", as_adapter="cat")
    family.rollback_adapter(ref="assistant@1", adapter="code")
    family.rollback_adapter(ref="assistant@1", adapter="chat", strategy="subtract")
    rows = {line.split()[0]: line.split()[1] for line in run("ls", "merges").output.splitlines()[1:]}
    assert rows == {"assistant@1": "merge", "assistant@2": "rollback", "assistant@3": "subtract",
                    "combo@1": "merge->adapter"}
    assert "merged adapter" in run("show", "combo").output


def test_ls_lists_bases_first(family):
    assert [i["ref"] for i in json.loads(run("ls", "--json").output)] == ["llama@1", "chat@1", "code@1",
                                                                           "assistant@1"]


def test_rollback_of_the_only_adapter_is_refused(family):
    family.merge(base="llama", adapters=["chat"], name="solo")
    r = run("rollback", "solo@1", "--adapter", "chat", ok=False)
    assert r.exit_code == 1 and "already registered" in r.output and "llama@1" in r.output
    assert [i["ref"] for i in json.loads(run("ls", "--name", "solo", "--json").output)] == ["solo@1"]


def test_merge_says_when_current_is_pinned(family):
    run("rollback", "assistant", "--to", "1")  # pins assistant@current
    out = run("merge", "llama", "chat", "--name", "assistant").output
    assert "merged assistant@2" in out
    assert "assistant@current still points at assistant@1" in out and "lorareg alias set assistant current 2" in out


def test_message_in_show_and_json_and_added_to_the_rollback_note(family):
    assert "three skills" in run("show", "assistant@1").output
    assert json.loads(run("show", "assistant@1", "--json").output)["message"] == "three skills"
    run("rollback", "assistant@1", "--adapter", "code", "-m", "code regressed")
    shown = json.loads(run("show", "assistant@2", "--json").output)
    assert shown["message"] == "rollback: removed code@1; code regressed"
    assert json.loads(run("log", "--json").output)[0]["action"] == "rollback"


def test_times_are_labelled_and_local_unless_utc(family, monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30, no daylight saving
    import time

    time.tzset()
    try:
        local = run("log", "-n", "1").output.splitlines()[1]
        utc = run("--utc", "log", "-n", "1").output.splitlines()[1]
        assert local.split()[2] == "IST" and utc.split()[2] == "UTC"
        t_local = datetime.strptime(" ".join(local.split()[:2]), "%Y-%m-%d %H:%M:%S")
        t_utc = datetime.strptime(" ".join(utc.split()[:2]), "%Y-%m-%d %H:%M:%S")
        assert t_local - t_utc == timedelta(hours=5, minutes=30)
        assert "IST" in run("show", "chat").output and " UTC " in run("show", "chat", "--utc").output
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_alias_history_at_reads_local_time_unless_utc(family, monkeypatch):
    import time

    run("alias", "set", "assistant", "prod", "1")
    moved = family.alias_history(name="assistant", alias="prod")[0].updated_at
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        local_after = (moved + timedelta(minutes=1)).astimezone().strftime("%Y-%m-%d %H:%M")
        utc_after = (moved + timedelta(minutes=1)).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")
        local_before = (moved - timedelta(minutes=2)).astimezone().strftime("%Y-%m-%d %H:%M")
        out = run("alias", "history", "assistant", "--at", local_after).output
        assert "assistant@prod" in out and ("EST" in out or "EDT" in out)
        assert "assistant@prod" in run("alias", "history", "assistant", "--at", utc_after, "--utc").output
        assert "no alias of assistant was live" in run("alias", "history", "assistant", "--at", local_before).output
        # the same wall-clock time read as UTC is 4-5 hours off: not yet live, or already live
        iso = run("alias", "history", "assistant", "--at", f"{utc_after}Z".replace(" ", "T"), "--json").output
        assert [a["version"] for a in json.loads(iso)] == [1]
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_small_wording(family, reg, llama, tmp_path):
    r = run("rollback", "chat", "--adapter", "code", ok=False)
    assert "'chat' is an adapter, not a merge" in r.output  # never "a adapter"
    assert "chat@1 is an adapter; only merges" in run("gc", "--evict", "chat", ok=False).output
    assert "would free" in run("gc", "--dry-run").output and "nothing was changed" in run("gc", "--dry-run").output
    evicting = run("gc", "--dry-run", "--evict", "assistant@1").output
    assert "would evict assistant@1" in evicting and "  evicted" not in evicting


def test_default_name_skips_generic_folder_names(reg, llama, tmp_path):
    import shutil

    folder = tmp_path / "Llama-Tiny" / "model"
    shutil.copytree(llama, folder)
    assert json.loads(run("add", "base", folder, "--json").output)["ref"] == "llama-tiny@1"


def test_note_when_content_is_registered_under_another_name(family, llama):
    out = run("add", "base", llama, "--name", "llama-copy").output
    assert "added llama-copy@1" in out and "also registered as llama@1" in out
    assert json.loads(run("add", "base", llama, "--name", "llama-copy", "--json").output)["same_content"] == ["llama@1"]


@pytest.mark.parametrize("typo,suggestion", [("chta", "chat"), ("asistant@1", "assistant"), ("lama", "llama")])
def test_unknown_reference_suggests_closest_name(family, typo, suggestion):
    r = run("show", typo, ok=False)
    assert r.exit_code == 1 and f"did you mean `{suggestion}`?" in r.output


def test_unknown_alias_and_version_say_what_exists(family):
    run("alias", "set", "assistant", "prod", "1")
    assert "did you mean assistant@prod?" in run("show", "assistant@prd", ok=False).output
    assert "assistant has versions 1 to 1, not 7" in run("show", "assistant@7", ok=False).output


def test_progress_bar_phases_have_totals(monkeypatch):
    from rich.progress import Progress

    from lorareg.cli import progress

    seen = []
    real_update = Progress.update

    def spy(self, task_id, **kw):
        seen.append(kw)
        return real_update(self, task_id, **kw)

    monkeypatch.setattr(Progress, "update", spy)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with progress.progress("hashing", total=100, phases=("hashing", "copying into the store")) as advance:
        for _ in range(20):
            advance(10)
    shown = [(kw["description"], kw["completed"]) for kw in seen if "description" in kw]
    assert shown[0] == ("hashing", 10) and ("hashing", 90) in shown
    assert ("copying into the store", 100) == shown[-1]
    assert all(done <= 100 for _, done in shown)  # never counts past the folder's size
    with progress.step_progress("merging") as update:
        update(3, 10, "w")
    assert seen[-1]["total"] == 10 and seen[-1]["count"] == "3/10 tensors"


def test_folder_bytes_counts_what_the_digest_reads(llama):
    from lorareg.cli.progress import folder_bytes

    expected = sum(p.stat().st_size for p in Path(llama).rglob("*") if p.is_file() and not p.name.startswith("."))
    assert folder_bytes(llama) == expected > 0


def test_json_failure_stays_one_document(family, lorareg_home):
    sha = family.get(ref="chat@1").files["adapter_model.safetensors"].sha256
    blob = lorareg_home / "blobs" / "sha256" / sha[:2] / sha[2:]
    os.chmod(blob, 0o644)
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    r = run("verify", "--all", "--json", ok=False)
    assert r.exit_code == 1
    results = json.loads(r.stdout)  # one parsable document: the results, with ok false
    assert any(not x["ok"] and x["ref"] == "chat@1" for x in results)
