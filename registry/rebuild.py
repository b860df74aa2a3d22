"""``rebuild``: re-run a merged version's recipe and compare digests; and giving a version kept
as recipe only its files back (``materialize``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lorareg.errors import IntegrityError
from lorareg.registry import events, lookup
from lorareg.registry import models as m
from lorareg.registry.card import merge_card
from lorareg.registry.context import Context
from lorareg.registry.produce import Produced, produce, produce_version, same_output
from lorareg.registry.recipe import library_versions
from lorareg.registry.register import CARD, store_existing
from lorareg.registry.results import RebuildResult, TensorDiff
from lorareg.registry.version_info import stored_recipe

Progress = Callable[[int, int, str], None] | None


def rebuild(ctx: Context, *, ref: str, keep_files: bool = False, progress: Progress = None) -> RebuildResult:
    with ctx.session() as session:
        row = lookup.resolve(session, ref, kind="merge")
        recipe = stored_recipe(session, row)
        recorded = session.get(m.Merge, row.id).recipe_digest
    produced = produce(ctx, recipe, recipe_digest=recorded, progress=progress)
    try:
        running = library_versions()
        changes = {k: {"recorded": v, "running": running.get(k)}
                   for k, v in recipe.versions.items() if running.get(k) != v}
        ok = same_output(row, produced)
        diffs = () if ok else tuple(tensor_diffs(ctx, row, produced.folder))
        materialized = ok and keep_files and not row.stored
        if materialized:
            _store(ctx, row, produced)
        with ctx.session() as session:
            events.record(session, "rebuild", ref=lookup.ref_of(row), version_id=row.id, ok=ok,
                          **({"materialized": materialized} if ok else {"rebuilt": produced.digest}))
            session.commit()
        return RebuildResult(ref=lookup.ref_of(row), ok=ok, recorded_digest=row.digest,
                             rebuilt_digest=produced.digest, tensors=diffs, library_changes=changes,
                             materialized=materialized)
    finally:
        produced.discard()


def materialize(ctx: Context, *, ref: str, progress: Progress = None) -> None:
    """Give a recipe-only version its files back: rebuild, check the digest, store."""
    with ctx.session() as session:
        row = lookup.resolve(session, ref)
        if row.stored or row.kind != "merge":
            return
    row, produced = produce_version(ctx, ref, progress=progress)
    try:
        _store(ctx, row, produced)
    finally:
        produced.discard()


def _store(ctx: Context, row: m.Version, produced: Produced) -> None:
    with ctx.session() as session:
        recipe = stored_recipe(session, row)
        recorded = {f.path for f in lookup.file_rows(session, row)} - {CARD}
    # The digest (checked by the caller) covers the tensors and the defining files; the file
    # list must match too.  A shard's own bytes may differ from what was recorded when its
    # metadata names the recipe digest of an older recipe layout; the rows take the new hashes.
    if recorded != set(produced.files):
        raise IntegrityError(f"rebuilding {lookup.ref_of(row)} gave other files than it recorded "
                             f"({sorted(recorded ^ set(produced.files))[0]})",
                             hint=f"run: lorareg rebuild {lookup.ref_of(row)} for a report")
    store_existing(ctx, version_id=row.id, folder=produced.folder, files=produced.files,
                   card=lambda session, version: merge_card(session, recipe, name=row.name, version=version,
                                                            output_digest=row.digest))


def tensor_diffs(ctx: Context, row: m.Version, rebuilt: Path, limit: int = 50) -> list[TensorDiff]:
    """Which tensors differ and by how much (needs the recorded bytes; otherwise names only)."""
    from lorareg.merge.compare import compare_folders

    recorded = ctx.home.version_dir(row.name, row.version)
    if not row.stored or not recorded.exists():
        return [TensorDiff(name="*", elements_differing=-1, max_abs=float("nan"), max_ulp=-1,
                           note="recorded weights are not stored (recipe only); only the digest can be compared")]
    return [TensorDiff(**d) for d in compare_folders(recorded, rebuilt)[:limit]]
