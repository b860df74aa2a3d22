"""How the registry commands a user runs scale with the number of versions: ``lorareg ls`` (on a
terminal, piped with ``--limit 50``, and the page after a cursor deep in the list), ``show``,
``lineage`` (up from a merge, down from an adapter and from the base) and ``log -n 50``, each as
its own process, on registries of 10, 1,000 and 100,000 versions.

    .venv/bin/python -m bench.registry_scale [--sizes 10,1000,100000] [--repeat 5] [--workdir bench/_work/scale]

How the registries are made (cheaply, in the registry's own tables):
- 10: through the API.  A tiny Llama base (tests/support/factories.make_llama), one tiny PEFT
  adapter folder (make_lora) registered 7 times as a00000...a00006 (Registry.add_adapter),
  and 2 merges of two adapters each (Registry.merge): m0 (a00000 + a00001), m1.
- 1,000 and 100,000: a copy of the 10, grown by bench/ui_pages.py's ``grow``: batched
  SQLAlchemy Core INSERTs of copies of a00000's rows (artifacts, versions, adapters, files,
  metrics, tags, events) under new names b000000..., trained on the same base.

``ls`` on a terminal runs under a pseudo-terminal (what a user sees: one page and the "N more:
lorareg ls --after REF" line); ``ls --after {deep}`` is the page after a version half way down
the list (a00002@1 in the 10, b<middle> in the others).  Piped ``ls`` without ``--limit`` prints
every row by design (scripts), so it is timed only on the 10 and 1,000 registries.
``lineage llama --down`` draws the newest 20 versions made from the base and says how many more
(all of them here); ``--all`` would draw every one and grows with the registry by nature.
Prints min/median/max wall time in ms per command and size, the 1k/10 and 100k/10 ratios of
the medians, and the growth from 1,000 to 100,000 (100k/1k).  The sizes take turns run by run,
so a load that comes and goes on a shared machine falls on every size alike."""

from __future__ import annotations

import argparse
import os
import pty
import select
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

COMMANDS = [  # (label, args, on a terminal)
    ("ls (terminal)", ["ls"], True),
    ("ls --limit 50 (piped)", ["ls", "--limit", "50"], False),
    ("ls --json --limit 50", ["--json", "ls", "--limit", "50"], False),
    ("ls --after (deep)", ["ls", "--after", "{deep}"], True),
    ("show m0", ["show", "m0"], False),
    ("show a00003", ["show", "a00003"], False),
    ("lineage m0", ["lineage", "m0"], False),
    ("lineage a00000 --down", ["lineage", "a00000", "--down"], False),
    ("lineage llama --down", ["lineage", "llama", "--down"], False),
    ("lineage llama --down --json", ["--json", "lineage", "llama", "--down"], False),
    ("log -n 50", ["log", "-n", "50"], False),
    ("log a00003", ["log", "a00003"], False),
    ("ls (piped, every row)", ["ls"], False),
]
SMALL_ONLY = {"ls (piped, every row)"}  # prints every row: grows with the registry on purpose


