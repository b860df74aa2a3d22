"""QLoRA bases: merge into dequantize(quantize(base)), the weights the adapter was trained on.

A QLoRA adapter learns its delta on top of the 4-bit base, not the 16-bit one.  Merging it
into the 16-bit weights adds a delta fitted to other weights; merging into the 4-bit ones
and keeping them quantized loses the delta to rounding.  What reproduces training is the
dequantized 4-bit base plus the delta, in 16 bits.

Which layers transformers quantizes is decided by transformers itself: the base's model
class is built on the meta device (no memory) and passed through the same
``get_modules_to_not_convert`` + ``replace_with_bnb_linear`` that
``from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True))`` runs.
Quantizing and dequantizing are bitsandbytes' own ``quantize_4bit``/``dequantize_4bit``,
which run on CPU, on each weight in the merge's dtype (transformers quantizes the weights in
the dtype it loads them in).

Also here: recognising an already-quantized checkpoint, which is refused as a base.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorareg.errors import CheckpointError, MergeError, UnsupportedFeatureError

if TYPE_CHECKING:
    import torch

__all__ = ["BLOCKSIZES", "QUANT_TYPES", "BaseQuantization", "quantized_checkpoint", "quantized_weights",
           "refuse_quantized_base", "roundtrip"]

QUANT_TYPES = ("nf4", "fp4")
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
_PIECE_ELEMENTS = 1 << 16  # elements per call into bitsandbytes' kernels (~10x this in temporaries)
_INSTALL_HINT = "install it with: pip install 'lorareg[qlora]' (bitsandbytes runs on CPU)"


@dataclass(frozen=True)
class BaseQuantization:
    """``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
    bnb_4bit_use_double_quant=double_quant)`` with bitsandbytes' ``blocksize``."""

    quant_type: str = "nf4"
    double_quant: bool = False
    blocksize: int = 64

    def __post_init__(self) -> None:
        if self.quant_type not in QUANT_TYPES:
            raise MergeError(f"unknown base quantization {self.quant_type!r}", hint="use nf4 or fp4")
        if self.blocksize not in BLOCKSIZES:
            raise MergeError(f"blocksize {self.blocksize!r} is not one bitsandbytes supports",
                             hint="use one of: " + ", ".join(map(str, BLOCKSIZES)))
        if not isinstance(self.double_quant, bool):
            raise MergeError(f"double_quant must be true or false, got {self.double_quant!r}", hint="pass a bool")

    def to_json(self) -> dict[str, Any]:
        return {"quant_type": self.quant_type, "double_quant": self.double_quant, "blocksize": self.blocksize}


def _bnb_functional():
    import logging

    # On CPU, importing bitsandbytes warns that an optional faster matmul kernel is missing;
    # quantize/dequantize do not use it, so that one warning is not passed on to users.
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import bitsandbytes.functional as F
    except ImportError:
        raise UnsupportedFeatureError("merging into a quantized base needs the bitsandbytes package",
                                      hint=_INSTALL_HINT) from None
    finally:
        log.setLevel(level)
    return F


def quantized_weights(base: Path, config: Mapping[str, Any], names: set[str]) -> set[str]:
    """The base tensors transformers quantizes when it loads ``base`` in 4 bits."""
    import torch
    import transformers
    from transformers import AutoConfig, BitsAndBytesConfig
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear
    from transformers.quantizers.base import HfQuantizer

    from lorareg.merge.arch import CONV1D_MODEL_TYPES
    from lorareg.merge.keys import NameResolver

    _bnb_functional()
    if config.get("model_type") in CONV1D_MODEL_TYPES:
        raise UnsupportedFeatureError(f"{base}: quantized merges of Conv1D models ({config.get('model_type')})",
                                      hint="merge without --base-quantization")
    archs = config.get("architectures") or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        raise UnsupportedFeatureError(f"{base}: transformers has no model class {archs[:1]} to tell which layers "
                                      "it quantizes", hint="merge without --base-quantization")
    with torch.device("meta"):
        model = cls(AutoConfig.from_pretrained(base))
    skip = HfQuantizer.get_modules_to_not_convert(model, None, getattr(model, "_keep_in_fp32_modules", None))
    model = replace_with_bnb_linear(model, modules_to_not_convert=skip,
                                    quantization_config=BitsAndBytesConfig(load_in_4bit=True))
    import bitsandbytes as bnb

    resolver = NameResolver(names)
    out = set()
    for module_name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            name = resolver.resolve(module_name, "weight", adapter=base)
            if name is None:
                raise CheckpointError(f"{base}: transformers quantizes {module_name}, which the checkpoint lacks",
                                      hint="check that config.json matches the weights")
            out.add(name)
    return out


