"""`lorareg export` as a process at two model sizes, next to the start-up every command pays,
all measured in the same run.

    python -m bench.export_speed [--sizes-gb 0.1 1.0] [--runs 20] [--workdir bench/_work] [--before PYTHONPATH]

For each size, registers a Llama-shaped bf16 checkpoint once, then prints min/median/max wall
seconds (and the median CPU seconds, user + system: steadier on a shared machine) of, interleaved
run by run: `python -c pass` (the interpreter, which no command goes below), `lorareg --version`,
`--help`, `ls` and `show big@1` (start-up: they read a row or two), `lorareg export` (reflinks or
hard links to the read-only blobs: its own cost must not grow with the size), `export --copy`
and the floor `cp -rL` of the version's files; and `Registry.export` timed inside a warm
process (the export's own work).  Every export is compared byte for byte with the checkpoint.
``--before`` runs the lorareg commands a second time per run importing lorareg from that
PYTHONPATH (an older tree laid out as a `lorareg` package), each side in a registry of its own."""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.add_checkpoint import write_checkpoint


def run_timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system) of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def settle(*folders: Path) -> None:
    """Dirty pages of the previous case written out and the files in the page cache."""
    subprocess.run(["sync"], check=True)
    for folder in folders:
        for f in sorted(folder.iterdir()):
            subprocess.run(["cat", str(f)], check=True, stdout=subprocess.DEVNULL)


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return not mismatch and not errors and sorted(p.name for p in b.iterdir()) == names


def hows(obj) -> list:
    """Every ``how`` recorded in the export events of ``lorareg log --json``."""
    if isinstance(obj, dict):
        return ([obj["how"]] if "how" in obj else []) + [h for v in obj.values() for h in hows(v)]
    if isinstance(obj, list):
        return [h for v in obj for h in hows(v)]
    return []


def in_process(env: dict, out: Path, runs: int) -> list[float]:
    """``Registry.export`` inside a process that has already exported once (imports done)."""
    code = ("import sys, time; from lorareg import Registry; reg = Registry.open(); "
            "reg.export(ref='big@1', dest=sys.argv[1] + '-warm'); t = time.perf_counter(); "
            "reg.export(ref='big@1', dest=sys.argv[1]); print(time.perf_counter() - t)")
    times = []
    for run in range(runs):
        dest = out / f"in-{run}"
        times.append(float(subprocess.run([sys.executable, "-c", code, str(dest)], check=True,
                                          capture_output=True, env=env, text=True).stdout))
        shutil.rmtree(dest)
        shutil.rmtree(f"{dest}-warm")
    return times


def home_of(work: Path, side: str) -> Path:
    return work / ("home-" + (side.strip(" ()") or "now"))


def measure(work: Path, size_gb: float, runs: int, sides: dict[str, dict]) -> None:
    ckpt = work / "ckpt"
    write_checkpoint(ckpt, size_gb)
    exe = str(Path(sys.executable).parent / "lorareg")
    envs = {}
    for side, side_env in sides.items():
        env = dict(side_env, LORAREG_HOME=str(home_of(work, side)))
        subprocess.run([exe, "init"], check=True, capture_output=True, env=env)
        subprocess.run([exe, "add", "base", str(ckpt), "--name", "big"], check=True, capture_output=True, env=env)
        envs[side] = env
    size = sum(f.stat().st_size for f in ckpt.iterdir())
    version = home_of(work, next(iter(sides))) / "versions" / "big" / "1"
    plain = dict(os.environ)
    cases: list[tuple[str, dict, object, bool]] = [("python -c pass", plain, lambda out: [sys.executable, "-c", "pass"],
                                                    False)]
    for side, env in envs.items():
        cases += [(f"lorareg --version{side}", env, lambda out: [exe, "--version"], False),
                  (f"lorareg --help{side}", env, lambda out: [exe, "--help"], False),
                  (f"lorareg ls{side}", env, lambda out: [exe, "ls"], False),
                  (f"lorareg show big@1{side}", env, lambda out: [exe, "show", "big@1"], False),
                  (f"lorareg export{side}", env, lambda out: [exe, "export", "big@1", str(out)], True),
                  (f"lorareg export --copy{side}", env, lambda out: [exe, "export", "big@1", str(out), "--copy"], True)]
    cases.append(("floor: cp -rL of the files", plain, lambda out: ["cp", "-rL", str(version), str(out)], True))
    wall: dict[str, list[float]] = {label: [] for label, *_ in cases}
    cpu: dict[str, list[float]] = {label: [] for label, *_ in cases}
    for run in range(runs):
        for label, env, cmd, writes in cases:
            out = work / f"out-{run}"
            if writes:
                settle(ckpt, version)
            w, c = run_timed(cmd(out), env)
            wall[label].append(w)
            cpu[label].append(c)
            if writes:
                if not same_files(ckpt, out):
                    raise SystemExit(f"{label}: the exported files differ from the checkpoint")
                shutil.rmtree(out)
    first = next(iter(envs.values()))
    wall["Registry.export (in-process)"] = in_process(first, work, runs)
    how = subprocess.run([exe, "log", "-n", "3", "--json"], check=True, capture_output=True, env=first, text=True).stdout
    print(f"\nversion: {size / 1e9:.2f} GB in {len(list(ckpt.iterdir()))} files, {runs} runs, seconds")
    print(f"{'case':40} {'min':>7} {'median':>7} {'max':>7} {'cpu med':>8}")
    for label, xs in wall.items():
        used = f"{statistics.median(cpu[label]):8.3f}" if cpu.get(label) else f"{'':8}"
        print(f"{label:40} {min(xs):7.3f} {statistics.median(xs):7.3f} {max(xs):7.3f} {used}")
    print("how the last exports placed the files:", "; ".join(map(str, hows(json.loads(how)))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-gb", type=float, nargs="+", default=[0.1, 1.0])
    ap.add_argument("--runs", type=int, default=20, help="runs of each case (min/median/max are printed)")
    ap.add_argument("--workdir", default=None, help="on the file system to measure (default: a temp folder)")
    ap.add_argument("--before", metavar="PYTHONPATH", default=None,
                    help="also run every lorareg case importing lorareg from this PYTHONPATH, in the same runs")
    args = ap.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="lorareg-bench-"))
    shutil.rmtree(root, ignore_errors=True)
    sides = {"": dict(os.environ)}
    if args.before:
        sides[" (before)"] = dict(os.environ, PYTHONPATH=args.before)
    try:
        for size_gb in args.sizes_gb:
            measure(root / f"{size_gb:g}gb", size_gb, args.runs, sides)
            shutil.rmtree(root / f"{size_gb:g}gb", ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
