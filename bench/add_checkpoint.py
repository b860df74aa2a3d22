"""Time to register a large checkpoint, and CLI start-up time, each against a baseline
measured in the same run.

    python -m bench.add_checkpoint [--size-gb 1.0] [--runs 3] [--workdir bench/_work] [--before DIR]

Prints min/median/max of: `lorareg add base` (one read of each byte: hash every tensor and
file while storing it as a blob, then link) into a new registry each run vs the floor `cp` +
`sha256sum` of the same bytes, dirty pages synced and the checkpoint cached before each; `lorareg --help` / `lorareg ls` vs a bare
`python -c pass`, and whether torch was imported (it must not be)."""

from __future__ import annotations

import argparse
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


def write_checkpoint(folder: Path, size_gb: float) -> None:
    """A Llama-shaped bf16 checkpoint of about ``size_gb``, written without torch."""
    folder.mkdir(parents=True, exist_ok=True)
    hidden, inter = 2048, 5632
    per_layer = 2 * (4 * hidden * hidden + 3 * hidden * inter)
    layers = max(1, int(size_gb * 1e9 // per_layer))
    shapes = {}
    for i in range(layers):
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"model.layers.{i}.self_attn.{p}.weight"] = (hidden, hidden)
        for p, s in (("gate_proj", (inter, hidden)), ("up_proj", (inter, hidden)), ("down_proj", (hidden, inter))):
            shapes[f"model.layers.{i}.mlp.{p}.weight"] = s
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = shape[0] * shape[1] * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = os.urandom(1 << 20)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        left = offset
        while left:
            chunk = rng[: min(left, len(rng))]
            f.write(chunk)
            left -= len(chunk)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                    "hidden_size": hidden, "num_hidden_layers": layers}))


def timed(cmd: list[str], env: dict | None = None, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        best = min(best, time.perf_counter() - t)
    return best


def timed_cpu(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system) of one run: on a shared machine the CPU time
    is the steadier measure of the work done."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def settle(ckpt: Path) -> None:
    """Dirty pages of the previous run written out, and the checkpoint in the page cache,
    so every case starts from the same state and reads from memory."""
    subprocess.run(["sync"], check=True)
    for f in sorted(ckpt.iterdir()):
        subprocess.run(["cat", str(f)], check=True, stdout=subprocess.DEVNULL)


def spread(xs: list[float]) -> str:
    return f"{min(xs):8.2f} {statistics.median(xs):8.2f} {max(xs):8.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3, help="runs of each case (min/median/max are printed)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--before", metavar="PYTHONPATH", default=None,
                    help="also time `lorareg add base` importing lorareg from this PYTHONPATH (an older tree), "
                         "alternating with the current one in the same runs")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lorareg-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    ckpt = work / "ckpt"
    write_checkpoint(ckpt, args.size_gb)
    size = sum(f.stat().st_size for f in ckpt.iterdir())
    exe = str(Path(sys.executable).parent / "lorareg")
    env = dict(os.environ, LORAREG_HOME=str(work / "home"))
    subprocess.run([exe, "init"], check=True, capture_output=True, env=env)
    sides = {"lorareg add base": dict(os.environ)}
    if args.before:
        sides["lorareg add base (--before)"] = dict(os.environ, PYTHONPATH=args.before)
    times: dict[str, list[float]] = {"floor: cp + sha256sum": [], **{k: [] for k in sides}}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    shard = ckpt / "model.safetensors"
    for run in range(args.runs):
        settle(ckpt)
        wall, used = timed_cpu(["bash", "-c", f"cp {shard} {work}/copy && sha256sum {work}/copy >/dev/null"])
        times["floor: cp + sha256sum"].append(wall)
        cpu["floor: cp + sha256sum"].append(used)
        (work / "copy").unlink()
        for label, side_env in sides.items():
            home = work / f"home-{run}-{len(times[label])}"  # a new registry: every run stores every byte
            side_env = dict(side_env, LORAREG_HOME=str(home))
            subprocess.run([exe, "init"], check=True, capture_output=True, env=side_env)
            settle(ckpt)
            wall, used = timed_cpu([exe, "add", "base", str(ckpt), "--name", "big"], env=side_env)
            times[label].append(wall)
            cpu[label].append(used)
            shutil.rmtree(home, ignore_errors=True)
    floor = statistics.median(times["floor: cp + sha256sum"])
    py = timed([sys.executable, "-c", "pass"], repeat=5)
    helpt = timed([exe, "--help"], repeat=5)
    lst = timed([exe, "ls"], env=env, repeat=5)
    torch_loaded = subprocess.run(
        [sys.executable, "-c", "import sys; from lorareg.cli.main import cli\ntry: cli(['ls'])\nexcept SystemExit: pass\n"
         "print('torch' in sys.modules, file=sys.stderr)"], env=env, capture_output=True, text=True
    ).stderr.strip().splitlines()[-1]  # the last line: `ls` itself may print a note to stderr
    print(f"checkpoint: {size / 1e9:.2f} GB, {args.runs} runs; ratio = median / median of the floor")
    print(f"{'case':32} {'min':>8} {'median':>8} {'max':>8} {'ratio':>8}")
    for label, xs in times.items():
        print(f"{label:32} {spread(xs)} {statistics.median(xs) / floor:8.2f}")
    print("CPU seconds (user + system) of the same runs:")
    for label, xs in cpu.items():
        print(f"{label:32} {spread(xs)} {statistics.median(xs) / statistics.median(cpu['floor: cp + sha256sum']):8.2f}")
    print(f"{'python -c pass':32} {py:8.3f} {1.0:8.2f}")
    print(f"{'lorareg --help':32} {helpt:8.3f} {helpt / py:8.2f}")
    print(f"{'lorareg ls':32} {lst:8.3f} {lst / py:8.2f}")
    print(f"torch imported by `lorareg ls`: {torch_loaded}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
