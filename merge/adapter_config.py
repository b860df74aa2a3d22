"""Read a PEFT ``adapter_config.json`` and decide whether lorareg can merge it exactly.

No torch here: the registry inspects adapters while registering them.  Anything PEFT 0.21
can load but whose merge lorareg does not reproduce bit for bit is refused by name.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorareg.errors import CheckpointError, NotFoundError, PickleRefusedError, UnsupportedFeatureError
from lorareg.store.pickles import is_pickle

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "AdapterSummary", "read_adapter_config", "summarize"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# Fields that change what a merge computes; the registry hashes them (normalized_config).
_ARITHMETIC_FIELDS = (
    "peft_type", "r", "lora_alpha", "use_rslora", "use_dora", "target_modules", "exclude_modules",
    "fan_in_fan_out", "lora_bias", "bias", "rank_pattern", "alpha_pattern", "modules_to_save",
    "layers_to_transform", "layers_pattern", "trainable_token_indices", "ensure_weight_tying",
)
# Fields that only matter for training, bookkeeping or loading, never for the merged weights.
_INERT_FIELDS = {
    "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision", "inference_mode",
    "lora_dropout", "runtime_config", "megatron_core", "qalora_group_size", "loftq_config", "eva_config",
    "corda_config", "lora_ga_config", "target_modules_to_tie", "modules_to_tie",
}
# LoRA variants and other features PEFT can load but lorareg does not merge: field -> what it is.
_REFUSED_FIELDS = {
    "use_qalora": "QA-LoRA (use_qalora)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "arrow_config": "Arrow routing (arrow_config)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "velora_config": "VeLoRA (velora_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
    "kasa_config": "KaSA (kasa_config)",
    "layer_replication": "layer replication (layer_replication)",
    "target_parameters": "LoRA on nn.Parameter targets (target_parameters)",
    "megatron_config": "Megatron parallel layers (megatron_config)",
}
# init_lora_weights values whose load-time initialisation rewrites the base weights (or is a variant).
_REFUSED_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga", "mica")
_HARMLESS_INITS = (True, False, "gaussian", "eva", "orthogonal")
_HINT = "merge it with PEFT itself, or retrain it as a plain LoRA/DoRA adapter"


@dataclass(frozen=True)
class AdapterSummary:
    peft_type: str
    r: int
    lora_alpha: float
    use_rslora: bool
    use_dora: bool
    target_modules: tuple[str, ...]  # sorted; a regex target is the one-element tuple of it
    fan_in_fan_out: bool
    lora_bias: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    modules_to_save: tuple[str, ...]
    layers_to_transform: tuple[int, ...] | None
    trainable_token_indices: tuple[int, ...] | dict[str, tuple[int, ...]] | None
    base_model_name_or_path: str | None
    normalized_config: dict[str, Any] = field(compare=False)
    # kept for the merge: the raw config fields that steer module selection
    target_regex: str | None = None
    layers_pattern: tuple[str, ...] | None = None
    ensure_weight_tying: bool = False
    base_model_class: str | None = None


def read_adapter_config(adapter: Path) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of an adapter folder (weights presence checked too)."""
    adapter = Path(adapter)
    if not adapter.is_dir():
        raise NotFoundError(f"{adapter}: no such adapter folder", hint="pass a folder saved by PEFT save_pretrained")
    cfg_path = adapter / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise CheckpointError(f"{adapter}: no {ADAPTER_CONFIG}", hint="pass a folder saved by PEFT save_pretrained")
    if not (adapter / ADAPTER_WEIGHTS).is_file():
        # PEFT's pickle is adapter_model.bin; other pickles (training_args.bin) are not weights
        pickles = sorted(p.name for p in adapter.glob("adapter_model.*") if is_pickle(p.name) and p.is_file())
        if pickles:
            raise PickleRefusedError(f"{adapter}: holds {pickles[0]} (pickle) and no {ADAPTER_WEIGHTS}")
        raise CheckpointError(f"{adapter}: no {ADAPTER_WEIGHTS}", hint="re-save it with safe_serialization=True")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})", hint="re-save the adapter") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: not a JSON object", hint="re-save the adapter")
    return cfg


def _refuse(adapter: Path, what: str) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(f"{adapter}: lorareg cannot merge {what} exactly", hint=_HINT)


