"""Rows -> ``VersionInfo``: what a version is, as the Registry returns it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from lorareg.registry import lookup
from lorareg.registry import models as m
from lorareg.registry.home import Home
from lorareg.registry.recipe import Recipe
from lorareg.registry.results import FileDigest, VersionInfo


def stored_recipe(session: Session, row: m.Version) -> Recipe:
    from lorareg.errors import LoraregError
    from lorareg.registry.refs import a_kind

    mg = session.get(m.Merge, row.id)
    if mg is None:
        raise LoraregError(f"{row.name}@{row.version} is {a_kind(row.kind)}, not a merge", hint="list merges with: lorareg ls merges")
    return Recipe.from_json(json.loads(mg.recipe_json))


def source_of(session: Session, row: m.Version) -> str:
    """Where an input's bytes came from: hf://repo@commit, a referenced folder, or the store."""
    extra = session.get(m.Base, row.id) if row.kind == "base" else session.get(m.Adapter, row.id)
    if extra is not None and extra.hub_repo:
        return f"hf://{extra.hub_repo}@{extra.hub_commit or getattr(extra, 'hub_revision', None)}"
    path = getattr(extra, "source_path", None) if extra is not None else None
    return str(path or "lorareg store")


def aliases_of(session: Session, row: m.Version) -> tuple[str, ...]:
    rows = session.exec(select(m.Alias).where(m.Alias.version_id == row.id)).all()
    return tuple(sorted(a.alias for a in rows))


def details_of(session: Session, row: m.Version) -> dict[str, Any]:
    out = _kind_details(session, row)
    pushes = session.exec(select(m.HubPush).where(m.HubPush.version_id == row.id).order_by(m.HubPush.id)).all()
    if pushes:
        out["hub_pushes"] = [{"repo_id": p.repo_id, "tag": p.tag, "branch": p.branch, "commit": p.commit_sha,
                              "endpoint": p.endpoint, "adapter_only": p.adapter_only} for p in pushes]
    if row.kind == "merge":
        from lorareg.registry.check import check_summaries

        checks = check_summaries(session, row)
        if checks:
            out["checks"] = checks  # oldest first; ``ls`` marks a version whose latest one passed
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
        out.update(base=lookup.ref_of(base), config_digest=a.config_digest)
        if a.hub_repo:
            out.update(hub_repo=a.hub_repo, hub_commit=a.hub_commit)
        return out
    mg = session.get(m.Merge, row.id)
    out = {"recipe": json.loads(mg.recipe_json), "outcome": json.loads(mg.outcome_json or "{}"),
           "recipe_digest": mg.recipe_digest, "output": mg.output}
    if row.parent_id:
        out["parent"] = lookup.ref_of(session.get(m.Version, row.parent_id))
    return out


def version_info(session: Session, home: Home, row: m.Version, *, with_files: bool = True,
                 existed: bool = False) -> VersionInfo:
    files = {f.path: FileDigest(sha256=f.sha256, size=f.size) for f in lookup.file_rows(session, row)} \
        if with_files else {}
    path = None
    if row.kind == "base" and not row.stored:
        path = session.get(m.Base, row.id).source_path
    elif row.stored:
        path = home.version_dir(row.name, row.version)
    return VersionInfo(
        ref=lookup.ref_of(row), kind=row.kind, name=row.name, version=row.version, digest=row.digest,
        path=Path(path) if path else None, size_bytes=row.size_bytes, stored=row.stored,
        created_at=row.created_at, created_by=row.created_by, message=row.message,
        weights_digest=row.weights_digest, digest_state=row.digest_state,
        aliases=aliases_of(session, row), files=files, details=details_of(session, row), existed=existed,
        removed_at=row.removed_at,
    )
