"""Export, eviction (keep a merge as recipe only) and garbage collection."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlmodel import Session, select

from lorareg.errors import LoraregError
from lorareg.registry import catalog
from lorareg.registry import models as m
from lorareg.registry.results import GcResult, VersionInfo

if TYPE_CHECKING:
    from lorareg.registry.api import Registry


def export(reg: "Registry", *, ref: str, dest: Path, progress=None) -> VersionInfo:
    """Write a version's files as a plain folder (real files, no links)."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise LoraregError(f"{dest} exists and is not empty", hint="pick a new folder to export into")
    info = reg.get(ref)
    produced = None
    if info.kind == "merge" and not info.stored:
        # Rebuilt and digest-checked into a scratch folder; the version stays recipe only.
        from lorareg.registry.rebuilding import produce_checked

        _, produced = produce_checked(reg, info.ref, progress=progress)
        src = produced.path
    else:
        src = reg.materialize_path(info)
    try:
        _copy_out(info, src, dest)
    finally:
        if produced is not None:
            from lorareg.registry.merging import discard

            discard(produced)
    with Session(reg.engine) as session:
        catalog.record_event(session, "export", ref=info.ref, version_id=None, dest=str(dest))
        session.commit()
    return info


def _copy_out(info: VersionInfo, src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.incomplete")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for f in info.files:
            target = tmp / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / f.path, target)  # follows the link into the store
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_evictable(row: m.Version) -> None:
    if row.kind != "merge":
        raise LoraregError(f"{row.name}@{row.version} is a {row.kind}; only merges can be kept as recipe only",
                           hint="lorareg ls merges")


def evict(reg: "Registry", session: Session, row: m.Version) -> None:
    row.stored = False
    session.add(row)
    catalog.record_event(session, "evict", ref=f"{row.name}@{row.version}", version_id=row.id)
    shutil.rmtree(reg.home.version_dir(row.name, row.version), ignore_errors=True)


def referenced_blobs(session: Session, *, without: set[int] = frozenset()) -> set[str]:
    """Blobs a stored version (other than those in ``without``) or a tensor manifest needs."""
    files = session.exec(select(m.FileRow.sha256).join(m.Version, m.Version.id == m.FileRow.version_id)
                         .where(m.Version.stored == True, m.Version.id.not_in(without))).all()  # noqa: E712
    manifests = session.exec(select(m.Version.manifest_sha256).where(m.Version.manifest_sha256 != None)).all()  # noqa: E711
    return set(files) | set(manifests)


def gc(reg: "Registry", *, evict_refs: tuple[str, ...] = (), merges_older_than_days: float | None = None,
       dry_run: bool = False) -> GcResult:
    from lorareg.registry import locking

    with locking.collecting(reg.home.blobs):
        result = _gc(reg, evict_refs=evict_refs, merges_older_than_days=merges_older_than_days, dry_run=dry_run)
    if not dry_run:
        _remove_stale_link_folders(reg.home.versions)
    return result


def _remove_stale_link_folders(versions: Path, max_age_s: float = 3600) -> None:
    """Hidden ``.N.tmp-*`` folders a crashed link_snapshot left behind (links only, never blobs)."""
    import time

    if not versions.exists():
        return
    for tmp in versions.glob("*/.*.tmp-*"):
        if tmp.is_dir() and time.time() - tmp.stat().st_mtime > max_age_s:
            shutil.rmtree(tmp, ignore_errors=True)


def _gc(reg: "Registry", *, evict_refs: tuple[str, ...], merges_older_than_days: float | None,
        dry_run: bool) -> GcResult:
    with Session(reg.engine) as session:
        rows = {r.id: r for r in (catalog.resolve(session, ref) for ref in evict_refs)}
        if merges_older_than_days is not None:
            cutoff = m.utcnow() - timedelta(days=merges_older_than_days)
            protected = {a.version_id for a in session.exec(select(m.Alias)).all()}
            for v in session.exec(select(m.Version).where(m.Version.kind == "merge", m.Version.stored == True)).all():  # noqa: E712
                created = v.created_at if v.created_at.tzinfo else v.created_at.replace(tzinfo=cutoff.tzinfo)
                if created < cutoff and v.id not in protected:
                    rows[v.id] = v
        for row in rows.values():
            _check_evictable(row)
        to_evict = [r for r in rows.values() if r.stored]
        evicted = tuple(f"{r.name}@{r.version}" for r in to_evict)
        if not dry_run:
            for row in to_evict:
                evict(reg, session, row)
            session.commit()
        report = reg.blobs.gc(referenced_blobs(session, without={r.id for r in to_evict}), dry_run=dry_run)
        if not dry_run:
            catalog.record_event(session, "gc", ref="*", evicted=list(evicted), blobs_removed=len(report.removed),
                                 bytes_freed=report.bytes_freed)
            session.commit()
    return GcResult(blobs_removed=len(report.removed), bytes_freed=report.bytes_freed,
                    temp_files_removed=report.temp_files_removed, evicted=evicted)
