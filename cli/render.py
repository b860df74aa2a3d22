"""Rendering results: rich tables on a terminal, plain columns when piped, JSON with --json."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import click


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def short(digest: str | None, n: int = 12) -> str:
    if not digest:
        return "-"
    return digest.split(":", 1)[-1][:n]


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _console():
    from rich.console import Console

    return Console(soft_wrap=False)


def is_terminal() -> bool:
    return sys.stdout.isatty()


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    rows = [[("" if c is None else str(c)) for c in r] for r in rows]
    if is_terminal():
        from rich.table import Table

        t = Table(title=title, header_style="bold")
        for c in columns:
            t.add_column(c)
        for r in rows:
            t.add_row(*r)
        _console().print(t)
        return
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def key_values(title: str, pairs: Sequence[tuple[str, Any]]) -> None:
    if is_terminal():
        from rich.table import Table

        t = Table(title=title, show_header=False, box=None)
        t.add_column(style="bold")
        t.add_column()
        for k, v in pairs:
            t.add_row(k, "" if v is None else str(v))
        _console().print(t)
        return
    click.echo(title)
    width = max((len(k) for k, _ in pairs), default=0)
    for k, v in pairs:
        click.echo(f"  {k.ljust(width)}  {'' if v is None else v}")


@contextmanager
def progress(description: str, *, total: int | None = None, unit: str = "bytes") -> Iterator[Any]:
    """Yields a callback ``advance(n)``; draws a rich bar only when stderr is a terminal."""
    if not sys.stderr.isatty():
        yield lambda *_a, **_k: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cols = [TextColumn("{task.description}"), BarColumn(),
            DownloadColumn() if unit == "bytes" else MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*cols, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1, *rest: Any) -> None:
            bar.advance(task, n)

        yield advance


@contextmanager
def step_progress(description: str) -> Iterator[Any]:
    """Yields ``update(done, total, label)`` for per-tensor progress."""
    if not sys.stderr.isatty():
        yield lambda *_a, **_k: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[label]}"),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None, label="")

        def update(done: int, total: int, label: str = "") -> None:
            bar.update(task, completed=done, total=total, label=label[-48:])

        yield update


def tree(graph) -> None:
    """A lineage graph as a rich Tree (plain indented text when piped)."""
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
        state = "" if n.stored else "  (recipe only)"
        return f"{role}{n.kind} {ref}  {short(n.digest)}{src}{state}"

    def walk(ref: str, seen: frozenset):
        for e in children.get(ref, []):
            other = e.dst if graph.direction == "up" else e.src
            yield e, other, other in seen

    if is_terminal():
        from rich.tree import Tree

        root = Tree(label(graph.root))

        def build(node, ref, seen):
            for e, other, loop in walk(ref, seen):
                child = node.add(label(other, e))
                if not loop:
                    build(child, other, seen | {other})

        build(root, graph.root, frozenset({graph.root}))
        _console().print(root)
        return
    click.echo(label(graph.root))

    def emit(ref, depth, seen):
        for e, other, loop in walk(ref, seen):
            click.echo("  " * depth + "- " + label(other, e))
            if not loop:
                emit(other, depth + 1, seen | {other})

    emit(graph.root, 1, frozenset({graph.root}))
