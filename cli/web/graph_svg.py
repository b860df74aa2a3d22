"""Laying out a lineage graph for SVG: inputs above, what was made from them below.

A small Sugiyama layout: layers by longest path from the inputs (a rollback chain becomes a
column), edges that skip layers get invisible waypoints so they route around the boxes
between, a few barycenter sweeps order each layer to cut crossings (the best order seen is
kept), and x positions come from isotonic regression towards the neighbours' mean (nodes
keep their order and spacing and sit as close as they can over what they connect to).
The template draws the result; nothing here prints text, so escaping stays with Jinja."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

NODE_W, NODE_H = 210, 46
WAYPOINT_W = 14
GAP_X, GAP_Y, MARGIN = 30, 62, 16
KIND_ORDER = {"base": 0, "adapter": 1, "merge": 2}


@dataclass(frozen=True)
class PlacedNode:
    ref: str
    kind: str
    x: float  # left
    y: float  # top
    w: float
    h: float
    line1: str
    line2: str
    title: str
    classes: str


@dataclass(frozen=True)
class PlacedEdge:
    src: str  # the derived version
    dst: str  # what it was made from
    role: str
    d: str  # SVG path data, from the input down to the derived version
    label: str
    label_x: float
    label_y: float
    classes: str


@dataclass(frozen=True)
class Layout:
    width: float
    height: float
    nodes: tuple[PlacedNode, ...] = ()
    edges: tuple[PlacedEdge, ...] = ()
    layers: int = 0


@dataclass
class _Item:
    key: str  # a ref, or "~n" for a waypoint
    layer: int
    w: float
    up: list[str] = field(default_factory=list)  # neighbours one layer above
    down: list[str] = field(default_factory=list)  # neighbours one layer below
    x: float = 0.0  # centre


def _version_key(ref: str) -> tuple[str, int]:
    name, _, v = ref.partition("@")
    return name, int(v) if v.isdigit() else 0


def _layers(refs: Sequence[str], inputs: Mapping[str, list[str]]) -> dict[str, int]:
    """Longest path from a version with no inputs in the graph (cycles, impossible in a
    registry, are cut rather than looped on)."""
    layer: dict[str, int] = {}
    for start in refs:
        stack, on_path = [(start, iter(inputs.get(start, ())))], {start}
        while stack:
            ref, it = stack[-1]
            nxt = next((i for i in it if i not in layer and i not in on_path), None)
            if nxt is not None:
                stack.append((nxt, iter(inputs.get(nxt, ()))))
                on_path.add(nxt)
                continue
            stack.pop()
            on_path.discard(ref)
            layer[ref] = 1 + max((layer[i] for i in inputs.get(ref, ()) if i in layer), default=-1)
    return layer


def _crossings(order: list[list[str]], items: Mapping[str, _Item]) -> int:
    total = 0
    for upper, lower in zip(order, order[1:]):
        pos_u = {k: i for i, k in enumerate(upper)}
        pos_l = {k: i for i, k in enumerate(lower)}
        pairs = [(pos_u[u], pos_l[k]) for k in lower for u in items[k].up if u in pos_u]
        total += sum(1 for i, (a, b) in enumerate(pairs) for c, d in pairs[i + 1:] if (a - c) * (b - d) < 0)
    return total


def _sweep(order: list[list[str]], items: Mapping[str, _Item], downwards: bool) -> None:
    rng = range(1, len(order)) if downwards else range(len(order) - 2, -1, -1)
    for li in rng:
        ref_layer = order[li - 1] if downwards else order[li + 1]
        pos = {k: i for i, k in enumerate(ref_layer)}

        def bary(idx_key: tuple[int, str]) -> float:
            idx, key = idx_key
            near = [pos[n] for n in (items[key].up if downwards else items[key].down) if n in pos]
            return sum(near) / len(near) if near else float(idx) * len(ref_layer) / max(len(order[li]), 1)

        order[li] = [k for _, k in sorted(enumerate(order[li]), key=bary)]


def _isotonic(targets: list[float]) -> list[float]:
    """Pool adjacent violators: the non-decreasing sequence closest (least squares) to targets."""
    blocks: list[list[float]] = []  # [sum, count]
    for t in targets:
        blocks.append([t, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    out: list[float] = []
    for s, c in blocks:
        out += [s / c] * int(c)
    return out


def _place(row: list[str], items: Mapping[str, _Item], desired: Mapping[str, float]) -> None:
    offsets, acc = [], 0.0
    for i, k in enumerate(row):
        if i:
            acc += (items[row[i - 1]].w + items[k].w) / 2 + GAP_X
        offsets.append(acc)
    fitted = _isotonic([desired[k] - off for k, off in zip(row, offsets)])
    for k, u, off in zip(row, fitted, offsets):
        items[k].x = u + off


def layout(nodes: Iterable, edges: Iterable, *, root: str,
           edge_labels: Mapping[tuple[str, str, str], str] | None = None,
           node_notes: Mapping[str, str] | None = None) -> Layout:
    """``nodes`` and ``edges`` are the registry's ``Node``/``Edge`` results (edges point from the
    derived version to its input); ``edge_labels`` overrides the label of (src, dst, role)."""
    nodes = {n.ref: n for n in nodes}
    edges = [e for e in edges if e.src in nodes and e.dst in nodes]
    labels, notes = edge_labels or {}, node_notes or {}
    if not nodes:
        return Layout(width=0, height=0)
    inputs: dict[str, list[str]] = {}
    for e in edges:
        inputs.setdefault(e.src, []).append(e.dst)
    refs = sorted(nodes, key=lambda r: (KIND_ORDER.get(nodes[r].kind, 9), _version_key(r)))
    layer_of = _layers(refs, inputs)
    items = {r: _Item(r, layer_of[r], NODE_W) for r in refs}
    chains: list[list[str]] = []  # per edge: the item keys from input down to the derived version
    for e in edges:
        top, bottom = layer_of[e.dst], layer_of[e.src]
        chain = [e.dst]
        for li in range(top + 1, bottom):
            key = f"~{len(items)}"
            items[key] = _Item(key, li, WAYPOINT_W)
            chain.append(key)
        chain.append(e.src)
        for a, b in zip(chain, chain[1:]):
            if items[b].layer == items[a].layer + 1:
                items[a].down.append(b)
                items[b].up.append(a)
        chains.append(chain)
    depth = 1 + max(i.layer for i in items.values())
    order: list[list[str]] = [[] for _ in range(depth)]
    for key, item in items.items():
        order[item.layer].append(key)
    best, best_cross = [list(r) for r in order], _crossings(order, items)
    for i in range(8):
        _sweep(order, items, downwards=i % 2 == 0)
        cross = _crossings(order, items)
        if cross < best_cross:
            best, best_cross = [list(r) for r in order], cross
    order = best
    for row in order:
        _place(row, items, {k: 0.0 for k in row})
    for i in range(12):
        rows = order if i % 2 == 0 else order[::-1]
        for row in rows:
            desired = {}
            for k in row:
                near = [items[n].x for n in items[k].up + items[k].down]
                desired[k] = sum(near) / len(near) if near else items[k].x
            _place(row, items, desired)
    left = min(it.x - it.w / 2 for it in items.values())
    for it in items.values():
        it.x += MARGIN - left
    width = max(it.x + it.w / 2 for it in items.values()) + MARGIN
    top_of = [MARGIN + li * (NODE_H + GAP_Y) for li in range(depth)]
    height = top_of[-1] + NODE_H + MARGIN

    # Where each edge leaves its input and enters the derived version: spread along the box
    # edge in the order of the other end, so edges into a merge do not meet in one point.
    ends: dict[tuple[int, str], float] = {}
    for side, pick in (("out", lambda c: (c[0], c[1])), ("in", lambda c: (c[-1], c[-2]))):
        groups: dict[str, list[int]] = {}
        for ci, chain in enumerate(chains):
            groups.setdefault(pick(chain)[0], []).append(ci)
        for node_ref, cis in groups.items():
            cis.sort(key=lambda ci: items[pick(chains[ci])[1]].x)
            span = min(NODE_W * 0.7, 24.0 * (len(cis) - 1))
            for j, ci in enumerate(cis):
                offset = 0.0 if len(cis) == 1 else -span / 2 + span * j / (len(cis) - 1)
                ends[(ci, side)] = items[node_ref].x + offset

    paths, curves = [], []
    for ci, chain in enumerate(chains):
        pts = [(ends[(ci, "out")], top_of[items[chain[0]].layer] + NODE_H)]
        for key in chain[1:-1]:
            it = items[key]
            pts += [(it.x, top_of[it.layer]), (it.x, top_of[it.layer] + NODE_H)]
        pts.append((ends[(ci, "in")], top_of[items[chain[-1]].layer]))
        d, segs = [f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"], []
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if x0 == x1 and y1 - y0 == NODE_H:  # through a waypoint's layer
                d.append(f"L{x1:.1f},{y1:.1f}")
            else:
                mid = (y0 + y1) / 2
                d.append(f"C{x0:.1f},{mid:.1f} {x1:.1f},{mid:.1f} {x1:.1f},{y1:.1f}")
                segs.append(((x0, y0), (x0, mid), (x1, mid), (x1, y1)))
        paths.append(" ".join(d))
        curves.append(segs[::-1])  # the segment nearest the derived version first
    texts = [labels.get((e.src, e.dst, e.role), _default_label(e)) for e in edges]
    boxes = [(it.x - it.w / 2, top_of[it.layer], it.x + it.w / 2, top_of[it.layer] + NODE_H)
             for it in items.values() if not it.key.startswith("~")]
    spots = _place_labels(texts, curves, [e.role for e in edges], boxes)
    placed_edges = [PlacedEdge(src=e.src, dst=e.dst, role=e.role, d=d, label=text, label_x=x, label_y=y,
                               classes=f"edge role-{e.role}")
                    for e, d, text, (x, y) in zip(edges, paths, texts, spots)]
    placed_nodes = []
    for r in refs:
        n, it = nodes[r], items[r]
        state = "" if n.stored else ("reference" if n.kind == "base" else "recipe only")
        line2 = " · ".join(x for x in (n.kind, n.digest.split(":", 1)[-1][:10], state or notes.get(r, "")) if x)
        title = "\n".join(x for x in (r, f"{n.kind} {n.digest}", n.source, state, notes.get(r, "")) if x)
        classes = f"node kind-{n.kind}" + (" root" if r == root else "") + ("" if n.stored else " not-stored")
        placed_nodes.append(PlacedNode(ref=r, kind=n.kind, x=it.x - NODE_W / 2, y=top_of[it.layer], w=NODE_W, h=NODE_H,
                                       line1=r if len(r) <= 26 else r[:25] + "…", line2=line2, title=title,
                                       classes=classes))
    return Layout(width=round(width, 1), height=round(height, 1), nodes=tuple(placed_nodes),
                  edges=tuple(placed_edges), layers=depth)


LABEL_PRIORITY = {"parent": 0, "adapter": 1, "base": 2, "trained_on": 3}
CANDIDATES = (0.5, 0.36, 0.64, 0.24, 0.76, 0.14, 0.86)


def _bezier(seg, t: float) -> tuple[float, float]:
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = seg
    a, b, c, d = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3
    return a * x0 + b * x1 + c * x2 + d * x3, a * y0 + b * y1 + c * y2 + d * y3


def _overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _place_labels(texts, curves, roles, boxes) -> list[tuple[float, float]]:
    """A spot on each edge for its label that covers no box and no other label when one exists
    (rollback labels first, the least informative last): points along the edge's curves,
    nearest the derived version first; otherwise the least covered spot."""
    spots: list[tuple[float, float]] = [(0.0, 0.0)] * len(texts)
    taken = list(boxes)
    for i in sorted(range(len(texts)), key=lambda i: (LABEL_PRIORITY.get(roles[i], 9), i)):
        if not texts[i] or not curves[i]:
            continue
        half = len(texts[i]) * (3.6 if roles[i] == "parent" else 3.3) + 3
        best, best_cost = None, float("inf")
        for seg in curves[i]:
            for t in CANDIDATES:
                x, y = _bezier(seg, t)
                box = (x - half, y - 8, x + half, y + 6)
                cost = sum(_overlap(box, other) for other in taken)
                if cost < best_cost:
                    best, best_cost = (x, y, box), cost
                if cost == 0:
                    break
            if best_cost == 0:
                break
        x, y, box = best
        taken.append(box)
        spots[i] = (round(x, 1), round(y + 4, 1))
    return spots


def _default_label(e) -> str:
    if e.role == "adapter":
        return "" if e.weight is None else f"×{e.weight:g}"
    if e.role == "parent":
        return "rollback"
    if e.role == "trained_on":
        return ""
    return e.role
