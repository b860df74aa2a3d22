"""Finding rows: references to versions, and versions by content or by recipe (read only)."""

from __future__ import annotations

from sqlmodel import Session, select

from lorareg.errors import LoraregError, NotFoundError
from lorareg.registry import models as m
from lorareg.registry.refs import DEFAULT_ALIAS, Ref, parse_ref


def ref_of(row: m.Version) -> str:
    return f"{row.name}@{row.version}"


def resolve(session: Session, ref: str | Ref, *, kind: str | None = None) -> m.Version:
    """``name`` (the `current` alias, else the latest), ``name@3`` or ``name@alias`` -> its row."""
    r = parse_ref(ref) if isinstance(ref, str) else ref
    artifact = session.get(m.Artifact, r.name)
    if artifact is None:
        raise NotFoundError(f"unknown reference {str(r)!r}: nothing is registered under {r.name!r}")
    if kind is not None and artifact.kind != kind:
        raise LoraregError(f"{r.name!r} is a {artifact.kind}, not a {kind}", hint=f"list {kind}s with: lorareg ls {kind}s")
    if r.version is not None:
        row = session.exec(select(m.Version).where(m.Version.name == r.name, m.Version.version == r.version)).first()
        if row is None:
            raise NotFoundError(f"unknown reference {str(r)!r}: {r.name} has no version {r.version}",
                                hint=f"list its versions with: lorareg ls --name {r.name}")
        return row
    alias = session.get(m.Alias, (r.name, r.alias or DEFAULT_ALIAS))
    if alias is not None:
        return session.get(m.Version, alias.version_id)
    if r.alias is not None:
        raise NotFoundError(f"unknown reference {str(r)!r}: {r.name} has no alias {r.alias!r}",
                            hint=f"see its aliases with: lorareg alias ls {r.name}")
    row = session.exec(select(m.Version).where(m.Version.name == r.name).order_by(m.Version.version.desc())).first()
    if row is None:
        raise NotFoundError(f"unknown reference {str(r)!r}")
    return row


def check_name_free_for(session: Session, name: str, kind: str) -> None:
    """Refuse a name that already belongs to another kind."""
    artifact = session.get(m.Artifact, name)
    if artifact is not None and artifact.kind != kind:
        raise LoraregError(f"the name {name!r} already belongs to a {artifact.kind}", hint="pick another --name")


def with_content(session: Session, name: str, content_digest: str) -> m.Version | None:
    return session.exec(
        select(m.Version).where(m.Version.name == name, m.Version.content_digest == content_digest)
    ).first()


def with_recipe(session: Session, name: str, recipe_digest: str) -> m.Version | None:
    return session.exec(select(m.Version).join(m.Merge, m.Merge.version_id == m.Version.id)
                        .where(m.Version.name == name, m.Merge.recipe_digest == recipe_digest)).first()


def _filtered(q, *, kind: str | None, name: str | None):
    if kind:
        q = q.where(m.Version.kind == kind)
    if name:
        q = q.where(m.Version.name == name)
    return q


def versions(session: Session, *, kind: str | None = None, name: str | None = None, limit: int | None = None,
             offset: int = 0) -> list[m.Version]:
    q = _filtered(select(m.Version), kind=kind, name=name)
    q = q.order_by(m.Version.kind, m.Version.name, m.Version.version).offset(offset)
    return list(session.exec(q if limit is None else q.limit(limit)).all())


def count_versions(session: Session, *, kind: str | None = None, name: str | None = None) -> int:
    from sqlalchemy import func

    return session.exec(_filtered(select(func.count()).select_from(m.Version), kind=kind, name=name)).one()


def file_rows(session: Session, row: m.Version) -> list[m.FileRow]:
    return list(session.exec(select(m.FileRow).where(m.FileRow.version_id == row.id).order_by(m.FileRow.path)).all())
