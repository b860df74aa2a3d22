"""Adapters: inspect them, lay their tensors out against a base's names, and load them keyed
by base tensor (whether they fit the base's shapes: adapter_fit.py).

``inspect_adapter`` and ``layout_adapter`` read only JSON and safetensors headers (the
registry calls them without torch); ``load_adapter`` reads the (small) adapter tensors.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorareg.errors import CheckpointError, IncompatibleAdapterError, UnsupportedFeatureError
from lorareg.merge.adapter_config import (
    ADAPTER_WEIGHTS,
    AdapterSummary,
    pattern_value,
    read_adapter_config,
    summarize,
)
from lorareg.merge.arch import is_conv1d
from lorareg.merge.keys import NameResolver, parse_key
from lorareg.store.safetensors_header import read_header

if TYPE_CHECKING:
    import torch

__all__ = [
    "AdapterLayout",
    "AdapterModule",
    "AdapterSummary",
    "LoadedAdapter",
    "ModuleLayout",
    "SavedTensor",
    "inspect_adapter",
    "layout_adapter",
    "load_adapter",
]

FIT_HINT = "register the adapter against the base it was trained on"


def inspect_adapter(adapter: Path) -> AdapterSummary:
    """Parse and vet an adapter's config (UnsupportedFeatureError for what lorareg cannot merge)."""
    adapter = Path(adapter)
    return summarize(adapter, read_adapter_config(adapter))


@dataclass(frozen=True)
class ModuleLayout:
    """One LoRA module, from headers only."""

    module: str  # module path as the adapter's model names it (PEFT matches patterns on it)
    target: str  # base weight tensor it changes
    kind: str  # "linear" | "conv1d" | "embedding"
    r: int
    scaling: float
    keys: dict[str, str]  # role (A, B, magnitude, lora_bias) -> adapter tensor key
    bias_target: str | None = None  # base bias tensor that lora_bias changes

    @property
    def fan_in_fan_out(self) -> bool:
        return self.kind == "conv1d"


@dataclass(frozen=True)
class AdapterLayout:
    summary: AdapterSummary
    modules: dict[str, ModuleLayout]  # by target
    replacements: dict[str, str]  # base tensor -> adapter key (modules_to_save, bias="all")
    overrides: dict[str, str]  # base tensor -> adapter key of PEFT's saved copy of it
    tokens: dict[str, tuple[str, tuple[int, ...]]]  # base tensor -> (adapter key, row indices)
    shapes: dict[str, tuple[int, ...]]  # adapter key -> shape


def _group(keys: Mapping[str, tuple[int, ...]]) -> dict[str, dict[str, Any]]:
    """Adapter keys by the module they belong to: {module: {role: key}}."""
    modules: dict[str, dict[str, Any]] = {}
    for key in sorted(keys):
        role = parse_key(key)
        if role.role == "unused":
            continue
        entry = modules.setdefault(role.module, {})
        slot = f"replace:{role.param}" if role.role == "replace" else role.role
        entry[slot] = key
    return modules


def _token_indices(summary: AdapterSummary, module: str) -> tuple[int, ...] | None:
    tti = summary.trainable_token_indices
    if isinstance(tti, dict):
        for name, indices in tti.items():
            if module == name or module.endswith("." + name):
                return indices
        return None
    return tti


