"""What each page shows, read from the ``Registry`` facade only: one function per page, and
the JSON API returns the same dictionaries (``to_json``) that the templates render.

Every read is bounded: versions come a page at a time (``Registry.browse``), lineage graphs
stop at ``max_nodes``, event lists at a limit, so a registry of 100,000 versions costs
what one page shows."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from lorareg.cli.web import words
from lorareg.errors import LoraregError
from lorareg.registry.refs import KINDS

PAGE_SIZES = (25, 50, 100, 200, 500)
ORDERS = {"kind": "kind, name, version", "created": "created", "size": "size", "name": "name"}
GRAPH_NODES = 200  # the lineage page; the version page draws a smaller neighbourhood
INLINE_UP, INLINE_DOWN = 40, 12


class BadQuery(LoraregError):
    """A query parameter the page cannot use (shown as a 400 with its hint)."""


def to_json(value: Any) -> Any:
    """Results (frozen dataclasses), paths and times as plain JSON values."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, Path):
        return str(value)
    return value


# -- overview ------------------------------------------------------------------------------------
def overview(reg, *, events: int = 25, aliases: int = 100) -> dict[str, Any]:
    counts = {k: reg.count(kind=k) for k in KINDS}
    all_aliases = reg.aliases()
    return {"location": reg.location(), "counts": {**counts, "total": sum(counts.values())},
            "aliases": all_aliases[:aliases], "aliases_total": len(all_aliases), "events": reg.log(limit=events)}


# -- versions ------------------------------------------------------------------------------------
def int_param(params: Mapping[str, str], key: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(key)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"{key}={raw!r} is not a whole number", hint=f"use {key}={default}") from None
    if not lo <= value <= hi:
        raise BadQuery(f"{key}={value} is out of range", hint=f"use a number from {lo} to {hi}")
    return value


def version_filters(params: Mapping[str, str], tags: list[str]) -> dict[str, Any]:
    """The query string of ``/versions`` (and ``/api/versions``) as ``Registry.browse`` arguments."""
    kind = (params.get("kind") or "").strip().lower()
    kind = kind[:-1] if kind.endswith("s") and kind[:-1] in KINDS else kind
    if kind and kind not in KINDS:
        raise BadQuery(f"unknown kind {kind!r}", hint="use base, adapter or merge")
    parsed_tags: dict[str, str | None] = {}
    for t in tags:
        key, sep, value = t.partition("=")
        if key.strip():
            parsed_tags[key.strip()] = value if sep else None
    sort = (params.get("sort") or "kind").strip()
    if sort not in ORDERS and not (sort.startswith("metric:") and len(sort) > 7):
        raise BadQuery(f"cannot sort by {sort!r}", hint=f"use one of {', '.join(ORDERS)} or metric:KEY")
    return {"kind": kind or None, "name": (params.get("name") or "").strip() or None,
            "contains": (params.get("q") or "").strip() or None, "tags": parsed_tags,
            "alias": (params.get("alias") or "").strip() or None, "order_by": sort,
            "descending": (params.get("desc") or "") in ("1", "true", "yes", "on"),
            "limit": int_param(params, "limit", 50, 1, PAGE_SIZES[-1]),
            "offset": int_param(params, "offset", 0, 0, 10**12)}


def versions(reg, filters: Mapping[str, Any]) -> dict[str, Any]:
    page = reg.browse(**filters)
    return {"filters": dict(filters), "page": page, "metric_keys": reg.metric_keys(),
            "summaries": {i.ref: words.version_summary(i.kind, i.details) for i in page.items}}


# -- one version ---------------------------------------------------------------------------------
def version(reg, ref: str) -> dict[str, Any]:
    info = reg.get(ref=ref)
    recipe = info.details.get("recipe") if info.kind == "merge" else None
    return {
        "info": info,
        "summary": words.version_summary(info.kind, info.details),
        "recipe": words.recipe_words(recipe, info.details.get("outcome")) if recipe else None,
        "tracked": reg.tracked(ref=info.ref),
        "pushes": [{"push": dataclasses.replace(p, endpoint=words.without_credentials(p.endpoint)),
                    "tree_url": words.safe_url(p.endpoint, p.repo_id, "tree", p.tag),
                    "commit_url": words.safe_url(p.endpoint, p.repo_id, "commit", p.commit_sha)}
                   for p in reg.pushes(ref=info.ref)],
        "checks": reg.checks(ref=info.ref),
        "card": reg.model_card(ref=info.ref),
        "commands": words.reproduce_commands(info.ref, info.name, info.version, info.kind, info.details),
        "events": reg.log(ref=info.name, limit=20),
        "graph": lineage(reg, info.ref, up_nodes=INLINE_UP, down_nodes=INLINE_DOWN),
    }


