"""Peak memory of multi-adapter merges (TIES, DARE, magnitude pruning) against the largest tensor.

    .venv/bin/python -m bench.multi_adapter_memory [--adapters 2] [--runs 3] [--methods ties,dare_ties]   # repo root

Builds a one-layer, wide bf16 Llama (hidden 2048, intermediate 5632, vocab 256: the MLP
projections, 5632x2048, are the largest tensors: 22 MiB in bf16, 44 MiB as a float32 delta)
and N r=16 PEFT adapters on all seven projections, registers them, then runs each case as its
own `lorareg merge` process (`--keep recipe`: the digest without writing files, so the disk
does not add noise; the writer hashes the same pieces either way) and reads that process's peak
RSS from a runner process whose only child it is (resource.getrusage(RUSAGE_CHILDREN)).

Two baselines, measured in the same run, interleaved with the cases:

  startup   `lorareg merge --help` after importing torch: the CLI's start-up with the
            interpreter and torch resident, no merge at all.
  single    `lorareg merge base a1 --method linear`: one adapter, so the engine holds one
            float32 delta buffer, the row pieces in flight and the writer.  What a multi-adapter
            merge adds over this is what the methods and the extra adapters cost.

Reported per case, min / median / max over the runs: peak RSS, and the growth over each
baseline's median divided by the largest float32 delta (the unit the methods work in).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROWS, COLS = 5632, 2048  # the MLP projections
DELTA_BYTES = ROWS * COLS * 4  # one float32 delta of the largest tensor
METHODS = ("linear", "ties", "dare_ties", "dare_linear", "magnitude_prune", "cat")

_WRAP = """
import json, resource, subprocess, sys
out = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": out.returncode, "stderr": out.stderr[-2000:],
                  "peak_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""
_STARTUP = "import sys, torch; from lorareg.cli.main import main; sys.argv[0] = 'lorareg'; main()"


def peak_mib(cmd: list[str], env: dict[str, str]) -> float:
    """Peak RSS (MiB) of ``cmd``, the only child of a fresh runner process."""
    res = json.loads(subprocess.run([sys.executable, "-c", _WRAP, *cmd], env=env, capture_output=True, text=True,
                                    check=True).stdout)
    if res["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res['stderr']}")
    return res["peak_kb"] / 1024


def build(work: Path, n_adapters: int, env: dict[str, str]) -> list[str]:
    import torch

    from tests.support.factories import make_llama, make_lora

    base = make_llama(work / "base", dtype=torch.bfloat16, hidden=COLS, intermediate_size=ROWS, layers=1,
                      num_attention_heads=16, num_key_value_heads=4, vocab_size=256)
    lorareg = [sys.executable, "-m", "lorareg.cli.main"]
    subprocess.run(lorareg + ["add", "base", str(base), "--name", "wide"], env=env, check=True, capture_output=True)
    names = []
    for i in range(1, n_adapters + 1):
        adapter = make_lora(base, work / f"a{i}", seed=i, r=16, lora_alpha=32)
        subprocess.run(lorareg + ["add", "adapter", str(adapter), "--base", "wide", "--name", f"a{i}"], env=env,
                       check=True, capture_output=True)
        names.append(f"a{i}")
    return names


def case_cmd(case: str, names: list[str], run: int) -> list[str]:
    lorareg = [sys.executable, "-m", "lorareg.cli.main"]
    if case == "startup":
        return [sys.executable, "-c", _STARTUP, "merge", "--help"]
    # a new name each run: a recipe already registered under its name is returned, not merged again
    common = ["--keep", "recipe", "--name", f"{case}-{run}"]
    if case == "single":
        return lorareg + ["merge", "wide", names[0], *common]
    weights = [f"{n}:{w}" for n, w in zip(names, (0.7, 0.5, 0.3, 0.2))]
    if case == "cat":
        return lorareg + ["merge", "wide", *weights, "--as-adapter", "cat", *common]
    extra = [] if case == "linear" else ["--density", "0.5"]
    if case.startswith("dare"):
        extra += ["--seed", str(run)]
    return lorareg + ["merge", "wide", *weights, "--method", case, *extra, *common]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapters", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="multi-adapter-memory-"))
    env = {**os.environ, "LORAREG_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"}
    names = build(work, args.adapters, env)
    cases = ["startup", "single", *args.methods.split(",")]
    peaks: dict[str, list[float]] = {c: [] for c in cases}
    for run in range(args.runs):  # interleaved, so load on the machine hits every case alike
        for case in cases:
            peaks[case].append(peak_mib(case_cmd(case, names, run), env))
    base = {b: statistics.median(peaks[b]) for b in ("startup", "single")}
    unit = DELTA_BYTES / 2**20
    report = {}
    for case in cases:
        p = sorted(peaks[case])
        report[case] = {
            "peak_rss_mib": [round(p[0]), round(statistics.median(p)), round(p[-1])],
            "over_startup_x_delta": [round((x - base["startup"]) / unit, 2) for x in (p[0], statistics.median(p), p[-1])],
            "over_single_x_delta": [round((x - base["single"]) / unit, 2) for x in (p[0], statistics.median(p), p[-1])],
        }
    if args.json:
        print(json.dumps({"adapters": args.adapters, "runs": args.runs, "delta_mib": unit, "cases": report}, indent=2))
        return
    print(f"{args.adapters} adapters, {args.runs} runs; largest tensor {ROWS}x{COLS}: {unit / 2:.0f} MiB bf16, "
          f"{unit:.0f} MiB as a float32 delta (the unit below); min / median / max")
    print(f"{'case':<16} {'peak RSS MiB':>18} {'- startup, x delta':>22} {'- single, x delta':>22}")
    for case, r in report.items():
        fmt = lambda v: " / ".join(f"{x:g}" for x in v)  # noqa: E731
        print(f"{case:<16} {fmt(r['peak_rss_mib']):>18} {fmt(r['over_startup_x_delta']):>22} "
              f"{fmt(r['over_single_x_delta']):>22}")


if __name__ == "__main__":
    main()
