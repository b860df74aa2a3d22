"""Lineage graphs (what a version was made from, and what was made from it) and diffs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, select

from lorareg.registry import catalog
from lorareg.registry import models as m
from lorareg.registry.results import _AsDict

if TYPE_CHECKING:
    from lorareg.registry.api import Registry


@dataclass(frozen=True)
class Node(_AsDict):
    ref: str
    kind: str
    digest: str
    source: str = ""  # a base's path or hf://repo@commit
    stored: bool = True


@dataclass(frozen=True)
class Edge(_AsDict):
    src: str  # the derived version
    dst: str  # what it was derived from
    role: str  # base | adapter | parent | trained_on
    weight: float | None = None
    position: int | None = None


@dataclass(frozen=True)
class Lineage(_AsDict):
    root: str
    direction: str  # up | down
    nodes: tuple[Node, ...] = ()
    edges: tuple[Edge, ...] = field(default_factory=tuple)


def _ref(v: m.Version) -> str:
    return f"{v.name}@{v.version}"


def _node(session: Session, v: m.Version) -> Node:
    source = ""
    if v.kind == "base":
        b = session.get(m.Base, v.id)
        source = f"hf://{b.hub_repo}@{b.hub_commit}" if b.hub_repo else (b.source_path or "store")
    return Node(ref=_ref(v), kind=v.kind, digest=v.digest, source=source, stored=v.stored)


def _up_edges(session: Session, v: m.Version) -> list[tuple[Edge, m.Version]]:
    out = []
    if v.kind == "merge":
        mg = session.get(m.Merge, v.id)
        base = session.get(m.Version, mg.base_version_id)
        out.append((Edge(_ref(v), _ref(base), "base"), base))
        for inp in session.exec(select(m.MergeInput).where(m.MergeInput.merge_version_id == v.id)
                                .order_by(m.MergeInput.position)).all():
            ad = session.get(m.Version, inp.adapter_version_id)
            out.append((Edge(_ref(v), _ref(ad), "adapter", inp.weight, inp.position), ad))
    if v.kind == "adapter":
        base = session.get(m.Version, session.get(m.Adapter, v.id).base_version_id)
        out.append((Edge(_ref(v), _ref(base), "trained_on"), base))
    if v.parent_id:
        parent = session.get(m.Version, v.parent_id)
        out.append((Edge(_ref(v), _ref(parent), "parent"), parent))
    return out


def _down_edges(session: Session, v: m.Version) -> list[tuple[Edge, m.Version]]:
    out = []
    for mg in session.exec(select(m.Merge).where(m.Merge.base_version_id == v.id)).all():
        child = session.get(m.Version, mg.version_id)
        out.append((Edge(_ref(child), _ref(v), "base"), child))
    for inp in session.exec(select(m.MergeInput).where(m.MergeInput.adapter_version_id == v.id)).all():
        child = session.get(m.Version, inp.merge_version_id)
        out.append((Edge(_ref(child), _ref(v), "adapter", inp.weight, inp.position), child))
    for ad in session.exec(select(m.Adapter).where(m.Adapter.base_version_id == v.id)).all():
        child = session.get(m.Version, ad.version_id)
        out.append((Edge(_ref(child), _ref(v), "trained_on"), child))
    for child in session.exec(select(m.Version).where(m.Version.parent_id == v.id)).all():
        out.append((Edge(_ref(child), _ref(v), "parent"), child))
    return out


def lineage(reg: "Registry", *, ref: str, down: bool = False) -> Lineage:
    with Session(reg.engine) as session:
        root = catalog.resolve(session, ref)
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
        return Lineage(root=_ref(root), direction="down" if down else "up", nodes=tuple(nodes.values()),
                       edges=tuple(edges))


def diff(reg: "Registry", *, a: str, b: str) -> dict[str, Any]:
    """Recipe differences, and tensor differences when both versions have their files."""
    from lorareg.merge.compare import compare_folders

    ia, ib = reg.get(a), reg.get(b)
    ra, rb = ia.details.get("recipe", {}), ib.details.get("recipe", {})
    keys = sorted(set(ra) | set(rb))
    recipe_changes = {k: {"a": ra.get(k), "b": rb.get(k)} for k in keys
                      if json.dumps(ra.get(k), sort_keys=True) != json.dumps(rb.get(k), sort_keys=True)
                      and k not in ("notes", "versions")}
    out: dict[str, Any] = {"a": ia.ref, "b": ib.ref, "same_digest": ia.digest == ib.digest,
                           "recipe": recipe_changes, "tensors": None}
    if ia.path and ib.path and ia.path.exists() and ib.path.exists():
        out["tensors"] = [] if ia.digest == ib.digest else compare_folders(ia.path, ib.path)
    return out
