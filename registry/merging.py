"""Merging registered adapters into a registered base, and running a recorded recipe again.

``run_recipe`` is the single place a recipe turns into bytes, so ``merge``, ``rebuild``,
``rollback`` and materialising a recipe-only version cannot drift apart."""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from sqlalchemy import func
from sqlmodel import Session, select

from lorareg.errors import IncompatibleAdapterError, LoraregError, MergeError
from lorareg.registry import catalog, recipes
from lorareg.registry import models as m
from lorareg.registry.refs import check_name
from lorareg.registry.results import VersionInfo

if TYPE_CHECKING:
    from lorareg.registry.api import Registry

OUTPUTS = ("model", "cat", "svd")
KEEP = ("files", "recipe")


@dataclass(frozen=True)
class Produced:
    path: Path  # a temporary folder holding the output
    digest: str
    files: dict[str, Any]  # name -> object with .sha256 and .size
    notes: tuple[str, ...]
    extra: dict[str, Any]


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


def _input_dict(session: Session, row: m.Version) -> dict[str, Any]:
    d = {"ref": f"{row.name}@{row.version}", "digest": row.digest}
    if row.kind == "adapter":
        d["config_digest"] = session.get(m.Adapter, row.id).config_digest
    return d


def plan_merge(reg: "Registry", session: Session, *, base: str, adapters: Sequence[str | tuple[str, float]],
               method: str, density: float | None, majority_sign_method: str, seed: int | None, dtype: str,
               adapter_dtype: str, output: str, rank: int | None, max_shard_size: int,
               allow_base_mismatch: bool) -> tuple[dict, m.Version, list[tuple[m.Version, float]]]:
    from lorareg.merge.methods import get_method

    if output not in OUTPUTS:
        raise MergeError(f"unknown output {output!r}", hint="use --as-adapter cat or --as-adapter svd --rank K")
    if output == "svd" and not rank:
        raise MergeError("--as-adapter svd needs --rank K", hint="e.g. --as-adapter svd --rank 16")
    base_row = catalog.resolve(session, base, kind="base")
    rows = [(catalog.resolve(session, ref, kind="adapter"), w) for ref, w in parse_adapter_args(adapters)]
    for row, _ in rows:
        trained_on = session.get(m.Version, session.get(m.Adapter, row.id).base_version_id)
        if trained_on.digest != base_row.digest and not allow_base_mismatch:
            raise IncompatibleAdapterError(
                f"{row.name}@{row.version} was registered against {trained_on.name}@{trained_on.version}, "
                f"whose weights differ from {base_row.name}@{base_row.version}",
                hint="pass --allow-base-mismatch to merge it anyway when the shapes fit (recorded in the recipe)")
    meth = get_method(method)
    meth.validate(density=density, majority_sign_method=majority_sign_method, n_adapters=len(rows))
    if seed is None:
        seed = secrets.randbits(63) if meth.random else 0
    base_dtype = json.loads(session.get(m.Base, base_row.id).summary_json).get("dtype", "")
    recipe = recipes.build(
        base=_input_dict(session, base_row), adapters=[{**_input_dict(session, r), "weight": w} for r, w in rows],
        method=method, density=density, majority_sign_method=majority_sign_method, seed=int(seed),
        dtype=recipes.resolve_dtype(dtype, base_dtype), adapter_dtype=adapter_dtype, output=output, rank=rank,
        max_shard_size=int(max_shard_size), allow_base_mismatch=allow_base_mismatch)
    return recipe, base_row, rows


def input_paths(reg: "Registry", recipe: dict, *, check_fit: bool) -> tuple[Path, list[tuple[Path, float]]]:
    """Folders of the recipe's inputs, found by reference and checked by digest."""
    base = reg.get(recipe["base"]["ref"])
    if base.digest != recipe["base"]["digest"]:
        raise LoraregError(f"{base.ref} no longer has the digest the recipe recorded", hint="run: lorareg verify --all")
    base_path = reg.materialize_path(base)
    out = []
    for a in recipe["adapters"]:
        info = reg.get(a["ref"])
        path = reg.materialize_path(info)
        if check_fit:
            from lorareg.merge import check_adapter_fits

            check_adapter_fits(base=base_path, adapter=path)
        out.append((path, float(a["weight"])))
    return base_path, out


