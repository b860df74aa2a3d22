"""Registry reads at scale (issue 16): listing a page costs the same number of SQL statements
however many versions are listed, the batched rows say exactly what the per-row ones said, and
the lookups that must not scan a table have their indexes."""

from __future__ import annotations


import pytest
from sqlalchemy import text

from lorareg.registry import lookup
from lorareg.registry import models as m
from tests.support.sql_statements import statement_counts
from lorareg.registry.version_info import version_info, version_infos


@pytest.fixture
def family(reg, llama, llama_lora, llama_lora2):
    """llama@1, adapters chat@1 and code@1, a merge assistant@1 (with an alias, a tag, a metric)
    and its rollback assistant@2 (whose parent is assistant@1)."""
    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=llama_lora, base="llama", name="chat")
    reg.add_adapter(path=llama_lora2, base="llama", name="code")
    reg.merge(base="llama", adapters=["chat", "code:0.5"], name="assistant", message="two skills")
    reg.rollback_adapter(ref="assistant@1", adapter="code")
    reg.set_alias(name="assistant", alias="prod", version=1, require_check=False)
    reg.set_tags(ref="chat", tags={"stage": "candidate"})
    reg.log_metrics(ref="chat", metrics={"loss": 0.5}, step=1)
    return reg


def _more_adapters(reg, path, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        reg.add_adapter(path=path, base="llama", name=f"extra{i:03d}")


def _costs(reg) -> dict[str, int]:
    """SQL statements each listing runs, and how many rows it returned."""
    reads = {
        "ls": lambda: reg.ls(),
        "query": lambda: reg.query(),
        "query --where": lambda: reg.query(where=["loss<1"], tags={"stage": None}),
        "browse": lambda: reg.browse(limit=100),
        "search": lambda: reg.search(),
        "lineage down": lambda: reg.lineage(ref="llama", down=True),
    }
    return statement_counts(reg, reads)


def test_listing_costs_the_same_statements_for_5_and_25_versions(family, llama_lora):
    small = _costs(family)
    assert len(family.ls()) == 5
    _more_adapters(family, llama_lora, 20)
    assert len(family.ls()) == 25 and len(family.search()) == 25
    assert _costs(family) == small  # nothing is read per row


def test_batched_infos_say_what_one_row_at_a_time_says(family):
    with family._ctx.session() as session:
        rows = lookup.versions(session, removed=True)
        assert {r.kind for r in rows} == {"base", "adapter", "merge"}
        for with_files in (False, True):
            batched = version_infos(session, family._ctx.home, rows, with_files=with_files)
            assert batched == [version_info(session, family._ctx.home, r, with_files=with_files) for r in rows]
    by_ref = {i.ref: i for i in family.ls()}
    assert by_ref["chat@1"].details["base"] == "llama@1"
    assert by_ref["assistant@2"].details["parent"] == "assistant@1"
    assert family.get(ref="chat@1").files  # show still lists files
    assert by_ref["chat@1"].files == {}


def test_lineage_keeps_its_graph(family):
    up = family.lineage(ref="assistant@2")
    assert [n.ref for n in up.nodes] == ["assistant@2", "llama@1", "chat@1", "assistant@1", "code@1"]
    assert [(e.src, e.dst, e.role) for e in up.edges] == [
        ("assistant@2", "llama@1", "base"), ("assistant@2", "chat@1", "adapter"),
        ("assistant@2", "assistant@1", "parent"), ("chat@1", "llama@1", "trained_on"),
        ("assistant@1", "llama@1", "base"), ("assistant@1", "chat@1", "adapter"),
        ("assistant@1", "code@1", "adapter"), ("code@1", "llama@1", "trained_on")]
    down = family.lineage(ref="llama", down=True)
    assert {n.ref for n in down.nodes} == {"llama@1", "chat@1", "code@1", "assistant@1", "assistant@2"}
    capped = family.lineage(ref="llama", down=True, max_nodes=2)
    assert len(capped.nodes) == 2 and capped.truncated


@pytest.mark.parametrize("sql, index", [
    ("SELECT id FROM versions WHERE parent_id = 1", "ix_versions_parent_id"),
    ("SELECT alias FROM aliases WHERE version_id = 1", "ix_aliases_version_id"),
    ("SELECT id FROM versions ORDER BY created_at DESC LIMIT 50", "ix_versions_listed"),
    ("SELECT id FROM events WHERE ref = 'chat' OR (ref >= 'chat@' AND ref < 'chatA') ORDER BY id DESC LIMIT 50",
     "ix_events_ref"),
])
def test_lookups_use_their_index(reg, sql, index):
    with reg._ctx.db.connect() as conn:
        plan = " ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
    assert index in plan, plan


def test_log_of_a_name_is_only_that_name(reg, llama, llama_lora):
    reg.add_base(path=llama, name="my_x")
    reg.add_base(path=llama, name="my-x")
    reg.add_adapter(path=llama_lora, base="my_x", name="my_xa")
    assert {e.ref.partition("@")[0] for e in reg.log(ref="my_x")} == {"my_x"}  # not my-x ("_"), not my_xa
