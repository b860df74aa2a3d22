"""Benchmark: lorareg's streaming merge vs PEFT's merge_and_unload vs the I/O floor.

    python bench/merge_vs_peft.py [--small] [--keep] [--workdir DIR] [--profile]

Generates a Llama-shaped bf16 checkpoint (~1.1B parameters; ~124M with --small) and an r=16
LoRA adapter on all seven projections, then runs each case in its own process and reports
wall time and peak RSS:

  peft     AutoPeftModelForCausalLM.from_pretrained(adapter, torch_dtype=bf16)
           -> merge_and_unload() -> save_pretrained()
  lorareg  lorareg.merge.engine.merge (the merged folder written and hashed)
  floor    read every base shard, write the same bytes, sha256 them, fsync: no tensor work

Each case runs under a fresh "runner" process whose only child is the case, so
getrusage(RUSAGE_CHILDREN).ru_maxrss is that case's peak RSS alone.  The base is read once
before the cases, so all of them start with it in the page cache.  Afterwards lorareg's
output is compared with PEFT's tensor by tensor, bit for bit (skip with --no-verify).  Dirty
pages are synced and the disk given --settle seconds (untimed) before each case, so none
inherits another's writeback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FULL = {"hidden": 2048, "intermediate": 5632, "layers": 22, "heads": 32, "kv_heads": 4, "vocab": 32000}
SMALL = {"hidden": 768, "intermediate": 2048, "layers": 12, "heads": 12, "kv_heads": 4, "vocab": 32000}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK, ALPHA = 16, 32
SHARD_BYTES = 1 << 30
TARGETS = {"speedup vs peft": 4.0, "vs floor": 2.5, "rss_mb": 600.0}


# --- generation --------------------------------------------------------------------------

def _base_tensors(s: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, i, kv = s["hidden"], s["intermediate"], s["hidden"] // s["heads"] * s["kv_heads"]
    out = [("model.embed_tokens.weight", (s["vocab"], h))]
    for n in range(s["layers"]):
        p = f"model.layers.{n}."
        out += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
        ]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (s["vocab"], h))]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _write_safetensors(path: Path, entries: list[tuple[str, tuple[int, ...], str, int]], make) -> None:
    """Write one safetensors file tensor by tensor: header first, then each tensor's bytes.

    ``entries`` are (name, shape, dtype tag, bytes per element); ``make(name, shape)`` returns
    the tensor.  Only one tensor is ever in memory, unlike safetensors.torch.save_file.
    """
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, tag, size in entries:
        nbytes = _numel(shape) * size
        header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    import torch

    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, shape, _tag, _size in entries:
            t = make(name, shape).contiguous()
            f.write(t.view(-1).view(torch.uint8).numpy().tobytes())


def generate_base(dest: Path, s: dict) -> Path:
    import torch
    from transformers import LlamaConfig

    dest.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)

    def make(name: str, shape: tuple[int, ...]):
        if name.endswith("norm.weight"):
            return torch.ones(shape, dtype=torch.bfloat16)
        return (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)

    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in _base_tensors(s):
        nbytes = _numel(shape) * 2
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    weight_map, total = {}, 0
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        _write_safetensors(dest / fname, [(n, sh, "BF16", 2) for n, sh in shard], make)
        for n, sh in shard:
            weight_map[n] = fname
            total += _numel(sh) * 2
    (dest / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    LlamaConfig(
        vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["intermediate"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
        max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        dtype="bfloat16", architectures=["LlamaForCausalLM"],
    ).save_pretrained(dest)
    return dest


def generate_adapter(dest: Path, base: Path, s: dict) -> Path:
    import torch
    from peft import LoraConfig

    dest.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(1)
    entries = []
    for name, shape in _base_tensors(s):
        module = name.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] not in PROJECTIONS:
            continue
        out_f, in_f = shape
        prefix = f"base_model.model.{module}"
        entries += [(prefix + ".lora_A.weight", (RANK, in_f), "F32", 4),
                    (prefix + ".lora_B.weight", (out_f, RANK), "F32", 4)]
    _write_safetensors(dest / "adapter_model.safetensors", entries,
                       lambda n, sh: torch.randn(sh, generator=gen) * 0.02)
    LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(PROJECTIONS), task_type="CAUSAL_LM",
               base_model_name_or_path=str(base)).save_pretrained(dest)
    return dest


# --- cases (each runs in its own process) ------------------------------------------------

def _sha256_folder(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.iterdir()):
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(16 << 20):
                h.update(chunk)
        out[p.name] = h.hexdigest()
    return out


def case_peft(work: Path, out: Path) -> None:
    import torch
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(work / "adapter", torch_dtype=torch.bfloat16)
    merged = model.merge_and_unload()
    merged.save_pretrained(out)


def case_peft_fsync(work: Path, out: Path) -> None:
    # PEFT with the same durability lorareg and the floor pay: every output file fsynced.
    case_peft(work, out)
    for f in sorted(out.iterdir()):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def case_lorareg(work: Path, out: Path) -> None:
    from lorareg.merge.engine import merge
    from lorareg.merge.plan import AdapterInput, MergePlan

    merge(plan=MergePlan(base=work / "base", adapters=(AdapterInput(path=work / "adapter"),)), out_dir=out)


def case_floor(work: Path, out: Path) -> None:
    # Every byte of the base read, written once, hashed once and fsynced (lorareg's writer
    # fsyncs each shard too): what any durable merge must at least do.
    out.mkdir(parents=True)
    for src in sorted((work / "base").iterdir()):
        h = hashlib.sha256()
        with open(src, "rb") as fin, open(out / src.name, "wb") as fout:
            while chunk := fin.read(16 << 20):
                fout.write(chunk)
                h.update(chunk)
            fout.flush()
            os.fsync(fout.fileno())


def prepare_inputs(work: Path, spec: dict) -> None:
    """The benchmark base and adapter under ``work`` (kept between runs of the same spec)."""
    stamp = work / "spec.json"
    if work.exists() and any(work.iterdir()) and not stamp.exists():
        # Everything under the work dir gets deleted; never do that to a folder we did not make.
        raise SystemExit(f"{work} is not empty and not a benchmark work dir; pass a new or empty --workdir")
    if not (stamp.exists() and json.loads(stamp.read_text()) == spec):
        shutil.rmtree(work, ignore_errors=True)
        t0 = time.perf_counter()
        generate_base(work / "base", spec)
        generate_adapter(work / "adapter", work / "base", spec)
        stamp.write_text(json.dumps(spec))
        print(f"generated base + adapter in {time.perf_counter() - t0:.0f} s under {work}", flush=True)


CASES = {"peft": case_peft, "peft_fsync": case_peft_fsync, "lorareg": case_lorareg, "floor": case_floor}


def run_case(name: str, work: Path, profile: bool) -> dict:
    """Runner: start the case as this process's only child; report its time and peak RSS."""
    out = work / f"out-{name}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--workdir", str(work), "--case", name]
    if profile:
        cmd.append("--profile")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"case {name} failed with exit code {proc.returncode}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    out_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"case": name, "wall_s": wall, "peak_rss_mb": peak_kb / 1024, "out_bytes": out_bytes,
            "log": proc.stdout[-4000:]}


