"""Peak memory of `lorareg check` against the size of the model it checks.

    .venv/bin/python -m bench.check_memory [--hidden 1024] [--layers 16] [--samples 8]    # from the repository root

Builds a bf16 Llama (random, seeded) and an r=16 all-linear LoRA, registers both, merges,
then runs `lorareg check` in a child process and reads that child's peak RSS
(resource.getrusage(RUSAGE_CHILDREN)).  A floor is measured the same way: a child that
imports torch, transformers and peft and loads the merged model once in float32, which is
the least any check must hold (its float32 reference)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_FLOOR = """
import sys, torch, transformers, peft
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
print(sum(p.numel() for p in m.parameters()))
"""


_WRAP = """
import json, resource, subprocess, sys
out = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": out.returncode, "stdout": out.stdout, "stderr": out.stderr[-2000:],
                  "peak_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def _child(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, stdout) of ``cmd``, run under a fresh wrapper process so
    that RUSAGE_CHILDREN holds that one command alone (it keeps the largest child so far)."""
    t = time.perf_counter()
    res = json.loads(subprocess.run([sys.executable, "-c", _WRAP, *cmd], env=env, capture_output=True, text=True,
                                    check=True).stdout)
    wall = time.perf_counter() - t
    if res["rc"] not in (0, 1):
        raise SystemExit(f"{cmd} failed:\n{res['stderr']}")
    return wall, res["peak_kb"] / 1024, res["stdout"]


def main() -> None:
    import torch

    from tests.support.factories import make_llama, make_lora

    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="check-memory-"))
    env = {**os.environ, "LORAREG_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    base = make_llama(work / "base", dtype=torch.bfloat16, hidden=args.hidden, layers=args.layers,
                      intermediate_size=args.hidden * 11 // 4, num_attention_heads=args.hidden // 64,
                      num_key_value_heads=max(1, args.hidden // 256), vocab_size=32000, max_position_embeddings=2048)
    adapter = make_lora(base, work / "lora", seed=1, r=16, lora_alpha=32)
    built = time.perf_counter() - t
    lorareg = [sys.executable, "-m", "lorareg.cli.main"]
    for cmd in (["add", "base", str(base), "--name", "big"],
                ["add", "adapter", str(adapter), "--base", "big", "--name", "lora"],
                ["merge", "big", "lora", "--name", "m"]):
        subprocess.run(lorareg + cmd, env=env, check=True, capture_output=True)
    size = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    folder = json.loads(subprocess.run(lorareg + ["show", "m", "--json"], env=env, check=True, capture_output=True,
                                       text=True).stdout)["path"]
    floor_wall, floor_peak, params = _child([sys.executable, "-c", _FLOOR, folder], env)
    check_wall, check_peak, out = _child(lorareg + ["check", "m", "--json", "--samples", str(args.samples)], env)
    res = json.loads(out)
    print(json.dumps({"parameters": int(params), "bf16_checkpoint_mb": round(size / 2**20),
                      "build_seconds": round(built, 1),
                      "floor_float32_load": {"peak_rss_mb": round(floor_peak), "seconds": round(floor_wall, 1)},
                      "check": {"peak_rss_mb": round(check_peak), "seconds": round(check_wall, 1),
                                "passed": res["passed"], "max_abs_diff": res["max_abs_diff"],
                                "tolerance": res["tolerance"]}}, indent=2))


if __name__ == "__main__":
    main()