def layout_adapter(
    adapter: Path,
    *,
    base_names: Collection[str],
    base_config: Mapping[str, Any] | None = None,
    summary: AdapterSummary | None = None,
) -> AdapterLayout:
    """Resolve every adapter tensor to the base tensor it changes (headers only)."""
    adapter = Path(adapter)
    summary = summary or inspect_adapter(adapter)
    header = read_header(adapter / ADAPTER_WEIGHTS)
    shapes = {name: info.shape for name, info in header.tensors.items()}
    resolver = NameResolver(base_names)
    modules: dict[str, ModuleLayout] = {}
    replacements: dict[str, str] = {}
    overrides: dict[str, str] = {}
    tokens: dict[str, tuple[str, tuple[int, ...]]] = {}
    claimed: dict[str, str] = {}

    def target_of(module: str, param: str = "weight") -> str:
        name = resolver.resolve(module, param, adapter=adapter)
        if name is None:
            hint = FIT_HINT
            if summary.base_model_class and base_config and summary.base_model_class not in (
                base_config.get("architectures") or []
            ):
                hint = f"the adapter was trained on {summary.base_model_class}; " + hint
            raise IncompatibleAdapterError(
                f"{adapter}: adapter targets {module}.{param}, which the base does not have", hint=hint
            )
        return name

    def claim(target: str, what: str) -> None:
        if target in claimed and claimed[target] != what:
            raise UnsupportedFeatureError(
                f"{adapter}: {target} is changed both as {claimed[target]} and as {what}",
                hint="PEFT applies only one of them; keep one in the adapter config",
            )
        claimed[target] = what

    for module, entry in _group(shapes).items():
        for slot, key in entry.items():
            if slot.startswith("replace:"):
                param = slot.partition(":")[2]
                target = target_of(module, param)
                if ".base_layer." in key or ".original_module." in key:
                    overrides[target] = key
                else:
                    claim(target, "a saved module (modules_to_save)")
                    replacements[target] = key
        if "tokens" in entry:
            indices = _token_indices(summary, module)
            if indices is None:
                raise CheckpointError(
                    f"{adapter}: trainable tokens for {module} but trainable_token_indices does not name it",
                    hint="re-save the adapter",
                )
            target = target_of(module)
            claim(target, "trainable tokens")
            tokens[target] = (entry["tokens"], indices)
        lora_roles = {"A", "B", "embedding_A", "embedding_B", "magnitude", "lora_bias"} & set(entry)
        if not lora_roles:
            continue
        embedding = "embedding_A" in entry or "embedding_B" in entry
        pair = ("embedding_A", "embedding_B") if embedding else ("A", "B")
        if not all(p in entry for p in pair):
            raise CheckpointError(f"{adapter}: module {module} lacks one of its LoRA factors", hint="re-save it")
        if summary.use_dora != ("magnitude" in entry):
            what = "has no lora_magnitude_vector" if summary.use_dora else "has a magnitude but use_dora is off"
            raise CheckpointError(f"{adapter}: DoRA module {module} {what}", hint="re-save the adapter")
        target = target_of(module)
        claim(target, "a LoRA target")
        model_class = summary.base_model_class
        kind = "embedding" if embedding else (
            "conv1d" if is_conv1d(module, config=base_config, model_class=model_class) else "linear"
        )
        r = pattern_value(summary.rank_pattern, module, summary.r)
        alpha = pattern_value(summary.alpha_pattern, module, summary.lora_alpha)
        # the exact Python expressions of LoraLayer.update_layer
        scaling = alpha / math.sqrt(r) if summary.use_rslora else alpha / r
        keys = {"A": entry[pair[0]], "B": entry[pair[1]]}
        if "magnitude" in entry:
            keys["magnitude"] = entry["magnitude"]
        bias_target = None
        if "lora_bias" in entry:
            keys["lora_bias"] = entry["lora_bias"]
            bias_target = resolver.resolve(module, "bias", adapter=adapter)
            if bias_target is None:
                raise UnsupportedFeatureError(
                    f"{adapter}: lora_bias on {module}, whose base layer has no bias (PEFT cannot merge it either)",
                    hint="retrain with lora_bias=False, or target only layers that have a bias",
                )
            claim(bias_target, "a LoRA bias")
        modules[target] = ModuleLayout(
            module=module, target=target, kind=kind, r=r, scaling=scaling, keys=keys, bias_target=bias_target
        )
    return AdapterLayout(
        summary=summary, modules=modules, replacements=replacements, overrides=overrides, tokens=tokens,
        shapes=shapes,
    )


