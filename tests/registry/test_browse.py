"""The reads the web view needs: ``browse`` (filtered, sorted pages counted in the database),
``metric_keys``, ``alias_events``, ``model_card`` and ``lineage(max_nodes=)``."""

from __future__ import annotations

import pytest

from lorareg.errors import InvalidNameError, LoraregError


@pytest.fixture
def six(reg, llama, llama_lora, llama_lora2):
    """A base and five adapters (two names share content: registering under a new name is allowed)."""
    reg.add_base(path=llama, name="llama")
    for name, path in (("chat", llama_lora), ("code", llama_lora2), ("chat_v2", llama_lora), ("mathx", llama_lora2),
                       ("alpha", llama_lora)):
        reg.add_adapter(path=path, base="llama", name=name)
    return reg


def refs(page):
    return [i.ref for i in page.items]


def test_browse_filters_and_counts(six):
    reg = six
    everything = reg.browse(limit=100)
    assert everything.total == 6 == reg.count()
    assert refs(everything) == [i.ref for i in reg.ls()]  # the default order is ls's
    assert refs(reg.browse(kind="base")) == ["llama@1"]
    assert refs(reg.browse(name="chat")) == ["chat@1"]
    assert refs(reg.browse(contains="cha")) == ["chat@1", "chat_v2@1"]
    assert refs(reg.browse(contains="_")) == ["chat_v2@1"]  # LIKE wildcards are escaped, not wildcards
    assert reg.browse(contains="%").total == 0
    reg.set_tags(ref="code", tags={"stage": "candidate"})
    reg.set_tags(ref="mathx", tags={"stage": "prod", "team": "x"})
    assert refs(reg.browse(tags={"stage": None})) == ["code@1", "mathx@1"]
    assert refs(reg.browse(tags={"stage": "prod"})) == ["mathx@1"]
    assert refs(reg.browse(tags={"stage": "prod", "team": "y"})) == []
    page = reg.browse(tags={"stage": None})
    assert page.tags == {"code@1": {"stage": "candidate"}, "mathx@1": {"stage": "prod", "team": "x"}}
    reg.set_alias(name="code", alias="prod", version=1)
    reg.set_alias(name="alpha", alias="prod", version=1)
    assert refs(reg.browse(alias="prod")) == ["alpha@1", "code@1"]
    assert refs(reg.browse(alias="prod", kind="base")) == []


def test_browse_pages_partition_the_result(six):
    reg = six
    seen = []
    for offset in range(0, 6, 4):
        page = reg.browse(limit=4, offset=offset)
        assert page.total == 6 and page.offset == offset and page.limit == 4
        seen += refs(page)
    assert seen == refs(reg.browse(limit=100))
    assert refs(reg.browse(offset=6)) == []


def test_browse_orders(six):
    reg = six
    assert refs(reg.browse(order_by="name")) == ["alpha@1", "chat@1", "chat_v2@1", "code@1", "llama@1", "mathx@1"]
    assert refs(reg.browse(order_by="name", descending=True))[0] == "mathx@1"
    newest = refs(reg.browse(order_by="created", descending=True))
    assert newest[0] == "alpha@1" and newest[-1] == "llama@1"
    assert refs(reg.browse(order_by="size", descending=True))[0] == "llama@1"
    # the latest value as tracked() reports it: highest step; a re-logged step counts its last value
    reg.log_metrics(ref="chat", metrics={"loss": 9.0}, step=1)
    reg.log_metrics(ref="chat", metrics={"loss": 0.5}, step=5)
    reg.log_metrics(ref="code", metrics={"loss": 0.1}, step=7)
    reg.log_metrics(ref="code", metrics={"loss": 0.9}, step=7)
    reg.log_metrics(ref="alpha", metrics={"loss": 0.7})
    assert {r: reg.tracked(ref=r).metrics["loss"] for r in ("chat", "code", "alpha")} == \
        {"chat": 0.5, "code": 0.9, "alpha": 0.7}
    up = reg.browse(order_by="metric:loss")
    assert refs(up)[:3] == ["chat@1", "alpha@1", "code@1"]
    assert up.sort_values == {"chat@1": 0.5, "alpha@1": 0.7, "code@1": 0.9, "chat_v2@1": None, "llama@1": None,
                              "mathx@1": None}
    down = reg.browse(order_by="metric:loss", descending=True)
    assert refs(down)[:3] == ["code@1", "alpha@1", "chat@1"]
    assert set(refs(down)[3:]) == {"chat_v2@1", "llama@1", "mathx@1"}  # without the metric: last either way
    assert reg.metric_keys() == ["loss"]


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"limit": 1001}, {"offset": -1}, {"order_by": "loss"},
                                    {"order_by": "metric:"}, {"kind": "model"}])
