"""Reading and writing version rows: resolving references, numbering versions,
recording events, and turning rows into results."""

from __future__ import annotations

import getpass
import json
import os
from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlmodel import Session, select

from lorareg.errors import LoraregError, NotFoundError
from lorareg.registry import models as m
from lorareg.registry.home import Home
from lorareg.registry.refs import DEFAULT_ALIAS, Ref, parse_ref
from lorareg.registry.results import FileEntry, VersionInfo


def current_user() -> str:
    try:
        return os.environ.get("LORAREG_USER") or getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def resolve(session: Session, ref: str | Ref, *, kind: str | None = None) -> m.Version:
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


def ensure_artifact(session: Session, name: str, kind: str) -> None:
    artifact = session.get(m.Artifact, name)
    if artifact is None:
        session.add(m.Artifact(name=name, kind=kind))
        session.flush()
    elif artifact.kind != kind:
        raise LoraregError(f"the name {name!r} already belongs to a {artifact.kind}",
                           hint="pick another --name")


def existing_with_content(session: Session, name: str, content_digest: str) -> m.Version | None:
    return session.exec(
        select(m.Version).where(m.Version.name == name, m.Version.content_digest == content_digest)
    ).first()


def insert_version(session: Session, row: m.Version) -> m.Version:
    """Give ``row`` the next number under its name.  UNIQUE(name, version) turns a race
    between two writers into an IntegrityError; the caller retries the whole transaction."""
    latest = session.exec(select(func.max(m.Version.version)).where(m.Version.name == row.name)).one()
    row.version = (latest or 0) + 1
    session.add(row)
    session.flush()
    return row


def with_retry(engine, fn, attempts: int = 5):
    last: Exception | None = None
    for _ in range(attempts):
        with Session(engine, expire_on_commit=False) as session:
            try:
                result = fn(session)
                session.commit()
                return result
            except SAIntegrityError as exc:
                session.rollback()
                last = exc
    raise LoraregError(f"could not number the new version after {attempts} tries: {last}",
                       hint="another writer is busy; try again")


def record_event(session: Session, action: str, *, ref: str = "", version_id: int | None = None, **args: Any) -> None:
    session.add(m.Event(action=action, ref=ref, version_id=version_id, user=current_user(), args_json=dumps(args)))


def aliases_of(session: Session, row: m.Version) -> tuple[str, ...]:
    rows = session.exec(select(m.Alias).where(m.Alias.version_id == row.id)).all()
    return tuple(sorted(a.alias for a in rows))


def details_of(session: Session, row: m.Version) -> dict[str, Any]:
    out = _kind_details(session, row)
    pushes = session.exec(select(m.HubPush).where(m.HubPush.version_id == row.id).order_by(m.HubPush.id)).all()
    if pushes:
        out["hub_pushes"] = [{"repo_id": p.repo_id, "tag": p.tag, "branch": p.branch, "commit": p.commit_sha,
                              "endpoint": p.endpoint, "adapter_only": p.adapter_only} for p in pushes]
    return out


def _kind_details(session: Session, row: m.Version) -> dict[str, Any]:
    if row.kind == "base":
        b = session.get(m.Base, row.id)
        out = json.loads(b.summary_json)
        out.update(source=b.source, source_path=b.source_path)
        if b.hub_repo:
            out.update(hub_repo=b.hub_repo, hub_revision=b.hub_revision, hub_commit=b.hub_commit)
        return out
    if row.kind == "adapter":
        a = session.get(m.Adapter, row.id)
        base = session.get(m.Version, a.base_version_id)
        out = json.loads(a.summary_json)
        out.update(base=f"{base.name}@{base.version}", config_digest=a.config_digest)
        if a.hub_repo:
            out.update(hub_repo=a.hub_repo, hub_commit=a.hub_commit)
        return out
    mg = session.get(m.Merge, row.id)
    out = {"recipe": json.loads(mg.recipe_json), "recipe_digest": mg.recipe_digest, "output": mg.output}
    if row.parent_id:
        parent = session.get(m.Version, row.parent_id)
        out["parent"] = f"{parent.name}@{parent.version}"
    return out


def to_info(session: Session, home: Home, row: m.Version, *, with_files: bool = True, existed: bool = False) -> VersionInfo:
    files: tuple[FileEntry, ...] = ()
    if with_files:
        rows = session.exec(select(m.FileRow).where(m.FileRow.version_id == row.id).order_by(m.FileRow.path)).all()
        files = tuple(FileEntry(f.path, f.sha256, f.size) for f in rows)
    path = None
    if row.kind == "base" and not row.stored:
        path = session.get(m.Base, row.id).source_path
    elif row.stored:
        path = home.version_dir(row.name, row.version)
    from pathlib import Path

    return VersionInfo(
        ref=f"{row.name}@{row.version}", kind=row.kind, name=row.name, version=row.version, digest=row.digest,
        path=Path(path) if path else None, size_bytes=row.size_bytes, stored=row.stored,
        created_at=row.created_at, created_by=row.created_by, aliases=aliases_of(session, row), files=files,
        details=details_of(session, row), existed=existed,
    )
