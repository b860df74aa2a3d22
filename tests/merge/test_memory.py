"""Peak memory of a merge is bounded by the largest tensor, not by the model's size.

A child process merges a ~200 MB bf16 checkpoint (12 tensors of 16 MB, every one changed by a
LoRA) and reports its peak RSS over the RSS it had with torch and lorareg already imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

TENSORS, ROWS, COLS = 12, 2048, 4096  # 16 MiB each in bf16
TENSOR_BYTES = ROWS * COLS * 2

CHILD = r"""
import json, sys, time
from pathlib import Path

import safetensors.torch  # noqa: F401  (imported by the merge anyway: part of the baseline)
import torch  # noqa: F401

import lorareg.merge.methods  # noqa: F401
from lorareg.merge import AdapterInput, MergePlan, merge


def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


base, adapter, out, tiny_base, tiny_adapter = map(Path, sys.argv[1:6])
# Warm up on a tiny model first: the first call of each torch kernel faults its code pages into
# RSS, which is the interpreter's cost, not the merge's.
merge(MergePlan(base=tiny_base, adapters=(AdapterInput(tiny_adapter),)), out.with_name("tiny-out"))
# Reset the high-water mark to the current RSS (Linux >= 4.0), so the peak is the merge's own.
Path("/proc/self/clear_refs").write_text("5")
baseline = status("VmRSS")
start = time.perf_counter()
result = merge(MergePlan(base=base, adapters=(AdapterInput(adapter),)), out)
elapsed = time.perf_counter() - start
print(json.dumps({"baseline": baseline, "peak": status("VmHWM"), "seconds": elapsed,
                  "changed": result.tensors_changed, "total": result.tensors_total}))
"""


def _build(tmp_path: Path, tensors: int = TENSORS, rows: int = ROWS, cols: int = COLS) -> tuple[Path, Path]:
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    base = tmp_path / "base"
    base.mkdir(parents=True)
    weights = {f"layers.{i}.proj.weight": torch.randn(rows, cols, generator=gen).to(torch.bfloat16)
               for i in range(tensors)}
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    del weights
    (base / "config.json").write_text(json.dumps({"architectures": ["ToyModel"], "model_type": "toy"}))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    lora = {}
    for i in range(tensors):
        lora[f"base_model.model.layers.{i}.proj.lora_A.weight"] = torch.randn(8, cols, generator=gen) * 0.05
        lora[f"base_model.model.layers.{i}.proj.lora_B.weight"] = torch.randn(rows, 8, generator=gen) * 0.05
    save_file(lora, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["proj"]}
    ))
    return base, adapter


def test_peak_rss_is_bounded_by_the_largest_tensor(tmp_path):
    base, adapter = _build(tmp_path)
    tiny = _build(tmp_path / "tiny", tensors=2, rows=64, cols=32)
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(base), str(adapter), str(tmp_path / "out"), *map(str, tiny)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert (report["changed"], report["total"]) == (TENSORS, TENSORS)
    grew = report["peak"] - report["baseline"]
    model_bytes = TENSORS * TENSOR_BYTES
    print(f"\nmerge of {model_bytes / 2**20:.0f} MiB: peak RSS +{grew / 2**20:.1f} MiB over a "
          f"{report['baseline'] / 2**20:.0f} MiB baseline, {report['seconds']:.2f} s")
    # One bf16 read buffer plus one float32 delta is 3x the largest tensor (plus the adapter
    # and 1 MiB of block buffers); allow 4x.
    assert grew < 4 * TENSOR_BYTES, f"peak grew by {grew / 2**20:.1f} MiB"
    assert grew < model_bytes / 2
