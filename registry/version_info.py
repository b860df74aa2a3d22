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


def details_of(session: Session, row: m.Version) -> dict[str, Any]:
    return _Batch(session, [row]).details(row)


class _Batch:
    """Everything ``VersionInfo`` reads about ``rows``, loaded with one query per table (per
    ``lookup.IN_LIST`` rows), so that listing a page costs the same number of statements at any size."""

    def __init__(self, session: Session, rows: list[m.Version], *, with_files: bool = False):
        self.session = session
        ids = [r.id for r in rows]
        by_kind = {k: [r.id for r in rows if r.kind == k] for k in ("base", "adapter", "merge")}
        self.aliases: dict[int, list[str]] = {}
        for a in self._where(m.Alias, m.Alias.version_id, ids):
            self.aliases.setdefault(a.version_id, []).append(a.alias)
        self.bases = {b.version_id: b for b in self._where(m.Base, m.Base.version_id, by_kind["base"])}
        self.adapters = {a.version_id: a for a in self._where(m.Adapter, m.Adapter.version_id, by_kind["adapter"])}
        self.merges = {g.version_id: g for g in self._where(m.Merge, m.Merge.version_id, by_kind["merge"])}
        self.pushes: dict[int, list[m.HubPush]] = {}
        for p in self._where(m.HubPush, m.HubPush.version_id, ids, order=m.HubPush.id):
            self.pushes.setdefault(p.version_id, []).append(p)
        self.checks: dict[int, list[m.Check]] = {}
        for c in self._where(m.Check, m.Check.version_id, by_kind["merge"], order=m.Check.id):
            self.checks.setdefault(c.version_id, []).append(c)
        self.files: dict[int, list[m.FileRow]] = {}
        if with_files:
            for f in self._where(m.FileRow, m.FileRow.version_id, ids, order=m.FileRow.path):
                self.files.setdefault(f.version_id, []).append(f)
        # The versions details name by ref: an adapter's base, a merge's parent.
        self.versions = {r.id: r for r in rows}
        wanted = {a.base_version_id for a in self.adapters.values()}
        wanted |= {r.parent_id for r in rows if r.kind == "merge" and r.parent_id}
        self.versions.update({v.id: v for v in self._where(m.Version, m.Version.id, sorted(wanted - set(ids)))})

    def _where(self, model, column, ids: list[int], order=None) -> list:
        out: list = []
        for chunk in lookup.chunks(ids):
            q = select(model).where(column.in_(chunk))
            out += self.session.exec(q if order is None else q.order_by(order)).all()
        return out

    def details(self, row: m.Version) -> dict[str, Any]:
        out = self._kind_details(row)
        pushes = self.pushes.get(row.id)
        if pushes:
            out["hub_pushes"] = [{"repo_id": p.repo_id, "tag": p.tag, "branch": p.branch, "commit": p.commit_sha,
                                  "endpoint": p.endpoint, "adapter_only": p.adapter_only} for p in pushes]
        if row.kind == "merge":
            from lorareg.registry.check import _SUMMARY, result_of

            ref = lookup.ref_of(row)
            checks = [{k: v for k, v in result_of(c, ref).to_dict().items() if k in _SUMMARY}
                      for c in self.checks.get(row.id, ())]
            if checks:
                out["checks"] = checks  # oldest first; ``ls`` marks a version whose latest one passed
        return out

    def _kind_details(self, row: m.Version) -> dict[str, Any]:
        if row.kind == "base":
            b = self.bases[row.id]
            out = json.loads(b.summary_json)
            out.update(source=b.source, source_path=b.source_path)
            if b.hub_repo:
                out.update(hub_repo=b.hub_repo, hub_revision=b.hub_revision, hub_commit=b.hub_commit)
            return out
        if row.kind == "adapter":
            a = self.adapters[row.id]
            out = json.loads(a.summary_json)
            out.update(base=lookup.ref_of(self.versions[a.base_version_id]), config_digest=a.config_digest)
            if a.hub_repo:
                out.update(hub_repo=a.hub_repo, hub_commit=a.hub_commit)
            return out
        mg = self.merges[row.id]
        out = {"recipe": json.loads(mg.recipe_json), "outcome": json.loads(mg.outcome_json or "{}"),
               "recipe_digest": mg.recipe_digest, "output": mg.output}
        if row.parent_id:
            out["parent"] = lookup.ref_of(self.versions[row.parent_id])
        return out

    def info(self, home: Home, row: m.Version, *, existed: bool = False) -> VersionInfo:
        files = {f.path: FileDigest(sha256=f.sha256, size=f.size) for f in self.files.get(row.id, ())}
        path = None
        if row.kind == "base" and not row.stored:
            path = self.bases[row.id].source_path
        elif row.stored:
            path = home.version_dir(row.name, row.version)
        return VersionInfo(
            ref=lookup.ref_of(row), kind=row.kind, name=row.name, version=row.version, digest=row.digest,
            path=Path(path) if path else None, size_bytes=row.size_bytes, stored=row.stored,
            created_at=row.created_at, created_by=row.created_by, message=row.message,
            weights_digest=row.weights_digest, digest_state=row.digest_state,
            aliases=tuple(sorted(self.aliases.get(row.id, ()))), files=files, details=self.details(row),
            existed=existed, removed_at=row.removed_at,
        )


def version_infos(session: Session, home: Home, rows: list[m.Version], *,
                  with_files: bool = False) -> list[VersionInfo]:
    """``version_info`` of every row, in order, with one query per table however many rows."""
    batch = _Batch(session, list(rows), with_files=with_files)
    return [batch.info(home, r) for r in rows]


def version_info(session: Session, home: Home, row: m.Version, *, with_files: bool = True,
                 existed: bool = False) -> VersionInfo:
    return _Batch(session, [row], with_files=with_files).info(home, row, existed=existed)
