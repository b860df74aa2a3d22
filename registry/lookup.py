"""Finding rows: references to versions, and versions by content or by recipe (read only)."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence

from sqlalchemy import func
from sqlmodel import Session, select

from lorareg.errors import LoraregError, NotFoundError
from lorareg.registry import models as m
from lorareg.registry.refs import DEFAULT_ALIAS, KINDS, Ref, a_kind, parse_ref


def ref_of(row: m.Version) -> str:
    return f"{row.name}@{row.version}"


def resolve(session: Session, ref: str | Ref, *, kind: str | None = None, removed_ok: bool = False) -> m.Version:
    """``name`` (the `current` alias, else the latest), ``name@3`` or ``name@alias`` -> its row.

    A version removed with ``lorareg rm`` keeps its row; only readers that show what it was
    (``show``, ``lineage``, ``diff``) pass ``removed_ok``; every other road refuses it here."""
    r = parse_ref(ref) if isinstance(ref, str) else ref
    artifact = session.get(m.Artifact, r.name)
    if artifact is None:
        raise NotFoundError(f"unknown reference {str(r)!r}: nothing is registered under {r.name!r}",
                            hint=_closest_names_hint(session, r.name))
    if kind is not None and artifact.kind != kind:
        raise LoraregError(f"{r.name!r} is {a_kind(artifact.kind)}, not {a_kind(kind)}",
                           hint=f"list {kind}s with: lorareg ls {kind}s")
    if r.version is not None:
        row = session.exec(select(m.Version).where(m.Version.name == r.name, m.Version.version == r.version)).first()
        if row is None:
            latest = session.exec(select(func.max(m.Version.version)).where(m.Version.name == r.name)).one()
            raise NotFoundError(f"unknown reference {str(r)!r}: {r.name} has versions 1 to {latest}, not {r.version}",
                                hint=f"list its versions with: lorareg ls --name {r.name}")
        return _live(row, removed_ok)
    alias = session.get(m.Alias, (r.name, r.alias or DEFAULT_ALIAS))
    if alias is not None:
        return _live(session.get(m.Version, alias.version_id), removed_ok)
    if r.alias is not None:
        names = session.exec(select(m.Alias.alias).where(m.Alias.name == r.name)).all()
        close = difflib.get_close_matches(r.alias, names, n=1)
        raise NotFoundError(f"unknown reference {str(r)!r}: {r.name} has no alias {r.alias!r}",
                            hint=f"did you mean {r.name}@{close[0]}?" if close
                            else f"see its aliases with: lorareg alias ls {r.name}")
    row = session.exec(select(m.Version).where(m.Version.name == r.name, m.Version.removed_at.is_(None))
                       .order_by(m.Version.version.desc())).first()
    if row is None:
        raise NotFoundError(f"every version of {r.name} was removed (lorareg rm)",
                            hint=f"see them with: lorareg ls --name {r.name} --removed")
    return row


def _live(row: m.Version, removed_ok: bool) -> m.Version:
    if row.removed_at is not None and not removed_ok:
        raise NotFoundError(f"{ref_of(row)} was removed on {row.removed_at:%Y-%m-%d %H:%M} UTC (lorareg rm): "
                            f"its row and lineage are kept, its bytes are gone",
                            hint=f"see it with: lorareg show {ref_of(row)}; list live versions with: lorareg ls")
    return row


def _closest_names_hint(session: Session, name: str) -> str:
    """\"did you mean ...?\" over every registered name: one query, on the error path only."""
    close = difflib.get_close_matches(name, session.exec(select(m.Artifact.name)).all(), n=3, cutoff=0.6)
    if not close:
        return "list what is registered with: lorareg ls"
    return "did you mean " + " or ".join(f"`{c}`" for c in close) + "?"


def check_name_free_for(session: Session, name: str, kind: str) -> None:
    """Refuse a name that already belongs to another kind."""
    artifact = session.get(m.Artifact, name)
    if artifact is not None and artifact.kind != kind:
        raise LoraregError(f"the name {name!r} already belongs to {a_kind(artifact.kind)}", hint="pick another --name")