def _measure(name: str, work: Path, profile: bool) -> dict:
    cmd = [sys.executable, __file__, "--workdir", str(work), "--runner", name] + (["--profile"] if profile else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(proc.returncode)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def verify(a: Path, b: Path) -> str:
    """Compare two merged folders tensor by tensor, bit for bit (one tensor in memory at a time)."""
    import torch
    from safetensors import safe_open

    def index(folder: Path) -> dict[str, Path]:
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(f, framework="pt") as h:
                out.update({k: f for k in h.keys()})
        return out

    ia, ib = index(a), index(b)
    if ia.keys() != ib.keys():
        return f"DIFFERENT tensor names: {sorted(ia.keys() ^ ib.keys())[:5]}"
    differ, worst = 0, 0.0
    for name in sorted(ia):
        with safe_open(ia[name], framework="pt") as ha, safe_open(ib[name], framework="pt") as hb:
            x, y = ha.get_tensor(name), hb.get_tensor(name)
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x.view(torch.uint8), y.view(torch.uint8)):
            differ += 1
            worst = max(worst, (x.double() - y.double()).abs().max().item())
    if differ:
        return f"{differ} of {len(ia)} tensors differ from PEFT's (max abs diff {worst:.3g})"
    return f"all {len(ia)} tensors bit-identical to PEFT's"