# -- lineage -------------------------------------------------------------------------------------
def lineage(reg, ref: str, *, up_nodes: int = GRAPH_NODES, down_nodes: int = GRAPH_NODES) -> dict[str, Any]:
    """Up to the root base and down to everything built from ``ref``, as one graph; parent
    edges (rollbacks) labelled with the adapter they took out and how."""
    up = reg.lineage(ref=ref, max_nodes=up_nodes)
    down = reg.lineage(ref=ref, down=True, max_nodes=down_nodes)
    nodes = {n.ref: n for n in up.nodes + down.nodes}
    edges, seen = [], set()
    for e in up.edges + down.edges:
        key = (e.src, e.dst, e.role, e.position)
        if key not in seen:
            seen.add(key)
            edges.append(e)
    labels: dict[tuple[str, str, str], str] = {}
    recipes: dict[str, Mapping[str, Any]] = {}

    def recipe_of(r: str) -> Mapping[str, Any]:
        if r not in recipes:
            recipes[r] = (reg.get(ref=r).details.get("recipe") or {}) if nodes[r].kind == "merge" else {}
        return recipes[r]

    for e in edges:
        if e.role == "parent":
            labels[(e.src, e.dst, e.role)] = _rollback_label(recipe_of(e.src), recipe_of(e.dst))
    return {"root": up.root, "nodes": list(nodes.values()), "edges": edges, "labels": labels,
            "truncated": up.truncated or down.truncated}


def _rollback_label(child: Mapping[str, Any], parent: Mapping[str, Any]) -> str:
    sub = child.get("subtracted")
    if sub:
        return f"rollback: −{sub['removed']['ref']} (subtracted)"
    removed = [a["ref"] for a in parent.get("adapters", [])
               if a["ref"] not in {c["ref"] for c in child.get("adapters", [])}]
    if removed:
        return f"rollback: −{', '.join(removed)} (rebuilt)"
    return "rebuilt from its recipe"


def lineage_json(graph: Mapping[str, Any]) -> dict[str, Any]:
    return {"root": graph["root"], "truncated": graph["truncated"], "nodes": to_json(graph["nodes"]),
            "edges": [{**e.to_dict(), "label": graph["labels"].get((e.src, e.dst, e.role))} for e in graph["edges"]]}


# -- diff ----------------------------------------------------------------------------------------
def diff(reg, a: str, b: str) -> dict[str, Any]:
    result = reg.diff(a=a, b=b)
    ia, ib = reg.get(ref=a), reg.get(ref=b)
    return {"result": result, "a": ia, "b": ib, "rows": _side_by_side(ia, ib)}


def _recipe_fields(info) -> dict[str, str]:
    out = {"kind": info.kind, "digest": info.digest, "weights digest": getattr(info, "weights_digest", None) or "-",
           "size": words.human_size(info.size_bytes), "created": f"{info.created_at:%Y-%m-%d %H:%M:%S} UTC",
           "message": info.message or "-"}
    r = info.details.get("recipe") if info.kind == "merge" else None
    if not r:
        out["summary"] = words.version_summary(info.kind, info.details)
        return out
    out.update({
        "base": f"{r['base']['ref']} {words.short(r['base']['digest'])}",
        "adapters": "\n".join(f"{x['ref']} ×{words.number(x['weight'])} {words.short(x['digest'])}"
                              for x in r.get("adapters", [])) or "-",
        "method": r.get("method", ""),
        "params": ", ".join(f"{k}={words.number(v)}" for k, v in sorted((r.get("params") or {}).items())) or "-",
        "seed": str(r.get("seed")), "dtype": str(r.get("dtype")), "adapter dtype": str(r.get("adapter_dtype")),
        "output": str(r.get("output")) + (f" rank {r['rank']}" if r.get("rank") else ""),
        "subtracted": (f"{r['subtracted']['removed']['ref']} from {r['subtracted']['source']['ref']}"
                       if r.get("subtracted") else "-"),
        "engine": str(r.get("engine")),
        "library versions": ", ".join(f"{k} {v}" for k, v in sorted((r.get("versions") or {}).items())) or "-",
    })
    return out


def _side_by_side(ia, ib) -> list[dict[str, Any]]:
    fa, fb = _recipe_fields(ia), _recipe_fields(ib)
    keys = list(fa) + [k for k in fb if k not in fa]
    return [{"field": k, "a": fa.get(k, "-"), "b": fb.get(k, "-"),
             "differs": k not in ("created",) and fa.get(k, "-") != fb.get(k, "-")} for k in keys]


# -- aliases -------------------------------------------------------------------------------------
def aliases(reg, name: str | None, *, limit: int = 200) -> dict[str, Any]:
    return {"name": name, "aliases": reg.aliases(name=name), "events": reg.alias_events(name=name, limit=limit)}
