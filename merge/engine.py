"""Stream a base checkpoint through the adapters' deltas into a new HF model folder.

One base tensor at a time: read its bytes into reused buffers, apply what the adapters do
to it (lora_math.py mirrors PEFT), write it into its place in the output shard while hashing.
Untouched tensors are copied as bytes, never through torch.  The model is never built.

Writing and hashing run on a background thread (pipeline.py) while this one reads and
computes the next piece.  Untouched tensors, and tensors that only get LoRA deltas (which
add elementwise), travel in small pieces through a few reused slots: the base tensor is
never held whole, so the memory in flight is a few pieces, not a second copy of the largest
tensor.  Anything else is computed whole, in one reused buffer.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorareg.errors import IncompatibleAdapterError, MergeError, UnsupportedFeatureError
from lorareg.merge.adapter import inspect_adapter, layout_adapter, load_adapter
from lorareg.merge.adapter_fit import check_layout
from lorareg.merge import lora_math as d
from lorareg.merge.arch import input_embedding, tied_pair
from lorareg.merge.methods import MergeMethod, get_method
from lorareg.merge.noop import ALLOW_HINT, check_untrained
from lorareg.merge.quantize import quantized_weights, roundtrip
from lorareg.merge.side_files import choose_side_files, tokenizer_size
from lorareg.merge.vocab import VocabGrowth, check_rows_defined, find_growth, grow_rows, grown_shapes
from lorareg.merge.worklist import Op, build_ops, main_kind, module_kind
from lorareg.merge.pipeline import Slot, WritePipeline
from lorareg.merge.output_folder import MergeOutput, copy_side_files, default_model_card, hash_files, write_config
from lorareg.merge.plan import MergePlan, tensor_seed, validate_plan
from lorareg.merge.reader import FLOAT_DTYPES, BaseTensor, Checkpoint, TensorReader, open_checkpoint, torch_dtype
from lorareg.merge.threads import arithmetic_threads
from lorareg.merge.writer import OutTensor, ShardWriter, plan_shards, tensor_bytes
from lorareg.store.atomic import fsync_dir
from lorareg.store.digest import manifest_digest

if TYPE_CHECKING:
    import torch

__all__ = ["MergeOutput", "merge"]

Progress = Callable[[int, int, str], None]
_ST = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
_NAMES = {v: k for k, v in _ST.items()}
# Bytes per piece handed to the writer, and pieces in flight: enough to keep the disk busy
# while the next piece is read and computed, small next to a delta buffer.
_PIECE = 4 << 20
_PIECES = 4


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

    def __init__(self, plan: MergePlan, adapters: list, method: MergeMethod, params: dict[str, Any],
                 notes: list[str]) -> None:
        self.plan, self.adapters, self.method, self.params, self.notes = plan, adapters, method, params, notes
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

        if self.plan.adapter_dtype == "base":
            saved = op.payload.load(torch.float32)
            differs = not torch.equal(saved.to(w.dtype), w)
        else:
            saved = op.payload.load(w.dtype)
            differs = not torch.equal(saved, w)
        if differs and len(self.adapters) > 1:
            raise UnsupportedFeatureError(
                f"{self.adapters[op.adapter].path}: carries its own copy of {name}, which differs from the base",
                hint="merge it on its own, or register it against the base it was trained on",
            )
        if differs:
            self.notes.append(f"{self.adapters[op.adapter].path.name}: used its own saved copy of {name}")
        # "base": low_cpu_mem_usage *assigns* the saved float32 copy, so PEFT merges this tensor
        # in float32 with unrounded factors; it is rounded to the output dtype once, at the end.
        # Each load is a fresh tensor, so the ops below may work on it in place.
        return saved, differs

    def apply(self, name: str, w: torch.Tensor, ops: list[Op]) -> tuple[torch.Tensor, bool, bool]:
        """(new tensor, whether it differs from the base by construction, whether its bits do)."""
        import torch

        out_dtype, base_w = w.dtype, w
        changed = False
        main = [o for o in ops if o.kind != "override"]
        kind = main_kind(main)
        # A saved module (modules_to_save) replaces the layer whose weight an override would set:
        # the override cannot show in the output, and skipping it spares reading an embedding.
        for op in (o for o in ops if o.kind == "override" and kind != "replace"):
            w, differs = self._override(name, w, op)
            changed |= differs
        mode, held = self.plan.adapter_dtype, w.dtype  # held: the dtype PEFT rounds factors to
        if kind is None:
            result = w
        elif kind == "replace":
            # loaded straight into the output dtype: the same rounding as `.to(out_dtype)` below
            result, changed = main[0].payload.load(out_dtype), True
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
            combined, embedding = self._combined(name, main, kind, held)
            moved = d.apply_delta(w, combined, embedding=embedding, scratch=self._scratch)
            result, changed = w, True
            if w is base_w:  # changed in place: the comparison was made block by block
                return result, changed, moved
        result = result.to(out_dtype)
        return result, changed, not d.same_bits(result, base_w)

    def _combined(self, name: str, main: list[Op], kind: str, held: torch.dtype) -> tuple[torch.Tensor, bool]:
        """The adapters' combined float32 delta for one tensor, and whether it is an embedding's."""
        import torch

        mode = self.plan.adapter_dtype
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
            deltas, [self.weights[o.adapter] for o in main], params=self.params, generator=generator,
            overwrite=True,  # the deltas are this tensor's own (reused buffers, fresh bias products)
        )
        return combined, embedding

    def lora_delta(self, name: str, dtype: torch.dtype, ops: list[Op]) -> tuple[torch.Tensor, bool]:
        """For a tensor held in ``dtype`` whose ops are all LoRA (see ``_rows_streamable``):
        what ``apply`` would add to it, to be added row block by row block with ``add_rows``."""
        return self._combined(name, ops, "lora", dtype)

    def add_rows(self, w: torch.Tensor, delta: torch.Tensor, *, embedding: bool, changed: bool = False) -> bool:
        # elementwise, like apply_delta on the whole tensor: the same bits, block by block
        return d.apply_delta(w, delta, embedding=embedding, scratch=self._scratch, changed=changed)


def _in_dtype(t: torch.Tensor, out: OutTensor, cast: bytearray | memoryview) -> torch.Tensor:
    """``t`` in the output dtype, converted into the reused ``cast`` buffer when it differs."""
    import torch

    dtype = torch_dtype(out.dtype)
    if t.dtype == dtype or t.numel() == 0:
        return t.to(dtype)
    # the base tensor's size in the output dtype (a grown tensor's output is larger)
    w = torch.frombuffer(memoryview(cast)[: t.numel() * dtype.itemsize], dtype=dtype).view(t.shape)
    return w.copy_(t)  # the same round-to-nearest-even as `.to(dtype)`


def _rows_streamable(ops: list[Op] | None, out: OutTensor, src: BaseTensor) -> bool:
    """Plain LoRA deltas on a float tensor kept in its dtype: each output row is its base row
    plus its delta row, so the tensor can be read, merged and written in row blocks."""
    return bool(ops) and all(o.kind == "lora" for o in ops) and out.dtype == src.dtype and (
        src.dtype in FLOAT_DTYPES and len(src.shape) >= 1 and src.nbytes > 0 and out.shape == src.shape
    )


def _copy(
    pipe: WritePipeline, reader: TensorReader, out: OutTensor, src: BaseTensor, ring: list[Slot], k: int
) -> int:
    """Stream an untouched tensor's bytes to the writer; returns the next ring position."""
    piece = len(ring[0].data)
    pipe.begin(out.name, src.nbytes)
    for start in range(0, src.nbytes, piece):
        slot = pipe.acquire(ring[k % len(ring)])
        k += 1
        pipe.put(slot, reader.read(src, slot.data, start=start, size=min(piece, src.nbytes - start)))
    pipe.end()
    return k


