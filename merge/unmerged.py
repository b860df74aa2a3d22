"""The models a merged output is checked against, built from the recipe's inputs.

``linear`` has an unmerged form: the base with every adapter loaded through PEFT
(``PeftModel``), each adapter's ``scaling`` multiplied by its recipe weight and all of them
active, so the forward pass computes ``W x + sum_i w_i s_i B_i A_i x`` exactly as users run
an adapter model.  The other methods (ties, dare, magnitude_prune) change the deltas
themselves, so they have none: their reference is the base plus the recipe's combined deltas
added in float64 and kept unrounded.  The per-adapter deltas come from PEFT
(``get_delta_weight``); they are combined by the recipe's method with the same per-tensor
seed the engine uses, so a random mask is the one the recipe drew.

Models load one at a time (the caller frees each before the next) and with
``low_cpu_mem_usage=True`` (transformers >= 5 always loads that way; older ones need the flag).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorareg.errors import LoraregError, UnsupportedFeatureError

if TYPE_CHECKING:
    import torch

__all__ = ["PEFT_UNMERGED", "FLOAT64_DELTAS", "Unmerged", "adapter_error", "is_causal", "load_adapter_on_base",
           "load_plain", "load_unmerged", "torch_dtype"]

PEFT_UNMERGED = "peft-unmerged"
FLOAT64_DELTAS = "float64-deltas"
_NAME = "lorareg_{}"  # adapter names inside the PeftModel, by recipe position
_DTYPES = ("float32", "bfloat16", "float16", "float64")


@dataclass(frozen=True)
class Unmerged:
    """What a recipe says a merged output is: its base and adapters as folders, and how they combine."""

    base: Path
    adapters: tuple[tuple[Path, float], ...]
    method: str = "linear"
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    seed: int = 0
    adapter_dtype: str = "float32"  # "base": the merge rounded A and B to the output dtype first

    @property
    def reference(self) -> str:
        # Only a weighted sum of deltas is what several active adapters compute; the other
        # methods trim, drop or elect signs per element, which no adapter model does.
        return PEFT_UNMERGED if self.method == "linear" else FLOAT64_DELTAS


def torch_dtype(name: str) -> "torch.dtype":
    import torch

    if name not in _DTYPES:
        raise LoraregError(f"unknown dtype {name!r}", hint="use one of: " + ", ".join(_DTYPES))
    return getattr(torch, name)


def _architecture(folder: Path) -> str:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise LoraregError(f"{folder} has no config.json", hint="check a merged model, not a bare tensor folder")
    archs = json.loads(path.read_text(encoding="utf-8")).get("architectures") or [""]
    return archs[0] or ""


def is_causal(folder: Path) -> bool:
    """A model with a language-model head (logits, generation), or an encoder (hidden states)."""
    arch = _architecture(folder)
    return arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel")


def _auto_class(folder: Path):
    import transformers

    return transformers.AutoModelForCausalLM if is_causal(folder) else transformers.AutoModel


def load_plain(folder: Path, dtype: str, *, device: str):
    """A model folder with plain transformers, as a user of the merged model loads it."""
    model = _auto_class(folder).from_pretrained(str(folder), dtype=torch_dtype(dtype), low_cpu_mem_usage=True)
    return model.to(device).eval()


def _with_adapters(base_model, adapters: tuple[tuple[Path, float], ...], *, autocast: bool, scale: bool):
    """``base_model`` with every adapter loaded and active (scaled by its weight when ``scale``)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    names = [_NAME.format(i) for i in range(len(adapters))]
    model = PeftModel.from_pretrained(base_model, str(adapters[0][0]), adapter_name=names[0],
                                      autocast_adapter_dtype=autocast)
    for name, (path, _) in zip(names[1:], adapters[1:]):
        model.load_adapter(str(path), adapter_name=name, autocast_adapter_dtype=autocast)
    if len(names) > 1:
        model.base_model.set_adapter(names)  # all active: their outputs add up
    if scale:
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for name, (_, weight) in zip(names, adapters):
                    if name in module.scaling:
                        module.scaling[name] *= float(weight)
    return model.eval()


def load_unmerged(spec: Unmerged, dtype: str, *, device: str, autocast: bool = True):
    """The unmerged model ``spec`` describes, run in ``dtype``.

    ``autocast=False`` holds the adapters in ``dtype`` too (what ``adapter_dtype="base"``
    merges); float64 is built in float32 and then converted whole, adapters included."""
    if not spec.adapters:
        raise LoraregError("the recipe has no adapters: the version is its base", hint="nothing to compare")
    build = "float32" if dtype == "float64" else dtype
    base = _auto_class(spec.base).from_pretrained(str(spec.base), dtype=torch_dtype(build), low_cpu_mem_usage=True)
    if spec.reference == PEFT_UNMERGED:
        model = _with_adapters(base, spec.adapters, autocast=autocast, scale=True)
    else:
        model = _with_combined_deltas(base, spec, dtype=dtype, round_adapters=not autocast)
    return model.to(device=device, dtype=torch_dtype(dtype)).eval() if dtype == "float64" else model.to(device)


