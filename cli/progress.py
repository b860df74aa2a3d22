"""Progress bars on stderr (only when it is a terminal): every bar has a total, and the time
before the first step says what it is doing instead of showing ``0/?``."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence


def folder_bytes(path: str | os.PathLike[str]) -> int | None:
    """What hashing ``path`` reads: its regular files, dot-names left out (as the digest does)."""
    root = Path(path)
    if not root.is_dir():
        return None
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith("."):
                try:
                    total += os.stat(os.path.join(dirpath, f)).st_size
                except OSError:
                    pass
    return total


def _human(n: float) -> str:
    from lorareg.cli.render import human_size

    return human_size(int(n))


@contextmanager
def progress(description: str, *, total: int | None = None, unit: str = "bytes",
             phases: Sequence[str] = ()) -> Iterator[Callable[..., None]]:
    """Yields ``advance(n)``.  With ``phases``, the work is that many passes over ``total``
    bytes (``add`` hashes a folder, then copies it into the store): the bar starts again
    under the next phase's name when one pass is done, instead of counting past its total."""
    if not sys.stderr.isatty():
        yield lambda *_a, **_k: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    names = list(phases) or [description]
    count = "{task.fields[count]}"
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn(count),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(names[0], total=total or None, count="")
        done = 0

        def advance(n: int = 1, *_rest: Any) -> None:
            nonlocal done
            done += n
            if not total:
                bar.update(task, completed=done, count=_human(done) if unit == "bytes" else str(done))
                return
            phase = min(done // total, len(names) - 1)
            here = done - phase * total
            if here > total:  # more than announced (a converted pickle, a file that grew): grow the bar
                bar.update(task, total=here)
            shown = f"{_human(here)} of {_human(max(total, here))}" if unit == "bytes" else f"{here}/{total}"
            bar.update(task, description=names[phase], completed=here, count=shown)

        yield advance


@contextmanager
def step_progress(description: str, *, starting: str = "starting: loading torch and reading the inputs"
                  ) -> Iterator[Callable[[int, int, str], None]]:
    """Yields ``update(done, total, label)`` for per-tensor progress.  Until the first update,
    the bar says what the start-up is doing."""
    if not sys.stderr.isatty():
        yield lambda *_a, **_k: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                  TextColumn("{task.fields[label]}"), TimeElapsedColumn(), console=Console(stderr=True),
                  transient=True) as bar:
        task = bar.add_task(starting, total=None, count="", label="")

        def update(done: int, total: int, label: str = "") -> None:
            bar.update(task, description=description, completed=done, total=total, count=f"{done}/{total} tensors",
                       label=label[-40:])

        yield update
