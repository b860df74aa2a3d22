"""Write a weighted combination of LoRA adapters as one new PEFT adapter (no base weights).

``cat`` is exact: per module, A = rows of w_i * s_i * A_i stacked, B = columns of B_i side
by side, so B @ A = sum_i w_i * s_i * B_i @ A_i with rank sum(r_i) and scale 1
(lora_alpha = r).  Folding each adapter's own scale into A is also what makes rsLoRA exact
(PEFT's add_weighted_adapter re-derives the scale from the new rank and gets rsLoRA wrong).

``svd`` keeps the best rank-k approximation of that same combined delta.  The delta is
already factored (B_cat @ A_cat, rank R = sum r_i), so it is decomposed through the QR
factors of B_cat and A_cat^T and an R x R SVD (torch.linalg.svd, float64): mathematically
the SVD of the full delta at a fraction of the cost (a 32000 x 2048 embedding delta needs a
32 x 32 SVD, not a 2048-wide one).  Each module's relative Frobenius error
||D - B_k A_k|| / ||D|| is measured against the full float32 delta, as a linear merge
would compute it, using the factors exactly as written.

In a ``cat`` adapter, modules only some inputs target simply have fewer blocks: each module
gets its own rank (rank_pattern / alpha_pattern keyed by full module path, alpha = rank), so
no zero blocks are stored.  An ``svd`` adapter has rank k everywhere.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lorareg.errors import MergeError, UnsupportedFeatureError
from lorareg.merge.adapter import LoadedAdapter, inspect_adapter, layout_adapter, load_adapter
from lorareg.merge.adapter_fit import base_shapes_of, check_layout
from lorareg.merge.adapter_config import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from lorareg.store.digest import FileDigest, file_sha256

if TYPE_CHECKING:
    import torch

__all__ = ["AdapterOut", "combine_to_adapter"]

KINDS = ("cat", "svd")
_REFUSE_HINT = "merge these adapters into the base instead (lorareg merge), which supports it"


@dataclass(frozen=True)
class AdapterOut:
    path: Path
    kind: str  # "cat" | "svd"
    files: dict[str, FileDigest]
    rank: int  # adapter_config r: the rank most modules have
    module_ranks: dict[str, int]  # module path -> its rank
    module_errors: dict[str, float]  # module path -> relative Frobenius error (0.0 for cat)
    notes: tuple[str, ...]


@dataclass(frozen=True)
class _Factors:
    module: str  # module path, as PEFT names it
    kind: str  # "linear" | "conv1d" | "embedding"
    lora_A: torch.Tensor  # (rank, in) float32
    lora_B: torch.Tensor  # (out, rank) float32
    error: float


def _check_args(adapters: Sequence[tuple[Path, float]], kind: str, rank: int | None) -> None:
    if kind not in KINDS:
        raise MergeError(f"unknown adapter combination {kind!r}", hint="use one of: " + ", ".join(KINDS))
    if not adapters:
        raise MergeError("no adapters to combine", hint="pass one or more (adapter, weight) pairs")
    for path, weight in adapters:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise MergeError(f"adapter {path}: weight must be a finite number, got {weight!r}", hint="pass e.g. 0.5")
    if kind == "cat" and rank is not None:
        raise MergeError("cat takes no rank: its rank is the sum of the inputs' ranks",
                         hint="drop --rank, or use svd to choose the rank")
    if kind == "svd" and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise MergeError(f"svd needs a positive integer rank, got {rank!r}", hint="pass --rank K, e.g. --rank 16")


def _refuse(adapter: Path, what: str) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(f"{adapter}: cannot write {what} into a combined adapter", hint=_REFUSE_HINT)


def _load(adapters: Sequence[tuple[Path, float]], base: Path) -> list[LoadedAdapter]:
    config, shapes = base_shapes_of(base)
    loaded = []
    for path, _ in adapters:
        path = Path(path)
        summary = inspect_adapter(path)
        if summary.use_dora:
            raise _refuse(path, "DoRA (use_dora)")
        if summary.lora_bias:
            raise _refuse(path, "a LoRA bias (lora_bias)")
        if summary.ensure_weight_tying:
            raise _refuse(path, "tied embedding LoRA (ensure_weight_tying)")
        layout = layout_adapter(path, base_names=shapes, base_config=config, summary=summary)
        check_layout(path, layout, shapes)
        if layout.replacements:
            raise _refuse(path, f"saved full modules (modules_to_save or bias): {sorted(layout.replacements)[0]}")
        if layout.tokens:
            raise _refuse(path, f"trainable tokens (trainable_token_indices): {sorted(layout.tokens)[0]}")
        loaded.append(load_adapter(path, base_names=shapes, base_config=config, layout=layout))
    _check_overrides(loaded, base)
    return loaded


def _check_overrides(loaded: list[LoadedAdapter], base: Path) -> None:
    """PEFT saves a copy of an embedding it wraps; harmless only while it equals the base's."""
    import torch

    from lorareg.merge.reader import TensorReader, open_checkpoint

    wanted = [(a, t, v) for a in loaded for t, v in a.overrides.items()]
    if not wanted:
        return
    ckpt = open_checkpoint(base)
    with TensorReader(ckpt) as reader:
        for adapter, target, saved in wanted:
            src = ckpt.tensors.get(target)
            same = src is not None and torch.equal(
                saved.load().to(torch.float32), reader.tensor(src, bytearray(src.nbytes)).to(torch.float32)
            )
            if not same:
                raise _refuse(adapter.path, f"its own copy of {target}, which differs from the base's")


