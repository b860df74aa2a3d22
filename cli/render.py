"""Rendering results: rich tables on a terminal, plain columns when piped, JSON with --json.

Tables are described by ``Column``s, so a command adds a column by adding one entry.  On a
terminal a table is fitted to the width: empty columns go, then columns in their ``drop``
order, then ``fold`` columns wrap; a ``keep`` column (a reference) is never cut.  Piped
output keeps every column, unfolded, for grep and awk."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import click

from lorareg.cli.progress import progress, step_progress  # noqa: F401  (commands reach bars through render)

GAP = 2  # spaces between columns, on a terminal and in plain output alike
FOLD_MIN = 16  # a folded column is never narrower than this
DROP_BEFORE_FOLD = 8  # columns this droppable go before a fold column wraps


@dataclass(frozen=True)
class Column:
    header: str
    keep: bool = False  # never dropped, never cut (references)
    drop: int = 0  # on a narrow terminal, higher numbers are dropped first; 0: kept as long as possible
    fold: bool = False  # may wrap onto several lines instead of being dropped (summaries, messages)
    wants: int = 0  # a fold column this narrow or less has columns dropped (those with a higher drop) first
    justify: str = "left"


# -- values -------------------------------------------------------------------------------------
def human_size(n: int | None, *, binary: bool = False, none: str = "-") -> str:
    """Decimal units (as files are listed); ``binary``: KiB, MiB, ... (as LORAREG_CACHE_MAX is read)."""
    if n is None:
        return none
    step, units = (1024, ("B", "KiB", "MiB", "GiB", "TiB")) if binary else (1000, ("B", "KB", "MB", "GB", "TB"))
    size = float(n)
    for unit in units:
        if size < step or unit == units[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= step
    return f"{n} B"


def short(digest: str | None, n: int = 12) -> str:
    if not digest:
        return "-"
    return digest.split(":", 1)[-1][:n]


def use_utc() -> bool:
    ctx = click.get_current_context(silent=True)
    obj = (ctx.find_root().obj if ctx is not None else None) or {}
    return bool(obj.get("utc")) or os.environ.get("LORAREG_UTC", "") not in ("", "0")


def when(dt: datetime | None, *, seconds: bool = False) -> str:
    """A time a person reads: local time with its zone's name, or UTC with ``--utc``."""
    if dt is None:
        return "-"
    if dt.tzinfo is None:  # rows read back without a zone are UTC
        dt = dt.replace(tzinfo=timezone.utc)
    dt = dt.astimezone(timezone.utc) if use_utc() else dt.astimezone()
    return dt.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M") + f" {dt.tzname() or dt.strftime('%z')}"


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 24) -> str:
    """Values (oldest first) as block characters; more values than ``width`` are sampled evenly."""
    if not values:
        return ""
    if len(values) > width:
        values = [values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]
    lo, hi = min(values), max(values)
    if hi == lo:
        return SPARKS[3] * len(values)
    return "".join(SPARKS[round((v - lo) / (hi - lo) * (len(SPARKS) - 1))] for v in values)


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


# -- terminal -----------------------------------------------------------------------------------
def is_terminal() -> bool:
    return sys.stdout.isatty()


def width() -> int:
    return shutil.get_terminal_size((100, 40)).columns


def _console():
    from rich.console import Console

    return Console(soft_wrap=False, width=width(), highlight=False)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def fit(columns: Sequence[Column], rows: Sequence[Sequence[str]], available: int) -> tuple[list[int], dict[int, int]]:
    """Which columns a terminal of ``available`` characters shows (their indexes), and the
    width each ``fold`` column gets."""
    natural = [max([len(c.header)] + [len(line) for r in rows for line in r[i].splitlines() or [""]])
               for i, c in enumerate(columns)]
    # A folded column wraps between words and is never narrower than its longest word: a
    # reference inside a summary is moved to the next line whole, not split.
    narrowest = [max([FOLD_MIN] + [len(w) for r in rows for w in r[i].split()]) for i in range(len(columns))]
    shown = [i for i, c in enumerate(columns) if c.keep or any(r[i] not in ("", "-") for r in rows)]

    def needed(idx: list[int], folded: bool) -> int:
        widths = [min(natural[i], narrowest[i]) if folded and columns[i].fold else natural[i] for i in idx]
        return sum(widths) + GAP * (len(idx) - 1)

    droppable = sorted((i for i in shown if not columns[i].keep and columns[i].drop > 0),
                       key=lambda i: -columns[i].drop)
    while droppable and columns[droppable[0]].drop >= DROP_BEFORE_FOLD and needed(shown, folded=False) > available:
        shown.remove(droppable.pop(0))  # a digest goes before any summary has to wrap
    while needed(shown, folded=True) > available and droppable:
        shown.remove(droppable.pop(0))
    for i in [i for i in shown if columns[i].fold and columns[i].wants]:
        # give a cramped fold column room by dropping what matters less than it
        wanted = min(natural[i], columns[i].wants)
        lesser = [j for j in droppable if j in shown and columns[j].drop > columns[i].drop]
        while lesser and available - (needed(shown, folded=False) - natural[i]) < wanted:
            shown.remove(lesser.pop(0))
    folds: dict[int, int] = {}
    spare = available - needed(shown, folded=False)
    if spare < 0:  # fold the foldable columns into what is left, widest first
        for i in sorted((i for i in shown if columns[i].fold), key=lambda i: -natural[i]):
            give = min(natural[i], max(narrowest[i], natural[i] + spare))
            spare += natural[i] - give
            folds[i] = give
    return shown, folds


