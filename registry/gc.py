"""Eviction (keep a merge as recipe only) and garbage collection of unreferenced blobs."""

from __future__ import annotations

import shutil
import time
from datetime import timedelta
from pathlib import Path

from sqlmodel import Session, select

from lorareg.errors import LoraregError
from lorareg.registry import events, leases, lookup
from lorareg.registry import models as m
from lorareg.registry.context import Context
from lorareg.registry.refs import a_kind
from lorareg.registry.results import GcResult


def gc(ctx: Context, *, evict: tuple[str, ...] = (), merges_older_than_days: float | None = None,
       dry_run: bool = False) -> GcResult:
    """Evict merges to recipe only (optional), then delete blobs nothing references (no committed
    row, no live writer's lease) and stale temp files; clear the leases that lapsed."""
    result = _gc(ctx, evict_refs=evict, merges_older_than_days=merges_older_than_days, dry_run=dry_run)
    if not dry_run:
        _remove_stale_link_folders(ctx.home.versions)
    return result


def referenced_blobs(session: Session, *, without: set[int] = frozenset()) -> set[str]:
    """Blobs a stored version (other than those in ``without``) or a tensor manifest needs."""
    files = session.exec(select(m.FileRow.sha256).join(m.Version, m.Version.id == m.FileRow.version_id)
                         .where(m.Version.stored == True, m.Version.id.not_in(without))).all()  # noqa: E712
    manifests = session.exec(select(m.Version.manifest_sha256).where(m.Version.manifest_sha256 != None)).all()  # noqa: E711
    return set(files) | set(manifests)


def _evictable(session: Session, *, refs: tuple[str, ...], older_than_days: float | None) -> list[m.Version]:
    rows = {r.id: r for r in (lookup.resolve(session, ref) for ref in refs)}
    if older_than_days is not None:
        cutoff = m.utcnow() - timedelta(days=older_than_days)
        protected = {a.version_id for a in session.exec(select(m.Alias)).all()}
        for v in session.exec(select(m.Version).where(m.Version.kind == "merge", m.Version.stored == True)).all():  # noqa: E712
            created = v.created_at if v.created_at.tzinfo else v.created_at.replace(tzinfo=cutoff.tzinfo)
            if created < cutoff and v.id not in protected:
                rows[v.id] = v
    for row in rows.values():
        if row.kind != "merge":
            raise LoraregError(f"{lookup.ref_of(row)} is {a_kind(row.kind)}; only merges can be kept as recipe only",
                               hint="lorareg ls merges")
    return [r for r in rows.values() if r.stored]


def _gc(ctx: Context, *, evict_refs: tuple[str, ...], merges_older_than_days: float | None,
        dry_run: bool) -> GcResult:
    # Evictions commit first, on their own: blobs go only once no committed row says they are stored.
    with leases.write_session(ctx) as session:
        to_evict = _evictable(session, refs=evict_refs, older_than_days=merges_older_than_days)
        evicted, without = tuple(lookup.ref_of(r) for r in to_evict), {r.id for r in to_evict}
        if not dry_run:
            for row in to_evict:
                row.stored = False
                session.add(row)
                events.record(session, "evict", ref=lookup.ref_of(row), version_id=row.id)
                shutil.rmtree(ctx.home.version_dir(row.name, row.version), ignore_errors=True)
            session.commit()
    # Listed before the lock (a bucket's listing can be long): a blob written since is not in
    # the listing, and one a writer claimed since is in ``pending()``, read under the lock.
    listed = list(ctx.blobs.iter_blobs())
    with leases.collecting(ctx, dry_run=dry_run) as collection:  # no writer claims a blob meanwhile
        session = collection.session
        report = ctx.blobs.gc(referenced_blobs(session, without=without) | collection.pending(), dry_run=dry_run,
                              listed=listed)
        if not dry_run:
            events.record(session, "gc", ref="*", evicted=list(evicted), blobs_removed=len(report.removed),
                          bytes_freed=report.bytes_freed, leases_expired=collection.leases_expired)
    return GcResult(blobs_removed=len(report.removed), bytes_freed=report.bytes_freed,
                    temp_files_removed=report.temp_files_removed, evicted=evicted,
                    leases_expired=collection.leases_expired)


def _remove_stale_link_folders(versions: Path, max_age_s: float = 3600) -> None:
    """Hidden ``.N.tmp-*`` folders a crashed link_snapshot left behind (links only, never blobs)."""
    if not versions.exists():
        return
    for tmp in versions.glob("*/.*.tmp-*"):
        if tmp.is_dir() and time.time() - tmp.stat().st_mtime > max_age_s:
            shutil.rmtree(tmp, ignore_errors=True)