def _check_supported(adapter: Path, cfg: dict[str, Any]) -> None:
    peft_type = cfg.get("peft_type")
    if peft_type != "LORA":
        raise _refuse(adapter, f"peft_type {peft_type!r} adapters (only LORA)")
    for name, what in _REFUSED_FIELDS.items():
        if cfg.get(name):
            raise _refuse(adapter, what)
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_REFUSED_INITS):
        raise _refuse(adapter, f"init_lora_weights={init!r} (its load-time init rewrites the base weights)")
    if init not in _HARMLESS_INITS:
        raise _refuse(adapter, f"init_lora_weights={init!r}")
    if cfg.get("bias", "none") not in ("none", "all", "lora_only"):
        raise _refuse(adapter, f"bias={cfg.get('bias')!r}")
    known = set(_ARITHMETIC_FIELDS) | _INERT_FIELDS | set(_REFUSED_FIELDS) | {"init_lora_weights"}
    for name, value in cfg.items():
        # A field this PEFT version does not know may change the arithmetic: refuse rather than guess.
        if name not in known and value not in (None, False, {}, [], ""):
            raise _refuse(adapter, f"adapter_config field {name!r} (unknown to lorareg)")


def _number(adapter: Path, name: str, value: Any, *, integer: bool = False) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (integer and (not isinstance(value, int) or value <= 0)):
        raise CheckpointError(f"{adapter}: adapter_config {name}={value!r} is not valid", hint="re-save the adapter")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def summarize(adapter: Path, cfg: dict[str, Any]) -> AdapterSummary:
    """Check ``cfg`` is mergeable and turn it into an AdapterSummary."""
    adapter = Path(adapter)
    _check_supported(adapter, cfg)
    r = _number(adapter, "r", cfg.get("r", 8), integer=True)
    alpha = _number(adapter, "lora_alpha", cfg.get("lora_alpha", 8))
    rank_pattern = {str(k): _number(adapter, f"rank_pattern[{k}]", v, integer=True)
                    for k, v in (cfg.get("rank_pattern") or {}).items()}
    alpha_pattern = {str(k): _number(adapter, f"alpha_pattern[{k}]", v)
                     for k, v in (cfg.get("alpha_pattern") or {}).items()}
    raw_targets = cfg.get("target_modules")  # None: only modules_to_save / trainable tokens
    target_regex = raw_targets if isinstance(raw_targets, str) else None
    if target_regex is not None:
        try:
            re.compile(target_regex)
        except re.error as exc:
            raise CheckpointError(f"{adapter}: target_modules regex is invalid ({exc})", hint="re-save it") from None
    layers = cfg.get("layers_to_transform")
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    tti = cfg.get("trainable_token_indices")
    if isinstance(tti, dict):
        tokens: Any = {str(k): tuple(int(i) for i in v) for k, v in sorted(tti.items())}
    elif tti is not None:
        tokens = tuple(int(i) for i in tti)
    else:
        tokens = None
    normalized: dict[str, Any] = {}
    for name in _ARITHMETIC_FIELDS:
        value = cfg.get(name)
        if name in ("target_modules", "modules_to_save", "exclude_modules") and isinstance(value, list):
            value = sorted(set(value))
        normalized[name] = value
    normalized["rank_pattern"] = rank_pattern
    normalized["alpha_pattern"] = alpha_pattern
    return AdapterSummary(
        peft_type="LORA",
        r=r,
        lora_alpha=alpha,
        use_rslora=bool(cfg.get("use_rslora", False)),
        use_dora=bool(cfg.get("use_dora", False)),
        target_modules=tuple(sorted(set(_strings(raw_targets)))),
        fan_in_fan_out=bool(cfg.get("fan_in_fan_out", False)),
        lora_bias=bool(cfg.get("lora_bias", False)),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        modules_to_save=tuple(sorted(set(_strings(cfg.get("modules_to_save"))))),
        layers_to_transform=tuple(int(i) for i in layers) if layers is not None else None,
        trainable_token_indices=tokens,
        base_model_name_or_path=cfg.get("base_model_name_or_path"),
        normalized_config=normalized,
        target_regex=target_regex,
        layers_pattern=_strings(cfg.get("layers_pattern")) or None,
        ensure_weight_tying=bool(cfg.get("ensure_weight_tying", False)),
        base_model_class=(cfg.get("auto_mapping") or {}).get("base_model_class"),
    )


def pattern_value(patterns: dict[str, Any], module_key: str, default: Any) -> Any:
    """PEFT's ``get_pattern_key``: the first pattern (in file order) matching the module key."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module_key):
            return patterns[key]
    return default