def _cat(parts: list[tuple[Any, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(A_cat, B_cat) with each adapter's weight and scale folded into its rows of A."""
    import torch

    a = torch.cat([m.lora_A * (w * m.scaling) for m, w in parts], dim=0)
    b = torch.cat([m.lora_B for m, _ in parts], dim=1)
    return a.contiguous(), b.contiguous()


def _combined_delta(parts: list[tuple[Any, float]]) -> torch.Tensor:
    """sum_i w_i s_i B_i A_i in LoRA layout (out, in), float32, as a linear merge computes it."""
    import torch

    from lorareg.merge.methods import get_method

    deltas = []
    for m, _ in parts:
        d = m.delta("float32")
        deltas.append(d if m.kind == "linear" else d.T)  # conv1d and embedding deltas are stored transposed
    return get_method("linear").combine(deltas, [w for _, w in parts], params={}, generator=torch.Generator())


def _rel_error(d: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> float:
    """||D - B @ A||_F / ||D||_F in float64, a block of rows at a time (bounded memory)."""
    import torch

    num = den = 0.0
    rows = max(1, (1 << 22) // max(1, d.shape[1]))
    a64 = a.double()
    for i in range(0, d.shape[0], rows):
        blk = d[i:i + rows].double()
        num += float(torch.sum((blk - b[i:i + rows].double() @ a64) ** 2))
        den += float(torch.sum(blk**2))
    return math.sqrt(num / den) if den > 0 else 0.0


def _svd(a_cat: torch.Tensor, b_cat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rank-k factors (A_k, B_k, directions kept) of B_cat @ A_cat: B_k = U_k S_k, A_k = Vh_k.

    A delta with fewer than k singular directions (rank of the inputs, or its shape) is
    padded with zero rows/columns, so every module has the requested rank and the config
    needs no rank_pattern.
    """
    import torch

    m, n, r = b_cat.shape[0], a_cat.shape[1], a_cat.shape[0]
    if r < min(m, n):
        qb, rb = torch.linalg.qr(b_cat.double())
        qa, ra = torch.linalg.qr(a_cat.T.double())
        uc, s, vhc = torch.linalg.svd(rb @ ra.T)
        u, vh = qb @ uc, vhc @ qa.T
    else:
        u, s, vh = torch.linalg.svd(b_cat.double() @ a_cat.double(), full_matrices=False)
    kept = min(k, s.shape[0])
    u, s, vh = u[:, :kept], s[:kept], vh[:kept]
    # Singular vectors are defined up to sign; fix it (largest entry of each u positive) so the
    # written bytes do not depend on LAPACK's choice.
    pivot = u.abs().argmax(dim=0)
    sign = torch.sign(u[pivot, torch.arange(kept)])
    sign[sign == 0] = 1
    a_k = torch.zeros(k, n, dtype=torch.float32)
    b_k = torch.zeros(m, k, dtype=torch.float32)
    a_k[:kept] = (vh * sign[:, None]).float()
    b_k[:, :kept] = (u * (sign * s)).float()
    return a_k, b_k, kept


def _factors(loaded: list[LoadedAdapter], weights: list[float], kind: str, rank: int | None,
             notes: list[str]) -> dict[str, _Factors]:
    targets: dict[str, list[tuple[Any, float]]] = {}
    for adapter, w in zip(loaded, weights):
        for target, m in adapter.modules.items():
            targets.setdefault(target, []).append((m, w))
    out, padded = {}, []
    for target in sorted(targets):
        parts = targets[target]
        module, mkind = parts[0][0].module, parts[0][0].kind
        if any(m.module != module for m, _ in parts):
            notes.append(f"{target}: adapters name its module differently; wrote it as {module}")
        a_cat, b_cat = _cat(parts)
        if kind == "cat":
            out[target] = _Factors(module=module, kind=mkind, lora_A=a_cat, lora_B=b_cat, error=0.0)
            continue
        a_k, b_k, kept = _svd(a_cat, b_cat, rank)
        if kept < rank:
            padded.append(module)
        error = _rel_error(_combined_delta(parts), b_k, a_k)
        out[target] = _Factors(module=module, kind=mkind, lora_A=a_k, lora_B=b_k, error=error)
    if padded:
        notes.append(
            f"{len(padded)} module(s) have fewer than {rank} singular directions (e.g. {padded[0]}); "
            "their factors are zero-padded to rank " + str(rank) + ", exact for them"
        )
    return out


def _patterns(ranks: dict[str, int], r: int) -> dict[str, int]:
    """rank_pattern entries (keyed by full module path) giving each module its own rank.

    PEFT takes the first pattern that matches the end of a module path, in file order, and
    PEFT itself re-saves configs with sorted keys, so the entries must not depend on order:
    when one targeted module's path ends with another's (nested models), every key is
    anchored and escaped so that it matches its own module only.
    """
    pattern = {m: k for m, k in ranks.items() if k != r}
    nested = any(other != m and other.endswith("." + m) for m in pattern for other in ranks)
    if nested:
        pattern = {"^" + re.escape(m): k for m, k in pattern.items()}
    return dict(sorted(pattern.items()))


def _config(factors: dict[str, _Factors], loaded: list[LoadedAdapter], base: Path,
            notes: list[str]) -> tuple[dict[str, Any], int, dict[str, int]]:
    ranks = {f.module: int(f.lora_A.shape[0]) for f in factors.values()}
    counts = Counter(ranks.values())
    r = max(counts, key=lambda k: (counts[k], k)) if counts else 1
    pattern = _patterns(ranks, r)
    names = {a.summary.base_model_name_or_path for a in loaded}
    base_name = names.pop() if len(names) == 1 and None not in names else str(base)
    task_types = {json.loads((a.path / ADAPTER_CONFIG).read_text()).get("task_type") for a in loaded}
    if len(task_types) > 1:
        notes.append(f"inputs have different task_type values {sorted(map(str, task_types))}; kept none")
    config = {
        "peft_type": "LORA",
        "task_type": task_types.pop() if len(task_types) == 1 else None,
        "base_model_name_or_path": base_name,
        "r": r,
        "lora_alpha": r,  # scale alpha / r = 1: the adapters' scales are folded into A
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "use_rslora": False,
        "use_dora": False,
        "lora_bias": False,
        "bias": "none",
        "lora_dropout": 0.0,
        "fan_in_fan_out": any(f.kind == "conv1d" for f in factors.values()),
        "target_modules": sorted(ranks),
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    return config, r, ranks


def _tensors(factors: dict[str, _Factors]) -> dict[str, torch.Tensor]:
    out = {}
    for f in factors.values():
        prefix = f"base_model.model.{f.module}"
        if f.kind == "embedding":
            out[prefix + ".lora_embedding_A"] = f.lora_A
            out[prefix + ".lora_embedding_B"] = f.lora_B
        else:
            out[prefix + ".lora_A.weight"] = f.lora_A
            out[prefix + ".lora_B.weight"] = f.lora_B
    return out


def combine_to_adapter(
    *,
    adapters: Sequence[tuple[Path, float]],
    base: Path,
    out_dir: Path,
    kind: Literal["cat", "svd"],
    rank: int | None = None,
) -> AdapterOut:
    """Write ``sum_i w_i * adapter_i`` as a new PEFT adapter folder ``out_dir`` (must not exist).

    Written into a temp sibling and renamed at the end, so ``out_dir`` is complete or absent.
    """
    from safetensors.torch import save_file

    _check_args(adapters, kind, rank)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise MergeError(f"{out_dir}: already exists", hint="choose a new output folder, or remove that one")
    notes: list[str] = []
    loaded = _load(adapters, Path(base))
    factors = _factors(loaded, [float(w) for _, w in adapters], kind, rank, notes)
    if not factors:
        raise MergeError("the adapters have no LoRA modules to combine", hint="check the adapters' target_modules")
    config, r, ranks = _config(factors, loaded, Path(base), notes)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:8]}.incomplete"
    tmp.mkdir()
    try:
        save_file(_tensors(factors), str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        files = {}
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
            files[name] = FileDigest(sha256=file_sha256(tmp / name), size=(tmp / name).stat().st_size)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return AdapterOut(
        path=out_dir,
        kind=kind,
        files=files,
        rank=r,
        module_ranks=ranks,
        module_errors={f.module: f.error for f in factors.values()},
        notes=tuple(dict.fromkeys(notes)),
    )
