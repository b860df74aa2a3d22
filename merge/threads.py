"""How many threads torch's arithmetic gets while a merge streams.

A merge already runs its own threads beside the arithmetic: two sha256 threads (the file's
and the tensor's) and the writer.  torch's OpenMP pool spin-waits between parallel regions,
so on a machine with few cores it takes CPU the hash threads need: on 2 cores a 1.1B merge
used 14.6-24 s of CPU with torch's default 2 threads against 6.2-7.4 s with one (same bits).
The arithmetic gets the cores those threads leave, never fewer than one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["PIPELINE_THREADS", "arithmetic_threads", "available_cores"]

PIPELINE_THREADS = 2  # the two hash threads; the writer mostly waits on them and the disk


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextmanager
def arithmetic_threads() -> Iterator[int]:
    """Run the block with torch's intra-op threads set to the cores the pipeline leaves;
    the caller's setting is restored after (a library call must not change the process's)."""
    import torch

    before = torch.get_num_threads()
    wanted = max(1, min(before, available_cores() - PIPELINE_THREADS))
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(before)