_shown_blocks = 0  # titled blocks printed by this process: each after the first gets a blank line


def _block_start(title: str | None) -> None:
    global _shown_blocks
    if title:
        if _shown_blocks:
            click.echo()
        _shown_blocks += 1


def table(title: str | None, columns: Sequence[Column | str], rows: Iterable[Sequence[Any]]) -> None:
    columns = [c if isinstance(c, Column) else Column(c) for c in columns]
    rows = [[_text(v) for v in r] for r in rows]
    _block_start(title)
    if is_terminal():
        _rich_table(title, columns, rows)
        return
    if title:
        click.echo(title)
    widths = [max([len(c.header)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    sep = " " * GAP
    click.echo(sep.join(c.header.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for r in rows:
        click.echo(sep.join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def _rich_table(title: str | None, columns: list[Column], rows: list[list[str]]) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    shown, folds = fit(columns, rows, width())
    t = Table(title=escape(title) if title else None, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
              pad_edge=False, padding=(0, GAP // 2), header_style="bold", collapse_padding=True)
    for i in shown:
        c = columns[i]
        if i in folds:
            t.add_column(c.header, justify=c.justify, overflow="fold", width=folds[i])
        else:  # never cut: a reference or a date keeps every character
            t.add_column(c.header, justify=c.justify, no_wrap=True, overflow="ignore",
                         min_width=max([len(c.header)] + [len(r[i]) for r in rows]))
    for r in rows:
        t.add_row(*[Text(r[i]) for i in shown])  # Text: a message holding "[red]" is shown, not styled
    _console().print(t)


def key_values(title: str, pairs: Sequence[tuple[str, Any]]) -> None:
    """``key  value`` lines under a title; values fold on a terminal, never get cut."""
    pairs = [(k, _text(v)) for k, v in pairs]
    _block_start(title)
    if is_terminal():
        from rich.markup import escape
        from rich.table import Table
        from rich.text import Text

        t = Table(title=escape(title), title_justify="left", show_header=False, box=None, pad_edge=True,
                  padding=(0, GAP // 2), title_style="bold")
        t.add_column(style="bold", no_wrap=True)
        t.add_column(overflow="fold")
        for k, v in pairs:
            t.add_row(Text(k), Text(v))
        _console().print(t)
        return
    click.echo(title)
    key_width = max((len(k) for k, _ in pairs), default=0)
    for k, v in pairs:
        click.echo(f"  {k.ljust(key_width)}  {v}".rstrip())


def heading(text: str) -> None:
    if is_terminal():
        from rich.text import Text

        _console().print(Text(text, style="bold"))
    else:
        click.echo(text)


def tree(graph, more=None) -> None:
    """A lineage graph as a rich Tree (plain indented text when piped); ``more(ref, n)``: the
    line under a version whose ``n`` further links were left out (``graph.more``)."""
    left_out = getattr(graph, "more", None) or {}
    children: dict[str, list] = {}
    for e in graph.edges:
        key = e.src if graph.direction == "up" else e.dst
        children.setdefault(key, []).append(e)
    nodes = {n.ref: n for n in graph.nodes}

    def label(ref: str, edge=None) -> str:
        n = nodes[ref]
        role = ""
        if edge is not None:
            role = f"[{edge.role}{'' if edge.weight is None else f' x{edge.weight:g}'}] "
        src = f"  ({n.source})" if n.source and n.source != "store" else ""
        state = "  (removed)" if getattr(n, "removed", False) else ("" if n.stored else "  (recipe only)")
        return f"{role}{n.kind} {ref}  {short(n.digest)}{src}{state}"

    def walk(ref: str, seen: frozenset):
        for e in children.get(ref, []):
            other = e.dst if graph.direction == "up" else e.src
            if other in nodes:
                yield e, other, other in seen

    if is_terminal():
        from rich.markup import escape
        from rich.tree import Tree

        root = Tree(escape(label(graph.root)))

        def build(node, ref, seen):
            for e, other, loop in walk(ref, seen):
                child = node.add(escape(label(other, e)))
                if not loop:
                    build(child, other, seen | {other})
            if more and left_out.get(ref):
                node.add(escape(more(ref, left_out[ref])), style="dim")

        build(root, graph.root, frozenset({graph.root}))
        _console().print(root)
    else:
        click.echo(label(graph.root))

        def emit(ref, depth, seen):
            for e, other, loop in walk(ref, seen):
                click.echo("  " * depth + "- " + label(other, e))
                if not loop:
                    emit(other, depth + 1, seen | {other})
            if more and left_out.get(ref):
                click.echo("  " * depth + more(ref, left_out[ref]))

        emit(graph.root, 1, frozenset({graph.root}))
    if getattr(graph, "truncated", False) and not (more and left_out):
        click.echo("(more versions are linked than shown)")
