"""Taking an adapter back out of a merged version, and moving an alias back.

``rebuild`` (default) recomputes the remaining recipe from the base: exact, and equal in
digest to any earlier version with the same recipe.  ``subtract`` works from the merged
weights alone (for when the base is gone): W - w*dW in float32, rounded once, linear
merges only; its recipe records where it came from so it, too, can be rebuilt."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from sqlalchemy import func
from sqlmodel import Session, select

from lorareg.errors import LoraregError, MergeError, NotFoundError
from lorareg.registry import catalog, recipes
from lorareg.registry import models as m
from lorareg.registry.merging import Produced, discard, merge_recipe, register_output, render_card, stored_recipe
from lorareg.registry.results import AliasInfo, VersionInfo

if TYPE_CHECKING:
    from lorareg.registry.api import Registry

STRATEGIES = ("rebuild", "subtract")


def _find_adapter(session: Session, recipe: dict, adapter: str) -> int:
    wanted = catalog.resolve(session, adapter, kind="adapter") if "@" in adapter else None
    for i, a in enumerate(recipe["adapters"]):
        if wanted is not None and a["ref"] == f"{wanted.name}@{wanted.version}":
            return i
        if wanted is None and a["ref"].partition("@")[0] == adapter:
            return i
    listed = ", ".join(a["ref"] for a in recipe["adapters"])
    raise NotFoundError(f"{adapter} is not in this merge's recipe (it has: {listed})",
                        hint="name one of the adapters listed, e.g. --adapter NAME@VERSION")


def rollback_adapter(reg: "Registry", *, ref: str, adapter: str, strategy: str, message: str | None,
                     progress: Callable[[int, int, str], None] | None = None) -> VersionInfo:
    if strategy not in STRATEGIES:
        raise MergeError(f"unknown strategy {strategy!r}", hint="use --strategy rebuild or --strategy subtract")
    with Session(reg.engine) as session:
        row = catalog.resolve(session, ref, kind="merge")
        recipe = stored_recipe(session, row)
        idx = _find_adapter(session, recipe, adapter)
    removed = recipe["adapters"][idx]
    remaining = {**recipe, "adapters": [a for i, a in enumerate(recipe["adapters"]) if i != idx],
                 "versions": recipes.library_versions()}
    remaining.pop("derived", None)
    msg = message or f"rollback: removed {removed['ref']}"
    if strategy == "rebuild":
        return merge_recipe(reg, remaining, name=row.name, keep="files", message=msg, progress=progress,
                            parent_id=row.id)
    return _subtract(reg, row=row, recipe=recipe, remaining=remaining, removed=removed, message=msg, progress=progress)


def _subtract(reg, *, row, recipe, remaining, removed, message, progress) -> VersionInfo:
    from lorareg.merge.methods import get_method

    if recipe["output"] != "model" or not get_method(recipe["method"]).supports_subtract:
        raise MergeError(f"--strategy subtract works on linear merges only; {row.name}@{row.version} used "
                         f"{recipe['method']}", hint="use the default --strategy rebuild (needs the base)")
    if recipe.get("derived"):
        raise MergeError("subtracting from a version that was itself made by subtraction compounds rounding",
                         hint="use --strategy rebuild")
    summary = reg.get(removed["ref"]).details
    if summary.get("use_dora") or summary.get("modules_to_save"):
        raise MergeError(f"{removed['ref']} uses DoRA or modules_to_save, which subtraction cannot undo",
                         hint="use --strategy rebuild (needs the base)")
    derived = {"strategy": "subtract", "from": {"ref": f"{row.name}@{row.version}", "digest": row.digest},
               "removed": removed}
    new_recipe = {**remaining, "derived": derived}
    with Session(reg.engine) as session:
        latest = session.exec(select(func.max(m.Version.version)).where(m.Version.name == row.name)).one()
    produced = run_subtract(reg, new_recipe, name=row.name, version=latest + 1, progress=progress)
    try:
        deviation = measure_deviation(reg, remaining, produced, source=reg.get(f"{row.name}@{row.version}").path)
        produced = Produced(produced.path, produced.digest, produced.files, produced.notes,
                            {**produced.extra, "subtract_deviation": deviation})
        return register_output(reg, produced, recipe=new_recipe, recipe_digest=recipes.recipe_digest(new_recipe),
                               name=row.name, keep="files", message=message, parent_id=row.id, action="rollback")
    finally:
        discard(produced)


def run_subtract(reg: "Registry", recipe: dict, *, name: str, version: int, progress=None) -> Produced:
    """W_merged + (-w) * dW: the engine's own linear path, with the merged version as its base."""
    from lorareg.merge import AdapterInput, MergePlan
    from lorareg.merge import merge as engine_merge

    src = reg.get(recipe["derived"]["from"]["ref"])
    reg.materialize(src.ref)
    src = reg.get(src.ref)
    removed = recipe["derived"]["removed"]
    adapter_path = reg.materialize_path(reg.get(removed["ref"]))
    work = Path(tempfile.mkdtemp(prefix="subtract-", dir=reg.home.tmp))
    try:
        plan = MergePlan(base=src.path, adapters=(AdapterInput(adapter_path, -float(removed["weight"])),),
                         method="linear", seed=0, dtype=recipe["dtype"], adapter_dtype=recipe["adapter_dtype"],
                         max_shard_size=recipe["max_shard_size"])
        card = render_card(reg, recipe, name=name, version=version)
        res = engine_merge(plan, work / "out", recipe_digest=recipes.recipe_digest(recipe), model_card=card,
                           progress=progress)
        return Produced(res.path, res.digest, dict(res.files), tuple(res.notes), {})
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def measure_deviation(reg: "Registry", remaining: dict, produced: Produced, *, source: Path) -> dict:
    """Compare the subtracted weights with an exact rebuild, when the inputs are all here."""
    from lorareg.merge.compare import compare_folders, deviation_in_source_ulps
    from lorareg.registry.merging import run_recipe

    if not remaining["adapters"]:
        return {"measured": False, "why": "no adapters remain; compare with the base instead"}
    try:
        exact = run_recipe(reg, remaining, card=None, recipe_digest=recipes.recipe_digest(remaining))
    except LoraregError as exc:
        return {"measured": False, "why": str(exc)}
    try:
        diffs = compare_folders(exact.path, produced.path)
        return {"measured": True, "tensors_differing": len(diffs),
                "elements_differing": sum(max(d["elements_differing"], 0) for d in diffs),
                "max_abs": max((d["max_abs"] for d in diffs), default=0.0),
                "max_ulp": max((d["max_ulp"] for d in diffs), default=0),
                # Subtraction inherits the merged weight's rounding, so the fair yardstick is
                # the ulp at the merged weight's magnitude, not at the (possibly tiny) result's.
                "max_ulp_of_merged": deviation_in_source_ulps(exact.path, produced.path, source)}
    finally:
        discard(exact)


def rollback_alias(reg: "Registry", *, name: str, to: int, alias: str, message: str | None) -> AliasInfo:
    info = reg.set_alias(name=name, alias=alias, version=to)
    with Session(reg.engine) as session:
        catalog.record_event(session, "rollback", ref=f"{name}@{alias}", alias=alias, to=to, message=message)
        session.commit()
    return info
