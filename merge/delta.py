"""LoRA arithmetic, step for step as PEFT 0.21 ``merge_and_unload()`` does it.

Bit parity with PEFT is the point, so each function mirrors one PEFT code path with the same
torch operations on the same dtypes (peft/tuners/lora/layer.py ``get_delta_weight`` and
``merge``, variants.py ``DoraLinearVariant.merge_unsafe``, dora.py ``get_weight_norm``,
trainable_tokens/layer.py ``merge``).  Do not "simplify" an expression here without
re-running tests/merge/test_parity.py: ``(W + d) * f`` and ``W * f + d * f`` differ in bits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["apply_bias", "apply_delta", "apply_dora", "apply_tokens", "lora_delta"]


def _half(dtype: torch.dtype) -> bool:
    import torch

    return dtype in (torch.float16, torch.bfloat16)


def lora_delta(
    lora_A: torch.Tensor, lora_B: torch.Tensor, *, scaling: float, fan_in_fan_out: bool, dtype: torch.dtype
) -> torch.Tensor:
    """``get_delta_weight`` of a Linear (or, with fan_in_fan_out=True, an Embedding) LoRA layer.

    ``dtype`` is the dtype PEFT holds the adapter weights in.  On CPU PEFT upcasts half
    precision factors to float32 for the matmul and rounds the product back, so the result
    is in ``dtype``.
    """
    a, b = lora_A.to(dtype), lora_B.to(dtype)
    cast_to_fp32 = _half(dtype)
    if cast_to_fp32:
        a, b = a.float(), b.float()
    # In place: same bits as PEFT's `(B @ A) * scaling`, one full-size temporary fewer.
    out = (b @ a).mul_(scaling)
    if fan_in_fan_out:
        out = out.T
    if cast_to_fp32:
        out = out.to(dtype)
    return out


def apply_delta(weight: torch.Tensor, delta: torch.Tensor, *, embedding: bool) -> torch.Tensor:
    """Add a (combined) delta to a base weight held in the output dtype, in place.

    PEFT's Linear merge adds the delta as it is (``weight.data += delta``: float32 sum, one
    rounding); its Embedding merge rounds the delta to the weight's dtype first.
    """
    if embedding:
        delta = delta.to(weight.dtype)
    weight += delta
    return weight


def apply_bias(bias: torch.Tensor, lora_bias: torch.Tensor, *, scaling: float, dtype: torch.dtype) -> torch.Tensor:
    """``lora_bias=True``: ``base_layer.bias.data += lora_B.bias * scaling``."""
    bias += lora_bias.to(dtype) * scaling
    return bias


def bias_delta(lora_bias: torch.Tensor, *, scaling: float, dtype: torch.dtype) -> torch.Tensor:
    """The bias term above as a float32 delta (exact: the product is rounded to ``dtype`` first)."""
    return (lora_bias.to(dtype) * scaling).float()


def apply_dora(
    weight: torch.Tensor,
    delta: torch.Tensor,
    magnitude: torch.Tensor,
    *,
    fan_in_fan_out: bool,
    embedding: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    """DoRA merge: ``magnitude / ||W + dW|| * (W + dW)``, norm over each output row.

    ``delta`` is the raw ``lora_delta`` (in the adapter dtype), ``magnitude`` the stored
    lora_magnitude_vector; both in the dtype PEFT holds them in.
    """
    import torch

    magnitude = magnitude.to(dtype)
    orig_dtype = weight.dtype
    if embedding:
        # DoraEmbeddingLayer is built with fan_in_fan_out=True and is passed delta.T
        norm_fifo, lora_weight = True, delta.T
    else:
        norm_fifo, lora_weight = fan_in_fan_out, (delta.T if fan_in_fan_out else delta)
    w = weight.T if norm_fifo else weight
    w = w + 1 * lora_weight
    weight_norm = torch.linalg.norm(w, dim=1).to(w.dtype)
    del w
    dora_factor = magnitude / weight_norm
    if embedding:
        dora_factor = dora_factor.view(1, -1)
    else:
        dora_factor = dora_factor.view(-1, 1)
        if fan_in_fan_out:
            dora_factor = dora_factor.T
    new_weight = dora_factor * (weight + delta)
    return new_weight.to(orig_dtype)


def apply_tokens(weight: torch.Tensor, indices: list[int], values: torch.Tensor) -> torch.Tensor:
    """Trainable tokens: the listed rows are replaced (``index_copy``), never added to."""
    import torch

    index = torch.tensor(indices)
    return weight.index_copy(dim=0, index=index, source=values.to(weight))