def test_browse_refuses_bad_arguments(reg, kwargs):
    with pytest.raises(LoraregError):
        reg.browse(**kwargs)


def test_browse_checks_names(reg):
    with pytest.raises(InvalidNameError):
        reg.browse(name="Bad/Name")
    with pytest.raises(InvalidNameError):
        reg.browse(alias="1x")


def test_alias_events_say_who_and_why(reg, llama, llama_lora, monkeypatch):
    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=llama_lora, base="llama", name="chat")
    reg.add_adapter(path=llama_lora, base="llama", name="other")
    monkeypatch.setenv("LORAREG_USER", "ana")
    reg.set_alias(name="chat", alias="prod", version=1)
    monkeypatch.setenv("LORAREG_USER", "bo")
    reg.rollback_alias(name="chat", to=1, alias="prod", message="v2 regressed")
    reg.remove_alias(name="chat", alias="prod")
    reg.set_alias(name="other", alias="prod", version=1)
    moves = reg.alias_events(name="chat")
    assert [(e.action, e.user, e.ref) for e in moves] == [("alias-rm", "bo", "chat@prod"), ("alias", "bo", "chat@prod"),
                                                          ("alias", "ana", "chat@prod")]
    assert moves[1].args["rollback"] is True and moves[1].args["message"] == "v2 regressed"
    assert "rollback" not in moves[2].args and moves[2].args["version"] == 1
    assert moves[0].args["previous"] == 1
    assert [e.ref for e in reg.alias_events()][0] == "other@prod"
    assert len(reg.alias_events(limit=2)) == 2


def test_model_card_reads_only_the_store(reg, llama, llama_lora, llama_lora2):
    reg.add_base(path=llama, name="llama")
    chat = reg.add_adapter(path=llama_lora, base="llama", name="chat")
    assert "README.md" in chat.files
    card = reg.model_card(ref="chat")
    assert card == (llama_lora / "README.md").read_text()
    reg.add_adapter(path=llama_lora2, base="llama", name="code")
    merged = reg.merge(base="llama", adapters=["chat", "code"], name="m", keep="recipe")
    assert not merged.stored and reg.model_card(ref=merged.ref) is None
    with_files = reg.merge(base="llama", adapters=["chat"], name="m2")
    assert "lorareg" in reg.model_card(ref=with_files.ref)


def test_lineage_max_nodes(reg, llama, llama_lora):
    reg.add_base(path=llama, name="llama")
    for i in range(5):
        reg.add_adapter(path=llama_lora, base="llama", name=f"a{i}")
    full = reg.lineage(ref="llama", down=True)
    assert len(full.nodes) == 6 and len(full.edges) == 5 and not full.truncated
    cut = reg.lineage(ref="llama", down=True, max_nodes=3)
    assert [n.ref for n in cut.nodes] == ["llama@1", "a0@1", "a1@1"] and cut.truncated
    assert {(e.src, e.dst) for e in cut.edges} == {("a0@1", "llama@1"), ("a1@1", "llama@1")}
    up = reg.lineage(ref="a3", max_nodes=2)
    assert [n.ref for n in up.nodes] == ["a3@1", "llama@1"] and not up.truncated
