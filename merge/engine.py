"""Stream a base checkpoint through the adapters' deltas into a new HF model folder.

One base tensor at a time: read its bytes into a reused buffer, apply what the adapters do
to it (delta.py mirrors PEFT), write it into its place in the output shard while hashing.
Untouched tensors are copied as bytes, never through torch.  The model is never built.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lorareg.errors import MergeError, UnsupportedFeatureError
from lorareg.merge.adapter import check_layout, inspect_adapter, layout_adapter, load_adapter
from lorareg.merge import delta as d
from lorareg.merge.arch import tied_pair
from lorareg.merge.ops import Op, build_ops, main_kind, module_kind
from lorareg.merge.output import MergeOutput, copy_side_files, default_model_card, hash_files, write_config
from lorareg.merge.plan import MergePlan, tensor_seed, validate_plan
from lorareg.merge.reader import FLOAT_DTYPES, BaseTensor, Checkpoint, TensorReader, open_checkpoint, torch_dtype
from lorareg.merge.writer import OutTensor, ShardWriter, plan_shards, tensor_bytes
from lorareg.store.atomic import fsync_dir
from lorareg.store.digest import manifest_digest

if TYPE_CHECKING:
    import torch

__all__ = ["MergeOutput", "merge"]

Progress = Callable[[int, int, str], None]
_ST = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
_NAMES = {v: k for k, v in _ST.items()}


def _out_dtype(plan: MergePlan, t: BaseTensor) -> str:
    if plan.dtype == "auto" or t.dtype not in FLOAT_DTYPES:
        return t.dtype  # integer buffers (position_ids) keep theirs, as from_pretrained does
    return _ST[plan.dtype]


def _model_dtype(plan: MergePlan, ckpt: Checkpoint) -> str:
    if plan.dtype != "auto":
        return plan.dtype
    for key in ("dtype", "torch_dtype"):
        if ckpt.config.get(key) in _ST:
            return ckpt.config[key]
    counts = Counter(t.dtype for t in ckpt.tensors.values() if t.dtype in FLOAT_DTYPES)
    return _NAMES[counts.most_common(1)[0][0]] if counts else "float32"


class _Applier:
    """Applies one output tensor's operations, in the output dtype."""

    def __init__(self, plan: MergePlan, adapters: list, method, notes: list[str]) -> None:
        self.plan, self.adapters, self.method, self.notes = plan, adapters, method, notes
        self.weights = [float(a.weight) for a in plan.adapters]
        # One float32 buffer per adapter slot, as large as the largest delta, reused for every
        # tensor: a fresh full-size delta per weight makes glibc grow the heap (measured 5-6x
        # the largest tensor at peak instead of 3x).
        self._largest = max(
            (m.lora_B.shape[0] * m.lora_A.shape[1] for a in adapters for m in a.modules.values()), default=0
        )
        self._buffers: list[torch.Tensor] = []
        self._scratch = d.Scratch()

    def _buffer(self, slot: int, m) -> torch.Tensor:
        import torch

        while len(self._buffers) <= slot:
            self._buffers.append(torch.empty(self._largest, dtype=torch.float32))
        rows, cols = m.lora_B.shape[0], m.lora_A.shape[1]
        return self._buffers[slot][: rows * cols].view(rows, cols)

    def _override(self, name: str, w: torch.Tensor, op: Op) -> tuple[torch.Tensor, bool]:
        """PEFT loads the copy of a base tensor saved in the adapter over the base's."""
        import torch

        saved = op.payload
        differs = not torch.equal(saved.to(w.dtype), w)
        if differs and len(self.adapters) > 1:
            raise UnsupportedFeatureError(
                f"{self.adapters[op.adapter].path}: carries its own copy of {name}, which differs from the base",
                hint="merge it on its own, or register it against the base it was trained on",
            )
        if differs:
            self.notes.append(f"{self.adapters[op.adapter].path.name}: used its own saved copy of {name}")
        if self.plan.adapter_dtype == "base":
            # low_cpu_mem_usage *assigns* the saved float32 copy: PEFT then merges this tensor
            # in float32 with unrounded factors; it is rounded to the output dtype once, at the end.
            return saved.to(torch.float32, copy=True), differs
        # a copy: the ops below work in place and the same saved tensor may feed a tied pair
        return saved.to(w.dtype, copy=True), differs

    def apply(self, name: str, w: torch.Tensor, ops: list[Op]) -> tuple[torch.Tensor, bool]:
        """(new tensor, whether it differs from the base by construction)."""
        import torch

        out_dtype = w.dtype
        changed = False
        for op in (o for o in ops if o.kind == "override"):
            w, differs = self._override(name, w, op)
            changed |= differs
        mode, held = self.plan.adapter_dtype, w.dtype  # held: the dtype PEFT rounds factors to
        main = [o for o in ops if o.kind != "override"]
        kind = main_kind(main)
        if kind is None:
            result = w
        elif kind == "replace":
            result, changed = main[0].payload, True
        elif kind == "tokens":
            indices, values = main[0].payload
            result, changed = d.apply_tokens(w, list(indices), values), True
        elif kind == "dora":
            m = main[0].payload
            result = d.apply_dora(
                w, m.delta(mode, base_dtype=held, out=self._buffer(0, m)), m.held_magnitude(mode, base_dtype=held),
                fan_in_fan_out=m.fan_in_fan_out, embedding=m.kind == "embedding",
            )
            changed = True
        else:
            if not w.is_floating_point():
                raise MergeError(f"{name}: adapters change a {w.dtype} tensor", hint="check the adapter targets")
            if kind == "bias":
                deltas = [d.bias_delta(o.payload.held_bias(mode, base_dtype=held), scaling=o.payload.scaling)
                          for o in main]
                embedding = False
            else:
                deltas = [o.payload.delta(mode, base_dtype=held, out=self._buffer(i, o.payload))
                          for i, o in enumerate(main)]
                embedding = module_kind(main) == "embedding"
            generator = torch.Generator().manual_seed(tensor_seed(self.plan.seed, name))
            combined = self.method.combine(
                deltas, [self.weights[o.adapter] for o in main], density=self.plan.density,
                majority_sign_method=self.plan.majority_sign_method, generator=generator,
            )
            del deltas
            result, changed = d.apply_delta(w, combined, embedding=embedding, scratch=self._scratch), True
        return result.to(out_dtype), changed


