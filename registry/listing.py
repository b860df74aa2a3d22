"""Reading the registry: one version, all versions (and pages of them, filtered and sorted), the
event log, a version's folder and its model card."""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Float, case, cast, exists, func
from sqlmodel import Session, select

from lorareg.errors import LoraregError, NotFoundError
from lorareg.registry import events, lookup
from lorareg.registry import models as m
from lorareg.registry.context import Context
from lorareg.registry.refs import KINDS, check_alias, check_name
from lorareg.registry.results import EventInfo, QueryHit, VersionInfo, VersionPage
from lorareg.registry.version_info import version_info, version_infos

def get(ctx: Context, *, ref: str) -> VersionInfo:
    with ctx.session() as session:
        return version_info(session, ctx.home, lookup.resolve(session, ref, removed_ok=True))


def _check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise LoraregError(f"unknown kind {kind!r}", hint="use one of: bases, adapters, merges")


def ls(ctx: Context, *, kind: str | None = None, name: str | None = None, limit: int | None = None,
       offset: int = 0, after: str | None = None) -> list[VersionInfo]:
    _check_kind(kind)
    with ctx.session() as session:
        rows = lookup.versions(session, kind=kind, name=check_name(name) if name else None, limit=limit,
                               offset=offset, after=_cursor(session, after))
        return version_infos(session, ctx.home, rows)


def _cursor(session: Session, after: str | None) -> m.Version | None:
    """The row a cursor names.  A cursor is a version's ref, not an opaque token: a person can
    read it and write it, and it stays valid for good, since a version's number is never reused
    and a removed one keeps its row (hence ``removed_ok``).  Paging by it is a keyset on
    (created_at, id): each page is an index seek however deep, and versions registered between
    pages are newer, so they land before the cursor and never shift or repeat a later page."""
    return None if after is None else lookup.resolve(session, after, removed_ok=True)


def count(ctx: Context, *, kind: str | None = None, name: str | None = None, where: Sequence[str] = (),
          tags: Mapping[str, str | None] | None = None, removed: bool = False, after: str | None = None) -> int:
    """How many versions ``ls`` (``query``) with the same filters lists without a limit (past the
    cursor ``after``: how many are older than it)."""
    _check_kind(kind)
    with ctx.session() as session:
        cursor = _cursor(session, after)
        if not where and not tags:
            return lookup.count_versions(session, kind=kind, name=check_name(name) if name else None,
                                         removed=removed, after=cursor)
        _, conditions = _judged(session, where)
        q = _narrowed(select(func.count()).select_from(m.Version), conditions, kind=kind, name=name, tags=tags,
                      removed=removed)
        return session.exec(q if cursor is None else q.where(lookup.older_than(cursor))).one()


def log(ctx: Context, *, ref: str | None = None, limit: int = 50) -> list[EventInfo]:
    with ctx.session() as session:
        return events.recent(session, ref=ref, limit=limit)


def folder(ctx: Context, *, ref: str, progress: Callable[[int, int, str], None] | None = None) -> Path:
    """The folder ``from_pretrained`` loads; a recipe-only merge is rebuilt, checked and stored first."""
    from lorareg.registry.rebuild import materialize
    from lorareg.registry.register import folder_of

    materialize(ctx, ref=ref, progress=progress)
    with ctx.session() as session:
        return folder_of(ctx, session, lookup.resolve(session, ref))


# -- browsing (the web view's versions table) ---------------------------------------------------
BROWSE_ORDERS = ("kind", "created", "size", "name")  # or "metric:KEY"
MAX_PAGE = 1000