def load_adapter_on_base(base: Path, adapter: Path, dtype: str, *, device: str):
    """A combined adapter (``--as-adapter cat|svd``) applied to its base, as users load it."""
    build = "float32" if dtype == "float64" else dtype
    model = _auto_class(base).from_pretrained(str(base), dtype=torch_dtype(build), low_cpu_mem_usage=True)
    model = _with_adapters(model, ((Path(adapter), 1.0),), autocast=True, scale=False)
    return model.to(device=device, dtype=torch_dtype(dtype)) if dtype == "float64" else model.to(device)


def _lora_layers(peft_model):
    from peft.tuners.lora import LoraLayer

    # paths relative to the transformers model: the checkpoint's tensor names, less ".weight"
    for path, module in peft_model.base_model.model.named_modules():
        if isinstance(module, LoraLayer):
            yield path, module


def _has(module, name: str) -> bool:
    return name in module.lora_A or name in getattr(module, "lora_embedding_A", {})


def _with_combined_deltas(base_model, spec: Unmerged, *, dtype: str, round_adapters: bool):
    """The base with ``W + combine(dW_1..n)`` computed in float64 in every targeted tensor.

    ``round_adapters`` first rounds the adapter factors to ``dtype`` (the unmerged model of
    an ``adapter_dtype="base"`` recipe held in that dtype)."""
    import torch

    from lorareg.merge.methods import get_method
    from lorareg.merge.plan import tensor_seed

    method = get_method(spec.method)
    params = method.resolve_params(dict(spec.params), n_adapters=len(spec.adapters))
    base_model = base_model.to(torch.float32)
    model = _with_adapters(base_model, spec.adapters, autocast=True, scale=False)
    names = [_NAME.format(i) for i in range(len(spec.adapters))]
    if round_adapters and dtype != "float32":
        low = torch_dtype(dtype)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.copy_(p.to(low))
    exact: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for path, module in _lora_layers(model):
            used = [i for i, n in enumerate(names) if _has(module, n)]
            if not used:
                continue
            if any(module.use_dora.get(names[i]) for i in used):
                raise UnsupportedFeatureError(f"{path}: DoRA has no {spec.method} reference",
                                              hint="check a linear merge of DoRA adapters")
            weights = [float(spec.adapters[i][1]) for i in used]
            deltas = [module.get_delta_weight(names[i]).float() for i in used]
            tensor = f"{path}.weight"
            combined = method.combine(deltas, weights, params=params,
                                      generator=torch.Generator().manual_seed(tensor_seed(spec.seed, tensor)))
            exact[tensor] = module.get_base_layer().weight.double() + combined.double()
            if any(module.lora_bias.get(names[i]) for i in used):
                bias = [module.lora_B[names[i]].bias.float() * module.scaling[names[i]] for i in used]
                combined = method.combine(bias, weights, params=params, generator=torch.Generator().manual_seed(
                    tensor_seed(spec.seed, f"{path}.bias")))
                exact[f"{path}.bias"] = module.get_base_layer().bias.double() + combined.double()
        plain = model.unload()  # the base layers back, their weights untouched
        plain = plain.to(torch_dtype(dtype))
        for name, value in exact.items():
            owner, _, attr = name.rpartition(".")
            # a new Parameter: a tied partner (lm_head sharing embed_tokens) keeps the base
            # weight, as it does in the adapter model, where only one of the pair has a LoRA
            setattr(plain.get_submodule(owner), attr, torch.nn.Parameter(value.to(torch_dtype(dtype)),
                                                                         requires_grad=False))
    return plain.eval()


def adapter_error(spec: Unmerged, adapter: Path) -> float:
    """Largest relative Frobenius error ``||D - C|| / ||D||`` over the modules, where D is the
    weighted sum of the individual adapters' deltas and C the combined adapter's (both from
    PEFT's ``get_delta_weight``, compared in float64).  0 for an exact ``cat``."""
    import torch

    base = _auto_class(spec.base).from_pretrained(str(spec.base), dtype=torch.float32, low_cpu_mem_usage=True)
    model = _with_adapters(base, spec.adapters, autocast=True, scale=True)
    model.load_adapter(str(adapter), adapter_name="lorareg_combined")
    names = [_NAME.format(i) for i in range(len(spec.adapters))]
    worst = 0.0
    with torch.no_grad():
        for _, module in _lora_layers(model):
            used = [n for n in names if _has(module, n)]
            if not used:
                continue
            want = sum(module.get_delta_weight(n).double() for n in used)
            got = module.get_delta_weight("lorareg_combined").double() if _has(module, "lorareg_combined") \
                else torch.zeros_like(want)
            norm = torch.linalg.norm(want).item()
            err = torch.linalg.norm(want - got).item()
            worst = max(worst, err / norm if norm > 0 else err)
    del model, base
    return worst
