"""``merge``: turn a request (references, weights, method and its parameters) into a recipe,
then find that recipe already made under the name, or make it: ``produce`` runs it and
``register`` records it."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from sqlmodel import Session

from lorareg.errors import IncompatibleAdapterError, MergeError
from lorareg.registry import events, leases, lookup
from lorareg.registry import models as m
from lorareg.registry.add import content_digest_of
from lorareg.registry.context import Context
from lorareg.registry.produce import Produced, produce
from lorareg.registry.recipe import (ADAPTER_DTYPES, DTYPES, OUTPUTS, AdapterRef, InputRef, Recipe, library_versions,
                                     lorareg_version)
from lorareg.registry.refs import check_name
from lorareg.registry.register import NewVersion, folder_of, register_version
from lorareg.registry.results import VersionInfo
from lorareg.registry.version_info import version_info

KEEP = ("files", "recipe")
Progress = Callable[[int, int, str], None] | None


def parse_adapter_args(adapters: Sequence[str | tuple[str, float]]) -> list[tuple[str, float]]:
    """``"chat@2:0.5"`` or ``("chat@2", 0.5)`` -> (ref, weight)."""
    out = []
    for a in adapters:
        if isinstance(a, tuple):
            ref, weight = a
        elif ":" not in a:
            ref, weight = a, 1.0
        else:
            ref, _, w = a.rpartition(":")
            try:
                weight = float(w)
            except ValueError:
                raise MergeError(f"bad adapter weight in {a!r}", hint="write ADAPTER:WEIGHT, e.g. chat@2:0.5") from None
        out.append((ref, float(weight)))
    if not out:
        raise MergeError("no adapters given", hint="lorareg merge BASE ADAPTER[:WEIGHT]... --name NAME")
    return out


def plan_recipe(session: Session, *, base: str, adapters: Sequence[str | tuple[str, float]], method: str,
                params: Mapping[str, Any], seed: int | None, dtype: str, adapter_dtype: str, output: str,
                rank: int | None, max_shard_size: int, allow_base_mismatch: bool, allow_noop: bool = False,
                tokenizer_from: str | None = None, base_quantization: Mapping[str, Any] | None = None) -> Recipe:
    """The recipe a merge request describes: inputs pinned to the digests registered now,
    the method's parameters resolved from its declarations, the seed chosen if not given.
    The base may be a merged model (an adapter chain, chains.py)."""
    from lorareg.merge.methods import get_method
    from lorareg.registry.chains import base_dtype, resolve_base

    if output not in OUTPUTS:
        raise MergeError(f"unknown output {output!r}", hint="use --as-adapter cat or --as-adapter svd --rank K")
    if output == "svd" and not rank:
        raise MergeError("--as-adapter svd needs --rank K", hint="e.g. --as-adapter svd --rank 16")
    if dtype not in DTYPES:
        raise MergeError(f"unknown output dtype {dtype!r}", hint="use one of: " + ", ".join(DTYPES))
    if adapter_dtype not in ADAPTER_DTYPES:
        raise MergeError(f"unknown adapter dtype {adapter_dtype!r}", hint="use one of: " + ", ".join(ADAPTER_DTYPES))
    base_row = resolve_base(session, base)
    rows = [(lookup.resolve(session, ref, kind="adapter"), w) for ref, w in parse_adapter_args(adapters)]
    for row, _ in rows:
        trained_on = session.get(m.Version, session.get(m.Adapter, row.id).base_version_id)
        if trained_on.digest != base_row.digest and not allow_base_mismatch:
            raise IncompatibleAdapterError(
                f"{lookup.ref_of(row)} was registered against {lookup.ref_of(trained_on)}, "
                f"whose weights differ from {lookup.ref_of(base_row)}",
                hint="pass --allow-base-mismatch to merge it anyway when the shapes fit (recorded in the recipe)")
    meth = get_method(method)
    resolved = meth.resolve_params(params, n_adapters=len(rows))
    if seed is None:
        seed = secrets.randbits(63) if meth.random else 0
    if base_quantization is not None:
        from lorareg.merge.quantize import BaseQuantization

        if output != "model":
            raise MergeError("--base-quantization merges into a model", hint="drop --as-adapter")
        base_quantization = BaseQuantization(**base_quantization).to_json()  # checked here, before any work
    if tokenizer_from is not None:
        chosen = lookup.ref_of(lookup.resolve(session, tokenizer_from))
        if chosen not in [lookup.ref_of(base_row)] + [lookup.ref_of(r) for r, _ in rows]:
            raise MergeError(f"--tokenizer-from {tokenizer_from}: {chosen} is not an input of this merge",
                             hint="name the base or one of the adapters being merged")
        tokenizer_from = chosen
    return Recipe(
        base=InputRef(lookup.ref_of(base_row), base_row.digest),
        adapters=tuple(AdapterRef(lookup.ref_of(r), r.digest, session.get(m.Adapter, r.id).config_digest, w)
                       for r, w in rows),
        method=method, params=resolved, seed=int(seed),
        dtype=base_dtype(session, base_row, dtype), adapter_dtype=adapter_dtype,
        output=output, rank=rank, max_shard_size=int(max_shard_size), allow_base_mismatch=allow_base_mismatch,
        allow_noop=bool(allow_noop), tokenizer_from=tokenizer_from, base_quantization=base_quantization,
        lorareg_version=lorareg_version(),
        versions=library_versions(*(["bitsandbytes"] if base_quantization is not None else [])))


def with_side_files(ctx: Context, recipe: Recipe) -> Recipe:
    """The recipe with the adapter each side-file group (tokenizer, chat template, generation
    config) comes from, chosen from the adapters' folders (merge/side_files.py); None when all
    come from the base, which is what every recipe recorded before this choice means."""
    from lorareg.merge.side_files import choose_side_files

    if recipe.output != "model" or not recipe.adapters or recipe.subtracted is not None:
        return replace(recipe, side_files=None)
    refs = [a.ref for a in recipe.adapters]
    with ctx.session() as session:
        folders = [folder_of(ctx, session, lookup.resolve(session, ref)) for ref in refs]
    prefer = None
    if recipe.tokenizer_from is not None:
        prefer = refs.index(recipe.tokenizer_from) if recipe.tokenizer_from in refs else -1
    chosen = choose_side_files(folders, prefer=prefer, names=refs)
    return replace(recipe, side_files={group: refs[i] for group, i in chosen.items()} or None)


def merge(ctx: Context, *, name: str, keep: str, message: str | None, progress: Progress,
          **request: Any) -> VersionInfo:
    """Plan a recipe from references and parameters, then make it (or find it made)."""
    check_name(name)
    with ctx.session() as session:
        recipe = plan_recipe(session, **request)
    recipe = with_side_files(ctx, recipe)
    return make_version(ctx, recipe, name=name, keep=keep, message=message, progress=progress)


def make_version(ctx: Context, recipe: Recipe, *, name: str, keep: str, message: str | None, progress: Progress,
                 parent_id: int | None = None, action: str = "merge", notes: Sequence[str] = ()) -> VersionInfo:
    """Make ``recipe`` the next version of ``name``.  Without a parent, an identical recipe
    already under ``name`` is returned as it is; a rollback (with a parent) always records a
    new version, whose digest then equals that earlier one's.  ``notes`` are added to what the
    run reports."""
    if keep not in KEEP:
        raise MergeError(f"unknown --keep {keep!r}", hint="use --keep files or --keep recipe")
    with ctx.session() as session:
        lookup.check_name_free_for(session, name, "merge")
        found = lookup.with_recipe(session, name, recipe.digest())
        if found is not None and parent_id is None:
            return version_info(session, ctx.home, found, existed=True)
    # Under the writer's lease from the first shard: an object store uploads each shard as it
    # is written.  Kept as recipe only: the tensors are hashed, the shards never written or fsynced.
    import lorareg.merge.engine  # noqa: F401  (the import of torch is long: before the lease's heartbeat starts)

    with leases.writing(ctx):
        produced = produce(ctx, recipe, progress=progress, weights=keep == "files", storing=keep == "files")
        if notes:
            produced = replace(produced, outcome={**produced.outcome,
                                                  "notes": [*produced.outcome.get("notes", []), *notes]})
        try:
            return register_merge(ctx, recipe, produced, name=name, keep=keep, message=message,
                                  parent_id=parent_id, action=action)
        finally:
            produced.discard()


def register_merge(ctx: Context, recipe: Recipe, produced: Produced, *, name: str, keep: str, message: str | None,
                   parent_id: int | None, action: str) -> VersionInfo:
    """Record ``produced`` as the next version of ``name``: its recipe, inputs and model card."""
    from lorareg.registry.card import merge_card

    digest = recipe.digest()

    def add_rows(session: Session, row: m.Version) -> None:
        base_row = lookup.resolve(session, recipe.base.ref)
        session.add(m.Merge(version_id=row.id, base_version_id=base_row.id, method=recipe.method,
                            output="model" if recipe.output == "model" else "adapter", seed=recipe.seed,
                            dtype=recipe.dtype, recipe_digest=digest, recipe_json=recipe.to_text(),
                            outcome_json=events.dumps(produced.outcome)))
        for pos, a in enumerate(recipe.adapters):
            session.add(m.MergeInput(merge_version_id=row.id, position=pos,
                                     adapter_version_id=lookup.resolve(session, a.ref).id, weight=a.weight))

    def card(session: Session, version: int) -> str:
        return merge_card(session, recipe, name=name, version=version, output_digest=produced.digest)

    return register_version(ctx, NewVersion(
        name=name, kind="merge", digest=produced.digest, weights_digest=produced.weights_digest,
        content_digest=content_digest_of(produced.digest, {"recipe": digest}),
        files=produced.files, folder=produced.folder, store=keep == "files", move=True, parent_id=parent_id,
        message=message, action=action, add_rows=add_rows, card=card,
        existing=None if parent_id is not None else (lambda session: lookup.with_recipe(session, name, digest)),
        event={"method": recipe.method, "keep": keep, "inputs": [a.ref for a in recipe.adapters]}))

