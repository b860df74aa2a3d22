"""Lineage graphs (what a version was made from, and what was made from it) and diffs."""

from __future__ import annotations

import json

from sqlmodel import Session, select

from lorareg.errors import LoraregError
from lorareg.registry import lookup
from lorareg.registry import models as m
from lorareg.registry.context import Context
from lorareg.registry.refs import a_kind
from lorareg.registry.register import folder_of
from lorareg.registry.results import DiffResult, Edge, Lineage, Node, RecipeChange, TensorDiff
from lorareg.registry.version_info import details_of


def _node(session: Session, v: m.Version) -> Node:
    source = ""
    if v.kind == "base":
        b = session.get(m.Base, v.id)
        source = f"hf://{b.hub_repo}@{b.hub_commit}" if b.hub_repo else (b.source_path or "store")
    return Node(ref=lookup.ref_of(v), kind=v.kind, digest=v.digest, source=source, stored=v.stored,
                removed=v.removed_at is not None)


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


def _down_edges(session: Session, v: m.Version, limit: int | None = None) -> list[tuple[Edge, m.Version]]:
    """What was made from ``v``; ``limit`` caps the rows read per kind of edge (a base that
    100,000 adapters were trained on must not load them all to draw 200)."""
    def rows(q):
        return session.exec(q if limit is None else q.limit(limit)).all()

    out = []
    for mg in rows(select(m.Merge).where(m.Merge.base_version_id == v.id).order_by(m.Merge.version_id)):
        child = session.get(m.Version, mg.version_id)
        out.append((Edge(lookup.ref_of(child), lookup.ref_of(v), "base"), child))
    for inp in rows(select(m.MergeInput).where(m.MergeInput.adapter_version_id == v.id)
                    .order_by(m.MergeInput.merge_version_id)):
        child = session.get(m.Version, inp.merge_version_id)
        out.append((Edge(lookup.ref_of(child), lookup.ref_of(v), "adapter", inp.weight, inp.position), child))
    for ad in rows(select(m.Adapter).where(m.Adapter.base_version_id == v.id).order_by(m.Adapter.version_id)):
        child = session.get(m.Version, ad.version_id)
        out.append((Edge(lookup.ref_of(child), lookup.ref_of(v), "trained_on"), child))
    for child in rows(select(m.Version).where(m.Version.parent_id == v.id).order_by(m.Version.id)):
        out.append((Edge(lookup.ref_of(child), lookup.ref_of(v), "parent"), child))
    return out


def lineage(ctx: Context, *, ref: str, down: bool = False, max_nodes: int | None = None) -> Lineage:
    """Breadth first from ``ref``; with ``max_nodes``, the nearest that many versions and the
    edges between them (``truncated`` says more exist)."""
    with ctx.session() as session:
        root = lookup.resolve(session, ref, removed_ok=True)
        nodes = {root.id: _node(session, root)}
        edges: list[Edge] = []
        todo, seen, truncated = [root], {root.id}, False
        while todo:
            v = todo.pop(0)
            step = _down_edges(session, v, max_nodes) if down else _up_edges(session, v)
            for edge, other in step:
                if other.id not in seen:
                    if max_nodes is not None and len(nodes) >= max_nodes:
                        truncated = True
                        continue
                    seen.add(other.id)
                    nodes[other.id] = _node(session, other)
                    todo.append(other)
                edges.append(edge)
        return Lineage(root=lookup.ref_of(root), direction="down" if down else "up", nodes=tuple(nodes.values()),
                       edges=tuple(edges), truncated=truncated)


def _layout(session: Session, row: m.Version) -> str:
    """``model`` (a base, a merged model) or ``adapter`` (an adapter, a merge written as one)."""
    if row.kind == "merge":
        return "adapter" if session.get(m.Merge, row.id).output == "adapter" else "model"
    return "adapter" if row.kind == "adapter" else "model"


def _in_words(row: m.Version, layout: str) -> str:
    if row.kind == "merge":
        return "a merged adapter" if layout == "adapter" else "a merged model"
    return a_kind(row.kind)


def _changes(a: dict, b: dict, *, skip: tuple[str, ...]) -> tuple[RecipeChange, ...]:
    return tuple(RecipeChange(field=k, a=a.get(k), b=b.get(k)) for k in sorted(set(a) | set(b))
                 if k not in skip and json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True))


def diff(ctx: Context, *, a: str, b: str) -> DiffResult:
    """Recipe differences of two merges (config differences of two bases or two adapters), and
    tensor differences when both have their files.  A model and an adapter are refused: they
    share no tensor, so every row would say "missing"."""
    from lorareg.merge.compare import compare_folders

    with ctx.session() as session:
        rows = [lookup.resolve(session, a, removed_ok=True), lookup.resolve(session, b, removed_ok=True)]
        layouts = [_layout(session, r) for r in rows]
        if layouts[0] != layouts[1]:  # a whole model against an adapter: no tensor is comparable
            raise LoraregError(f"{lookup.ref_of(rows[0])} is {_in_words(rows[0], layouts[0])} and "
                               f"{lookup.ref_of(rows[1])} is {_in_words(rows[1], layouts[1])}: diff compares two "
                               f"models or two adapters", hint=f"see how they relate with: lorareg lineage "
                                                               f"{lookup.ref_of(rows[0])}")
        both_merges = all(r.kind == "merge" for r in rows)
        recipes = [json.loads(session.get(m.Merge, r.id).recipe_json) if both_merges else {} for r in rows]
        folders = [folder_of(ctx, session, r) if r.removed_at is None and (r.stored or r.kind == "base") else None
                   for r in rows]
        configs = [details_of(session, r) if rows[0].kind == rows[1].kind != "merge" else {} for r in rows]
    changes = _changes(*recipes, skip=("versions", "lorareg_version"))
    if configs[0]:  # two bases or two adapters: what their configs say
        changes += _changes(*configs, skip=("source_path", "hub_revision", "hub_pushes"))
    same = rows[0].digest == rows[1].digest
    tensors = None
    if all(f is not None and f.exists() for f in folders):
        tensors = () if same else tuple(TensorDiff(**d) for d in compare_folders(folders[0], folders[1]))
    return DiffResult(a=lookup.ref_of(rows[0]), b=lookup.ref_of(rows[1]), same_digest=same,
                      same_weights=rows[0].weights_digest == rows[1].weights_digest, recipe=changes, tensors=tensors)
