"""Taking an adapter back out, in bf16: PEFT's merge -> unmerge round trip vs lorareg's
rollback (--strategy subtract, and the default exact rebuild), on the same base and adapter.

    .venv/bin/python -m bench.rollback_drift [--hidden 256] [--layers 4] [--cycles 3]    # from the repository root

Every number is measured against the original base weights in this run."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def drift(a: dict, b: dict) -> tuple[float, float]:
    changed = total = 0
    worst = 0.0
    for k, v in a.items():
        w = b[k]
        total += v.numel()
        changed += int((v != w).sum())
        worst = max(worst, float((v.float() - w.float()).abs().max()))
    return changed / total, worst


def main() -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from lorareg import Registry
    from tests.support.factories import make_llama, make_lora

    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--cycles", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lorareg-drift-"))
    base = make_llama(work / "base", dtype=torch.bfloat16, hidden=args.hidden, layers=args.layers)
    keep = make_lora(base, work / "keep", seed=1, r=16, lora_alpha=32)
    out = make_lora(base, work / "out", seed=2, r=16, lora_alpha=32)
    original = load_file(base / "model.safetensors")

    # PEFT: merge_adapter() then unmerge_adapter() on the bf16 model, repeated
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    peft = PeftModel.from_pretrained(model, out)
    rows = []
    for cycle in range(1, args.cycles + 1):
        peft.merge_adapter()
        peft.unmerge_adapter()
        sd = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
              for k, v in peft.state_dict().items() if "lora_" not in k}
        frac, worst = drift(original, {k: sd[k] for k in original})
        rows.append((f"PEFT merge->unmerge x{cycle}", frac, worst))

    # lorareg: merge keep+out, then take `out` back out
    reg = Registry.open(home=work / "home")
    reg.add_base(path=base, name="base")
    reg.add_adapter(path=keep, base="base", name="keep")
    reg.add_adapter(path=out, base="base", name="out")
    solo = reg.merge(base="base", adapters=["out"], name="solo")
    sub = reg.rollback_adapter(ref=solo.ref, adapter="out", strategy="subtract")
    frac, worst = drift(original, load_file(sub.path / "model.safetensors"))
    rows.append(("lorareg subtract (base + out - out)", frac, worst))
    exact = reg.rollback_adapter(ref=solo.ref, adapter="out")
    frac, worst = drift(original, load_file(exact.path / "model.safetensors"))
    rows.append(("lorareg rebuild (base + out - out)", frac, worst))

    two = reg.merge(base="base", adapters=["keep", "out"], name="two")
    one = reg.merge(base="base", adapters=["keep"], name="one")
    sub2 = reg.rollback_adapter(ref=two.ref, adapter="out", strategy="subtract")
    frac, worst = drift(load_file(one.path / "model.safetensors"), load_file(sub2.path / "model.safetensors"))
    rows.append(("lorareg subtract (keep+out - out) vs keep", frac, worst))
    dev = sub2.details["outcome"]["subtract_deviation"]
    reb = reg.rollback_adapter(ref=two.ref, adapter="out")
    rows.append(("lorareg rebuild (keep+out - out) vs keep", 0.0 if reb.digest == one.digest else float("nan"), 0.0))

    n = sum(v.numel() for v in original.values())
    print(f"bf16 Llama, hidden {args.hidden}, {args.layers} layers, {n / 1e6:.1f}M params; adapters r=16")
    print(f"{'case':44} {'elements changed':>17} {'max abs err':>12}")
    for name, f, w in rows:
        print(f"{name:44} {f:17.2%} {w:12.3g}")
    print(f"subtract deviation recorded by lorareg: max {dev['max_ulp_of_merged']:.2f} ulp of the merged weight")


if __name__ == "__main__":
    main()
