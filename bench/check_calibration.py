"""Calibrating `lorareg check`'s pass rule: how far exact merges are from the float32 unmerged
model, against how far rounding alone moves the unmerged model, and where wrong merges land.

    .venv/bin/python -m bench.check_calibration [--samples 8] [--json]    # from the repository root

For each case it merges with lorareg's engine, runs the check with no tolerance applied and
prints ratio = max|merged - reference| / max|rounding baseline - reference| together with the
top-1 agreements.  Exact merges give the spread the factor must cover; the wrong ones
(a module left out, a wrong scale, one altered weight) show the margin the rule keeps."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch


def _corrupt(folder: Path, how: str, base: Path) -> None:
    """Damage a merged folder: put one merged tensor back to the base's (``left-out:NAME``),
    scale every merged delta (``scale-1.25``), or multiply one large weight by 16 through a
    single flipped exponent bit (``flip-x16``)."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    merged, original = load_file(path), load_file(base / "model.safetensors")
    changed = sorted(k for k in merged if k in original and not torch.equal(merged[k], original[k].to(merged[k].dtype)))
    if how.startswith("left-out:"):
        name = next(k for k in changed if how.partition(":")[2] in k)
        merged[name] = original[name].to(merged[name].dtype)
    elif how == "scale-1.25":
        for k in changed:  # as if every adapter had been merged at 1.25 times its weight
            o = original[k].to(torch.float32)
            merged[k] = (o + 1.25 * (merged[k].float() - o)).to(merged[k].dtype)
    elif how == "flip-x16":
        name = max(changed, key=lambda k: merged[k].numel())
        merged[name] = flip_x16(merged[name])
    save_file(merged, path, metadata={"format": "pt"})


def flip_x16(t: torch.Tensor) -> torch.Tensor:
    """``t`` with one byte changed: the largest of its values whose exponent bit
    worth x16 is clear gets it set (one flipped bit in the byte that holds it)."""
    bit = {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}[t.dtype] + 2  # exponent + 4
    ints = t.contiguous().view(torch.int32 if t.element_size() == 4 else torch.int16).flatten().clone()
    for idx in t.abs().float().flatten().argsort(descending=True).tolist():
        if not (int(ints[idx]) >> bit) & 1:
            ints[idx] = int(ints[idx]) | (1 << bit)
            return ints.view(t.dtype).view(t.shape)
    raise RuntimeError("no large value with that exponent bit clear")


WRONG_LLAMA = ["left-out:layers.0.self_attn.q_proj", "left-out:layers.0.self_attn.v_proj",
               "left-out:layers.1.mlp.down_proj", "scale-1.25", "flip-x16"]
WRONG_MINILM = ["left-out:layer.0.attention.self.query", "left-out:layer.5.output.dense", "scale-1.25", "flip-x16"]


class Models:
    """Bases and adapters for one dtype, built on first use."""

    def __init__(self, work: Path, dtype: str) -> None:
        self.work, self.dtype, self.made = work, dtype, {}

    def get(self, key: str) -> Path:
        from tests.support import factories as f

        if key in self.made:
            return self.made[key]
        dt = getattr(torch, self.dtype)
        dest = self.work / f"{key}-{self.dtype}"
        base_of = {"a1": "llama", "a2": "llama", "rs": "llama", "dora": "llama", "embhead": "llama", "mts": "llama",
                   "tok": "llama", "bias": "llama_bias", "emb": "qwen", "g": "gpt2", "m1": "minilm",
                   "ml": "minilm_llama"}
        lora = {"a1": {}, "a2": {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]},
                "rs": {"use_rslora": True, "r": 8, "lora_alpha": 16},
                "dora": {"use_dora": True, "target_modules": ["q_proj", "v_proj", "down_proj"]},
                "embhead": {"target_modules": ["embed_tokens", "q_proj", "lm_head"]},
                "mts": {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
                "tok": {"target_modules": ["q_proj"], "trainable_token_indices": [5, 9, 100]},
                "bias": {"target_modules": ["q_proj", "v_proj"], "lora_bias": True},
                "emb": {"target_modules": ["embed_tokens", "q_proj"]},
                "g": {"target_modules": ["c_attn"], "fan_in_fan_out": True}, "m1": {}, "ml": {}}
        if key == "llama":
            out = f.make_llama(dest, dtype=dt, hidden=64)
        elif key == "llama_bias":
            out = f.make_llama(dest, dtype=dt, hidden=64, attention_bias=True)
        elif key == "minilm_llama":  # a Llama the size of all-MiniLM-L6-v2 (22M parameters)
            out = f.make_llama(dest, dtype=dt, hidden=384, layers=6, intermediate_size=1536, num_attention_heads=6,
                               num_key_value_heads=2, vocab_size=30522, max_position_embeddings=512)
        elif key == "qwen":
            out = f.make_qwen2(dest, dtype=dt)
        elif key == "gpt2":
            out = f.make_gpt2(dest, dtype=dt)
        elif key == "minilm":
            out = f.minilm_path()  # float32 on disk; merged into each dtype
        else:
            seed = sorted(lora).index(key) + 1
            out = f.make_lora(self.get(base_of[key]), dest, seed=seed, **lora[key])
        self.made[key] = out
        return out