def roundtrip(w: torch.Tensor, q: BaseQuantization, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """dequantize_4bit(quantize_4bit(w)): what a Linear4bit layer computes with, in w's dtype.

    bitsandbytes' CPU kernels take ~10x the tensor in temporaries (80 MiB for an 8 MiB bf16
    weight, measured), so the weight goes through them in pieces of whole blocks: each 4-bit
    block is quantized on its own, so the codes and absmax are the same bits as in one call.
    Double quantization needs every block's absmax at once (its offset is their mean); that
    step runs on the whole (64x smaller) absmax vector, as ``quantize_4bit`` and
    ``dequantize_4bit`` themselves do it.  ``out``: a flat buffer of w's size and dtype to
    dequantize into (the engine reuses one)."""
    import torch

    F = _bnb_functional()
    flat = w.contiguous().view(-1)
    step = q.blocksize * max(1, _PIECE_ELEMENTS // q.blocksize)
    packed, absmax = [], []
    for start in range(0, flat.numel(), step):
        codes, state = F.quantize_4bit(flat[start : start + step], blocksize=q.blocksize, quant_type=q.quant_type,
                                       compress_statistics=False, quant_storage=torch.uint8)
        packed.append(codes)
        absmax.append(state.absmax)
    scales = torch.cat(absmax)
    if q.double_quant:  # quantize_4bit(compress_statistics=True), then dequantize_4bit's nested branch
        offset = scales.mean()
        qabsmax, state2 = F.quantize_blockwise(scales - offset, blocksize=256)
        scales = F.dequantize_blockwise(qabsmax, state2)
        scales += offset
        if scales.dtype != torch.float32:
            scales = scales.float()
    out = torch.empty(flat.numel(), dtype=w.dtype) if out is None else out.view(-1)
    blocks = step // q.blocksize
    for i, codes in enumerate(packed):
        start = i * step
        piece = out[start : start + step]
        state = F.QuantState(absmax=scales[i * blocks : i * blocks + -(-piece.numel() // q.blocksize)],
                             shape=piece.shape, dtype=w.dtype, blocksize=q.blocksize, quant_type=q.quant_type,
                             code=F.get_4bit_type(q.quant_type, device=w.device))
        piece.copy_(F.dequantize_4bit(codes, quant_state=state).reshape(-1))
    return out.view(w.shape)


# Tensor-name suffixes of quantized checkpoints, by method (bitsandbytes, GPTQ, AWQ, ...).
_QUANT_SUFFIXES = {".absmax": "bitsandbytes", ".quant_map": "bitsandbytes", ".quant_state": "bitsandbytes",
                   ".SCB": "bitsandbytes 8-bit",
                   ".qweight": "GPTQ/AWQ", ".qzeros": "GPTQ/AWQ", ".g_idx": "GPTQ"}


def quantized_checkpoint(folder: Path, tensor_names: list[str] | None = None) -> str | None:
    """How ``folder`` is quantized ("bitsandbytes", "gptq", ...), None for a 16/32-bit checkpoint."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        config = {}
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    if isinstance(qc, dict) and qc:
        return str(qc.get("quant_method") or "quantized")
    for name in tensor_names or ():
        for suffix, method in _QUANT_SUFFIXES.items():
            if name.endswith(suffix) or f"{suffix}." in name:
                return method
    return None


def refuse_quantized_base(folder: Path, tensor_names: list[str]) -> None:
    """A quantized checkpoint cannot be a base: its weights are not the ones adapters add to.
    The error names its 16-bit original where the folder says it (config or model card), and
    the ``--base-quantization`` flags that reproduce a bitsandbytes 4-bit load."""
    import re

    method = quantized_checkpoint(folder, tensor_names)
    if method is None:
        return
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        config = {}
    original = config.get("_name_or_path") if isinstance(config, dict) else None
    card = folder / "README.md"
    if not original and card.is_file():
        found = re.search(r"^base_model:\s*(?:\n\s*-\s*)?['\"]?([\w.\-/]+)", card.read_text(errors="replace"), re.M)
        original = found.group(1) if found else None
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    flags = ""
    if isinstance(qc, dict) and qc.get("load_in_4bit"):
        flags = f" --base-quantization {qc.get('bnb_4bit_quant_type', 'fp4')}" + (
            " --double-quant" if qc.get("bnb_4bit_use_double_quant") else "")
    raise CheckpointError(
        f"{folder}: a {method}-quantized checkpoint; lorareg merges into 16/32-bit weights",
        hint=f"register its 16-bit original{f' ({original})' if original else ''} as the base"
             + (f", and merge QLoRA adapters into it with{flags}" if flags else ""))
