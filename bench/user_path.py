"""Benchmark: the path a user runs, as processes: `lorareg add` + `merge` + `export` vs PEFT vs the floor.

    .venv/bin/python bench/user_path.py [--size medium|small|full] [--runs 3] [--keep] [--json]

Generates a Llama-shaped bf16 base and an r=16 adapter on all seven projections (the
builders of merge_vs_peft.py), then, in each run, times every step as its own process:

  floor         read + one sha256 + write + fsync of the base's bytes (merge_vs_peft's floor)
  add_base      lorareg add base BASE              (a fresh LORAREG_HOME per run)
  add_adapter   lorareg add adapter ADAPTER --base bench
  merge         lorareg merge bench ad --name merged              (files kept)
  merge_recipe  lorareg merge bench ad --name lean --keep recipe  (digest only)
  export        lorareg export merged DEST
  peft          AutoPeftModelForCausalLM.from_pretrained(torch_dtype=bf16) -> merge_and_unload()
                -> save_pretrained()
  engine        lorareg.merge.engine.merge called directly (merge_vs_peft's engine-only figure)

Before each step the base (and the registry's store) is read into the page cache and dirty
pages are synced (untimed, plus --settle seconds), so no step inherits another's writeback.
Wall time is the process's, imports included; peak RSS comes from a runner process whose
only child is the step.  After the runs, the exported folder is compared with PEFT's output
tensor by tensor, bit for bit.  Report: min / median / max per step and the ratios of the
medians against the floor and PEFT.

Sizes: small ~124M parameters, medium ~0.34B (default; a few minutes on 2 cores), full the
1.1B model of issue 16 (--size full).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import merge_vs_peft as mvp  # noqa: E402  (the shared generators, floor, PEFT case and verify)

SIZES = {
    "small": mvp.SMALL,
    "medium": {"hidden": 1024, "intermediate": 2816, "layers": 24, "heads": 16, "kv_heads": 4, "vocab": 32000},
    "full": mvp.FULL,
}
STEPS = ("floor", "add_base", "add_adapter", "merge", "merge_recipe", "export", "peft", "engine")
LOREG = str(Path(sys.executable).parent / "lorareg")


def _cli(work: Path, *args: str) -> list[str]:
    return [LOREG, *args]


def _step_cmd(step: str, work: Path) -> list[str] | None:
    """The command a step runs, or None for a Python case of merge_vs_peft (run via --case)."""
    return {
        "add_base": _cli(work, "add", "base", str(work / "base"), "--name", "bench"),
        "add_adapter": _cli(work, "add", "adapter", str(work / "adapter"), "--base", "bench", "--name", "ad"),
        "merge": _cli(work, "merge", "bench", "ad", "--name", "merged"),
        "merge_recipe": _cli(work, "merge", "bench", "ad", "--name", "lean", "--keep", "recipe"),
        "export": _cli(work, "export", "merged", str(work / "out-export")),
    }.get(step)


def run_step(step: str, work: Path) -> dict:
    """Runner: start the step as this process's only child; report its wall time and peak RSS."""
    cmd = _step_cmd(step, work)
    if cmd is None:
        case = {"peft": "peft", "floor": "floor", "engine": "lorareg"}[step]
        shutil.rmtree(work / f"out-{case}", ignore_errors=True)
        cmd = [sys.executable, mvp.__file__, "--workdir", str(work), "--case", case]
    env = dict(os.environ, LORAREG_HOME=str(work / "home"))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"step {step} failed with exit code {proc.returncode}")
    return {"wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def _measure(step: str, work: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--workdir", str(work), "--runner", step],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(proc.returncode)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _warm(*folders: Path) -> None:
    for folder in folders:
        if folder.exists():
            for p in folder.rglob("*"):
                if p.is_file():
                    with open(p, "rb") as f:
                        while f.read(64 << 20):
                            pass


def _summary(results: dict[str, list[dict]], base_bytes: int) -> str:
    med = {s: statistics.median(r["wall_s"] for r in rs) for s, rs in results.items()}
    rows = [f"{'step':<13} {'min s':>7} {'median s':>9} {'max s':>7} {'/ floor':>8} {'peak RSS MB':>12}"]
    for step, rs in results.items():
        walls = [r["wall_s"] for r in rs]
        ratio = med[step] / med["floor"] if "floor" in med else float("nan")
        rows.append(f"{step:<13} {min(walls):>7.2f} {med[step]:>9.2f} {max(walls):>7.2f} {ratio:>7.2f}x "
                    f"{max(r['peak_rss_mb'] for r in rs):>12.0f}")
    rows.append(f"(base: {base_bytes / 1e9:.2f} GB; {len(next(iter(results.values())))} runs; ratios of medians)")
    if {"merge", "export", "peft"} <= med.keys():
        user = med["merge"] + med["export"]
        rows.append(f"merge + export {user:.2f} s vs PEFT {med['peft']:.2f} s: {med['peft'] / user:.2f}x faster")
    if {"merge", "floor"} <= med.keys():
        rows.append(f"merge / floor {med['merge'] / med['floor']:.2f}x (target <= 1.3x)")
    if {"merge_recipe", "floor"} <= med.keys():
        rows.append(f"merge --keep recipe / floor {med['merge_recipe'] / med['floor']:.2f}x (target <= 0.7x)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SIZES, default="medium")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset, run in this order")
    ap.add_argument("--keep", action="store_true", help="keep the generated base and adapter")
    ap.add_argument("--workdir", type=Path, default=HERE / "_work_user_path")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds to wait after sync before each step")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-verify", dest="verify", action="store_false")
    ap.add_argument("--runner", choices=STEPS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = args.workdir.resolve()
    if args.runner:
        print(json.dumps(run_step(args.runner, work)))
        return

    spec = SIZES[args.size]
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if unknown := set(steps) - set(STEPS):
        ap.error(f"unknown step(s): {', '.join(sorted(unknown))}")
    mvp.prepare_inputs(work, spec)
    base_bytes = sum(p.stat().st_size for p in (work / "base").iterdir())
    results: dict[str, list[dict]] = {s: [] for s in steps}
    for run in range(args.runs):
        shutil.rmtree(work / "home", ignore_errors=True)  # each run registers from scratch
        shutil.rmtree(work / "out-export", ignore_errors=True)
        last = run == args.runs - 1
        for step in steps:
            _warm(work / "base", work / "adapter", work / "home")
            os.sync()
            time.sleep(args.settle)
            r = _measure(step, work)
            results[step].append(r)
            print(f"run {run + 1} {step:<13} {r['wall_s']:6.2f} s  {r['peak_rss_mb']:6.0f} MB", flush=True)
            if step == "floor" or (step in ("peft", "engine") and not (last and args.verify)):
                shutil.rmtree(work / f"out-{ {'engine': 'lorareg'}.get(step, step)}", ignore_errors=True)
    print(_summary(results, base_bytes))
    if args.verify and {"export", "peft"} <= set(steps):
        print("check export vs PEFT:", mvp.verify(work / "out-export", work / "out-peft"))
    if args.verify and {"engine", "peft"} <= set(steps):
        print("check engine vs PEFT:", mvp.verify(work / "out-lorareg", work / "out-peft"))
    if args.json:
        print(json.dumps(results, indent=2))
    for name in ("out-export", "out-peft", "out-lorareg", "home"):
        shutil.rmtree(work / name, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