def browse(ctx: Context, *, kind: str | None = None, name: str | None = None, contains: str | None = None,
           tags: Mapping[str, str | None] | None = None, alias: str | None = None, order_by: str | None = None,
           descending: bool = False, limit: int = 50, offset: int = 0) -> VersionPage:
    """One page of the versions matching every filter given, counted and sorted in the database
    so that a registry of 100,000 versions costs one page of rows, not all of them.

    ``tags`` maps a key to the value it must have (``None``: any value); ``alias`` keeps the
    versions that alias points at; ``order_by`` is ``kind`` (the default, like ``ls``),
    ``created``, ``size``, ``name`` or ``metric:KEY`` (the latest value, as ``tracked`` reports it;
    versions without it come last)."""
    from sqlalchemy import func

    _check_kind(kind)
    if not 1 <= limit <= MAX_PAGE or offset < 0:
        raise LoraregError(f"a page holds 1 to {MAX_PAGE} versions from offset 0 on (asked: limit {limit}, "
                           f"offset {offset})")
    metric = _metric_key(order_by)
    where = dict(kind=kind, name=check_name(name) if name else None, contains=contains, tags=tags or {},
                 alias=check_alias(alias) if alias else None)
    latest = _latest_metric(metric) if metric is not None else None
    with ctx.session() as session:
        total = session.exec(_browse_filter(select(func.count()).select_from(m.Version), **where)).one()
        q = _browse_filter(select(m.Version) if latest is None else select(m.Version, latest), **where)
        rows = session.exec(q.order_by(*_browse_order(order_by, latest, descending)).offset(offset).limit(limit)).all()
        pairs = [(r, None) for r in rows] if latest is None else [(r, v) for r, v in rows]
        tag_rows = session.exec(select(m.Tag).where(m.Tag.version_id.in_([r.id for r, _ in pairs]))).all()
        tags_of: dict[int, dict[str, str]] = {}
        for t in tag_rows:
            tags_of.setdefault(t.version_id, {})[t.key] = t.value
        items = tuple(version_infos(session, ctx.home, [r for r, _ in pairs]))
    return VersionPage(items=items, total=total, offset=offset, limit=limit,
                       tags={lookup.ref_of(r): dict(sorted(tags_of.get(r.id, {}).items())) for r, _ in pairs},
                       sort_values={lookup.ref_of(r): v for r, v in pairs} if metric is not None else {})


def _metric_key(order_by: str | None) -> str | None:
    if order_by is None or order_by in BROWSE_ORDERS:
        return None
    source, _, key = order_by.partition(":")
    if source != "metric" or not key:
        raise LoraregError(f"cannot sort by {order_by!r}", hint=f"use one of {', '.join(BROWSE_ORDERS)} or metric:KEY")
    return key


def _browse_filter(q, *, kind, name, contains, tags, alias):
    from sqlalchemy import exists

    q = lookup.listed(q, kind=kind, name=name)  # what ls lists (removed versions only while linked)
    if contains:
        q = q.where(m.Version.name.contains(contains.strip().lower(), autoescape=True))
    for key, value in tags.items():
        has = exists().where(m.Tag.version_id == m.Version.id, m.Tag.key == str(key))
        q = q.where(has if value is None else has.where(m.Tag.value == str(value)))
    if alias:
        q = q.where(exists().where(m.Alias.version_id == m.Version.id, m.Alias.alias == alias))
    return q


def _latest_metric(key: str):
    """The value ``tracked`` calls latest: highest step (no step counts as -1), then the last logged."""
    from sqlalchemy import func

    return (select(m.Metric.value).where(m.Metric.version_id == m.Version.id, m.Metric.key == key)
            .order_by(func.coalesce(m.Metric.step, -1).desc(), m.Metric.id.desc()).limit(1)
            .correlate(m.Version).scalar_subquery())


def _browse_order(order_by: str | None, latest, descending: bool) -> list:
    def way(col):
        return col.desc() if descending else col.asc()

    if latest is not None:  # versions without the metric last, whichever way
        return [latest.is_(None), way(latest), m.Version.id]
    if order_by == "created":
        return [way(m.Version.created_at), way(m.Version.id)]
    if order_by == "size":
        return [way(m.Version.size_bytes), m.Version.id]
    if order_by == "name":
        return [way(m.Version.name), way(m.Version.version)]
    return [way(lookup.kind_order()), way(m.Version.name), way(m.Version.version)]


def model_card(ctx: Context, *, ref: str, max_bytes: int = 256 * 1024) -> str | None:
    """The text of a version's README.md (its model card), read from the blob store by its
    recorded sha256 only: never from a path, so nothing outside the registry is read.  None
    when the version has no card or its bytes are not in the store (recipe only, reference).
    Anything that looks like a credential is blanked, as in the cards lorareg writes."""
    from lorareg.registry.card import _redact

    with ctx.session() as session:
        row = lookup.resolve(session, ref)
        card = next((f for f in lookup.file_rows(session, row) if f.path == "README.md"), None)
    if card is None or not ctx.blobs.has(card.sha256):
        return None
    with ctx.blobs.open(card.sha256) as f:
        raw = f.read(max_bytes + 1)
    text = _redact(raw[:max_bytes].decode("utf-8", errors="replace"))
    return text + (f"\n[... cut at {max_bytes // 1024} KB]" if len(raw) > max_bytes else "")


# -- ls --where / --tag / --sort, completion, same content (the CLI's ls; issue 14) ----------------
_WHERE = re.compile(r"^\s*(?P<key>[^<>=!\s]+)\s*(?P<op><=|>=|!=|==|=|<|>)\s*(?P<value>.*?)\s*$")
_NUMBER = r"^\s*-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"  # a param's JSON text that is a number
_SORTS = {"created": "created_at", "name": "name", "size": "size_bytes"}


