"""``rm`` and ``rename``.

A removed version keeps its row, marked ``removed_at``: its number is never given out again
(``chat@3`` in the event log always means the same bytes), and the lineage of whatever was
made from it stays whole.  Its bytes are evicted: the link folder goes, and the blobs no other
stored version (and no live writer's lease) needs are collected the way ``gc`` collects them.  A version
something still refers to (a live merge or adapter made from it, a rollback's child, an
alias, a Hub push) is refused unless ``force``: then it becomes a tombstone the same way,
and its aliases are removed (recorded, so ``alias history`` shows it).

``rename`` moves a whole name (every version) and rewrites the references inside recorded
recipes; the event log keeps the old name, because that is what happened then."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence

from sqlalchemy import update
from sqlmodel import Session, select

from lorareg.errors import LoraregError
from lorareg.registry import events, leases, lookup
from lorareg.registry import models as m
from lorareg.registry.context import Context
from lorareg.registry.refs import a_kind, check_name, parse_ref
from lorareg.registry.results import RemoveResult, RenameResult

SHOWN = 3  # referrers named in a refusal; the rest are counted


def referrers(session: Session, row: m.Version, *, ignore: frozenset[int] = frozenset()) -> list[str]:
    """What refers to ``row``, in words: live versions made from it (other than ``ignore``,
    the versions being removed with it), aliases that point at it, and Hub pushes of it."""
    def live(q):
        return [v for v in session.exec(q.where(m.Version.removed_at.is_(None))).all() if v.id not in ignore]

    out = [f"merge {lookup.ref_of(v)} (its base)" for v in
           live(select(m.Version).join(m.Merge, m.Merge.version_id == m.Version.id)
                .where(m.Merge.base_version_id == row.id))]
    out += [f"merge {lookup.ref_of(v)} (an input)" for v in
            live(select(m.Version).join(m.MergeInput, m.MergeInput.merge_version_id == m.Version.id)
                 .where(m.MergeInput.adapter_version_id == row.id).distinct())]
    out += [f"adapter {lookup.ref_of(v)} (trained on it)" for v in
            live(select(m.Version).join(m.Adapter, m.Adapter.version_id == m.Version.id)
                 .where(m.Adapter.base_version_id == row.id))]
    out += [f"{lookup.ref_of(v)} (made from it by rollback)" for v in
            live(select(m.Version).where(m.Version.parent_id == row.id))]
    out += [f"alias {a.name}@{a.alias}" for a in session.exec(select(m.Alias).where(m.Alias.version_id == row.id))]
    out += [f"Hub push {p.repo_id}@{p.tag}" for p in
            session.exec(select(m.HubPush).where(m.HubPush.version_id == row.id).order_by(m.HubPush.id))]
    return out


def _in_words(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown if len(items) <= SHOWN else f"{shown} and {len(items) - SHOWN} more"


def remove(ctx: Context, *, refs: Sequence[str], force: bool = False, message: str | None = None) -> RemoveResult:
    """Remove versions: all of them, or (when one is still referred to and ``force`` is not
    given) none.  Returns what was removed and what each forced one was kept for."""
    from lorareg.registry.gc import referenced_blobs

    if not refs:
        raise LoraregError("nothing to remove", hint="lorareg rm NAME@VERSION")
    # The rows first, committed; then the blobs nothing needs any more, the way gc collects them.
    with leases.write_session(ctx) as session:
        rows = list({r.id: r for r in (lookup.resolve(session, ref) for ref in refs)}.values())
        ids = frozenset(r.id for r in rows)
        used = {r.id: referrers(session, r, ignore=ids) for r in rows}
        blocked = [r for r in rows if used[r.id]]
        if blocked and not force:
            first = blocked[0]
            raise LoraregError(f"{lookup.ref_of(first)} is still used by {_in_words(used[first.id])}",
                               hint="remove those first, or pass --force to keep it as a tombstone "
                                    "(row and lineage kept, bytes evicted)")
        now = m.utcnow()
        aliases_removed = []
        for row in rows:
            for a in session.exec(select(m.Alias).where(m.Alias.version_id == row.id)).all():
                aliases_removed.append(f"{a.name}@{a.alias}")
                session.delete(a)
                events.record(session, "alias-rm", ref=f"{a.name}@{a.alias}", alias=a.alias,
                              previous=row.version, reason="rm")
            events.record(session, "rm", ref=lookup.ref_of(row), version_id=row.id, kind=row.kind,
                          forced=bool(used[row.id]), still_used_by=used[row.id] or None, message=message)
            row.removed_at, row.stored = now, False
            session.add(row)
        session.commit()
    with leases.collecting(ctx) as collection:  # no writer claims a blob meanwhile
        report = ctx.blobs.gc(referenced_blobs(collection.session) | collection.pending())
    for row in rows:  # links only; a folder tracked by reference is the user's and stays
        shutil.rmtree(ctx.home.version_dir(row.name, row.version), ignore_errors=True)
    return RemoveResult(removed=tuple(lookup.ref_of(r) for r in rows),
                        kept_for={lookup.ref_of(r): tuple(used[r.id]) for r in rows if used[r.id]},
                        aliases_removed=tuple(aliases_removed), blobs_removed=len(report.removed),
                        bytes_freed=report.bytes_freed)


def _renamed(ref: str, old: str, new: str) -> str:
    name, sep, tail = ref.partition("@")
    return f"{new}{sep}{tail}" if name == old else ref


def _rewrite_recipe(recipe: dict, old: str, new: str) -> bool:
    """Point a recorded recipe's references at the new name.  Its identity (what ``digest()``
    covers) is inputs by digest, so the recorded recipe digest stays what it was."""
    inputs = [recipe["base"], *recipe.get("adapters", [])]
    if recipe.get("subtracted"):
        inputs += [recipe["subtracted"]["source"], recipe["subtracted"]["removed"]]
    changed = False
    for item in inputs:
        renamed = _renamed(item["ref"], old, new)
        changed |= renamed != item["ref"]
        item["ref"] = renamed
    return changed


def rename(ctx: Context, *, old: str, new: str) -> RenameResult:
    if "@" in old or "@" in new:
        raise LoraregError("rename moves a name with all its versions; give names, not versions",
                           hint="lorareg rename OLD NEW, e.g. lorareg rename chat chat-v1")
    check_name(new)
    with ctx.session() as session:
        lookup.resolve(session, parse_ref(old), removed_ok=True)  # unknown: the usual error, with suggestions
        artifact = session.get(m.Artifact, old)
        taken = session.get(m.Artifact, new)
        if taken is not None:
            raise LoraregError(f"the name {new!r} is already taken by {a_kind(taken.kind)}",
                               hint=f"pick another name; see it with: lorareg ls --name {new}")
        # Children first point at the new name, then the old one goes: foreign keys hold throughout.
        session.add(m.Artifact(name=new, kind=artifact.kind, created_at=artifact.created_at))
        session.flush()
        versions = session.exec(select(m.Version).where(m.Version.name == old)).all()
        session.exec(update(m.Version).where(m.Version.name == old).values(name=new))
        session.exec(update(m.Alias).where(m.Alias.name == old).values(name=new))
        recipes = 0
        for mg in session.exec(select(m.Merge).where(m.Merge.recipe_json.contains(f'"{old}@'))).all():
            recipe = json.loads(mg.recipe_json)
            if _rewrite_recipe(recipe, old, new):
                mg.recipe_json = json.dumps(recipe, sort_keys=True)
                session.add(mg)
                recipes += 1
        session.flush()
        session.delete(session.get(m.Artifact, old))
        events.record(session, "rename", ref=new, old=old, new=new, versions=len(versions), recipes=recipes)
        session.commit()
    src, dst = ctx.home.versions / old, ctx.home.versions / new
    if src.exists():  # link folders; a missing one is recreated from the rows when needed
        try:
            os.replace(src, dst)
        except OSError:
            shutil.rmtree(src, ignore_errors=True)
    return RenameResult(old=old, new=new, versions=len(versions), recipes_updated=recipes)


def under_any_name(session: Session, name: str):
    """SQL over events: those of ``name``, and of each name it had before a rename (up to that
    rename), so that ``alias history`` follows a renamed name back through its past."""
    from sqlalchemy import and_, or_

    condition = m.Event.ref.startswith(f"{name}@", autoescape=True)
    current, before = name, None
    while True:
        q = select(m.Event).where(m.Event.action == "rename", m.Event.ref == current)
        if before is not None:
            q = q.where(m.Event.id < before)
        renamed = session.exec(q.order_by(m.Event.id.desc())).first()
        if renamed is None:
            return condition
        current, before = json.loads(renamed.args_json)["old"], renamed.id
        condition = or_(condition, and_(m.Event.ref.startswith(f"{current}@", autoescape=True),
                                        m.Event.id < renamed.id))
