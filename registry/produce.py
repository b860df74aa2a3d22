"""The one road from a recipe to an output folder: a merge, an adapter output (cat/svd), a
copy of the base (no adapters left) or a subtraction.  ``merge``, ``rebuild``, ``rollback``,
``export`` and materialising a recipe-only version all come here, so they cannot drift apart.

The output has no README.md: the model card names the version number, which only
``register`` decides; it adds the card when it registers or stores the output."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorareg.errors import IntegrityError, MergeError
from lorareg.registry import lookup
from lorareg.registry import models as m
from lorareg.registry.context import Context
from lorareg.registry.recipe import Recipe
from lorareg.registry.register import CARD, folder_of
from lorareg.registry.results import FileDigest
from lorareg.registry.version_info import stored_recipe

Progress = Callable[[int, int, str], None] | None


@dataclass(frozen=True)
class Produced:
    folder: Path  # a scratch folder under LORAREG_HOME/tmp; ``discard()`` removes it
    digest: str  # the whole model (weights and defining files)
    weights_digest: str  # the tensor manifest alone
    files: dict[str, FileDigest]
    outcome: dict[str, Any] = field(default_factory=dict)  # what the run reported: notes, counts, ...

    def discard(self) -> None:
        shutil.rmtree(self.folder.parent, ignore_errors=True)


def produce(ctx: Context, recipe: Recipe, *, recipe_digest: str | None = None, progress: Progress = None,
            weights: bool = True, storing: bool = False) -> Produced:
    """Run ``recipe`` into a new scratch folder (the caller stores or discards it).
    ``weights=False`` (a version kept as recipe only): a merge's tensors are hashed, its shards
    not written; the digests and sizes are the same, the shards' sha256 None (no blob of theirs
    is kept), the folder holds only the small files.
    ``storing``: the caller will store the output, so an object store starts uploading each
    shard as soon as it is written (``BlobStore.begin_upload``)."""
    work = Path(tempfile.mkdtemp(prefix="merge-", dir=ctx.scratch()))
    out = work / "out"
    try:
        with ExitStack() as temporary_inputs:
            if recipe.subtracted is not None:
                return _subtract(ctx, recipe, out, recipe_digest, progress, temporary_inputs)
            base, adapters = _inputs(ctx, recipe, temporary_inputs)
            if not adapters:
                return _base_copy(ctx, recipe, base, out)
            if recipe.output == "model":
                return _merge(recipe, base, adapters, out, recipe_digest, progress, weights=weights,
                              on_shard=ctx.blobs.begin_upload if storing and weights else None)
            return _as_adapter(recipe, base, adapters, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def produce_version(ctx: Context, ref: str, *, progress: Progress = None) -> tuple[m.Version, Produced]:
    """Re-run a merged version's recipe and check the digest before anyone uses the output."""
    with ctx.session() as session:
        row = lookup.resolve(session, ref, kind="merge")
        recipe = stored_recipe(session, row)
        recorded = session.get(m.Merge, row.id).recipe_digest
    produced = produce(ctx, recipe, recipe_digest=recorded, progress=progress)
    if not same_output(row, produced):
        produced.discard()
        raise IntegrityError(
            f"rebuilding {lookup.ref_of(row)} gave {produced.digest}, not the recorded {row.digest}",
            hint=f"run: lorareg rebuild {lookup.ref_of(row)} for a report of what differs")
    return row, produced


def same_output(row: m.Version, produced: Produced) -> bool:
    """Whether ``produced`` is the version ``row`` recorded.  A recipe-only merge upgraded from
    before whole-model digests ("pending") is compared by its weights digest."""
    if row.digest_state == "pending":
        return produced.weights_digest == row.weights_digest
    return produced.digest == row.digest


def input_folder(ctx: Context, ref: str, temporary: ExitStack, *, digest: str | None = None,
                 progress: Progress = None, lazy: bool = False) -> Path:
    """The folder of a version something is about to read: its stored files (or its referenced
    folder, confirmed unchanged), or -- a merge kept as recipe only, e.g. the parent of an
    adapter chain or a subtraction's source -- rebuilt into scratch and checked against its
    digest, removed when ``temporary`` closes.  ``digest`` is what the reader recorded: a
    version that no longer has it is refused.  ``lazy``: weights may stay in the object store
    (read by ranged requests as they stream; see ``register.folder_of``)."""
    with ctx.session() as session:
        row = lookup.resolve(session, ref)
        if digest is not None and row.digest != digest:
            raise IntegrityError(f"{ref} no longer has the digest the recipe recorded",
                                 hint="run: lorareg verify --all")
        if row.stored or row.kind == "base":
            return folder_of(ctx, session, row, lazy=lazy)
    _, rebuilt = produce_version(ctx, lookup.ref_of(row), progress=progress)
    temporary.callback(rebuilt.discard)
    return rebuilt.folder


def _inputs(ctx: Context, recipe: Recipe, temporary: ExitStack) -> tuple[Path, list[tuple[Path, float]]]:
    """Folders of the recipe's inputs, found by reference and checked against its digests."""
    base_folder = input_folder(ctx, recipe.base.ref, temporary, digest=recipe.base.digest, lazy=True)
    adapters = [(input_folder(ctx, a.ref, temporary), a.weight) for a in recipe.adapters]
    if recipe.allow_base_mismatch:
        from lorareg.merge import check_adapter_fits

        for path, _ in adapters:
            check_adapter_fits(base=base_folder, adapter=path)
    return base_folder, adapters