def _merge_rows(
    pipe: WritePipeline, reader: TensorReader, applier: _Applier, out: OutTensor, src: BaseTensor,
    ops: list[Op], ring: list[Slot], k: int,
) -> tuple[int, bool]:
    """Merge a ``_rows_streamable`` tensor row block by row block; returns the next ring
    position and whether any element's bits changed."""
    import torch

    dtype = torch_dtype(src.dtype)
    delta, embedding = applier.lora_delta(out.name, dtype, ops)
    if tuple(delta.shape) != src.shape:
        raise MergeError(f"{out.name}: the adapters' delta is {tuple(delta.shape)}, the weight {src.shape}",
                         hint="check that the adapter was trained on this base")
    rows = src.shape[0]
    row_bytes = src.nbytes // rows
    step = max(1, len(ring[0].data) // row_bytes)
    pipe.begin(out.name, out.nbytes)
    moved = False
    for start in range(0, rows, step):
        n = min(step, rows - start)
        slot = pipe.acquire(ring[k % len(ring)])
        k += 1
        view = reader.read(src, slot.data, start=start * row_bytes, size=n * row_bytes)
        w = torch.frombuffer(view, dtype=dtype).view((n, *src.shape[1:]))
        moved = applier.add_rows(w, delta[start : start + n], embedding=embedding, changed=moved)
        del w
        pipe.put(slot, view)
    pipe.end()
    return k, moved


def _load_adapters(plan: MergePlan, ckpt: Checkpoint, pair) -> tuple[list, VocabGrowth | None]:
    """The adapters, checked against the base's shapes, and the vocabulary they grow it to."""
    shapes = {name: t.shape for name, t in ckpt.tensors.items()}
    if pair is not None:
        shapes[pair.head] = shapes[pair.embedding]
    loaded, growths = [], {}
    for a in plan.adapters:
        summary = inspect_adapter(a.path)
        layout = layout_adapter(a.path, base_names=shapes, base_config=ckpt.config, summary=summary)
        growth = find_growth(Path(a.path), layout, shapes)
        if growth is not None:
            growths[growth.rows] = growth
        check_layout(Path(a.path), layout, grown_shapes(shapes, growth))
        loaded.append(load_adapter(a.path, base_names=shapes, base_config=ckpt.config, layout=layout))
    if len(growths) > 1:
        raise IncompatibleAdapterError(
            f"the adapters were trained with different vocabularies ({', '.join(map(str, sorted(growths)))} tokens)",
            hint="merge each into the base on its own")
    return loaded, next(iter(growths.values()), None)


def _side_files(plan: MergePlan, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Which adapter supplies each side-file group; an adapter tokenizer with ids beyond the
    merged embedding's rows would index past it, so it is refused."""
    paths = [Path(a.path) for a in plan.adapters]
    chosen = dict(plan.side_files) if plan.side_files is not None else choose_side_files(paths)
    emb = input_embedding(shapes)
    if "tokenizer" in chosen and emb is not None:
        size, rows = tokenizer_size(paths[chosen["tokenizer"]]), shapes[emb][0]
        if size is not None and size > rows:
            raise MergeError(
                f"{paths[chosen['tokenizer']]}: its tokenizer has {size} tokens, the merged embedding {rows} rows",
                hint="save the resized embedding with the adapter (modules_to_save), or choose another tokenizer "
                     "with --tokenizer-from")
    return chosen


def merge(
    plan: MergePlan,
    out_dir: Path,
    *,
    recipe_digest: str = "",
    model_card: str | None = None,
    progress: Progress | None = None,
    write_weights: bool = True,
    on_shard: Callable[[Path, str], None] | None = None,
) -> MergeOutput:
    """Merge ``plan`` into a new folder ``out_dir`` (which must not exist yet).

    Written into a temp sibling and renamed at the end, so ``out_dir`` is complete or absent.
    ``write_weights=False`` (a recipe-only version): the shards' tensors are hashed, not
    written, so ``out_dir`` holds only the small files (config, index, side files); the digest
    and every size in ``files`` are those the written folder would have, and the shards'
    sha256 is None (no blob of theirs is kept: see writer.py).
    ``on_shard(path, sha256)`` is called with each shard once it is written and fsynced.
    """
    import torch

    params = validate_plan(plan)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise MergeError(f"{out_dir}: already exists", hint="choose a new output folder, or remove that one")
    method = get_method(plan.method)
    ckpt = open_checkpoint(plan.base)
    pair = tied_pair(ckpt.config, ckpt.tensors)
    adapters, growth = _load_adapters(plan, ckpt, pair)
    work = build_ops(adapters, [float(a.weight) for a in plan.adapters], plan.method, pair)
    notes = check_untrained(adapters, allow=plan.allow_noop) + list(work.notes)
    shapes = grown_shapes({n: t.shape for n, t in ckpt.tensors.items()}, growth)
    side_files = _side_files(plan, shapes)
    quantized: set[str] = set()
    if plan.base_quantization is not None:
        q = plan.base_quantization
        quantized = quantized_weights(plan.base, ckpt.config, set(ckpt.tensors))
        notes.append(f"merged into the {q.quant_type}-quantized base (blocksize {q.blocksize}"
                     f"{', double quant' if q.double_quant else ''}): {len(quantized)} linear layers dequantized")

    sources: list[tuple[OutTensor, BaseTensor]] = []
    for t in ckpt.tensors.values():
        sources.append((OutTensor(t.name, _out_dtype(plan, t), shapes[t.name]), t))
        if work.untied is not None and t.name == work.untied.embedding:
            sources.append((OutTensor(work.untied.head, _out_dtype(plan, t), shapes[t.name]), t))
    if growth is not None:
        check_rows_defined(adapters, growth, work.ops, [o.name for o, _ in sources if o.name in growth.tensors])
        notes.append(f"vocabulary grown from {growth.base_rows} to {growth.rows} tokens: the new rows come from "
                     "the adapter's saved embedding/head")
    same_layout = growth is None and work.untied is None and all(o.dtype == t.dtype for o, t in sources) and all(
        sum(t.nbytes for t in ckpt.tensors.values() if t.file == f) <= plan.max_shard_size for f in ckpt.files
    )
    # Same tensors, same dtypes: each output shard mirrors its input shard (same names, offsets).
    keep = {o.name: t.file for o, t in sources} if same_layout else None
    shards = plan_shards([o for o, _ in sources], max_shard_size=plan.max_shard_size, keep_files=keep)
    by_name = dict((o.name, (o, t)) for o, t in sources)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:8]}.incomplete"
    tmp.mkdir()
    writer = pipe = None
    try:
        metadata = {"format": "pt", "lorareg_recipe": recipe_digest}
        writer = ShardWriter(tmp, shards, metadata=metadata, write=write_weights, on_shard=on_shard)
        applier = _Applier(plan, adapters, method, params, notes)
        ops_of = {o.name: work.ops.get(o.name) for o, _ in sources}
        piecewise = {o.name for o, t in sources if o.name not in quantized and (
            (not ops_of[o.name] and o.dtype == t.dtype) or _rows_streamable(ops_of[o.name], o, t))}
        whole = [(o, t) for o, t in sources if o.name not in piecewise]
        # one row of a row-streamed tensor must fit a piece
        piece = max([_PIECE] + [t.nbytes // t.shape[0] for o, t in sources
                                if o.name in piecewise and ops_of[o.name]])
        ring = [Slot(piece) for _ in range(_PIECES)]
        # The rest is computed whole: its base bytes, then (for a dtype change) a cast copy,
        # in one reused slot (no allocation per tensor).
        read_size = max((t.nbytes for _, t in whole), default=0)
        cast_size = max((o.nbytes for o, t in whole if o.dtype != t.dtype), default=0)
        # and, for a quantized base, room for the dequantized weight (a fresh tensor per layer
        # grows the heap: measured 74 MiB instead of 50 on 8 MiB layers)
        big = Slot(read_size + cast_size + max((o.nbytes for o, _ in whole if o.name in quantized), default=0))
        total, changed, differing, k = len(sources), 0, 0, 0
        pipe = WritePipeline(writer)
        with TensorReader(ckpt) as reader, arithmetic_threads():
            for done, out in enumerate((o for s in shards for o in s.tensors), start=1):
                _, src = by_name[out.name]
                ops = ops_of[out.name]
                if out.name not in piecewise:
                    slot = pipe.acquire(big)
                    buf, cast = memoryview(slot.data)[:read_size], memoryview(slot.data)[read_size:]
                    dequantized = cast[cast_size:]
                    w = _in_dtype(reader.tensor(src, buf), out, cast)
                    if out.shape != src.shape and not any(o.kind == "replace" for o in ops or ()):
                        w = grow_rows(w, out.shape[0])  # (a saved module replaces it whole)
                    if out.name in quantized:  # what the 4-bit layer computed with in training
                        w = roundtrip(w, plan.base_quantization,
                                      out=torch.frombuffer(dequantized[: out.nbytes], dtype=w.dtype))
                    if ops:
                        w, touched, moved = applier.apply(out.name, w, ops)
                        changed += touched
                        differing += moved
                    slot.keep = data = tensor_bytes(w)  # may be a new tensor's bytes, not the slot's
                    del w
                    pipe.begin(out.name, out.nbytes)
                    pipe.put(slot, data)
                    pipe.end()
                    del data, buf, cast, dequantized
                elif ops:
                    k, moved = _merge_rows(pipe, reader, applier, out, src, ops, ring, k)
                    changed += 1
                    differing += moved
                else:
                    k = _copy(pipe, reader, out, src, ring, k)
                if progress is not None:
                    progress(done, total, out.name)
        pipe.close()
        if not differing and growth is None:
            if not plan.allow_noop:
                raise MergeError(
                    f"the merged weights equal the base's: every change the adapters make is zero or rounds away "
                    f"in {_model_dtype(plan, ckpt)}", hint="check the adapters and their weights, or " + ALLOW_HINT)
            notes.append("the merged weights equal the base's (merged anyway: allow_noop)")
        writer.finish(index=(ckpt.indexed and same_layout) or len(shards) > 1)
        dtype = _model_dtype(plan, ckpt)
        write_config(ckpt.config, tmp, dtype=dtype, untied=work.untied is not None,
                     vocab_size=growth.rows if growth is not None else None)
        copy_side_files(ckpt.folder, tmp, adapters=[Path(a.path) for a in plan.adapters], chosen=side_files)
        card = model_card if model_card is not None else default_model_card(
            base=plan.base, adapters=[a.path for a in plan.adapters], method=plan.method,
            recipe_digest=recipe_digest,
        )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        files = hash_files(tmp, writer.files)
        files = dict(sorted({**writer.files, **files}.items()))  # shards not written are hashed all the same
        os.rename(tmp, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        if pipe is not None:
            pipe.abort()
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
        tensors_differing=differing,
        side_files=side_files,
        dtype=dtype,
        notes=tuple(dict.fromkeys(notes)),
    )
