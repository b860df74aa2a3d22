"""Lineage graphs (what a version was made from, and what was made from it) and diffs."""

from __future__ import annotations

import json

from sqlmodel import Session, select

from lorareg.registry import lookup
from lorareg.registry import models as m
from lorareg.registry.context import Context
from lorareg.registry.register import folder_of
from lorareg.registry.results import DiffResult, Edge, Lineage, Node, RecipeChange, TensorDiff


def _node(session: Session, v: m.Version) -> Node:
    source = ""
    if v.kind == "base":
        b = session.get(m.Base, v.id)
        source = f"hf://{b.hub_repo}@{b.hub_commit}" if b.hub_repo else (b.source_path or "store")
    return Node(ref=lookup.ref_of(v), kind=v.kind, digest=v.digest, source=source, stored=v.stored)


def _up_edges(session: Session, v: m.Version) -> list[tuple[Edge, m.Version]]:
    out = []
    if v.kind == "merge":
        mg = session.get(m.Merge, v.id)
        base = session.get(m.Version, mg.base_version_id)
        out.append((Edge(lookup.ref_of(v), lookup.ref_of(base), "base"), base))
        for inp in session.exec(select(m.MergeInput).where(m.MergeInput.merge_version_id == v.id)
                                .order_by(m.MergeInput.position)).all():
            ad = session.get(m.Version, inp.adapter_version_id)
            out.append((Edge(lookup.ref_of(v), lookup.ref_of(ad), "adapter", inp.weight, inp.position), ad))
    if v.kind == "adapter":
        base = session.get(m.Version, session.get(m.Adapter, v.id).base_version_id)
        out.append((Edge(lookup.ref_of(v), lookup.ref_of(base), "trained_on"), base))
    if v.parent_id:
        parent = session.get(m.Version, v.parent_id)
        out.append((Edge(lookup.ref_of(v), lookup.ref_of(parent), "parent"), parent))
    return out


def _down_edges(session: Session, v: m.Version) -> list[tuple[Edge, m.Version]]:
    out = []
    for mg in session.exec(select(m.Merge).where(m.Merge.base_version_id == v.id)).all():
        child = session.get(m.Version, mg.version_id)
        out.append((Edge(lookup.ref_of(child), lookup.ref_of(v), "base"), child))
    for inp in session.exec(select(m.MergeInput).where(m.MergeInput.adapter_version_id == v.id)).all():
        child = session.get(m.Version, inp.merge_version_id)
        out.append((Edge(lookup.ref_of(child), lookup.ref_of(v), "adapter", inp.weight, inp.position), child))
    for ad in session.exec(select(m.Adapter).where(m.Adapter.base_version_id == v.id)).all():
        child = session.get(m.Version, ad.version_id)
        out.append((Edge(lookup.ref_of(child), lookup.ref_of(v), "trained_on"), child))
    for child in session.exec(select(m.Version).where(m.Version.parent_id == v.id)).all():
        out.append((Edge(lookup.ref_of(child), lookup.ref_of(v), "parent"), child))
    return out


def lineage(ctx: Context, *, ref: str, down: bool = False) -> Lineage:
    with ctx.session() as session:
        root = lookup.resolve(session, ref)
        nodes = {root.id: _node(session, root)}
        edges: list[Edge] = []
        todo, seen = [root], {root.id}
        step = _down_edges if down else _up_edges
        while todo:
            v = todo.pop(0)
            for edge, other in step(session, v):
                edges.append(edge)
                if other.id not in seen:
                    seen.add(other.id)
                    nodes[other.id] = _node(session, other)
                    todo.append(other)
        return Lineage(root=lookup.ref_of(root), direction="down" if down else "up", nodes=tuple(nodes.values()),
                       edges=tuple(edges))


def diff(ctx: Context, *, a: str, b: str) -> DiffResult:
    """Recipe differences, and tensor differences when both versions have their files."""
    from lorareg.merge.compare import compare_folders

    with ctx.session() as session:
        rows = [lookup.resolve(session, a), lookup.resolve(session, b)]
        recipes = [json.loads(session.get(m.Merge, r.id).recipe_json) if r.kind == "merge" else {} for r in rows]
        folders = [folder_of(ctx, session, r) if r.stored or r.kind == "base" else None for r in rows]
    ra, rb = recipes
    changes = tuple(RecipeChange(field=k, a=ra.get(k), b=rb.get(k)) for k in sorted(set(ra) | set(rb))
                    if k not in ("versions", "lorareg_version")
                    and json.dumps(ra.get(k), sort_keys=True) != json.dumps(rb.get(k), sort_keys=True))
    same = rows[0].digest == rows[1].digest
    tensors = None
    if all(f is not None and f.exists() for f in folders):
        tensors = () if same else tuple(TensorDiff(**d) for d in compare_folders(folders[0], folders[1]))
    return DiffResult(a=lookup.ref_of(rows[0]), b=lookup.ref_of(rows[1]), same_digest=same, recipe=changes,
                      tensors=tensors)
