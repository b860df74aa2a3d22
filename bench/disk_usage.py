"""Disk used by ten merged versions of one base, kept as files vs as recipe only.

    .venv/bin/python -m bench.disk_usage [--hidden 512] [--layers 4]    # from the repository root

Blobs are content-addressed, so what the versions share (tokenizer, config, untouched
tensors' shards when identical) is stored once; `--keep recipe` stores no weights at all."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def main() -> None:
    from lorareg import Registry
    from tests.support.factories import make_llama, make_lora

    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lorareg-disk-"))
    base = make_llama(work / "base", dtype=torch.bfloat16, hidden=args.hidden, layers=args.layers)
    adapters = [make_lora(base, work / f"a{i}", seed=i, r=8, lora_alpha=16) for i in range(2)]
    base_bytes = du(base)
    results = {}
    for keep in ("files", "recipe"):
        reg = Registry.open(home=work / f"home-{keep}")
        reg.add_base(path=base, name="base")
        for i, a in enumerate(adapters):
            reg.add_adapter(path=a, base="base", name=f"a{i}")
        before = du(reg.location().blobs)
        for v in range(10):
            reg.merge(base="base", adapters=["a0", f"a1:{(v + 1) / 10}"], name="m", keep=keep)
        results[keep] = du(reg.location().blobs) - before
        reg.close()
    print(f"base checkpoint: {base_bytes / 1e6:.1f} MB (bf16, hidden {args.hidden}, {args.layers} layers)")
    print(f"{'ten merged versions':28} {'disk':>10} {'x base':>8}")
    for keep, n in results.items():
        print(f"{'--keep ' + keep:28} {n / 1e6:8.2f} MB {n / base_bytes:8.2f}")


if __name__ == "__main__":
    main()