# (label, base, ((adapter, weight), ...), method, params, adapter_dtype, wrong merges tried)
CASES = [
    ("llama one adapter", "llama", (("a1", 1.0),), "linear", {}, "float32", WRONG_LLAMA),
    ("llama one adapter, adapter_dtype=base", "llama", (("a1", 1.0),), "linear", {}, "base", []),
    ("llama rslora at 0.8", "llama", (("rs", 0.8),), "linear", {}, "float32", []),
    ("llama two adapters 1.0 + 0.5", "llama", (("a1", 1.0), ("a2", 0.5)), "linear", {}, "float32", WRONG_LLAMA),
    ("llama ties", "llama", (("a1", 1.0), ("a2", 0.5)), "ties", {"density": 0.5}, "float32", WRONG_LLAMA),
    ("llama dare_ties", "llama", (("a1", 1.0), ("a2", 0.5)), "dare_ties", {"density": 0.5}, "float32", []),
    ("llama DoRA", "llama", (("dora", 1.0),), "linear", {}, "float32", []),
    ("llama LoRA on embed_tokens and lm_head", "llama", (("embhead", 1.0),), "linear", {}, "float32", []),
    ("llama modules_to_save lm_head", "llama", (("mts", 1.0),), "linear", {}, "float32", []),
    ("llama trainable tokens", "llama", (("tok", 1.0),), "linear", {}, "float32", []),
    ("llama lora_bias", "llama_bias", (("bias", 1.0),), "linear", {}, "float32", []),
    ("qwen2 tied, embedding LoRA", "qwen", (("emb", 1.0),), "linear", {}, "float32", []),
    ("gpt2 Conv1D", "gpt2", (("g", 1.0),), "linear", {}, "float32", []),
    ("all-MiniLM-L6-v2 (real weights)", "minilm", (("m1", 1.0),), "linear", {}, "float32", WRONG_MINILM),
    ("MiniLM-sized Llama (22M)", "minilm_llama", (("ml", 1.0),), "linear", {}, "float32", []),
]


def _row(label: str, dtype: str, kind: str, b) -> dict:
    return {"case": label, "dtype": dtype, "kind": kind, "reference": b.reference,
            "ratio": b.merged.max_abs / b.rounding.max_abs if b.rounding.max_abs else float("inf"),
            "mean_ratio": b.merged.mean_abs / b.rounding.mean_abs if b.rounding.mean_abs else float("inf"),
            "merged_max": b.merged.max_abs, "rounding_max": b.rounding.max_abs, "merged_top1": b.merged.top1,
            "rounding_top1": b.rounding.top1, "passed": b.passed, "failures": list(b.failures),
            "adapter_error": b.adapter_error}


