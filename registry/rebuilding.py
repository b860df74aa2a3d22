"""Rebuilding a merged version from its recipe and checking the digest; materialising
versions kept as recipe only."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sqlmodel import Session, select

from lorareg.errors import IntegrityError
from lorareg.registry import catalog, recipes
from lorareg.registry import models as m
from lorareg.registry.merging import Produced, discard, render_card, run_recipe, stored_recipe
from lorareg.registry.results import _AsDict

if TYPE_CHECKING:
    from lorareg.registry.api import Registry


@dataclass(frozen=True)
class TensorDiff(_AsDict):
    name: str
    elements_differing: int
    max_abs: float
    max_ulp: int
    note: str = ""


@dataclass(frozen=True)
class RebuildResult(_AsDict):
    ref: str
    ok: bool
    recorded_digest: str
    rebuilt_digest: str
    tensors: tuple[TensorDiff, ...] = ()
    library_changes: dict[str, Any] = field(default_factory=dict)
    materialized: bool = False


def produce(reg: "Registry", row: m.Version, recipe: dict, *, progress=None) -> Produced:
    if recipe.get("derived", {}).get("strategy") == "subtract":
        from lorareg.registry.rollback import run_subtract

        return run_subtract(reg, recipe, name=row.name, version=row.version, progress=progress)
    card = render_card(reg, recipe, name=row.name, version=row.version)
    return run_recipe(reg, recipe, card=card, recipe_digest=recipes.recipe_digest(recipe), progress=progress)


def rebuild(reg: "Registry", *, ref: str, keep_files: bool = False,
            progress: Callable[[int, int, str], None] | None = None) -> RebuildResult:
    with Session(reg.engine) as session:
        row = catalog.resolve(session, ref, kind="merge")
        recipe = stored_recipe(session, row)
    produced = produce(reg, row, recipe, progress=progress)
    try:
        ref_s = f"{row.name}@{row.version}"
        running = recipes.library_versions()
        changes = {k: {"recorded": v, "running": running.get(k)}
                   for k, v in recipe.get("versions", {}).items() if running.get(k) != v}
        if produced.digest != row.digest:
            diffs = tensor_diffs(reg, row, produced.path)
            with Session(reg.engine) as session:
                catalog.record_event(session, "rebuild", ref=ref_s, version_id=row.id, ok=False,
                                     rebuilt=produced.digest)
                session.commit()
            return RebuildResult(ref_s, False, row.digest, produced.digest, tuple(diffs), changes)
        materialized = False
        if keep_files and not row.stored:
            store_produced(reg, row, produced)
            materialized = True
        with Session(reg.engine) as session:
            catalog.record_event(session, "rebuild", ref=ref_s, version_id=row.id, ok=True,
                                 materialized=materialized)
            session.commit()
        return RebuildResult(ref_s, True, row.digest, produced.digest, (), changes, materialized)
    finally:
        discard(produced)


def store_produced(reg: "Registry", row: m.Version, produced: Produced) -> None:
    from lorareg.registry.adding import link_version, store_files

    with Session(reg.engine) as session:
        recorded = {f.path: f.sha256 for f in session.exec(
            select(m.FileRow).where(m.FileRow.version_id == row.id)).all()}
    tensors_files = {k for k in recorded if k.endswith(".safetensors")}
    mismatched = [k for k in tensors_files if produced.files.get(k) is None or produced.files[k].sha256 != recorded[k]]
    if mismatched:
        raise IntegrityError(f"rebuilt {mismatched[0]} of {row.name}@{row.version} does not match its recorded hash",
                             hint=f"run: lorareg rebuild {row.name}@{row.version} for a report")
    from lorareg.registry import locking

    with locking.writing(reg.home.blobs):
        store_files(reg, produced.path, produced.files, move=True)
        with Session(reg.engine) as session:
            live = session.get(m.Version, row.id)
            for f in session.exec(select(m.FileRow).where(m.FileRow.version_id == row.id)).all():
                if f.path in produced.files:
                    f.sha256, f.size = produced.files[f.path].sha256, produced.files[f.path].size
                    session.add(f)
            live.stored = True
            session.add(live)
            session.commit()
    link_version(reg, row.name, row.version, {k: v.sha256 for k, v in produced.files.items()})


def produce_checked(reg: "Registry", ref: str, *, progress=None) -> tuple[m.Version, Produced]:
    """Rebuild a merge into a temporary folder and check its digest before anyone uses it."""
    with Session(reg.engine) as session:
        row = catalog.resolve(session, ref, kind="merge")
        recipe = stored_recipe(session, row)
    produced = produce(reg, row, recipe, progress=progress)
    if produced.digest != row.digest:
        discard(produced)
        raise IntegrityError(
            f"rebuilding {row.name}@{row.version} gave {produced.digest}, not the recorded {row.digest}",
            hint=f"run: lorareg rebuild {row.name}@{row.version} for a report of what differs")
    return row, produced


def materialize(reg: "Registry", ref: str, *, progress=None) -> None:
    """Give a recipe-only version its files back: rebuild, check the digest, store."""
    with Session(reg.engine) as session:
        row = catalog.resolve(session, ref)
        if row.stored or row.kind != "merge":
            return
    row, produced = produce_checked(reg, ref, progress=progress)
    try:
        store_produced(reg, row, produced)
    finally:
        discard(produced)


def tensor_diffs(reg: "Registry", row: m.Version, rebuilt: Path, limit: int = 50) -> list[TensorDiff]:
    """Which tensors differ and by how much (needs the recorded bytes; otherwise names only)."""
    from lorareg.merge.compare import compare_folders

    recorded = reg.home.version_dir(row.name, row.version)
    if not row.stored or not recorded.exists():
        return [TensorDiff(name="*", elements_differing=-1, max_abs=float("nan"), max_ulp=-1,
                           note="recorded weights are not stored (recipe only); only the digest can be compared")]
    return [TensorDiff(**d) for d in compare_folders(recorded, rebuilt)[:limit]]
