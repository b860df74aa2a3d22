"""Tensor-by-tensor comparison of two checkpoint folders: which tensors differ, in how
many elements, by how much (absolute and in units in the last place)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_INT_VIEW = {4: "int32", 2: "int16", 8: "int64"}


def _tensor_files(folder: Path) -> dict[str, Path]:
    from safetensors import safe_open

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(f, framework="pt") as h:
            for k in h.keys():
                out[k] = f
    return out


def ulp_distance(a, b) -> int:
    """Largest distance between ``a`` and ``b`` counted in representable values."""
    import torch

    if not a.dtype.is_floating_point:
        return int((a.long() - b.long()).abs().max().item()) if a.numel() else 0
    view = getattr(torch, _INT_VIEW[a.element_size()])
    ia, ib = a.contiguous().view(view).long(), b.contiguous().view(view).long()
    bits = a.element_size() * 8
    sign = 1 << (bits - 1)
    # Map sign-magnitude bit patterns to a monotone integer line.
    ia = torch.where(ia < 0, -(ia + sign), ia)
    ib = torch.where(ib < 0, -(ib + sign), ib)
    return int((ia - ib).abs().max().item()) if a.numel() else 0


def compare_tensors(name: str, a, b) -> dict[str, Any] | None:
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return {"name": name, "elements_differing": -1, "max_abs": float("nan"), "max_ulp": -1,
                "note": f"{tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}"}
    if torch.equal(a.view(-1).contiguous().view(torch.uint8) if a.dtype.is_floating_point else a,
                   b.view(-1).contiguous().view(torch.uint8) if b.dtype.is_floating_point else b):
        return None
    diff = (a.double() - b.double()).abs()
    ne = (a != b) | (torch.isnan(a.float()) != torch.isnan(b.float()))
    return {"name": name, "elements_differing": int(ne.sum().item()), "max_abs": float(diff.max().item()),
            "max_ulp": ulp_distance(a, b), "note": ""}


def compare_folders(a: Path, b: Path) -> list[dict[str, Any]]:
    """Differences between the tensors of two folders, largest first; missing tensors noted."""
    from safetensors import safe_open

    fa, fb = _tensor_files(a), _tensor_files(b)
    out: list[dict[str, Any]] = []
    for name in sorted(set(fa) | set(fb)):
        if name not in fa or name not in fb:
            out.append({"name": name, "elements_differing": -1, "max_abs": float("nan"), "max_ulp": -1,
                        "note": "only in " + ("the first" if name in fa else "the second")})
            continue
        with safe_open(fa[name], framework="pt") as ha, safe_open(fb[name], framework="pt") as hb:
            d = compare_tensors(name, ha.get_tensor(name), hb.get_tensor(name))
        if d:
            out.append(d)
    out.sort(key=lambda d: (-(d["max_abs"] if d["max_abs"] == d["max_abs"] else float("inf")), d["name"]))
    return out


def ulp_size(t):
    """Size of one unit in the last place at each element's magnitude, in float64."""
    import torch

    finfo = torch.finfo(t.dtype)
    mag = t.double().abs().clamp_min(finfo.tiny)
    return torch.exp2(torch.floor(torch.log2(mag))) * finfo.eps


def deviation_in_source_ulps(exact: Path, approx: Path, source: Path) -> float:
    """Largest |exact - approx| measured in ulps of max(|source|, |exact|) per element: how far a
    result derived from ``source`` (e.g. merged weights minus one delta) lands from the exact one."""
    import torch
    from safetensors import safe_open

    fe, fa, fs = _tensor_files(exact), _tensor_files(approx), _tensor_files(source)
    worst = 0.0
    for name in sorted(set(fe) & set(fa) & set(fs)):
        with safe_open(fe[name], framework="pt") as he, safe_open(fa[name], framework="pt") as ha, \
                safe_open(fs[name], framework="pt") as hs:
            e, a, s = he.get_tensor(name), ha.get_tensor(name), hs.get_tensor(name)
        if not e.dtype.is_floating_point or e.shape != a.shape or e.shape != s.shape or torch.equal(e, a):
            continue
        ref = torch.maximum(s.double().abs(), e.double().abs()).to(e.dtype)
        worst = max(worst, float(((e.double() - a.double()).abs() / ulp_size(ref)).max().item()))
    return worst
