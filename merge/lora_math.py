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

__all__ = ["Scratch", "apply_delta", "apply_dora", "apply_tokens", "bias_delta", "lora_delta", "same_bits"]

_BLOCK_ELEMENTS = 1 << 18  # 1 MiB of float32 per block


def lora_delta(
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    *,
    scaling: float,
    fan_in_fan_out: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``get_delta_weight`` of a Linear (or, with fan_in_fan_out=True, an Embedding) LoRA layer.

    The factors are float32 (PEFT upcasts adapter weights on load, and on CPU it would
    upcast half precision ones for the matmul anyway).  ``out`` (float32, the shape of
    ``B @ A``) is a reused buffer: the engine passes one so that a merge does not allocate
    and free a full-size float32 tensor per weight (glibc then keeps the freed memory).
    """
    import torch

    # In place: same bits as PEFT's `(B @ A) * scaling`, one full-size temporary fewer.
    product = torch.matmul(lora_B, lora_A, out=out).mul_(scaling)
    return product.T if fan_in_fan_out else product


class Scratch:
    """Reused block buffers, so a merge does not allocate per tensor (glibc keeps freed blocks)."""

    def __init__(self) -> None:
        self._buffers: dict[object, torch.Tensor] = {}

    def get(self, dtype: torch.dtype, numel: int, slot: int = 0) -> torch.Tensor:
        import torch

        buf = self._buffers.get((dtype, slot))
        if buf is None or buf.numel() < numel:
            buf = self._buffers[dtype, slot] = torch.empty(max(numel, _BLOCK_ELEMENTS), dtype=dtype)
        return buf[:numel]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold the same bytes (NaN payloads and signed zeros included), as the
    digest sees them; ``torch.equal`` would call a NaN unequal to itself and -0.0 equal to 0.0."""
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}
        a, b = a.view(ints[a.element_size()]), b.view(ints[b.element_size()])
    return torch.equal(a, b)


def apply_delta(
    weight: torch.Tensor, delta: torch.Tensor, *, embedding: bool, scratch: Scratch | None = None,
    changed: bool = False,
) -> bool:
    """Add a (combined) float32 delta to a base weight held in the output dtype, in place;
    returns whether any element's bits changed (a delta can round away entirely).

    PEFT's Linear merge adds the delta as it is (``weight.data += delta``: float32 sum, one
    rounding); its Embedding merge rounds the delta to the weight's dtype first.  Done in row
    blocks through reused buffers: a mixed-dtype ``+=`` allocates full-size float32
    temporaries.  Elementwise, ``round(float(w) + d)`` has the same bits either way, and
    ``torch.add(w, d, out=new)`` the same bits as ``w += d``: each block's new values are
    computed next to the old ones, compared, then copied in.  Once one block has changed (or
    the caller passes ``changed=True``: an earlier piece of the same tensor did), the rest are
    added in place, without the comparison and its copy.
    """
    import torch

    scratch = scratch or Scratch()
    low = weight.dtype
    if weight.dim() == 0 or weight.numel() == 0:
        before = weight.clone()
        weight += delta.to(low) if embedding else delta
        return changed or not same_bits(before, weight)
    rows = weight.shape[0]
    per_row = max(1, weight.numel() // rows)
    step = max(1, _BLOCK_ELEMENTS // per_row)
    for start in range(0, rows, step):
        w, d = weight[start : start + step], delta[start : start + step]
        if changed:  # already known: add straight into the weight, no copy kept to compare
            _add_into(w, d, embedding=embedding, scratch=scratch)
            continue
        new = scratch.get(low, d.numel(), slot=1).view(d.shape)
        if embedding and low != torch.float32:
            rounded = scratch.get(low, d.numel()).view(d.shape)
            rounded.copy_(d)
            torch.add(w, rounded, out=new)
        elif low == d.dtype:
            torch.add(w, d, out=new)
        else:
            # not `torch.add(w, d, out=...)`: a mixed-dtype op allocates a cast copy of `w`
            total = scratch.get(torch.float32, d.numel()).view(d.shape)
            total.copy_(w)
            total.add_(d)
            new.copy_(total)
        changed = changed or not same_bits(new, w)
        w.copy_(new)
    return changed


def _add_into(w: torch.Tensor, d: torch.Tensor, *, embedding: bool, scratch: Scratch) -> None:
    """``apply_delta``'s block step without the comparison: the same ops, so the same bits
    (a float32 sum rounded once into ``w`` is what ``new.copy_(total); w.copy_(new)`` gives)."""
    import torch

    low = w.dtype
    if embedding and low != torch.float32:
        rounded = scratch.get(low, d.numel()).view(d.shape)
        rounded.copy_(d)
        w.add_(rounded)
    elif low == d.dtype:
        w.add_(d)
    else:
        total = scratch.get(torch.float32, d.numel()).view(d.shape)
        total.copy_(w)
        total.add_(d)
        w.copy_(total)


def bias_delta(lora_bias: torch.Tensor, *, scaling: float) -> torch.Tensor:
    """``lora_bias=True``: PEFT merges ``base_layer.bias.data += lora_B.bias * scaling``."""
    return lora_bias * scaling


def apply_dora(
    weight: torch.Tensor,
    delta: torch.Tensor,
    magnitude: torch.Tensor,
    *,
    fan_in_fan_out: bool,
    embedding: bool,
) -> torch.Tensor:
    """DoRA merge: ``magnitude / ||W + dW|| * (W + dW)``, norm over each output row.

    ``delta`` is ``lora_delta``'s float32 result and ``magnitude`` the lora_magnitude_vector
    as PEFT holds it (float32).
    """
    import torch

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