def run_recipe(reg: "Registry", recipe: dict, *, card: str | None, recipe_digest: str,
               progress: Callable[[int, int, str], None] | None = None) -> Produced:
    """Turn ``recipe`` into a folder under LORAREG_HOME/tmp (the caller moves or deletes it)."""
    from lorareg.merge import AdapterInput, MergePlan, merge

    base_path, adapters = input_paths(reg, recipe, check_fit=recipe.get("allow_base_mismatch", False))
    work = Path(tempfile.mkdtemp(prefix="merge-", dir=reg.home.tmp))
    out_dir = work / "out"
    try:
        if not adapters:
            return _base_copy(reg, recipe, base_path, out_dir, card)
        if recipe["output"] == "model":
            plan = MergePlan(base=base_path, adapters=tuple(AdapterInput(p, w) for p, w in adapters),
                             method=recipe["method"], density=recipe["density"],
                             majority_sign_method=recipe["majority_sign_method"], seed=recipe["seed"],
                             dtype=recipe["dtype"], adapter_dtype=recipe["adapter_dtype"],
                             max_shard_size=recipe["max_shard_size"])
            res = merge(plan, out_dir, recipe_digest=recipe_digest, model_card=card, progress=progress)
            return Produced(res.path, res.digest, dict(res.files), tuple(res.notes),
                            {"tensors_changed": res.tensors_changed, "tensors_total": res.tensors_total})
        from lorareg.merge.as_adapter import combine_to_adapter
        from lorareg.store.digest import checkpoint_digest

        res = combine_to_adapter(adapters=adapters, base=base_path, out_dir=out_dir, kind=recipe["output"],
                                 rank=recipe["rank"])
        if card is not None:
            (out_dir / "README.md").write_text(card)
        cd = checkpoint_digest(out_dir)
        return Produced(out_dir, cd.digest, dict(cd.files), tuple(getattr(res, "notes", ())),
                        {"module_errors": dict(res.module_errors), "output_rank": res.rank})
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _base_copy(reg: "Registry", recipe: dict, base_path: Path, out_dir: Path, card: str | None) -> Produced:
    """A recipe with no adapters left is the base itself: its tensors, byte for byte."""
    from lorareg.store.digest import checkpoint_digest

    base = reg.get(recipe["base"]["ref"])
    if recipe["dtype"] != recipes.resolve_dtype("auto", base.details.get("dtype", "")):
        raise MergeError("removing the last adapter leaves the base, but this merge changed its dtype",
                         hint="use the base version itself, or merge it again with --dtype auto")
    out_dir.mkdir(parents=True)
    for f in base.files:
        if f.path != "README.md":
            (out_dir / f.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base_path / f.path, out_dir / f.path)
    if card is not None:
        (out_dir / "README.md").write_text(card)
    cd = checkpoint_digest(out_dir)
    return Produced(out_dir, cd.digest, dict(cd.files), ("no adapters remain: the output is the base",), {})


def discard(produced: Produced) -> None:
    shutil.rmtree(produced.path.parent, ignore_errors=True)


def render_card(reg: "Registry", recipe: dict, *, name: str, version: int, output_digest: str = "") -> str:
    """The model card of a merged version: inputs with their digests and sources, the recipe,
    how to rebuild.  No timestamps, so the same recipe always renders the same bytes."""
    from lorareg import __version__
    from lorareg.registry.card import render_card as render

    base = reg.get(recipe["base"]["ref"])
    inputs = [{"role": "base", **recipe["base"], "source": source_of(base)}] + [
        {"role": "adapter", **a, "source": source_of(reg.get(a["ref"]))} for a in recipe["adapters"]]
    return render(kind="merge" if recipe["output"] == "model" else "adapter", name=name, version=version,
                  base_model=base.details.get("hub_repo"), recipe=recipe, inputs=inputs,
                  output_digest=output_digest, lorareg_version=__version__)


def source_of(info: VersionInfo) -> str:
    d = info.details
    if d.get("hub_repo"):
        return f"hf://{d['hub_repo']}@{d.get('hub_commit') or d.get('hub_revision')}"
    return str(d.get("source_path") or "lorareg store")


def merge(reg: "Registry", *, base: str, adapters: Sequence[str | tuple[str, float]], name: str, method: str,
          density: float | None, majority_sign_method: str, seed: int | None, dtype: str, adapter_dtype: str,
          output: str, rank: int | None, keep: str, allow_base_mismatch: bool, max_shard_size: int,
          progress: Callable[[int, int, str], None] | None, message: str | None = None) -> VersionInfo:
    """Plan a recipe from references and parameters, then make it (or find it made)."""
    check_name(name)
    with Session(reg.engine) as session:
        recipe, _, _ = plan_merge(
            reg, session, base=base, adapters=adapters, method=method, density=density,
            majority_sign_method=majority_sign_method, seed=seed, dtype=dtype, adapter_dtype=adapter_dtype,
            output=output, rank=rank, max_shard_size=max_shard_size, allow_base_mismatch=allow_base_mismatch)
    return merge_recipe(reg, recipe, name=name, keep=keep, message=message, progress=progress)