@dataclass(frozen=True)
class _Key:
    source: str  # metric | param
    key: str
    label: str  # as the user wrote it: eval_loss, param.lr


def query(ctx: Context, *, kind: str | None = None, name: str | None = None, where: Sequence[str] = (),
          tags: Mapping[str, str | None] | None = None, sort: str | None = None, descending: bool = False,
          removed: bool = False, limit: int | None = None, offset: int = 0, after: str | None = None
          ) -> list[QueryHit]:
    """Versions matching every ``where`` comparison (``eval_loss<0.5``, ``param.lr>=1e-4``,
    ``optim=adamw``) and tag (``None``: any value), sorted by a metric, a param, ``created``,
    ``name`` or ``size`` (``-KEY`` or ``descending``: largest first; versions without it last).
    Filtering and sorting happen in the database; each hit carries the values it was judged by.

    ``after`` (a ref) lists, newest first, the matching versions registered before that one: a
    cursor is a place in registration order, so it holds under any filter, while a sort by
    another key (whose values change as metrics are logged) is refused: page those by offset."""
    _check_kind(kind)
    with ctx.session() as session:
        cursor = _cursor(session, after)
        if cursor is not None:
            sort, descending = _newest_first_only(sort, descending)
        shown, conditions = _judged(session, where)
        order, sort_key = _order(session, sort, descending)
        if sort_key is not None:
            shown.setdefault(sort_key[0].label, sort_key)
        labels = list(shown)
        q = _narrowed(select(m.Version, *[expr for _, expr in shown.values()]), conditions, kind=kind, name=name,
                      tags=tags, removed=removed)
        if cursor is not None:
            q = q.where(lookup.older_than(cursor))
        q = q.order_by(*order, lookup.kind_order(), m.Version.name, m.Version.version).offset(offset)
        found = session.exec(q if limit is None else q.limit(limit)).all()
        pairs = [(row, values) for row, *values in (found if labels else [(r,) for r in found])]
        infos = version_infos(session, ctx.home, [row for row, _ in pairs])
        return [QueryHit(ref=lookup.ref_of(row), info=info,
                         values={label: _decoded(shown[label][0], v) for label, v in zip(labels, values)})
                for (row, values), info in zip(pairs, infos)]


def _newest_first_only(sort: str | None, descending: bool) -> tuple[str, bool]:
    if sort in (None, "-created") or (sort == "created" and descending):
        return "-created", False
    raise LoraregError(f"a cursor (--after) pages newest first; it cannot follow --sort {sort}"
                       f"{' --desc' if descending else ''}",
                       hint=f"page that order with --offset, e.g. lorareg ls --sort {sort} --offset 50")


def _judged(session: Session, where: Sequence[str]) -> tuple[dict[str, tuple[_Key, Any]], list]:
    """The SQL conditions of ``where``, and the values they judge by, by label (shown with each hit)."""
    shown: dict[str, tuple[_Key, Any]] = {}
    conditions = []
    for text in where:
        condition, key, expr = _condition(session, text)
        conditions.append(condition)
        shown.setdefault(key.label, (key, expr))
    return shown, conditions


def _narrowed(q, conditions: list, *, kind, name, tags, removed):
    """``q`` narrowed to what ``query`` lists: ``listed``, every condition, every tag."""
    q = lookup.listed(q, kind=kind, name=check_name(name) if name else None, removed=removed)
    for condition in conditions:
        q = q.where(condition)
    for key, value in (tags or {}).items():
        has = exists().where(m.Tag.version_id == m.Version.id, m.Tag.key == str(key))
        q = q.where(has if value is None else has.where(m.Tag.value == str(value)))
    return q


def _key(session: Session, text: str) -> _Key:
    """``metric.KEY`` / ``param.KEY``, or a bare key: a metric if any version logged one by that
    name, else a param."""
    source, dot, rest = text.partition(".")
    if dot and rest and source in ("metric", "metrics", "param", "params"):
        return _Key(source.rstrip("s"), rest, text)
    if session.exec(select(m.Metric.id).where(m.Metric.key == text).limit(1)).first() is not None:
        return _Key("metric", text, text)
    if session.exec(select(m.Param.version_id).where(m.Param.key == text).limit(1)).first() is not None:
        return _Key("param", text, text)
    known = set(session.exec(select(m.Metric.key).distinct()).all())
    known |= set(session.exec(select(m.Param.key).distinct()).all())
    close = difflib.get_close_matches(text, sorted(known), n=1)
    raise NotFoundError(f"no version has a metric or param named {text!r}",
                        hint=f"did you mean `{close[0]}`?" if close else
                        "see what a version tracks with: lorareg metrics REF, lorareg params REF")


