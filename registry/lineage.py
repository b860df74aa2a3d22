"""Lineage graphs (what a version was made from, and what was made from it) and diffs."""

from __future__ import annotations

import json

from sqlalchemy import func
from sqlalchemy.orm import aliased
from sqlmodel import Session, select

from lorareg.errors import LoraregError
from lorareg.registry import lookup
from lorareg.registry import models as m
from lorareg.registry.context import Context
from lorareg.registry.refs import a_kind
from lorareg.registry.register import folder_of
from lorareg.registry.results import DiffResult, Edge, Lineage, Node, RecipeChange, TensorDiff
from lorareg.registry.version_info import details_of


def _node(v: m.Version, base: m.Base | None) -> Node:
    source = ""
    if v.kind == "base":
        source = f"hf://{base.hub_repo}@{base.hub_commit}" if base.hub_repo else (base.source_path or "store")
    return Node(ref=lookup.ref_of(v), kind=v.kind, digest=v.digest, source=source, stored=v.stored,
                removed=v.removed_at is not None)


def _in(session: Session, q, column, ids) -> list:
    """``q`` for every id in ``ids``, a bounded ``IN`` list at a time (see lookup.IN_LIST)."""
    out = []
    for chunk in lookup.chunks(sorted(set(ids))):
        out += session.exec(q.where(column.in_(chunk))).all()
    return out


def _nodes(session: Session, rows: list[m.Version]) -> dict[int, Node]:
    bases = {b.version_id: b for b in _in(session, select(m.Base), m.Base.version_id,
                                           [v.id for v in rows if v.kind == "base"])}
    return {v.id: _node(v, bases.get(v.id)) for v in rows}


def _up_edges(session: Session, level: list[m.Version]) -> dict[int, list[tuple[Edge, m.Version]]]:
    """What each version of ``level`` was made from: base, adapters (by position), the base an
    adapter was trained on, the parent; one query per kind of edge for the whole level."""
    merges = {g.version_id: g for g in _in(session, select(m.Merge), m.Merge.version_id,
                                           [v.id for v in level if v.kind == "merge"])}
    inputs: dict[int, list[m.MergeInput]] = {}
    for inp in _in(session, select(m.MergeInput).order_by(m.MergeInput.position), m.MergeInput.merge_version_id,
                   list(merges)):
        inputs.setdefault(inp.merge_version_id, []).append(inp)
    adapters = {a.version_id: a for a in _in(session, select(m.Adapter), m.Adapter.version_id,
                                             [v.id for v in level if v.kind == "adapter"])}
    wanted = {g.base_version_id for g in merges.values()} | {a.base_version_id for a in adapters.values()}
    wanted |= {i.adapter_version_id for ins in inputs.values() for i in ins}
    wanted |= {v.parent_id for v in level if v.parent_id}
    rows = {r.id: r for r in _in(session, select(m.Version), m.Version.id, wanted)}
    out: dict[int, list[tuple[Edge, m.Version]]] = {}
    for v in level:
        edges = out.setdefault(v.id, [])
        ref = lookup.ref_of(v)
        if v.kind == "merge":
            base = rows[merges[v.id].base_version_id]
            edges.append((Edge(ref, lookup.ref_of(base), "base"), base))
            for inp in inputs.get(v.id, ()):
                ad = rows[inp.adapter_version_id]
                edges.append((Edge(ref, lookup.ref_of(ad), "adapter", inp.weight, inp.position), ad))
        if v.kind == "adapter":
            base = rows[adapters[v.id].base_version_id]
            edges.append((Edge(ref, lookup.ref_of(base), "trained_on"), base))
        if v.parent_id:
            parent = rows[v.parent_id]
            edges.append((Edge(ref, lookup.ref_of(parent), "parent"), parent))
    return out


