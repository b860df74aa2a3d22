"""Tracking from the shell (issue 14): tag, untag, metrics, params, and ls --where/--tag/--sort."""

from __future__ import annotations

import json

import pytest

from lorareg.cli import render
from tests.support.cli import run


def js(*args):
    return json.loads(run(*args, "--json").output)


@pytest.fixture
def runs(reg, llama, tmp_path):
    """Four adapters of one base with params, metric curves and tags, logged through the CLI."""
    from tests.support.factories import make_lora

    reg.add_base(path=llama, name="llama")
    losses = {"a": [2.0, 1.1, 0.62], "b": [1.8, 0.9, 0.41], "c": [1.5, 0.7, 0.35], "d": None}
    for i, (name, curve) in enumerate(losses.items()):
        reg.add_adapter(path=make_lora(llama, tmp_path / name, seed=40 + i), base="llama", name=name)
        run("params", name, f"learning_rate={(i + 1)}e-4", f"optim={'sgd' if name == 'a' else 'adamw'}")
        for step, loss in zip((100, 200, 300), curve or ()):
            run("metrics", name, f"eval_loss={loss}", "--step", step)
    run("tag", "b", "stage=candidate")
    run("tag", "c", "stage=candidate", "owner=ml")
    run("tag", "a", "stage=archived")
    return reg


def test_tag_and_untag(runs):
    assert js("tag", "a", "team=nlp")["tags"] == {"stage": "archived", "team": "nlp"}
    assert "untagged a@1: team=nlp" in run("untag", "a", "stage").output
    r = run("untag", "a", "nosuch", ok=False)
    assert r.exit_code == 1 and "a@1 has no tag 'nosuch' (its tags: team)" in r.output
    assert runs.tracked(ref="a").tags == {"team": "nlp"}  # nothing half-removed
    assert run("tag", "a", "broken", ok=False).exit_code == 2  # not KEY=VALUE: a usage error


def test_metrics_table_json_and_sparkline(runs, monkeypatch):
    out = run("metrics", "b").output
    assert out.splitlines()[0].split() == ["metric", "latest", "min", "max", "points", "steps"]
    assert out.splitlines()[1].split() == ["eval_loss", "0.41", "0.41", "1.8", "3", "100-300"]
    got = js("metrics", "b")
    assert got["metrics"] == {"eval_loss": 0.41} and [p["step"] for p in got["history"]] == [100, 200, 300]
    monkeypatch.setattr(render, "is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "100")
    assert "█▃▁" in run("metrics", "b").output  # falling loss, drawn over the steps
    assert "no metrics" in run("metrics", "d").output
    assert run("metrics", "b", "eval_loss=abc", ok=False).exit_code == 2


def test_params_show_and_set(runs):
    assert js("params", "a")["params"] == {"learning_rate": 0.0001, "optim": "sgd"}
    run("params", "a", "lora_r=16", "packing=true", "note=first try")
    assert js("params", "a")["params"] == {"learning_rate": 0.0001, "optim": "sgd", "lora_r": 16, "packing": True,
                                           "note": "first try"}
    assert "learning_rate  0.0001" in run("params", "a").output


def test_ls_where_tag_sort(runs):
    hits = js("ls", "--where", "eval_loss<0.5", "--tag", "stage=candidate", "--sort", "eval_loss")
    assert [h["ref"] for h in hits] == ["c@1", "b@1"]
    assert [h["values"]["eval_loss"] for h in hits] == [0.35, 0.41]
    assert [h["ref"] for h in js("ls", "adapters", "--sort", "-eval_loss")] == ["a@1", "b@1", "c@1", "d@1"]  # d has none: last
    assert [h["ref"] for h in js("ls", "--where", "param.learning_rate>=3e-4")] == ["c@1", "d@1"]
    assert [h["ref"] for h in js("ls", "--where", "optim=sgd")] == ["a@1"]
    assert [h["ref"] for h in js("ls", "--where", "optim!=sgd", "--where", "eval_loss>0.4")] == ["b@1"]
    assert [h["ref"] for h in js("ls", "--tag", "owner")] == ["c@1"]
    text = run("ls", "--where", "eval_loss<0.5", "--sort", "eval_loss").output
    header = text.splitlines()[0].split()
    assert header.index("eval_loss") == header.index("summary") + 1  # the value judged by, next to the summary


def test_ls_latest_metric_is_the_highest_step(runs):
    run("metrics", "a", "eval_loss=0.1", "--step", "50")  # logged last, but an earlier step
    assert [h["ref"] for h in js("ls", "--where", "eval_loss<0.2")] == []


@pytest.mark.parametrize("expr,needle", [("eval_loss<<1", "eval_loss"), ("nosuch<1", "no version has a metric or param"),
                                         ("eval_los<1", "did you mean `eval_loss`?"), ("eval_loss<abc", "a number"),
                                         ("optim>adam", "text compares only with = and !="), ("=1", "cannot read")])
def test_ls_where_bad_input(runs, expr, needle):
    r = run("ls", "--where", expr, ok=False)
    assert r.exit_code == 1 and needle in r.output, r.output


def test_filtering_happens_in_sql(runs, monkeypatch):
    """One SELECT for the listing whatever the filters (not a query per version to judge it)."""
    from sqlalchemy import event

    from lorareg.registry import listing

    counted = []
    real = listing.version_infos

    def no_info(session, home, rows, **kw):  # count rows turned into results: only the matches
        counted.extend(row.name for row in rows)
        return real(session, home, rows, **kw)

    monkeypatch.setattr(listing, "version_infos", no_info)
    hits = runs.query(where=["eval_loss<0.5"], tags={"stage": "candidate"}, sort="eval_loss")
    assert [h.ref for h in hits] == ["c@1", "b@1"] and counted == ["c", "b"]
    selects = []
    engine = runs._ctx.db
    listener = lambda *a: selects.append(a[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        monkeypatch.setattr(listing, "version_infos", lambda session, home, rows, **kw: [None] * len(rows))
        runs.query(where=["eval_loss<0.5"], tags={"stage": "candidate"}, sort="eval_loss")
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    listing_selects = [s for s in selects if "FROM versions" in s and "metrics" in s]
    assert len(listing_selects) == 1, selects
