"""`lorareg export` of a large version, as a process, against baselines measured in the same run.

    python -m bench.export_speed [--size-gb 1.0] [--runs 5] [--workdir bench/_work]

Registers a Llama-shaped bf16 checkpoint of about --size-gb once, then prints min/median/max
seconds of: `lorareg export` (reflinks or hard links to the read-only blobs: the target is
<= 0.1 s for any size), `lorareg export --copy`, the floor `cp -r` of the version's files,
`python -c pass` (the interpreter's start-up, which no command can go below), and
`Registry.export` timed inside a process (the export's own work, without start-up).  Dirty pages
are synced and the blobs cached before each case; every export is checked byte-identical."""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.add_checkpoint import write_checkpoint


def run_timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t


def settle(folder: Path) -> None:
    subprocess.run(["sync"], check=True)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=5, help="runs of each case (min/median/max are printed)")
    ap.add_argument("--workdir", default=None, help="on the file system to measure (default: a temp folder)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lorareg-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    ckpt = work / "ckpt"
    write_checkpoint(ckpt, args.size_gb)
    exe = str(Path(sys.executable).parent / "lorareg")
    env = dict(os.environ, LORAREG_HOME=str(work / "home"))
    subprocess.run([exe, "init"], check=True, capture_output=True, env=env)
    subprocess.run([exe, "add", "base", str(ckpt), "--name", "big"], check=True, capture_output=True, env=env)
    version = work / "home" / "versions" / "big" / "1"
    size = sum(f.stat().st_size for f in ckpt.iterdir())
    cases = {
        "python -c pass": lambda out: [sys.executable, "-c", "pass"],
        "floor: cp -rL of the files": lambda out: ["cp", "-rL", str(version), str(out)],
        "lorareg export": lambda out: [exe, "export", "big@1", str(out)],
        "lorareg export --copy": lambda out: [exe, "export", "big@1", str(out), "--copy"],
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for run in range(args.runs):
        for label, cmd in cases.items():
            out = work / f"out-{run}"
            settle(ckpt)
            times[label].append(run_timed(cmd(out), env))
            if label != "python -c pass":
                if not same_files(ckpt, out):
                    raise SystemExit(f"{label}: the exported files differ from the checkpoint")
                shutil.rmtree(out)
    # The export itself, without the interpreter's and the database layer's start-up.
    # A first export (to another folder) imports what exports need; the second is timed.
    code = ("import sys, time; from lorareg import Registry; reg = Registry.open(); "
            "reg.export(ref='big@1', dest=sys.argv[1] + '-warm'); t = time.perf_counter(); "
            "reg.export(ref='big@1', dest=sys.argv[1]); print(time.perf_counter() - t)")
    inside: list[float] = []
    for run in range(args.runs):
        out = work / f"in-{run}"
        inside.append(float(subprocess.run([sys.executable, "-c", code, str(out)], check=True, capture_output=True,
                                           env=env, text=True).stdout))
        shutil.rmtree(out)
        shutil.rmtree(f"{out}-warm")
    times["Registry.export (in-process)"] = inside
    how = subprocess.run([exe, "log", "-n", "2", "--json"], check=True, capture_output=True, env=env, text=True).stdout
    print(f"version: {size / 1e9:.2f} GB in {len(list(ckpt.iterdir()))} files, {args.runs} runs, workdir {work}")
    print(f"{'case':32} {'min':>8} {'median':>8} {'max':>8}")
    for label, xs in times.items():
        print(f"{label:32} {min(xs):8.3f} {statistics.median(xs):8.3f} {max(xs):8.3f}")
    print("how the last two exports placed the files:", "; ".join(map(str, hows(json.loads(how)))))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