def build_ten(home: Path, work: Path) -> None:
    from lorareg import Registry
    from tests.support.factories import make_llama, make_lora

    base = make_llama(work / "llama")
    adapter = make_lora(base, work / "lora", seed=1, r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    with Registry.open(home=home) as reg:
        reg.add_base(path=base, name="llama")
        for i in range(7):
            reg.add_adapter(path=adapter, base="llama", name=f"a{i:05d}")
        reg.merge(base="llama", adapters=["a00000", ("a00001", 0.5)], name="m0")
        reg.merge(base="llama", adapters=["a00002", ("a00003", 0.5)], name="m1")


def deep_ref(size: int) -> str:
    """A version half way down ``ls``'s newest-first list: grown names run b000000... (see grow)."""
    return "a00002@1" if size <= 10 else f"b{(size - 11) // 2:06d}@1"


def run_once(home: Path, args: list[str], terminal: bool, timeout: float = 600) -> float:
    """Wall seconds of one ``lorareg ARGS`` process (inf past ``timeout``: it is killed)."""
    env = {k: v for k, v in os.environ.items() if k != "LORAREG_DATABASE_URL"}
    env.update(LORAREG_HOME=str(home), COLUMNS="160")
    cmd = [sys.executable, "-m", "lorareg.cli.main", *args]
    t = time.perf_counter()
    if terminal:  # stdout on a pseudo-terminal, drained as it comes
        master, slave = pty.openpty()
        proc = subprocess.Popen(cmd, stdout=slave, stderr=subprocess.DEVNULL, env=env)
        os.close(slave)
        while time.perf_counter() - t < timeout:
            if not select.select([master], [], [], 0.5)[0]:
                continue
            try:
                if not os.read(master, 65536):
                    break
            except OSError:  # EIO: the child closed the terminal
                break
        os.close(master)
    else:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    # A plain blocking wait, its end seen at once: ``wait(timeout=)`` polls with sleeps of up
    # to 50 ms, which rounded every figure to the next 50 ms.  A timer kills a run past the timeout.
    killer = threading.Timer(max(0.0, timeout - (time.perf_counter() - t)), proc.kill)
    killer.start()
    try:
        rc = proc.wait()
    finally:
        killer.cancel()
    elapsed = time.perf_counter() - t
    if elapsed >= timeout:
        return float("inf")
    if rc != 0:
        raise SystemExit(f"lorareg {' '.join(args)} failed (exit {rc}) on {home}")
    return elapsed


def main() -> None:
    from bench.ui_pages import grow

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,1000,100000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workdir", default="bench/_work/scale")
    ap.add_argument("--keep", action="store_true", help="reuse registries a previous run left in --workdir")
    ap.add_argument("--timeout", type=float, default=600, help="seconds a run may take (inf past it)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.workdir).resolve()
    small = work / "r10" / "home"
    if not (args.keep and small.exists()):
        shutil.rmtree(small.parent, ignore_errors=True)
        small.parent.mkdir(parents=True)
        build_ten(small, small.parent)
    homes = {}
    for size in sizes:
        home = homes[size] = work / f"r{size}" / "home"
        if size != 10 and not (args.keep and home.exists()):
            shutil.rmtree(home.parent, ignore_errors=True)
            home.parent.mkdir(parents=True)
            t = time.perf_counter()
            shutil.copytree(small, home, symlinks=True)
            grow(home, size)
            print(f"built {size:,} versions in {time.perf_counter() - t:.0f} s", flush=True)
        run_once(home, ["ls", "--limit", "1"], False)  # upgrade/open once, warm the page cache
    # The sizes take turns within each repetition, so a load that comes and goes on a shared
    # machine falls on all of them alike and the ratios between sizes stay fair.
    results: dict[int, dict[str, list[float]]] = {size: {} for size in sizes}
    for label, cmd, terminal in COMMANDS:
        todo = [s for s in sizes if not (label in SMALL_ONLY and s > 1000)]
        for size in todo:  # warm; past the timeout once is enough
            args_of = [a.format(deep=deep_ref(size)) for a in cmd]
            if run_once(homes[size], args_of, terminal, args.timeout) == float("inf"):
                results[size][label] = [float("inf")]
        for _ in range(args.repeat):
            for size in todo:
                if results[size].get(label) == [float("inf")]:
                    continue
                args_of = [a.format(deep=deep_ref(size)) for a in cmd]
                ms = run_once(homes[size], args_of, terminal, args.timeout) * 1000
                results[size].setdefault(label, []).append(ms)
        print(f"  {label}: " + ", ".join(f"{s:,} {min(results[s][label]):.0f} ms" for s in todo), flush=True)
    print(f"\nwall time per command, ms: min/median/max of {args.repeat} runs (each its own process)")
    growth = 1000 in sizes and sizes[-1] > 1000  # 1,000 -> the largest
    print(f"{'command':28} " + " ".join(f"{f'{s:,} versions':>20}" for s in sizes) +
          "".join(f" {f'{s // 1000}k/10' if s >= 1000 else f'{s}/10':>8}" for s in sizes if s != 10) +
          (f" {f'{sizes[-1] // 1000}k/1k':>8}" if growth else ""))
    for label, _, _ in COMMANDS:
        cells, med = [], {}
        for s in sizes:
            runs = results[s].get(label)
            if runs is None:
                cells.append(f"{'-':>20}")
                continue
            med[s] = statistics.median(runs)
            cells.append(f"{f'{min(runs):.0f}/{med[s]:.0f}/{max(runs):.0f}':>20}")
        ratios = "".join(f" {med[s] / med[10]:8.2f}" if s in med and 10 in med else f" {'-':>8}"
                         for s in sizes if s != 10)
        if growth:
            ratios += f" {med[sizes[-1]] / med[1000]:8.2f}" if sizes[-1] in med and 1000 in med else f" {'-':>8}"
        print(f"{label:28} " + " ".join(cells) + ratios)


if __name__ == "__main__":
    main()