def _plan(recipe: Recipe, base: Path, adapters: list[tuple[Path, float]]):
    from lorareg.merge import AdapterInput, MergePlan
    from lorareg.merge.methods import get_method

    # A recipe recorded before methods declared their parameters may carry one its method
    # never used (majority_sign_method on linear was accepted and ignored): ignored still.
    declared = {p.name for p in get_method(recipe.method).params}
    return MergePlan(base=base, adapters=tuple(AdapterInput(p, w) for p, w in adapters), method=recipe.method,
                     params={k: v for k, v in recipe.params.items() if k in declared}, seed=recipe.seed, dtype=recipe.dtype,
                     adapter_dtype=recipe.adapter_dtype, max_shard_size=recipe.max_shard_size,
                     allow_noop=recipe.allow_noop, side_files=recipe.side_file_positions(),
                     base_quantization=_quantization(recipe))


def _quantization(recipe: Recipe):
    if recipe.base_quantization is None:
        return None
    from lorareg.merge.quantize import BaseQuantization

    return BaseQuantization(**recipe.base_quantization)


def _merge(recipe: Recipe, base: Path, adapters: list[tuple[Path, float]], out: Path, recipe_digest: str | None,
           progress: Progress, *, weights: bool = True, on_shard=None) -> Produced:
    from lorareg.merge import merge

    res = merge(_plan(recipe, base, adapters), out, recipe_digest=recipe_digest or recipe.digest(),
                progress=progress, write_weights=weights, on_shard=on_shard)
    taken: dict[str, list[str]] = {}
    for group, ref in (recipe.side_files or {}).items():
        taken.setdefault(ref, []).append(group.replace("_", " "))
    notes = [f"{', '.join(groups)} from {ref}" for ref, groups in taken.items()]
    return _without_card(out, res.digest, res.files, {
        "notes": list(res.notes) + notes, "tensors_changed": res.tensors_changed,
        "tensors_total": res.tensors_total, "side_files": _side_file_sources(recipe)})


def _side_file_sources(recipe: Recipe) -> dict[str, str]:
    """Where the merged folder's tokenizer, chat template and generation config came from."""
    from lorareg.merge.side_files import GROUPS

    return {group: (recipe.side_files or {}).get(group, recipe.base.ref) for group in GROUPS}


def _as_adapter(recipe: Recipe, base: Path, adapters: list[tuple[Path, float]], out: Path) -> Produced:
    from lorareg.merge.as_adapter import combine_to_adapter
    from lorareg.store.digest import checkpoint_digest

    from lorareg.merge import inspect_adapter
    from lorareg.store.digest import digest_json

    res = combine_to_adapter(adapters=adapters, base=base, out_dir=out, kind=recipe.output, rank=recipe.rank)
    config_digest = digest_json(inspect_adapter(out).normalized_config)
    cd = checkpoint_digest(out, extra={"adapter_config": config_digest})
    return _without_card(out, cd.weights_digest, cd.files, {
        "notes": list(res.notes), "module_errors": dict(res.module_errors), "output_rank": res.rank},
        extra={"adapter_config": config_digest})


def _base_copy(ctx: Context, recipe: Recipe, base: Path, out: Path) -> Produced:
    """A recipe with no adapters left is the base itself: its tensors, byte for byte."""
    from lorareg.store.digest import checkpoint_digest

    with ctx.session() as session:
        row = lookup.resolve(session, recipe.base.ref)
        from lorareg.registry.chains import base_dtype

        names = [f.path for f in lookup.file_rows(session, row) if f.path != CARD]
        auto = base_dtype(session, row)
    if recipe.dtype != auto:
        raise MergeError("removing the last adapter leaves the base, but this merge changed its dtype",
                         hint="use the base version itself, or merge it again with --dtype auto")
    out.mkdir(parents=True)
    for name in names:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(base / name, out / name)
    cd = checkpoint_digest(out)
    return Produced(out, cd.digest, cd.weights_digest, dict(cd.files),
                    {"notes": ["no adapters remain: the output is the base"]})


def _subtract(ctx: Context, recipe: Recipe, out: Path, recipe_digest: str | None, progress: Progress,
              temporary_inputs: ExitStack) -> Produced:
    """W_merged + (-w) * dW: the engine's own linear path, with the merged version as its base."""
    from lorareg.merge import AdapterInput, MergePlan, merge

    sub = recipe.subtracted
    source_folder = input_folder(ctx, sub.source.ref, temporary_inputs, digest=sub.source.digest)
    adapter = input_folder(ctx, sub.removed.ref, temporary_inputs)
    plan = MergePlan(base=source_folder, adapters=(AdapterInput(adapter, -float(sub.removed.weight)),),
                     method="linear", seed=0, dtype=recipe.dtype, adapter_dtype=recipe.adapter_dtype,
                     max_shard_size=recipe.max_shard_size,
                     # the merged folder's own side files stay; subtracting a zero delta is no error
                     allow_noop=True, side_files={})
    res = merge(plan, out, recipe_digest=recipe_digest or recipe.digest(), progress=progress)
    return _without_card(out, res.digest, res.files, {"notes": list(res.notes)})


def _without_card(out: Path, weights_digest: str, files: dict[str, FileDigest], outcome: dict[str, Any], *,
                  extra: dict[str, Any] | None = None) -> Produced:
    """The output without the engine's placeholder card (register writes the real one), with
    its whole-model digest: the weights digest plus the defining files it holds."""
    from lorareg.store.model_digest import folder_identities, model_digest

    (out / CARD).unlink(missing_ok=True)
    files = {k: v for k, v in files.items() if k != CARD}
    digest = model_digest(weights_digest, folder_identities(out, files), extra)
    return Produced(out, digest, weights_digest, files, outcome)
