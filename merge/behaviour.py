"""Does a merged output behave like the unmerged model its recipe describes?

Three runs on the same token sequences, one model in memory at a time:

1. the reference: the unmerged model (``unmerged.py``) in float32;
2. the rounding baseline: the same unmerged model in the output's dtype (in float64 when
   the output is float32, whose own rounding is then the one to measure): how far rounding
   alone moves the outputs;
3. the candidate: the merged folder loaded with plain transformers (or, for ``cat``/``svd``
   outputs, the combined adapter applied to the base through PEFT).

Each of 2 and 3 is measured against 1: max and mean absolute difference of the logits (the
last hidden state for an encoder), top-1 agreement, and with ``max_new_tokens`` greedy
generations compared token by token.

**The pass rule.**  The candidate passes when (1) its max |difference| from the reference is
at most ``FACTOR`` times the rounding baseline's, and (2) its top-1 agreement is at least the
baseline's at the positions rounding alone cannot flip (the reference's top token leads by
more than twice the baseline's max |difference|).  Counted over all positions, (2) failed
exact merges at random: tiny models have many near-ties, and an exact bf16 lora_bias merge
agreed at 94.9% of positions where the bf16 unmerged model agreed at 99.2%, with its max
|difference| 0.97x the baseline's.

``FACTOR`` was calibrated with bench/check_calibration.py: exact merges of tiny Llama (one
adapter, rsLoRA at 0.8, two adapters at 1.0 + 0.5, ties, dare_ties, DoRA, embedding and
lm_head LoRA, modules_to_save, trainable tokens, lora_bias, adapter_dtype=base), GPT-2
(Conv1D), Qwen2 (tied embeddings), a 22M-parameter Llama and the real all-MiniLM-L6-v2
weights, each in float32, bfloat16 and float16, and cat adapters, gave candidate/baseline
ratios of 0 to 1.63 (0: a float64-deltas reference in float32 is the merged weights
exactly).  ``FACTOR = 4`` leaves 2.4x of margin above that.  Wrong merges, against their
rounding baselines: in float32 every one was over 2,000x; in bfloat16 and float16 a +25%
scale was 7-230x, one weight made 16x larger (a flipped exponent bit) 7-450x, layer 0's
v_proj left out 41-510x and layer 1's down_proj 11-130x.  What moves the outputs less than
rounding does cannot be told from it: layer 0's q_proj LoRA left out of a bfloat16 tiny
Llama (1.4-2.4x) and the first query LoRA left out of bfloat16 MiniLM (3.2x) pass.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lorareg.errors import LoraregError
from lorareg.merge.check_inputs import CheckInputs
from lorareg.merge.unmerged import Unmerged, adapter_error, is_causal, load_adapter_on_base, load_plain, load_unmerged

if TYPE_CHECKING:
    import torch

__all__ = ["FACTOR", "RULE", "Behaviour", "Measure", "check_behaviour"]

FACTOR = 4.0
RULE = (f"passes when the merged model's max |logit difference| from the float32 unmerged model is at most "
        f"{FACTOR:g}x the difference rounding alone makes (the unmerged model run in the merged dtype; float64 "
        f"for float32 merges), and wherever rounding alone cannot change the top token, the merged model picks "
        f"the unmerged model's top token too")

Output = Literal["model", "cat", "svd"]


@dataclass(frozen=True)
class Measure:
    """One model's outputs against the float32 reference's."""

    max_abs: float  # inf when its outputs are not finite
    mean_abs: float
    top1: float | None  # fraction of all positions with the reference's argmax (None: an encoder)
    top1_decisive: float | None  # the same, at positions rounding alone cannot flip (see ``Behaviour``)
    generation: float | None  # fraction of generated tokens equal, position by position


@dataclass(frozen=True)
class Behaviour:
    reference: str  # peft-unmerged | float64-deltas
    compared: str  # what was run as the candidate, in words
    baseline: str  # what the rounding baseline ran, in words
    outputs: str  # "logits" | "last hidden state"
    dtype: str
    merged: Measure
    rounding: Measure
    factor: float
    tolerance: float
    passed: bool
    failures: tuple[str, ...]  # why it did not pass, one line each
    positions: int  # token positions compared
    # Positions where the reference's top token leads the runner-up by more than twice the
    # rounding baseline's max |difference|: rounding alone can never change the top token
    # there, so the baseline agrees at all of them and so must the merged model.  Closer
    # calls are coin flips under rounding (tiny random models have many) and would make
    # the top-1 rule fail exact merges at random.
    decisive_positions: int | None = None
    adapter_error: float | None = None  # cat/svd: max relative Frobenius error of the combined deltas


class _Reference:
    """The float32 reference's outputs, generated tokens and top-1 margin per position.

    The outputs are kept for the two runs that follow.  Beyond ``_KEEP_IN_MEMORY`` bytes
    (many long prompts times a large vocabulary) they go to a temporary folder instead, one
    safetensors file per sequence, so a long prompt file does not cost its logits in RAM."""

    def __init__(self, causal: bool) -> None:
        self.causal = causal
        self._outputs: list = []  # tensors, or paths of spilled ones
        self._bytes = 0
        self._spill = None
        self.generated: list = []
        self.margins: list[float] = []

    def add(self, out: "torch.Tensor", generated: tuple[int, ...] | None) -> None:
        self.generated.append(generated)
        if self.causal:
            top = out.float().topk(2, dim=-1).values
            self.margins += (top[:, 0] - top[:, 1]).tolist()
        self._bytes += out.numel() * out.element_size()
        if self._bytes <= _KEEP_IN_MEMORY:
            self._outputs.append(out)
            return
        import tempfile

        from safetensors.torch import save_file

        if self._spill is None:
            self._spill = tempfile.TemporaryDirectory(prefix="lorareg-check-")
        path = f"{self._spill.name}/{len(self._outputs)}.safetensors"
        save_file({"out": out.contiguous()}, path)
        self._outputs.append(path)

    def outputs(self) -> Iterator["torch.Tensor"]:
        from safetensors.torch import load_file

        for item in self._outputs:
            yield load_file(item)["out"] if isinstance(item, str) else item

    def close(self) -> None:
        if self._spill is not None:
            self._spill.cleanup()


class _Accumulator:
    def __init__(self, causal: bool) -> None:
        self.causal = causal
        self.max = 0.0
        self.total = 0.0
        self.count = 0
        self.agree: list[bool] = []
        self.finite = True
        self.gen_same = 0
        self.gen_total = 0

    def add(self, ref: "torch.Tensor", out: "torch.Tensor") -> None:
        diff = (out.double() - ref.double()).abs()
        if not bool(diff.isfinite().all()):
            self.finite = False
        else:
            self.max = max(self.max, float(diff.max()))
            self.total += float(diff.sum())
        self.count += diff.numel()
        if self.causal:
            self.agree += (out.argmax(-1) == ref.argmax(-1)).tolist()

    def add_generation(self, ref: tuple[int, ...], out: tuple[int, ...]) -> None:
        self.gen_same += sum(a == b for a, b in zip(ref, out))
        self.gen_total += max(len(ref), len(out))

    def result(self, decisive: list[bool] | None) -> Measure:
        top1 = top1_decisive = None
        if self.causal and self.agree:
            top1 = sum(self.agree) / len(self.agree)
            picked = [a for a, d in zip(self.agree, decisive or []) if d]
            top1_decisive = sum(picked) / len(picked) if picked else 1.0
        generation = self.gen_same / self.gen_total if self.gen_total else None
        if not self.finite:
            return Measure(math.inf, math.inf, top1, top1_decisive, generation)
        return Measure(max_abs=self.max, mean_abs=self.total / max(self.count, 1), top1=top1,
                       top1_decisive=top1_decisive, generation=generation)


def _generation_config(model, max_new_tokens: int):
    from transformers import GenerationConfig

    own = getattr(model, "generation_config", None)
    eos = getattr(own, "eos_token_id", None)
    pad = getattr(own, "pad_token_id", None)
    if pad is None:
        pad = eos[0] if isinstance(eos, list) and eos else eos
    # min_new_tokens = max_new_tokens: every run generates exactly N tokens (EOS is not
    # allowed to end one early), so the comparison is position by position.
    return GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                            min_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad)


def _run(model, inputs: CheckInputs, *, causal: bool, device: str,
         max_new_tokens: int | None) -> Iterator[tuple["torch.Tensor", tuple[int, ...] | None]]:
    """(outputs, generated tokens) per sequence, one sequence at a time (no padding to mask)."""
    import torch

    config = _generation_config(model, max_new_tokens) if max_new_tokens else None
    with torch.inference_mode():
        for seq in inputs.sequences:
            ids = torch.tensor([seq], dtype=torch.long, device=device)
            out = model(input_ids=ids)
            values = (out.logits if causal else out.last_hidden_state)[0].detach().to("cpu")
            generated = None
            if config is not None:
                full = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
                generated = tuple(int(t) for t in full[0, ids.shape[1]:].tolist())
            yield values, generated


def _quiet():
    """transformers' generation and loading chatter stays out of a check's output."""
    from contextlib import ExitStack
    import warnings

    from transformers.utils import logging as hf_logging

    stack = ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    stack.callback(hf_logging.set_verbosity, before)
    if hf_logging.is_progress_bar_enabled():  # "Loading weights" bars, three per check
        hf_logging.disable_progress_bar()
        stack.callback(hf_logging.enable_progress_bar)
    # bitsandbytes, when installed, warns on import (through PEFT) about an optional CPU kernel
    bnb = logging.getLogger("bitsandbytes")
    stack.callback(bnb.setLevel, bnb.level)
    bnb.setLevel(logging.ERROR)
    return stack


# Models hold reference cycles (PEFT's hooks, tied modules), so the one just run is freed by
# a full collection before the next loads; for a small one the collection (~0.4 s with
# transformers imported) costs more than the memory it gives back.
_COLLECT_ABOVE = 50_000_000  # parameters
_KEEP_IN_MEMORY = 1 << 30  # bytes of reference outputs held in RAM (8 x 32 tokens x 128k vocab: 131 MB)


def _large(model) -> bool:
    return sum(p.numel() for p in model.parameters()) > _COLLECT_ABOVE


def _reference(load, inputs: CheckInputs, *, causal: bool, device: str, max_new_tokens: int | None) -> _Reference:
    model = load()
    ref = _Reference(causal)
    for out, generated in _run(model, inputs, causal=causal, device=device, max_new_tokens=max_new_tokens):
        ref.add(out, generated)
    large = _large(model)
    del model
    if large:
        gc.collect()
    return ref


def _against(load, ref: _Reference, inputs: CheckInputs, *, causal: bool, device: str,
             max_new_tokens: int | None) -> _Accumulator:
    model = load()
    acc = _Accumulator(causal)
    runs = _run(model, inputs, causal=causal, device=device, max_new_tokens=max_new_tokens)
    for want, want_gen, (out, gen) in zip(ref.outputs(), ref.generated, runs):
        acc.add(want, out)
        if max_new_tokens:
            acc.add_generation(want_gen, gen)
    large = _large(model)
    del runs, model
    if large:
        gc.collect()
    return acc


def check_behaviour(*, candidate: Path, output: Output, dtype: str, unmerged: Unmerged, inputs: CheckInputs,
                    max_new_tokens: int | None = None, device: str = "cpu", factor: float = FACTOR,
                    progress: Callable[[int, int, str], None] | None = None) -> Behaviour:
    """Run the reference, the rounding baseline and the candidate; apply the pass rule.
    ``progress(done, 3, what runs next)`` is called before each of the three runs."""
    step = progress or (lambda *_: None)
    causal = is_causal(unmerged.base)
    if max_new_tokens and not causal:
        raise LoraregError("an encoder model has no generation to compare", hint="drop --max-new-tokens")
    if not inputs.sequences:
        raise LoraregError("no input sequences to run", hint="pass --samples N with N >= 1")
    # float32 outputs: the float64 run says how far float32's own rounding moves them
    baseline_dtype = "float64" if dtype == "float32" else dtype
    autocast = unmerged.adapter_dtype != "base"
    run = {"causal": causal, "device": device, "max_new_tokens": max_new_tokens}
    with _quiet() as stack:
        step(0, 3, "the unmerged model in float32")
        ref = _reference(lambda: load_unmerged(unmerged, "float32", device=device), inputs, **run)
        stack.callback(ref.close)
        step(1, 3, f"the unmerged model in {baseline_dtype}")
        rounding = _against(lambda: load_unmerged(unmerged, baseline_dtype, device=device, autocast=autocast),
                            ref, inputs, **run)
        step(2, 3, "the merged model")
        if output == "model":
            compared = "the merged model"
            merged = _against(lambda: load_plain(candidate, dtype, device=device), ref, inputs, **run)
        else:
            compared = f"the combined {output} adapter on the base"
            merged = _against(lambda: load_adapter_on_base(unmerged.base, candidate, dtype, device=device),
                              ref, inputs, **run)
        error = adapter_error(unmerged, candidate) if output != "model" else None
        step(3, 3, "done")
    r = rounding.result(None)
    decisive = [m > 2 * r.max_abs for m in ref.margins] if causal else None
    r, mm = rounding.result(decisive), merged.result(decisive)
    tolerance = factor * r.max_abs
    failures = _failures(mm, r, tolerance, dtype)
    return Behaviour(
        reference=unmerged.reference, compared=compared,
        baseline=f"the unmerged model in {baseline_dtype}", outputs="logits" if causal else "last hidden state",
        dtype=dtype, merged=mm, rounding=r, factor=factor, tolerance=tolerance, passed=not failures,
        failures=tuple(failures), positions=inputs.positions,
        decisive_positions=sum(decisive) if decisive is not None else None, adapter_error=error)


def _failures(merged: Measure, rounding: Measure, tolerance: float, dtype: str) -> list[str]:
    out = []
    if not math.isfinite(merged.max_abs):
        out.append("its outputs are not finite (inf or NaN)")
    elif merged.max_abs > tolerance:
        times = merged.max_abs / tolerance if tolerance > 0 else math.inf
        out.append(f"max |difference| {merged.max_abs:.3g} is {times:.3g}x the tolerance {tolerance:.3g}")
    if not math.isfinite(rounding.max_abs):
        out.append(f"the unmerged model itself gives non-finite outputs in {dtype}")
    if merged.top1_decisive is not None and rounding.top1_decisive is not None \
            and merged.top1_decisive < rounding.top1_decisive:
        out.append(f"top-1 agreement {merged.top1_decisive:.2%} at the positions rounding cannot flip is below "
                   f"the unmerged model's own {rounding.top1_decisive:.2%}")
    return out
