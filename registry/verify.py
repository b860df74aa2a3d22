"""Re-hashing what is recorded: blobs in the store, folders tracked by reference."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable

from sqlmodel import Session, select

from lorareg.errors import CheckpointError, IntegrityError, LoraregError, NotFoundError
from lorareg.registry import events, lookup
from lorareg.registry import models as m
from lorareg.registry.context import Context
from lorareg.registry.results import VerifyResult


def verify(ctx: Context, *, ref: str | None, all_versions: bool,
           progress: Callable[[int], None] | None = None) -> list[VerifyResult]:
    """Re-hash the files of ``ref`` (or of every version and every blob)."""
    if not ref and not all_versions:
        raise LoraregError("say what to verify", hint="lorareg verify NAME@VERSION, or lorareg verify --all")
    with ctx.session() as session:
        rows = [lookup.resolve(session, ref)] if ref else session.exec(  # removed versions have nothing to check
            select(m.Version).where(m.Version.removed_at.is_(None)).order_by(m.Version.id)).all()
        bad = ctx.blobs.verify_all() if all_versions else None  # every blob hashed once
        results = [verify_version(ctx, session, r, progress=progress, hashed=None if bad is None else set(bad))
                   for r in rows]
        if bad:
            results += verify_blobs(session, bad)
        events.record(session, "verify", ref=ref or "*", ok=all(r.ok for r in results))
        session.commit()
        return results


def verify_version(ctx: Context, session: Session, row: m.Version, *, progress=None,
                   hashed: set[str] | None = None) -> VerifyResult:
    """Re-hash ``row``'s files.  With ``hashed`` (the corrupt blobs of a whole-store pass that
    already re-hashed every blob), blobs are looked up instead of hashed a second time."""
    ref = f"{row.name}@{row.version}"
    files = session.exec(select(m.FileRow).where(m.FileRow.version_id == row.id)).all()
    problems: list[str] = []
    if row.kind == "base" and not row.stored:
        problems += _verify_reference(session.get(m.Base, row.id).source_path, files, row, progress)
    elif row.stored:
        for f in files:
            try:
                if hashed is None:
                    ctx.blobs.verify(f.sha256)
                elif not ctx.blobs.has(f.sha256):
                    raise NotFoundError(f.sha256)
                elif f.sha256 in hashed:
                    raise IntegrityError(f.sha256)
            except NotFoundError:
                problems.append(f"{f.path}: blob {f.sha256[:12]} is missing from the store")
            except IntegrityError:
                problems.append(f"{f.path}: blob {f.sha256[:12]} is corrupt (its bytes no longer hash to it)")
    return VerifyResult(ref=ref, ok=not problems, checked_files=len(files), problems=tuple(problems))


def _verify_reference(source: str, files, row: m.Version, progress) -> list[str]:
    from lorareg.store.digest import checkpoint_digest

    folder = Path(source)
    if not folder.is_dir():
        return [f"{folder} is gone (the base is tracked by reference)"]
    problems = []
    for f in files:
        p = folder / f.path
        if not p.is_file():
            problems.append(f"{f.path}: missing from {folder}")
        elif p.stat().st_size != f.size:
            problems.append(f"{f.path}: size changed ({f.size} -> {p.stat().st_size} bytes)")
    if problems:
        return problems
    try:
        cd = checkpoint_digest(folder, progress=progress)
    except CheckpointError as exc:
        return [str(exc)]
    recorded = {f.path: f.sha256 for f in files}
    for rel, sha in recorded.items():
        if cd.files.get(rel) is None or cd.files[rel].sha256 != sha:
            problems.append(f"{rel}: content changed since it was added")
    if row.digest_state == "reference-changed" and not problems:
        problems.append("the folder had changed before this registry was upgraded to whole-model digests; "
                        "register it again (lorareg add base PATH --reference)")
    elif cd.digest != row.digest and not problems:
        problems.append(f"digest changed: {row.digest} -> {cd.digest}")
    return problems


def verify_blobs(session: Session, bad: list[str]) -> list[VerifyResult]:
    """A result for each corrupt blob no version's files name (tensor manifests, orphans)."""
    out = []
    for sha in bad:
        if session.exec(select(m.FileRow).where(m.FileRow.sha256 == sha)).first() is not None:
            continue  # already reported with the versions whose files it holds
        owners = session.exec(select(m.Version).where(m.Version.manifest_sha256 == sha)).all()
        what = f"the tensor manifest of {', '.join(f'{v.name}@{v.version}' for v in owners)}" if owners else \
            "no version (lorareg gc removes it)"
        out.append(VerifyResult(ref=f"blob:{sha[:12]}", ok=False, checked_files=1,
                                problems=(f"blob {sha[:12]} is corrupt; it holds {what}",)))
    return out
