"""``lorareg ls`` pages (issue 16): on a terminal one page of the newest versions and a line
saying how many more and how to see them; piped or ``--json``, every version in the usual order
unless ``--limit`` is given, so scripts that read it keep working."""

from __future__ import annotations

import json

import pytest

from lorareg.cli import cmd_registry, render
from tests.support.cli import run


def refs(output: str) -> list[str]:
    """The refs of ``ls``'s rows: the first word of each line under the header (and its rule, on a terminal)."""
    return [line.split()[0] for line in output.splitlines()[1:]
            if line.strip() and "more:" not in line and not line.startswith("─")]


@pytest.fixture
def five(reg, llama, llama_lora):
    """llama@1, then adapters a0@1 ... a3@1, registered in that order (a3 is the newest)."""
    reg.add_base(path=llama, name="llama")
    for i in range(4):
        reg.add_adapter(path=llama_lora, base="llama", name=f"a{i}")
    return reg


@pytest.fixture
def terminal(monkeypatch):
    monkeypatch.setattr(render, "is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(cmd_registry, "LS_PAGE", 2)  # a page of 2, so five versions make three pages


def test_terminal_shows_a_page_newest_first_and_how_to_see_more(five, terminal):
    first = run("ls").output
    assert refs(first) == ["a3@1", "a2@1"]
    assert first.rstrip().splitlines()[-1] == "3 more: lorareg ls --after a2@1"  # a cursor: the last ref shown
    second = run("ls", "--after", "a2@1").output
    assert refs(second) == ["a1@1", "a0@1"]
    assert second.rstrip().splitlines()[-1] == "1 more: lorareg ls --after a0@1"
    last = run("ls", "--after", "a0@1").output
    assert refs(last) == ["llama@1"] and "more" not in last
    assert refs(run("ls", "--offset", "2").output) == ["a1@1", "a0@1"]  # by position still works


def test_terminal_sorted_by_a_key_pages_by_offset(five, terminal):
    out = run("ls", "--sort", "name").output
    assert refs(out) == ["a0@1", "a1@1"]
    assert out.rstrip().splitlines()[-1] == "3 more: lorareg ls --sort name --offset 2"


def test_terminal_more_line_keeps_the_filters(five, terminal):
    out = run("ls", "adapters", "--limit", "1", "--where", "loss<1", ok=False)
    assert out.exit_code == 1  # no version logged loss: an error, not an empty page
    five.log_metrics(ref="a0", metrics={"loss": 0.1})
    five.log_metrics(ref="a2", metrics={"loss": 0.2})
    out = run("ls", "adapters", "--limit", "1", "--where", "loss<1").output
    assert refs(out) == ["a2@1"]
    assert out.rstrip().splitlines()[-1] == "1 more: lorareg ls adapters --where 'loss<1' --limit 1 --after a2@1"
    assert refs(run("ls", "adapter", "--where", "loss<1", "--limit", "1", "--after", "a2@1").output) == ["a0@1"]
    assert refs(run("ls", "adapter", "--where", "loss<1", "--limit", "1", "--offset", "1").output) == ["a0@1"]


def test_piped_and_json_list_everything_in_kind_order(five):
    piped = run("ls").output
    assert refs(piped) == ["llama@1", "a0@1", "a1@1", "a2@1", "a3@1"] and "more" not in piped
    assert [i["ref"] for i in json.loads(run("--json", "ls").output)] == refs(piped)


def test_json_on_a_terminal_is_not_paged(five, terminal):
    assert len(json.loads(run("--json", "ls").output)) == 5


def test_limit_and_offset_page_a_pipe(five):
    assert refs(run("ls", "--limit", "2", "--offset", "1").output) == ["a0@1", "a1@1"]
    assert [i["ref"] for i in json.loads(run("ls", "--json", "--limit", "2", "--offset", "3").output)] == [
        "a2@1", "a3@1"]


def test_offset_past_the_end_says_so(five):
    r = run("ls", "--offset", "10")
    assert r.output.strip() == "no versions from offset 10 on (5 match)"


def test_negative_offset_is_refused(five):
    r = run("ls", "--offset", "-1", ok=False)
    assert r.exit_code != 0 and "--offset" in r.output


def test_after_pages_a_pipe_newest_first(five):
    assert refs(run("ls", "--after", "a2@1").output) == ["a1@1", "a0@1", "llama@1"]
    assert refs(run("ls", "--after", "a2@1", "--limit", "1", "--offset", "1").output) == ["a0@1"]
    assert [i["ref"] for i in json.loads(run("--json", "ls", "--after", "a1@1").output)] == ["a0@1", "llama@1"]


def test_after_the_oldest_says_so(five):
    assert run("ls", "--after", "llama@1").output.strip() == "no versions older than llama@1 (5 match)"


def test_after_with_another_sort_is_one_line(five):
    r = run("ls", "--after", "a2@1", "--sort", "name", ok=False)
    assert r.exit_code == 1
    assert r.output.splitlines()[0] == "Error: a cursor (--after) pages newest first; it cannot follow --sort name"
    assert "--offset" in r.output.splitlines()[1]
    r = run("ls", "--after", "nosuch@1", ok=False)
    assert r.exit_code == 1 and "unknown reference 'nosuch@1'" in r.output