def _in_dtype(t: torch.Tensor, out: OutTensor, cast: bytearray) -> torch.Tensor:
    """``t`` in the output dtype, converted into the reused ``cast`` buffer when it differs."""
    import torch

    dtype = torch_dtype(out.dtype)
    if t.dtype == dtype or t.numel() == 0:
        return t.to(dtype)
    w = torch.frombuffer(memoryview(cast)[: out.nbytes], dtype=dtype).view(t.shape)
    return w.copy_(t)  # the same round-to-nearest-even as `.to(dtype)`


def _load_adapters(plan: MergePlan, ckpt: Checkpoint, pair) -> list:
    shapes = {name: t.shape for name, t in ckpt.tensors.items()}
    if pair is not None:
        shapes[pair.head] = shapes[pair.embedding]
    loaded = []
    for a in plan.adapters:
        summary = inspect_adapter(a.path)
        layout = layout_adapter(a.path, base_names=shapes, base_config=ckpt.config, summary=summary)
        check_layout(Path(a.path), layout, shapes)
        loaded.append(load_adapter(a.path, base_names=shapes, base_config=ckpt.config, layout=layout))
    return loaded


def merge(
    plan: MergePlan,
    out_dir: Path,
    *,
    recipe_digest: str = "",
    model_card: str | None = None,
    progress: Progress | None = None,
) -> MergeOutput:
    """Merge ``plan`` into a new folder ``out_dir`` (which must not exist yet).

    Written into a temp sibling and renamed at the end, so ``out_dir`` is complete or absent.
    """
    from lorareg.merge.methods import get_method

    validate_plan(plan)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise MergeError(f"{out_dir}: already exists", hint="choose a new output folder, or remove that one")
    method = get_method(plan.method)
    method.validate(density=plan.density, majority_sign_method=plan.majority_sign_method,
                    n_adapters=len(plan.adapters))
    ckpt = open_checkpoint(plan.base)
    pair = tied_pair(ckpt.config, ckpt.tensors)
    adapters = _load_adapters(plan, ckpt, pair)
    work = build_ops(adapters, [float(a.weight) for a in plan.adapters], plan.method, pair)
    notes = list(work.notes)

    sources: list[tuple[OutTensor, BaseTensor]] = []
    for t in ckpt.tensors.values():
        sources.append((OutTensor(t.name, _out_dtype(plan, t), t.shape), t))
        if work.untied is not None and t.name == work.untied.embedding:
            sources.append((OutTensor(work.untied.head, _out_dtype(plan, t), t.shape), t))
    same_layout = work.untied is None and all(o.dtype == t.dtype for o, t in sources) and all(
        sum(t.nbytes for t in ckpt.tensors.values() if t.file == f) <= plan.max_shard_size for f in ckpt.files
    )
    # Same tensors, same dtypes: each output shard mirrors its input shard (same names, offsets).
    keep = {o.name: t.file for o, t in sources} if same_layout else None
    shards = plan_shards([o for o, _ in sources], max_shard_size=plan.max_shard_size, keep_files=keep)
    by_name = dict((o.name, (o, t)) for o, t in sources)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:8]}.incomplete"
    tmp.mkdir()
    writer = None
    try:
        metadata = {"format": "pt", "lorareg_recipe": recipe_digest}
        writer = ShardWriter(tmp, shards, metadata=metadata)
        applier = _Applier(plan, adapters, method, notes)
        buf = bytearray(max((t.nbytes for _, t in sources), default=0))
        # a second reused buffer for tensors whose dtype changes (no allocation per tensor)
        cast = bytearray(max((o.nbytes for o, t in sources if o.dtype != t.dtype), default=0))
        total, changed = len(sources), 0
        with TensorReader(ckpt) as reader:
            for done, out in enumerate((o for s in shards for o in s.tensors), start=1):
                _, src = by_name[out.name]
                ops = work.ops.get(out.name)
                if not ops and out.dtype == src.dtype:
                    writer.write(out.name, reader.read(src, buf))
                else:
                    w = _in_dtype(reader.tensor(src, buf), out, cast)
                    if ops:
                        w, touched = applier.apply(out.name, w, ops)
                        changed += touched
                    writer.write(out.name, tensor_bytes(w))
                    del w
                if progress is not None:
                    progress(done, total, out.name)
        writer.finish(index=(ckpt.indexed and same_layout) or len(shards) > 1)
        dtype = _model_dtype(plan, ckpt)
        write_config(ckpt.config, tmp, dtype=dtype, untied=work.untied is not None)
        copy_side_files(ckpt.folder, tmp)
        card = model_card if model_card is not None else default_model_card(
            base=plan.base, adapters=[a.path for a in plan.adapters], method=plan.method,
            recipe_digest=recipe_digest,
        )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        files = hash_files(tmp, writer.files)
        os.rename(tmp, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MergeOutput(
        path=out_dir,
        digest=manifest_digest(writer.entries),
        files=files,
        tensors_total=total,
        tensors_changed=changed,
        dtype=dtype,
        notes=tuple(dict.fromkeys(notes)),
    )