def _warm_page_cache(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            while f.read(64 << 20):
                pass


def _table(results: dict[str, dict], base_bytes: int) -> str:
    rows = [f"{'case':<10} {'wall s':>8} {'peak RSS MB':>12} {'out GB':>7}"]
    for name in ("peft", "peft_fsync", "lorareg", "floor"):
        if name in results:
            r = results[name]
            rows.append(f"{name:<10} {r['wall_s']:>8.1f} {r['peak_rss_mb']:>12.0f} {r['out_bytes'] / 1e9:>7.2f}")
    rows.append(f"(base checkpoint: {base_bytes / 1e9:.2f} GB)")
    if {"peft", "lorareg"} <= results.keys():
        speedup = results["peft"]["wall_s"] / results["lorareg"]["wall_s"]
        rows.append(f"lorareg speedup vs PEFT: {speedup:.2f}x   (target >= {TARGETS['speedup vs peft']}x)")
    if {"peft_fsync", "lorareg"} <= results.keys():
        speedup = results["peft_fsync"]["wall_s"] / results["lorareg"]["wall_s"]
        rows.append(f"lorareg speedup vs PEFT + fsync: {speedup:.2f}x   (same durability)")
    if {"floor", "lorareg"} <= results.keys():
        ratio = results["lorareg"]["wall_s"] / results["floor"]["wall_s"]
        rows.append(f"lorareg / I/O floor:     {ratio:.2f}x   (target <= {TARGETS['vs floor']}x)")
    if "lorareg" in results:
        rss = results["lorareg"]["peak_rss_mb"]
        rows.append(f"lorareg peak RSS:        {rss:.0f} MB (target < {TARGETS['rss_mb']:.0f} MB)")
    if {"peft", "lorareg"} <= results.keys():
        rows.append(f"PEFT / lorareg RSS:      {results['peft']['peak_rss_mb'] / results['lorareg']['peak_rss_mb']:.1f}x")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="a ~124M-parameter model for a quick check")
    ap.add_argument("--keep", action="store_true", help="keep the generated base and adapter")
    ap.add_argument("--workdir", type=Path, default=HERE / "_work")
    ap.add_argument("--cases", default="floor,lorareg,peft", help="comma-separated subset, run in this order")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds to wait after syncing, before each case (lets the disk drain)")
    ap.add_argument("--profile", action="store_true", help="cProfile the lorareg case (top 25 by cumulative time)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    ap.add_argument("--no-verify", dest="verify", action="store_false",
                    help="skip checking that lorareg's output is bit-identical to PEFT's")
    ap.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    ap.add_argument("--runner", choices=CASES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = args.workdir.resolve()

    if args.case:  # worker: the measured process
        out = work / f"out-{args.case}"
        if args.profile and args.case == "lorareg":
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(CASES[args.case], work, out)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        else:
            CASES[args.case](work, out)
        return
    if args.runner:  # runner: one child, so RUSAGE_CHILDREN is that child alone
        print(json.dumps(run_case(args.runner, work, args.profile)))
        return

    spec = SMALL if args.small else FULL
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - CASES.keys()
    if unknown:
        ap.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    prepare_inputs(work, spec)
    base_bytes = sum(p.stat().st_size for p in (work / "base").iterdir())
    _warm_page_cache(work / "base")
    results = {}
    for name in cases:
        # Flush what earlier steps left dirty (PEFT does not fsync its output) so that its
        # writeback does not compete with the next case for the disk.
        os.sync()
        time.sleep(args.settle)
        print(f"running {name} ...", flush=True)
        results[name] = _measure(name, work, args.profile)
        if args.profile and name == "lorareg":
            print(results[name]["log"])
        if name == "floor" or not args.verify:
            shutil.rmtree(work / f"out-{name}", ignore_errors=True)
    print(_table(results, base_bytes))
    if args.verify and {"peft", "lorareg"} <= results.keys():
        print("check:", verify(work / "out-lorareg", work / "out-peft"))
    for name in results:
        shutil.rmtree(work / f"out-{name}", ignore_errors=True)
    if args.json:
        print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "log"} for k, v in results.items()}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
