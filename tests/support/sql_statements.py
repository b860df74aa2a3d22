"""Counting the SQL a registry runs: the scale tests assert a read costs the same statements
on a registry of any size (no query per row)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import event


@contextlib.contextmanager
def statements(reg) -> Iterator[list[str]]:
    """The statements ``reg``'s database runs inside the block, in order."""
    seen: list[str] = []

    def count(conn, cursor, statement, *args):
        seen.append(statement)

    event.listen(reg._ctx.db, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(reg._ctx.db, "before_cursor_execute", count)


def statement_counts(reg, reads: dict) -> dict[str, int]:
    """How many statements each read (label -> callable) runs, once warm: the first statements
    of a session differ (no cached compiles)."""
    out = {}
    for label, read in reads.items():
        read()
        with statements(reg) as seen:
            read()
        out[label] = len(seen)
    return out