def _value(key: _Key):
    """SQL: the version's value of ``key``; a metric's is the latest (highest step, then the last logged)."""
    if key.source == "metric":
        return (select(m.Metric.value).where(m.Metric.version_id == m.Version.id, m.Metric.key == key.key)
                .order_by(func.coalesce(m.Metric.step, -1).desc(), m.Metric.id.desc()).limit(1)
                .correlate(m.Version).scalar_subquery())
    return (select(m.Param.value_json).where(m.Param.version_id == m.Version.id, m.Param.key == key.key)
            .correlate(m.Version).scalar_subquery())


def _as_number(expr):
    """A param's JSON text as a number where it is one (NULL otherwise, so text never compares as 0)."""
    return case((expr.regexp_match(_NUMBER), cast(expr, Float)), else_=None)


def _condition(session: Session, text: str):
    import operator

    match = _WHERE.match(text)
    if match is None:
        raise LoraregError(f"cannot read --where {text!r}",
                           hint='write KEY OP VALUE with OP one of < <= > >= = !=, e.g. --where "eval_loss<0.5"')
    key = _key(session, match["key"])
    op = {"==": "=", "=": "=", "!=": "!="}.get(match["op"], match["op"])
    raw = match["value"].strip().strip("'\"")
    ops = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "=": operator.eq,
           "!=": operator.ne}
    expr = _value(key)
    number = _float(raw)
    if key.source == "metric":
        if number is None:
            raise LoraregError(f"{key.label} is a metric: compare it with a number, not {raw!r}",
                               hint=f'e.g. --where "{key.label}<0.5"')
        return ops[op](expr, number), key, expr
    if number is not None:
        return ops[op](_as_number(expr), number), key, expr
    if op not in ("=", "!="):
        raise LoraregError(f"{key.label} {op} {raw!r}: text compares only with = and !=",
                           hint=f'e.g. --where "{key.label}={raw}"')
    literal = {"true": True, "false": False, "null": None}.get(raw, raw)
    return ops[op](expr, json.dumps(literal, sort_keys=True)), key, expr


def _order(session: Session, sort: str | None, descending: bool):
    if not sort:
        return [], None
    if sort.startswith("-"):
        descending, sort = True, sort[1:]

    def way(col):
        return col.desc() if descending else col.asc()

    if sort == "created":  # then id: the order a cursor (``after``) pages in, ties included
        return [way(m.Version.created_at), way(m.Version.id)], None
    if sort in _SORTS:
        return [way(getattr(m.Version, _SORTS[sort]))], None
    key = _key(session, sort)
    expr = _value(key)
    if key.source == "metric":
        return [expr.is_(None), way(expr)], (key, expr)
    number = _as_number(expr)  # numbers in numeric order, then text
    return [expr.is_(None), number.is_(None), way(number), way(expr)], (key, expr)


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _decoded(key: _Key, value: Any) -> Any:
    if value is None or key.source == "metric":
        return value
    return json.loads(value)


def ref_candidates(ctx: Context, *, prefix: str = "", kind: str | None = None, limit: int = 200) -> list[str]:
    """References that start with ``prefix``, for shell completion: names, or after ``NAME@``
    that name's live version numbers and aliases."""
    with ctx.session() as session:
        if "@" in prefix:
            name, _, _ = prefix.partition("@")
            numbers = session.exec(select(m.Version.version).where(m.Version.name == name,
                                                                   m.Version.removed_at.is_(None))
                                   .order_by(m.Version.version.desc()).limit(limit)).all()
            aliases = session.exec(select(m.Alias.alias).where(m.Alias.name == name).order_by(m.Alias.alias)).all()
            out = [f"{name}@{a}" for a in aliases] + [f"{name}@{n}" for n in numbers]
            return [r for r in out if r.startswith(prefix)]
        q = select(m.Artifact.name).where(m.Artifact.name.startswith(prefix, autoescape=True),
                                          exists().where(m.Version.name == m.Artifact.name,
                                                         m.Version.removed_at.is_(None)))
        if kind is not None:
            q = q.where(m.Artifact.kind == kind)
        return list(session.exec(q.order_by(m.Artifact.name).limit(limit)).all())


def same_content(ctx: Context, *, ref: str) -> list[str]:
    """Live versions under other names whose digest is ``ref``'s (the same model registered twice)."""
    with ctx.session() as session:
        row = lookup.resolve(session, ref, removed_ok=True)
        rows = session.exec(select(m.Version).where(m.Version.digest == row.digest, m.Version.name != row.name,
                                                    m.Version.removed_at.is_(None))
                            .order_by(m.Version.name, m.Version.version)).all()
        return [lookup.ref_of(r) for r in rows]
