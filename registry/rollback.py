"""Taking an adapter back out of a merged version (a new version without it).

``rebuild`` (default) recomputes the remaining recipe from the base: exact, and equal in
digest to any earlier version with the same recipe.  ``subtract`` works from the merged
weights alone (for when the base is gone): W - w*dW in float32, rounded once, linear
merges only; its recipe records where it came from so it, too, can be rebuilt.
(Moving an alias back to an earlier version is ``aliases.rollback_alias``.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from sqlmodel import Session

from lorareg.errors import LoraregError, MergeError, NotFoundError
from lorareg.registry import lookup
from lorareg.registry import models as m
from lorareg.registry.context import Context
from lorareg.registry.merging import make_version, register_merge, with_side_files
from lorareg.registry.produce import Produced, produce
from lorareg.registry.recipe import InputRef, Recipe, Subtraction
from lorareg.registry.register import folder_of
from lorareg.registry.results import VersionInfo
from lorareg.registry.version_info import stored_recipe

STRATEGIES = ("rebuild", "subtract")
Progress = Callable[[int, int, str], None] | None


def _find_adapter(session: Session, recipe: Recipe, adapter: str) -> int:
    wanted = lookup.ref_of(lookup.resolve(session, adapter, kind="adapter")) if "@" in adapter else None
    for i, a in enumerate(recipe.adapters):
        if a.ref == wanted or (wanted is None and a.ref.partition("@")[0] == adapter):
            return i
    listed = ", ".join(a.ref for a in recipe.adapters)
    raise NotFoundError(f"{adapter} is not in this merge's recipe (it has: {listed})",
                        hint="name one of the adapters listed, e.g. --adapter NAME@VERSION")


def rollback_adapter(ctx: Context, *, ref: str, adapter: str, strategy: str, message: str | None,
                     progress: Progress = None) -> VersionInfo:
    if strategy not in STRATEGIES:
        raise MergeError(f"unknown strategy {strategy!r}", hint="use --strategy rebuild or --strategy subtract")
    with ctx.session() as session:
        row = lookup.resolve(session, ref, kind="merge")
        recipe = stored_recipe(session, row)
        index = _find_adapter(session, recipe, adapter)
    removed = recipe.adapters[index]
    if len(recipe.adapters) == 1:  # what is left is the base itself: nothing new to register
        raise MergeError(f"{lookup.ref_of(row)} has one adapter, {removed.ref}: without it what is left is the base "
                         f"{recipe.base.ref}, which is already registered",
                         hint=f"use {recipe.base.ref} itself, or move an alias back with: lorareg rollback "
                              f"{row.name} --to N")
    remaining = recipe.without_adapter(index)
    note = f"rollback: removed {removed.ref}"  # a message from the user adds to it, never replaces it
    message = f"{note}; {message}" if message else note
    notes = _chain_warning(ctx, row)
    if strategy == "rebuild":
        return make_version(ctx, with_side_files(ctx, remaining), name=row.name, keep="files", message=message,
                            progress=progress, parent_id=row.id, action="rollback", notes=notes)
    return _subtract(ctx, row=row, recipe=recipe, remaining=remaining, index=index, message=message,
                     progress=progress, notes=notes)


def _chain_warning(ctx: Context, row: m.Version) -> list[str]:
    """Adapters trained on the version rolled back do not apply to the new one (chains.py)."""
    from lorareg.registry.chains import trained_on

    with ctx.session() as session:
        children = trained_on(session, row)
    if not children:
        return []
    return [f"warning: {', '.join(children)} {'was' if len(children) == 1 else 'were'} trained on "
            f"{lookup.ref_of(row)}; the new version has other weights, so merge "
            f"{'it' if len(children) == 1 else 'them'} into {lookup.ref_of(row)}, or retrain on the new version"]


def _subtract(ctx: Context, *, row: m.Version, recipe: Recipe, remaining: Recipe, index: int, message: str,
              progress: Progress, notes: list[str]) -> VersionInfo:
    from lorareg.merge.methods import get_method

    ref = lookup.ref_of(row)
    if recipe.output != "model" or not get_method(recipe.method).supports_subtract:
        raise MergeError(f"--strategy subtract works on linear merges only; {ref} used {recipe.method}",
                         hint="use the default --strategy rebuild (needs the base)")
    if recipe.subtracted is not None:
        raise MergeError("subtracting from a version that was itself made by subtraction compounds rounding",
                         hint="use --strategy rebuild")
    removed = recipe.adapters[index]
    with ctx.session() as session:
        ad = session.get(m.Adapter, lookup.resolve(session, removed.ref).id)
        if ad.use_dora or json.loads(ad.summary_json).get("modules_to_save"):
            raise MergeError(f"{removed.ref} uses DoRA or modules_to_save, which subtraction cannot undo",
                             hint="use --strategy rebuild (needs the base)")
    supplied = sorted(g.replace("_", " ") for g, ref in (recipe.side_files or {}).items() if ref == removed.ref)
    if supplied:
        raise MergeError(f"{removed.ref} supplied this merge's {', '.join(supplied)} files, "
                         "which subtracting its weights cannot take back", hint="use --strategy rebuild (needs the base)")
    new_recipe = replace(remaining, subtracted=Subtraction(InputRef(ref, row.digest), removed))
    produced = produce(ctx, new_recipe, progress=progress)
    try:
        with ctx.session() as session:
            source = folder_of(ctx, session, row) if row.stored else None
        deviation = measure_deviation(ctx, remaining, produced, source=source)
        produced = replace(produced, outcome={**produced.outcome, "subtract_deviation": deviation,
                                              "notes": [*produced.outcome.get("notes", []), *notes]})
        return register_merge(ctx, new_recipe, produced, name=row.name, keep="files", message=message,
                              parent_id=row.id, action="rollback")
    finally:
        produced.discard()


def measure_deviation(ctx: Context, remaining: Recipe, produced: Produced, *, source: Path | None) -> dict:
    """Compare the subtracted weights with an exact rebuild, when the inputs are all here."""
    from lorareg.merge.compare import compare_folders, deviation_in_source_ulps

    if not remaining.adapters:
        return {"measured": False, "why": "no adapters remain; compare with the base instead"}
    try:
        exact = produce(ctx, remaining)
    except LoraregError as exc:
        return {"measured": False, "why": str(exc)}
    try:
        diffs = compare_folders(exact.folder, produced.folder)
        out = {"measured": True, "tensors_differing": len(diffs),
               "elements_differing": sum(max(d["elements_differing"], 0) for d in diffs),
               "max_abs": max((d["max_abs"] for d in diffs), default=0.0),
               "max_ulp": max((d["max_ulp"] for d in diffs), default=0)}
        if source is not None:
            # Subtraction inherits the merged weight's rounding, so the fair yardstick is
            # the ulp at the merged weight's magnitude, not at the (possibly tiny) result's.
            out["max_ulp_of_merged"] = deviation_in_source_ulps(exact.folder, produced.folder, source)
        return out
    finally:
        exact.discard()