def with_content(session: Session, name: str, content_digest: str) -> m.Version | None:
    return session.exec(
        select(m.Version).where(m.Version.name == name, m.Version.content_digest == content_digest,
                                m.Version.removed_at.is_(None))
    ).first()


def with_recipe(session: Session, name: str, recipe_digest: str) -> m.Version | None:
    return session.exec(select(m.Version).join(m.Merge, m.Merge.version_id == m.Version.id)
                        .where(m.Version.name == name, m.Merge.recipe_digest == recipe_digest,
                               m.Version.removed_at.is_(None))).first()


def kind_order():
    """SQL: bases, then adapters, then merges (what they are made from comes first)."""
    from sqlalchemy import case

    return case({k: i for i, k in enumerate(KINDS)}, value=m.Version.kind, else_=len(KINDS))


def made_from_it():
    """SQL: some version was made from this one (a merge's base or input, an adapter's base,
    a rollback's parent).  A removed version stays listed, marked removed, while this holds."""
    from sqlalchemy import exists, or_
    from sqlalchemy.orm import aliased

    child = aliased(m.Version)
    return or_(exists().where(m.MergeInput.adapter_version_id == m.Version.id),
               exists().where(m.Merge.base_version_id == m.Version.id),
               exists().where(m.Adapter.base_version_id == m.Version.id),
               exists().where(child.parent_id == m.Version.id))


def listed(q, *, kind: str | None, name: str | None, removed: bool = False):
    """``q`` narrowed to what ``ls`` lists: one kind, one name; removed versions only when asked
    for, or while lineage points at them."""
    if kind:
        q = q.where(m.Version.kind == kind)
    if name:
        q = q.where(m.Version.name == name)
    if not removed:  # removed versions nothing was made from are listed only when asked for
        from sqlalchemy import or_

        q = q.where(or_(m.Version.removed_at.is_(None), made_from_it()))
    return q


def newest_first() -> list:
    """SQL: the order ``ls`` pages in on a terminal and past a cursor: registration time, then id
    (two versions registered in the same microsecond still have one order)."""
    return [m.Version.created_at.desc(), m.Version.id.desc()]


def older_than(row: m.Version):
    """SQL: the versions after ``row`` in ``newest_first`` order, the keyset a cursor (``ls
    --after REF``) pages by.  A range on ix_versions_listed's first column (the created_at <= part)
    plus a filter, rather than a row-value comparison, so SQLite and PostgreSQL both seek."""
    return (m.Version.created_at <= row.created_at) & (
        (m.Version.created_at < row.created_at) | (m.Version.id < row.id))


def versions(session: Session, *, kind: str | None = None, name: str | None = None, limit: int | None = None,
             offset: int = 0, removed: bool = False, after: m.Version | None = None) -> list[m.Version]:
    """What ``ls`` lists in kind, name, version order; past a cursor row (``after``), newest first."""
    q = listed(select(m.Version), kind=kind, name=name, removed=removed)
    if after is not None:
        q = q.where(older_than(after)).order_by(*newest_first())
    else:
        q = q.order_by(kind_order(), m.Version.name, m.Version.version)
    q = q.offset(offset)
    return list(session.exec(q if limit is None else q.limit(limit)).all())


def count_versions(session: Session, *, kind: str | None = None, name: str | None = None,
                   removed: bool = False, after: m.Version | None = None) -> int:
    q = listed(select(func.count()).select_from(m.Version), kind=kind, name=name, removed=removed)
    return session.exec(q if after is None else q.where(older_than(after))).one()


# Ids per ``IN (...)`` list when rows are read for many versions at once: well under SQLite's
# bound-parameter limit, so a page of versions costs one query per table, and even a full
# listing of 100,000 a few hundred, never one (or several) per row.
IN_LIST = 900


def chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    ids = list(ids)
    for i in range(0, len(ids), IN_LIST):
        yield ids[i:i + IN_LIST]


def file_rows(session: Session, row: m.Version) -> list[m.FileRow]:
    return list(session.exec(select(m.FileRow).where(m.FileRow.version_id == row.id).order_by(m.FileRow.path)).all())