def _down_edges(session: Session, level: list[m.Version], limit: int | None = None, *, newest: bool = False
                ) -> tuple[dict[int, list[tuple[Edge, m.Version]]], dict[int, int]]:
    """What was made from each version of ``level``: merges on it, merges of it, adapters trained
    on it, versions whose parent it is, each joined to the child's row.  ``limit`` caps the rows
    read per version and kind of edge (a base that 100,000 adapters were trained on must not load
    them all to draw 20): then it is a query per version, a bounded number since at most
    ``limit`` versions are expanded, and ``newest`` reads each kind newest first (the highest
    child ids, read backwards along the link's index) and keeps the newest ``limit`` of all kinds.
    Without a limit, one query per kind of edge for the whole level.

    Also returns, per version, how many edges lead down from it in all (only where a limit may
    have cut some: one grouped count per kind for the whole level)."""
    child = aliased(m.Version)
    kinds = [  # (the link joined to the child's row, the column naming what it was made from, the child's id, the edge)
        (select(m.Merge, child).join(child, child.id == m.Merge.version_id).order_by(m.Merge.version_id),
         m.Merge.base_version_id, m.Merge.version_id, "base"),
        (select(m.MergeInput, child).join(child, child.id == m.MergeInput.merge_version_id)
         .order_by(m.MergeInput.merge_version_id), m.MergeInput.adapter_version_id, m.MergeInput.merge_version_id,
         "adapter"),
        (select(m.Adapter, child).join(child, child.id == m.Adapter.version_id).order_by(m.Adapter.version_id),
         m.Adapter.base_version_id, m.Adapter.version_id, "trained_on"),
        (select(child).order_by(child.id), child.parent_id, child.id, "parent"),  # the child is its own link
    ]
    found: dict[tuple[int, str], list] = {}
    full: dict[str, list[int]] = {}  # per kind, the versions whose query came back with ``limit`` rows
    for q, column, child_id, what in kinds:
        if limit is None:
            pairs = _in(session, q, column, [v.id for v in level])
        else:
            if newest:
                q = q.order_by(None).order_by(child_id.desc())
            pairs = []
            for v in level:
                got = session.exec(q.where(column == v.id).limit(limit)).all()
                pairs += got
                if len(got) == limit:
                    full.setdefault(what, []).append(v.id)
        for pair in pairs:
            link, row = (pair, pair) if what == "parent" else pair
            found.setdefault((getattr(link, column.key), what), []).append((link, row))
    out: dict[int, list[tuple[Edge, m.Version]]] = {}
    for v in level:
        edges = out.setdefault(v.id, [])
        ref = lookup.ref_of(v)
        for _, _, _, what in kinds:
            for link, row in found.get((v.id, what), ()):
                if what == "adapter":
                    edges.append((Edge(lookup.ref_of(row), ref, "adapter", link.weight, link.position), row))
                else:
                    edges.append((Edge(lookup.ref_of(row), ref, what), row))
        if newest and limit is not None:
            edges.sort(key=lambda pair: pair[1].id, reverse=True)
            del edges[limit:]
    totals: dict[int, int] = {}
    if limit is not None:
        for _, column, _, what in kinds:
            counted = dict(_in(session, select(column, func.count()).group_by(column), column, full.get(what, [])))
            for v in level:
                totals[v.id] = totals.get(v.id, 0) + counted.get(v.id, len(found.get((v.id, what), ())))
    return out, totals


def lineage(ctx: Context, *, ref: str, down: bool = False, max_nodes: int | None = None,
            per_node: int | None = None) -> Lineage:
    """Breadth first from ``ref``, a level at a time (a few queries per level, not per version);
    with ``max_nodes``, the nearest that many versions and the edges between them (``truncated``
    says more exist).  Down, ``per_node`` keeps the newest that many versions made from each one,
    and ``more`` says, per version, how many edges down from it were left out (by either bound),
    so a base with 100,000 adapters costs a page, not the registry."""
    limit = per_node if max_nodes is None else (max_nodes if per_node is None else min(per_node, max_nodes))
    with ctx.session() as session:
        root = lookup.resolve(session, ref, removed_ok=True)
        order: dict[int, m.Version] = {root.id: root}  # the nodes, in the order they are reached
        edges: list[Edge] = []
        more: dict[str, int] = {}
        level, truncated = [root], False
        while level:
            if down:
                steps, totals = _down_edges(session, level, limit, newest=per_node is not None)
            else:
                steps, totals = _up_edges(session, level), {}
            following = []
            for v in level:
                shown = 0
                for edge, other in steps[v.id]:
                    if other.id not in order:
                        if max_nodes is not None and len(order) >= max_nodes:
                            truncated = True
                            continue
                        order[other.id] = other
                        following.append(other)
                    edges.append(edge)
                    shown += 1
                if totals.get(v.id, 0) > shown:
                    more[lookup.ref_of(v)] = totals[v.id] - shown
            level = following
        nodes = _nodes(session, list(order.values()))
        return Lineage(root=lookup.ref_of(root), direction="down" if down else "up",
                       nodes=tuple(nodes[i] for i in order), edges=tuple(edges), truncated=truncated or bool(more),
                       more=more)


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
