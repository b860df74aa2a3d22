"""Time to register a large checkpoint, and CLI start-up time, each against a baseline
measured in the same run.

    python bench/add_checkpoint.py [--size-gb 1.0] [--workdir bench/_work]

Prints: `lorareg add base` (hash every tensor and file, copy into the store, link) vs the
floor `cp` + `sha256sum` of the same bytes; `lorareg --help` / `lorareg ls` vs a bare
`python -c pass`, and whether torch was imported (it must not be)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lorareg-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    ckpt = work / "ckpt"
    write_checkpoint(ckpt, args.size_gb)
    size = sum(f.stat().st_size for f in ckpt.iterdir())
    exe = str(Path(sys.executable).parent / "lorareg")
    env = dict(os.environ, LORAREG_HOME=str(work / "home"))
    subprocess.run([exe, "init"], check=True, capture_output=True, env=env)
    # warm the page cache once so both sides read from memory
    subprocess.run(["cat", str(ckpt / "model.safetensors")], check=True, stdout=subprocess.DEVNULL)
    floor = timed(["bash", "-c", f"cp {ckpt}/model.safetensors {work}/copy && sha256sum {work}/copy >/dev/null"])
    add = timed([exe, "add", "base", str(ckpt), "--name", "big"], env=env)
    py = timed([sys.executable, "-c", "pass"], repeat=5)
    helpt = timed([exe, "--help"], repeat=5)
    lst = timed([exe, "ls"], env=env, repeat=5)
    torch_loaded = subprocess.run(
        [sys.executable, "-c", "import sys; from lorareg.cli.main import cli\ntry: cli(['ls'])\nexcept SystemExit: pass\n"
         "print('torch' in sys.modules, file=sys.stderr)"], env=env, capture_output=True, text=True).stderr.strip()
    print(f"checkpoint: {size / 1e9:.2f} GB")
    print(f"{'case':32} {'seconds':>8} {'ratio':>8}")
    print(f"{'floor: cp + sha256sum':32} {floor:8.2f} {1.0:8.2f}")
    print(f"{'lorareg add base':32} {add:8.2f} {add / floor:8.2f}")
    print(f"{'python -c pass':32} {py:8.3f} {1.0:8.2f}")
    print(f"{'lorareg --help':32} {helpt:8.3f} {helpt / py:8.2f}")
    print(f"{'lorareg ls':32} {lst:8.3f} {lst / py:8.2f}")
    print(f"torch imported by `lorareg ls`: {torch_loaded}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