def main() -> None:
    from lorareg.merge import AdapterInput, MergePlan, merge
    from lorareg.merge.as_adapter import combine_to_adapter
    from lorareg.merge.behaviour import check_behaviour
    from lorareg.merge.check_inputs import random_inputs
    from lorareg.merge.unmerged import Unmerged

    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--cases", default="", help="only cases whose label contains one of these (comma-separated)")
    ap.add_argument("--dtypes", default="float32,bfloat16,float16")
    ap.add_argument("--no-wrong", action="store_true", help="exact merges only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    wanted = [c for c in args.cases.split(",") if c]
    work = Path(tempfile.mkdtemp(prefix="check-calibration-"))
    rows = []
    try:
        for dname in args.dtypes.split(","):
            models = Models(work, dname)
            for label, base_key, adapter_keys, method, params, adapter_dtype, wrongs in CASES:
                if wanted and not any(w in label for w in wanted):
                    continue
                base = models.get(base_key)
                adapters = tuple((models.get(k), w) for k, w in adapter_keys)
                out = work / f"out-{len(rows)}"
                merge(MergePlan(base=base, adapters=tuple(AdapterInput(p, w) for p, w in adapters), method=method,
                                params=params, seed=7, dtype=dname, adapter_dtype=adapter_dtype), out)
                spec = Unmerged(base=base, adapters=adapters, method=method, params=params, seed=7,
                                adapter_dtype=adapter_dtype)
                inputs = random_inputs(out, samples=args.samples, seed=0)
                for wrong in ["exact"] + ([] if args.no_wrong else wrongs):
                    folder = out
                    if wrong != "exact":
                        folder = work / f"{out.name}-{wrong}"
                        shutil.copytree(out, folder)
                        _corrupt(folder, wrong, base)
                    b = check_behaviour(candidate=folder, output="model", dtype=dname, unmerged=spec, inputs=inputs)
                    rows.append(_row(label, dname, wrong, b))
            if wanted and not any(w in "llama two adapters as cat/svd" for w in wanted):
                continue
            a1, a2 = models.get("a1"), models.get("a2")
            for kind, rank in (("cat", None), ("svd", 2)):
                out = work / f"ad-{kind}-{dname}"
                combine_to_adapter(adapters=[(a1, 1.0), (a2, 0.5)], base=models.get("llama"), out_dir=out, kind=kind,
                                   rank=rank)
                spec = Unmerged(base=models.get("llama"), adapters=((a1, 1.0), (a2, 0.5)))
                b = check_behaviour(candidate=out, output=kind, dtype=dname, unmerged=spec,
                                    inputs=random_inputs(out.parent / f"llama-{dname}", samples=args.samples, seed=0))
                rows.append(_row(f"llama two adapters as {kind}" + (f" rank {rank}" if rank else ""), dname,
                                 "exact" if kind == "cat" else "lossy", b))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    print(f"{'case':40} {'dtype':9} {'kind':38} {'ratio':>9} {'mean r':>8} {'merged max':>10} {'rounding':>9} "
          f"{'top1 m/r':>12} pass")
    for r in rows:
        top1 = "-" if r["merged_top1"] is None else f"{r['merged_top1']:.3f}/{r['rounding_top1']:.3f}"
        print(f"{r['case']:40} {r['dtype']:9} {r['kind']:38} {r['ratio']:9.3g} {r['mean_ratio']:8.3g} "
              f"{r['merged_max']:10.3g} {r['rounding_max']:9.3g} {top1:>12} {'yes' if r['passed'] else 'NO'}")
    exact = [r["ratio"] for r in rows if r["kind"] == "exact"]
    wrong = [r["ratio"] for r in rows if r["kind"] not in ("exact", "lossy")]
    if exact:
        print(f"exact merges: ratio {min(exact):.3g} .. {max(exact):.3g}; "
              f"{sum(not r['passed'] for r in rows if r['kind'] == 'exact')} failed")
    if wrong:
        print(f"wrong merges: ratio {min(wrong):.3g} .. {max(wrong):.3g}; "
              f"{sum(r['passed'] for r in rows if r['kind'] not in ('exact', 'lossy'))} passed")


if __name__ == "__main__":
    main()
