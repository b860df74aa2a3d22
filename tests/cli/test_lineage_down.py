"""``lorareg lineage REF --down`` draws a bounded page (issue 16): the newest versions made from
each one and a line saying how many more and how to see them all; ``--json`` holds the same
page unless ``--all``; what a version came from is always drawn whole."""

from __future__ import annotations

import json

import pytest

from lorareg.cli import cmd_merge
from tests.support.cli import run


@pytest.fixture
def five(reg, llama, llama_lora):
    """llama@1 and adapters a0@1 ... a4@1 trained on it (a4 is the newest)."""
    reg.add_base(path=llama, name="llama")
    for i in range(5):
        reg.add_adapter(path=llama_lora, base="llama", name=f"a{i}")
    return reg


def test_down_draws_the_newest_and_says_how_many_more(five, monkeypatch):
    monkeypatch.setattr(cmd_merge, "LINEAGE_CHILDREN", 2)
    lines = run("lineage", "llama", "--down").output.rstrip().splitlines()
    assert [line.split()[3] for line in lines[1:3]] == ["a4@1", "a3@1"]
    assert lines[-1].strip() == "… and 3 more (all: lorareg lineage llama@1 --down --all)"
    assert len(lines) == 4


def test_limit_and_all(five):
    assert "… and 1 more" in run("lineage", "llama", "--down", "--limit", "4").output
    everything = run("lineage", "llama", "--down", "--all").output
    assert "more" not in everything and len(everything.strip().splitlines()) == 6
    r = run("lineage", "llama", "--down", "--all", "--limit", "2", ok=False)
    assert r.exit_code == 2 and "give one of them" in r.output


def test_json_is_the_same_page_unless_all(five):
    page = json.loads(run("--json", "lineage", "llama", "--down", "--limit", "2").output)
    assert [n["ref"] for n in page["nodes"]] == ["llama@1", "a4@1", "a3@1"]
    assert page["more"] == {"llama@1": 3} and page["truncated"]
    whole = json.loads(run("--json", "lineage", "llama", "--down", "--all").output)
    assert len(whole["nodes"]) == 6 and whole["more"] == {} and not whole["truncated"]


def test_up_is_drawn_whole(five):
    five.merge(base="llama", adapters=["a0", "a1", "a2"], name="m", keep="recipe")
    up = json.loads(run("--json", "lineage", "m", "--limit", "1").output)
    assert {n["ref"] for n in up["nodes"]} == {"m@1", "llama@1", "a0@1", "a1@1", "a2@1"} and up["more"] == {}