@dataclass(frozen=True)
class AdapterModule:
    """One LoRA module of a loaded adapter, in the layout of the base weight it changes."""

    target: str
    module: str
    kind: str  # "linear" | "conv1d" | "embedding"
    lora_A: torch.Tensor  # float32 (stored values, upcast if stored in half precision)
    lora_B: torch.Tensor
    scaling: float
    fan_in_fan_out: bool
    magnitude: torch.Tensor | None = None  # DoRA
    lora_bias: torch.Tensor | None = None
    bias_target: str | None = None

    def _held(self, t: torch.Tensor, adapter_dtype: str, base_dtype: torch.dtype | None) -> torch.Tensor:
        """A stored adapter tensor as PEFT holds it: float32, or first rounded to the base dtype."""
        if adapter_dtype == "float32":
            return t.float()
        if adapter_dtype == "base":
            if base_dtype is None:
                raise ValueError("adapter_dtype='base' needs base_dtype")
            return t.to(base_dtype).float()
        raise ValueError(f"unknown adapter_dtype {adapter_dtype!r}")

    def factors(
        self, adapter_dtype: str = "float32", *, base_dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(lora_A, lora_B) in float32, rounded through ``base_dtype`` first for "base"."""
        return (self._held(self.lora_A, adapter_dtype, base_dtype), self._held(self.lora_B, adapter_dtype, base_dtype))

    def held_magnitude(self, adapter_dtype: str = "float32", *, base_dtype: torch.dtype | None = None) -> torch.Tensor:
        assert self.magnitude is not None
        return self._held(self.magnitude, adapter_dtype, base_dtype)

    def held_bias(self, adapter_dtype: str = "float32", *, base_dtype: torch.dtype | None = None) -> torch.Tensor:
        assert self.lora_bias is not None
        return self._held(self.lora_bias, adapter_dtype, base_dtype)

    def delta(
        self,
        adapter_dtype: str = "float32",
        *,
        base_dtype: torch.dtype | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The full float32 delta ``scaling * B @ A`` in the base weight's layout.

        PEFT always merges with float32 factors on CPU; ``adapter_dtype="base"`` rounds the
        stored factors to ``base_dtype`` first, as ``AutoPeftModel*.from_pretrained(...,
        dtype=base_dtype, low_cpu_mem_usage=True)`` does when it loads them.  ``out``: a
        float32 buffer of the shape of ``B @ A`` to compute into (the result is a view of it).
        """
        from lorareg.merge.lora_math import lora_delta

        a, b = self.factors(adapter_dtype, base_dtype=base_dtype)
        fifo = True if self.kind == "embedding" else self.fan_in_fan_out
        return lora_delta(a, b, scaling=self.scaling, fan_in_fan_out=fifo, out=out)


@dataclass(frozen=True, eq=False)
class SavedTensor:
    """A full tensor saved in the adapter (a module copy), read only when the merge reaches it.

    After a vocabulary resize PEFT saves several embedding-sized copies (modules_to_save,
    original_module, base_layer): holding them all would make the merge's memory a multiple
    of the embedding.  Read with plain file reads, like the base (reader.py: an mmap would
    keep the pages it touched resident)."""

    file: Path
    key: str
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in ``file``
    nbytes: int

    def load(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor, converted to ``dtype`` block by block when given: a float32 copy of an
        embedding is then never held next to its bf16 conversion."""
        import torch

        from lorareg.merge.reader import torch_dtype

        stored = torch_dtype(self.dtype)
        if not self.nbytes:
            return torch.empty(self.shape, dtype=dtype or stored)
        with open(self.file, "rb", buffering=0) as f:
            if dtype is None or dtype == stored or len(self.shape) < 2:
                buf = bytearray(self.nbytes)
                self._read(f, memoryview(buf), 0)
                out = torch.frombuffer(buf, dtype=stored).view(self.shape)
                return out if dtype is None else out.to(dtype)
            out = torch.empty(self.shape, dtype=dtype)
            row_bytes = self.nbytes // self.shape[0]
            step = max(1, (4 << 20) // row_bytes)
            block = bytearray(step * row_bytes)
            for start in range(0, self.shape[0], step):
                n = min(step, self.shape[0] - start)
                view = memoryview(block)[: n * row_bytes]
                self._read(f, view, start * row_bytes)
                out[start : start + n].copy_(torch.frombuffer(view, dtype=stored).view((n, *self.shape[1:])))
            return out

    def _read(self, f, view: memoryview, start: int) -> None:
        f.seek(self.offset + start)
        got = 0
        while got < len(view):
            n = f.readinto(view[got:])
            if not n:
                raise CheckpointError(f"{self.file}: truncated while reading {self.key!r}", hint="re-save the adapter")
            got += n


@dataclass(frozen=True)
class LoadedAdapter:
    path: Path
    summary: AdapterSummary
    modules: dict[str, AdapterModule]  # keyed by the base tensor they change
    replacements: dict[str, SavedTensor] = field(default_factory=dict)  # full tensors (modules_to_save)
    overrides: dict[str, SavedTensor] = field(default_factory=dict)  # PEFT's saved copies of base tensors
    tokens: dict[str, tuple[tuple[int, ...], torch.Tensor]] = field(default_factory=dict)


def load_adapter(
    adapter: Path,
    *,
    base_names: Collection[str],
    base_config: Mapping[str, Any] | None = None,
    layout: AdapterLayout | None = None,
) -> LoadedAdapter:
    """Load an adapter's tensors, keyed by the base tensor names they change.

    ``base_config`` (the base's config.json) tells GPT-2 style Conv1D layers apart; without
    it the adapter's own ``auto_mapping`` is used.
    """
    adapter = Path(adapter)
    layout = layout or layout_adapter(adapter, base_names=base_names, base_config=base_config)
    file = adapter / ADAPTER_WEIGHTS
    header = read_header(file)

    def saved(key: str) -> SavedTensor:
        info = header.tensors[key]
        return SavedTensor(file=file, key=key, dtype=info.dtype, shape=info.shape,
                           offset=header.data_offset + info.begin, nbytes=info.nbytes)

    def f32(key: str) -> torch.Tensor:
        return saved(key).load().float()  # no copy when stored in float32

    modules = {
        target: AdapterModule(
            target=target, module=m.module, kind=m.kind, lora_A=f32(m.keys["A"]), lora_B=f32(m.keys["B"]),
            scaling=m.scaling, fan_in_fan_out=m.fan_in_fan_out,
            magnitude=f32(m.keys["magnitude"]) if "magnitude" in m.keys else None,
            lora_bias=f32(m.keys["lora_bias"]) if "lora_bias" in m.keys else None,
            bias_target=m.bias_target,
        )
        for target, m in layout.modules.items()
    }
    return LoadedAdapter(
        path=adapter,
        summary=layout.summary,
        modules=modules,
        replacements={t: saved(k) for t, k in layout.replacements.items()},
        overrides={t: saved(k) for t, k in layout.overrides.items()},
        tokens={t: (idx, saved(k).load()) for t, (k, idx) in layout.tokens.items()},
    )