def merge_recipe(reg: "Registry", recipe: dict, *, name: str, keep: str, message: str | None,
                 progress: Callable[[int, int, str], None] | None, parent_id: int | None = None) -> VersionInfo:
    """Make ``recipe`` the next version of ``name``.  Without a parent, an identical recipe
    already under ``name`` is returned as it is; a rollback (with a parent) always records a
    new version, whose digest then equals that earlier one's."""
    if keep not in KEEP:
        raise MergeError(f"unknown --keep {keep!r}", hint="use --keep files or --keep recipe")
    digest = recipes.recipe_digest(recipe)
    with Session(reg.engine) as session:
        artifact = session.get(m.Artifact, name)
        if artifact is not None and artifact.kind != "merge":
            raise LoraregError(f"the name {name!r} already belongs to a {artifact.kind}", hint="pick another --name")
        found = session.exec(select(m.Version).join(m.Merge, m.Merge.version_id == m.Version.id)
                             .where(m.Version.name == name, m.Merge.recipe_digest == digest)).first()
        if found is not None and parent_id is None:
            return catalog.to_info(session, reg.home, found, existed=True)
        latest = session.exec(select(func.max(m.Version.version)).where(m.Version.name == name)).one()
    card = render_card(reg, recipe, name=name, version=(latest or 0) + 1)
    produced = run_recipe(reg, recipe, card=card, recipe_digest=digest, progress=progress)
    try:
        return register_output(reg, produced, recipe=recipe, recipe_digest=digest, name=name, keep=keep,
                               message=message, parent_id=parent_id)
    finally:
        discard(produced)


def register_output(reg: "Registry", produced: Produced, *, recipe: dict, recipe_digest: str, name: str,
                    keep: str, message: str | None, parent_id: int | None, action: str = "merge") -> VersionInfo:
    from lorareg.registry import locking
    from lorareg.registry.adding import content_digest_of, link_version, store_files

    with locking.writing(reg.home.blobs):
        if keep == "files":
            store_files(reg, produced.path, produced.files, move=True)
        row = _write_rows(reg, produced, recipe=recipe, recipe_digest=recipe_digest, name=name, keep=keep,
                          message=message, parent_id=parent_id, action=action,
                          content=content_digest_of(produced.digest, produced.files, {"recipe": recipe_digest}))
    if keep == "files":
        link_version(reg, name, row.version, {k: v.sha256 for k, v in produced.files.items()})
    with Session(reg.engine) as session:
        return catalog.to_info(session, reg.home, session.get(m.Version, row.id))


def _write_rows(reg: "Registry", produced: Produced, *, recipe: dict, recipe_digest: str, name: str, keep: str,
                message: str | None, parent_id: int | None, action: str, content: str) -> m.Version:

    def write(session: Session) -> m.Version:
        catalog.ensure_artifact(session, name, "merge")
        base_row = catalog.resolve(session, recipe["base"]["ref"])
        row = catalog.insert_version(session, m.Version(
            name=name, version=0, kind="merge", digest=produced.digest, content_digest=content,
            size_bytes=sum(f.size for f in produced.files.values()), stored=keep == "files", parent_id=parent_id,
            message=message, created_by=catalog.current_user()))
        for rel, info in produced.files.items():
            session.add(m.FileRow(version_id=row.id, path=rel, sha256=info.sha256, size=info.size))
        session.add(m.Merge(version_id=row.id, base_version_id=base_row.id, method=recipe["method"],
                            output="model" if recipe["output"] == "model" else "adapter", seed=recipe["seed"],
                            dtype=recipe["dtype"], recipe_digest=recipe_digest,
                            recipe_json=json.dumps({**recipe, "notes": list(produced.notes), **produced.extra},
                                                   sort_keys=True)))
        for pos, a in enumerate(recipe["adapters"]):
            ad = catalog.resolve(session, a["ref"])
            session.add(m.MergeInput(merge_version_id=row.id, position=pos, adapter_version_id=ad.id,
                                     weight=a["weight"]))
        catalog.record_event(session, action, ref=f"{name}@{row.version}", version_id=row.id,
                             method=recipe["method"], digest=produced.digest, keep=keep, message=message,
                             inputs=[a["ref"] for a in recipe["adapters"]])
        return row

    return catalog.with_retry(reg.engine, write)


def stored_recipe(session: Session, row: m.Version) -> dict:
    mg = session.get(m.Merge, row.id)
    if mg is None:
        raise LoraregError(f"{row.name}@{row.version} is a {row.kind}, not a merge", hint="lorareg ls merges")
    recipe = json.loads(mg.recipe_json)
    for k in ("notes", "tensors_changed", "tensors_total", "module_errors", "output_rank"):
        recipe.pop(k, None)
    return recipe
