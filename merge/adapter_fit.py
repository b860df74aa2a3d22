"""Whether an adapter fits a base: every LoRA factor, magnitude, saved module and token row
against the base's shapes (``check_layout``), and, for an adapter trained after
``resize_token_embeddings``, that it writes every row it adds.  Headers only, no torch, unless
such an adapter must be loaded."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorareg.errors import IncompatibleAdapterError, UnsupportedFeatureError
from lorareg.merge.adapter import (
    FIT_HINT,
    AdapterLayout,
    AdapterSummary,
    inspect_adapter,
    layout_adapter,
    load_adapter,
)
from lorareg.merge.arch import tied_pair

__all__ = ["base_shapes_of", "check_adapter_fits", "check_layout"]


def _misfit(adapter: Path, module: str, problem: str) -> IncompatibleAdapterError:
    return IncompatibleAdapterError(f"{adapter}: module {module} does not fit the base: {problem}", hint=FIT_HINT)


def check_layout(adapter: Path, layout: AdapterLayout, base_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Shapes: every LoRA factor, magnitude, saved module and token row against the base."""
    shp = layout.shapes
    for m in layout.modules.values():
        base = base_shapes[m.target]
        if len(base) != 2:
            raise UnsupportedFeatureError(
                f"{adapter}: LoRA on {m.module}, a {len(base)}-D weight (convolution or fused layer)",
                hint="lorareg merges LoRA on Linear, Conv1D and Embedding layers only",
            )
        a, b = shp[m.keys["A"]], shp[m.keys["B"]]
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise _misfit(adapter, m.module, f"lora_A {a} and lora_B {b} do not chain")
        if a[0] != m.r:
            raise _misfit(adapter, m.module, f"adapter_config gives rank {m.r} but lora_A has {a[0]} rows")
        if m.kind == "embedding":
            (num, dim), names = base, ("num_embeddings", "embedding_dim")
        elif m.kind == "conv1d":
            (num, dim), names = base, ("in_features", "out_features")
        else:
            (dim, num), names = base, ("in_features", "out_features")
        if a[1] != num:
            raise _misfit(adapter, m.module, f"adapter expects {names[0]} {a[1]}, base has {num}")
        if b[0] != dim:
            raise _misfit(adapter, m.module, f"adapter expects {names[1]} {b[0]}, base has {dim}")
        for role in ("magnitude", "lora_bias"):
            if role in m.keys and shp[m.keys[role]] != (dim,):
                raise _misfit(adapter, m.module, f"{role} has shape {shp[m.keys[role]]}, expected ({dim},)")
        if m.bias_target is not None and base_shapes[m.bias_target] != (dim,):
            raise _misfit(adapter, m.module, f"base bias has shape {base_shapes[m.bias_target]}, expected ({dim},)")
    for target, key in {**layout.replacements, **layout.overrides}.items():
        if shp[key] != base_shapes[target]:
            raise _misfit(
                adapter, target.rpartition(".")[0],
                f"saved {target} has shape {shp[key]}, base has {base_shapes[target]}",
            )
    for target, (key, indices) in layout.tokens.items():
        base = base_shapes[target]
        if shp[key] != (len(indices), base[1]) or (indices and max(indices) >= base[0]):
            raise _misfit(
                adapter, target.rpartition(".")[0],
                f"trainable tokens {shp[key]} for rows {list(indices)[:5]} do not fit {base}",
            )


def base_shapes_of(base: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """(config, name -> shape) of a base, the tied output head included under its own name."""
    config, shapes, _ = _base_layout(base)
    return config, shapes


def _base_layout(base: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]], Any]:
    from lorareg.merge.reader import open_checkpoint

    ckpt = open_checkpoint(base)
    shapes = {name: t.shape for name, t in ckpt.tensors.items()}
    pair = tied_pair(ckpt.config, shapes)
    if pair is not None:
        shapes[pair.head] = shapes[pair.embedding]
    return ckpt.config, shapes, pair


def check_adapter_fits(*, base: Path, adapter: Path) -> AdapterSummary:
    """Raise IncompatibleAdapterError naming the first module that does not fit ``base``.

    An adapter trained after ``resize_token_embeddings`` fits when it writes every row it
    adds (see vocab.py); that needs its op list, so only such an adapter is loaded (lazily:
    the saved embedding copies are not read)."""
    from lorareg.merge.vocab import check_rows_defined, find_growth, grown_shapes

    adapter = Path(adapter)
    summary = inspect_adapter(adapter)
    config, shapes, pair = _base_layout(base)
    layout = layout_adapter(adapter, base_names=shapes, base_config=config, summary=summary)
    growth = find_growth(adapter, layout, shapes)
    check_layout(adapter, layout, grown_shapes(shapes, growth))
    if growth is not None:
        from lorareg.merge.worklist import build_ops

        loaded = load_adapter(adapter, base_names=shapes, base_config=config, layout=layout)
        work = build_ops([loaded], [1.0], "linear", pair)
        stored = [n for n in growth.tensors if pair is None or n != pair.head or work.untied is not None]
        check_rows_defined([loaded], growth, work.ops, stored)
    return summary
