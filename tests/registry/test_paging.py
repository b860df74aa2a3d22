"""Paging a large registry (issue 16): a cursor (``after``: a ref) that returns every version
exactly once while versions are added between pages, a bounded ``lineage --down`` that says
how many it left out, and reads whose SQL statement count does not grow with the registry."""

from __future__ import annotations


import pytest
from sqlalchemy import text, update

from lorareg.errors import LoraregError
from lorareg.registry import models as m
from tests.support.sql_statements import statement_counts


def _add(reg, path, names) -> None:
    for name in names:
        reg.add_adapter(path=path, base="llama", name=name)


@pytest.fixture
def seven(reg, llama, llama_lora):
    """llama@1 then adapters a0@1 ... a5@1, in that order (a5 is the newest)."""
    reg.add_base(path=llama, name="llama")
    _add(reg, llama_lora, [f"a{i}" for i in range(6)])
    return reg


def _pages(read, limit: int, between=lambda: None) -> list[list[str]]:
    """Every page ``read(after, limit)`` gives, following the cursor (the last ref of each page)."""
    pages, after = [], None
    while True:
        page = read(after, limit)
        if not page:
            return pages
        pages.append(page)
        after = page[-1]
        between()


def test_cursor_returns_every_version_once_while_versions_are_added(seven, llama_lora):
    before = [i.ref for i in seven.query(sort="-created")]
    assert before == ["a5@1", "a4@1", "a3@1", "a2@1", "a1@1", "a0@1", "llama@1"]
    added = iter(f"new{i}" for i in range(10))
    pages = _pages(lambda after, n: [h.ref for h in seven.query(sort="-created", after=after, limit=n)], 2,
                   between=lambda: _add(seven, llama_lora, [next(added)]))
    assert [r for p in pages for r in p] == before  # each once, in order; the new ones are before the cursor
    assert len(seven.query()) == 7 + len(pages)
    # By offset the same loop repeats versions: each one added shifts the rest down a place.
    by_offset = [h.ref for k in range(4) for h in seven.query(sort="-created", limit=2, offset=2 * k)
                 if not _add(seven, llama_lora, [f"late{k}"])]
    assert len(by_offset) != len(set(by_offset))


def test_cursor_orders_versions_registered_in_the_same_instant_by_id(seven):
    with seven._ctx.session() as s:  # one clock tick for all: only the id tells them apart
        s.exec(update(m.Version).values(created_at=s.get(m.Version, 1).created_at))
        s.commit()
    first = [h.ref for h in seven.query(sort="-created", limit=3)]  # ls(after=REF): the pages after the first
    pages = [first] + _pages(lambda after, n: [i.ref for i in seven.ls(after=after or first[-1], limit=n)], 3)
    assert [r for p in pages for r in p] == ["a5@1", "a4@1", "a3@1", "a2@1", "a1@1", "a0@1", "llama@1"]
    assert [h.ref for h in seven.query(sort="created", descending=True, limit=3)] == pages[0]


def test_cursor_keeps_filters_and_counts_what_is_left(seven):
    seven.log_metrics(ref="a1", metrics={"loss": 0.1})
    seven.log_metrics(ref="a4", metrics={"loss": 0.4})
    assert [h.ref for h in seven.query(where=["loss<1"], after="a5@1")] == ["a4@1", "a1@1"]
    assert [h.ref for h in seven.query(kind="adapter", after="a2@1")] == ["a1@1", "a0@1"]
    assert seven.count(after="a2@1") == 3 and seven.count(kind="adapter", after="a2@1") == 2
    assert seven.count(where=["loss<1"], after="a4@1") == 1
    assert seven.query(after="llama@1") == [] and seven.count(after="llama@1") == 0


def test_cursor_past_a_removed_version_still_pages(seven):
    seven.remove(refs=["a3@1"])
    assert [h.ref for h in seven.query(after="a3@1", limit=2)] == ["a2@1", "a1@1"]


def test_cursor_refuses_another_sort_in_one_line(seven):
    with pytest.raises(LoraregError, match="newest first") as err:
        seven.query(sort="name", after="a3@1")
    assert "--offset" in err.value.hint
    assert [h.ref for h in seven.query(sort="-created", after="a3@1", limit=1)] == ["a2@1"]


def test_bounded_lineage_keeps_the_newest_and_says_how_many_more(seven):
    seven.merge(base="llama", adapters=["a0"], name="m", keep="recipe")
    g = seven.lineage(ref="llama", down=True, per_node=2)
    assert [n.ref for n in g.nodes] == ["llama@1", "m@1", "a5@1"]  # newest first, of every kind of link
    assert g.more == {"llama@1": 5} and g.truncated
    whole = seven.lineage(ref="llama", down=True)
    assert len(whole.nodes) == 8 and whole.more == {} and not whole.truncated
    a0 = seven.lineage(ref="a0", down=True, per_node=2)  # fewer than the bound: nothing left out
    assert [n.ref for n in a0.nodes] == ["a0@1", "m@1"] and a0.more == {} and not a0.truncated
    capped = seven.lineage(ref="llama", down=True, per_node=5, max_nodes=3)
    assert len(capped.nodes) == 3 and capped.more == {"llama@1": 5}


def _costs(reg) -> dict[str, int]:
    """SQL statements each read a user's command makes (ls page and its "N more", show, lineage, log)."""
    reads = {
        # pages whose rows are of the same kinds at both sizes (each kind on a page adds its tables' reads)
        "ls page": lambda: reg.query(kind="adapter", sort="-created", limit=3),
        "ls oldest": lambda: reg.query(sort="created", limit=3),
        "ls more": lambda: reg.count(after="a2@1"),
        "ls --after": lambda: reg.query(after="a2@1", limit=3),
        "ls piped": lambda: reg.ls(limit=3),
        "show merge": lambda: (reg.get(ref="m"), reg.tracked(ref="m")),
        "show adapter": lambda: (reg.get(ref="a3"), reg.tracked(ref="a3")),
        "lineage up": lambda: reg.lineage(ref="m"),
        "lineage down": lambda: reg.lineage(ref="llama", down=True, per_node=3, max_nodes=20),
        "log": lambda: reg.log(limit=5),
    }
    return statement_counts(reg, reads)


def test_statements_do_not_grow_with_the_registry(seven, llama_lora):
    seven.merge(base="llama", adapters=["a0", ("a1", 0.5)], name="m", keep="recipe")
    small = _costs(seven)
    _add(seven, llama_lora, [f"b{i}" for i in range(12)])
    assert len(seven.query()) == 20
    assert _costs(seven) == small


@pytest.mark.parametrize("sql", [
    "SELECT count(*) FROM versions WHERE removed_at IS NULL",
    "SELECT count(*) FROM versions WHERE removed_at IS NULL AND kind = 'adapter'",
    "SELECT id FROM versions WHERE created_at <= '2030-01-01' AND removed_at IS NULL "
    "ORDER BY created_at DESC, id DESC LIMIT 50",
])
def test_listing_reads_the_index_alone(reg, sql):
    with reg._ctx.db.connect() as conn:
        plan = " ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
    assert "COVERING INDEX ix_versions_listed" in plan, plan
