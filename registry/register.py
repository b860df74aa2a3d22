"""The one road to a registered version: bytes into the store, then rows, then the link folder.

Order matters for crash safety: the bytes enter the blob store first, then the rows that
name them are committed in one transaction, and only then is the folder of links derived
(it can be rebuilt from the rows at any time).  The writer's lease (``leases.writing``) is held
from the first blob to the commit: every blob is claimed under it before the store relies on
it, so a ``gc`` keeps the blobs in between, and the rows commit only while the lease is still
held (``leases.assert_held``).  ``add`` stores its blobs while hashing, so it takes the lease
before that pass; taking it again here shares the same lease.  The version number is
decided here, once, inside the transaction that inserts the row; the model card, which
names it, is rendered in that same transaction."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlmodel import Session, select

from lorareg.errors import IntegrityError, LoraregError
from lorareg.registry import events, leases, lookup
from lorareg.registry import models as m
from lorareg.registry.context import Context
from lorareg.registry.results import FileDigest, VersionInfo
from lorareg.registry.version_info import version_info

CARD = "README.md"
RETRIES = 5

Progress = Callable[[int], None] | None


@dataclass(frozen=True)
class NewVersion:
    """Everything a new version is, before it has a number."""

    name: str
    kind: str  # base | adapter | merge
    digest: str  # the whole model
    weights_digest: str  # the tensor manifest alone
    content_digest: str
    files: Mapping[str, FileDigest]  # relative path -> hash; README.md comes from ``card`` when given
    folder: Path | None = None  # where the files are now
    store: bool = True  # put the files in the blob store (False: tracked by reference, or recipe only)
    move: bool = False  # ``folder`` is our own scratch output: move its files into the store
    # ``files`` are already blobs: the digest pass stored them (``checkpoint_digest(sink=)``),
    # under a writer lease its caller took before that pass and holds across this call.
    in_store: bool = False
    manifest: bytes | None = None  # the tensor manifest, kept as a blob
    parent_id: int | None = None
    message: str | None = None
    action: str = "add"
    event: Mapping[str, Any] = field(default_factory=dict)
    add_rows: Callable[[Session, m.Version], None] | None = None  # the kind's own rows
    card: Callable[[Session, int], str] | None = None  # README.md text for the version number
    # The version that already holds this content, if any: checked inside the serialised
    # transaction, so identical content registered concurrently ends as one version.
    existing: Callable[[Session], m.Version | None] | None = None


def register_version(ctx: Context, new: NewVersion, *, progress: Progress = None) -> VersionInfo:
    files = {k: v for k, v in new.files.items() if not (new.card and k == CARD)}

    def write(session: Session) -> tuple[m.Version, dict[str, FileDigest] | None]:
        leases.assert_held(session, ctx)  # no row commits whose blobs a gc may have removed
        found = new.existing(session) if new.existing is not None else None
        if found is not None:
            return found, None
        _claim_name(session, new.name, new.kind)
        row = m.Version(name=new.name, version=_next_number(session, new.name), kind=new.kind, digest=new.digest,
                        weights_digest=new.weights_digest, content_digest=new.content_digest,
                        manifest_sha256=manifest_sha, stored=new.store, parent_id=new.parent_id,
                        message=new.message, created_by=events.current_user())
        session.add(row)
        session.flush()  # UNIQUE(name, version): a racing writer with the same number fails here
        final = dict(files)
        if new.card is not None:
            final[CARD] = _put_card(ctx, new.card(session, row.version), store=new.store)
        row.size_bytes = sum(f.size for f in final.values())
        for rel, f in final.items():
            st = _stat(new.folder, rel) if not new.store and new.folder is not None else None
            session.add(m.FileRow(version_id=row.id, path=rel, sha256=f.sha256, size=f.size,
                                  mtime_ns=st.st_mtime_ns if st else None, inode=st.st_ino if st else None))
        if new.add_rows is not None:
            new.add_rows(session, row)
        events.record(session, new.action, ref=lookup.ref_of(row), version_id=row.id, kind=new.kind,
                      digest=new.digest, message=new.message, **new.event)
        return row, final

    with leases.writing(ctx):
        if new.store and new.folder is not None and not new.in_store:
            store_files(ctx, new.folder, files, move=new.move, progress=progress)
        manifest_sha = ctx.blobs.put_bytes(new.manifest).sha256 if new.manifest is not None else None
        ctx.blobs.flush()  # an object store's uploads are complete before any row names them
        row, final = _with_retry(ctx, new.name, write)
    if final is None:  # another writer registered the same content first
        with ctx.session() as session:
            return version_info(session, ctx.home, session.get(m.Version, row.id), existed=True)
    if new.store:
        link_version(ctx, row.name, row.version, final)
    with ctx.session() as session:
        return version_info(session, ctx.home, session.get(m.Version, row.id))


def store_existing(ctx: Context, *, version_id: int, folder: Path, files: Mapping[str, FileDigest],
                   card: Callable[[Session, int], str] | None) -> None:
    """Give a version kept as recipe only its bytes back (``folder`` is consumed)."""
    from lorareg.registry.db import writer_session

    files = {k: v for k, v in files.items() if not (card and k == CARD)}
    with leases.writing(ctx):
        store_files(ctx, folder, files, move=True)
        final = dict(files)
        with ctx.session() as session:
            row = session.get(m.Version, version_id)
            if card is not None:  # put (and claimed) before the rows transaction: it is not a writer's
                final[CARD] = _put_card(ctx, card(session, row.version), store=True)
        ctx.blobs.flush()
        with writer_session(ctx.db, row.name) as session:
            leases.assert_held(session, ctx)
            row = session.get(m.Version, version_id)
            for f in lookup.file_rows(session, row):
                if f.path in final:
                    f.sha256, f.size = final[f.path].sha256, final[f.path].size
                    session.add(f)
            row.stored = True
            session.add(row)
            session.commit()
    link_version(ctx, row.name, row.version, final)


def store_files(ctx: Context, folder: Path, files: Mapping[str, FileDigest], *, move: bool = False,
                progress: Progress = None) -> None:
    for rel, info in files.items():
        try:
            ctx.blobs.put_file(Path(folder) / rel, expected_sha256=info.sha256, move=move, progress=progress)
        except IntegrityError as exc:
            raise IntegrityError(f"{rel} changed while it was being added ({exc})",
                                 hint="make sure nothing writes to the folder, then add it again") from exc


def link_version(ctx: Context, name: str, version: int, files: Mapping[str, FileDigest]) -> Path:
    from lorareg.store.snapshot import link_snapshot

    return link_snapshot(ctx.blobs, ctx.home.version_dir(name, version), {k: v.sha256 for k, v in files.items()},
                         scratch=ctx.scratch())


def folder_of(ctx: Context, session: Session, row: m.Version, *, lazy: bool = False) -> Path:
    """The folder ``from_pretrained`` loads for a version that has files; the link folder is
    recreated from the rows when it is missing.  A folder tracked by reference is confirmed to
    hold the registered bytes first (``confirm_reference``): nothing reads an input that is not
    what its version recorded.  With an object store, the files are fetched into this
    machine's cache; ``lazy`` leaves the weight files to ranged reads (a merge's base: the
    reader streams them, so no full local copy is made)."""
    if row.kind == "base" and not row.stored:
        folder = Path(session.get(m.Base, row.id).source_path)
        confirm_reference(session, row, folder)
        return folder
    if not row.stored:
        raise LoraregError(f"{lookup.ref_of(row)} is kept as recipe only",
                           hint=f"give it its files back with: lorareg rebuild {lookup.ref_of(row)} --keep-files")
    path = ctx.home.version_dir(row.name, row.version)
    files = {f.path: FileDigest(f.sha256, f.size) for f in lookup.file_rows(session, row)}
    if not path.exists():
        link_version(ctx, row.name, row.version, files)
    for rel, f in files.items():
        if not (lazy and rel.endswith(".safetensors")):
            ctx.blobs.ensure_local(f.sha256)
    return path


def confirm_reference(session: Session, row: m.Version, folder: Path) -> None:
    """Refuse a referenced folder whose files are not the registered bytes.  Fast path: a
    file whose size, mtime and inode are those recorded when it was last hashed is taken as
    unchanged; any other file is hashed again (and its stat recorded when it still matches)."""
    from lorareg.store.digest import file_sha256

    ref = lookup.ref_of(row)
    hint = f"register the new content with: lorareg add base {folder} --reference --name {row.name}"
    if row.digest_state == "reference-changed":
        raise IntegrityError(f"{ref}'s folder {folder} had changed before this registry was upgraded", hint=hint)
    for f in lookup.file_rows(session, row):
        path = folder / f.path
        try:
            st = path.stat()
        except OSError:
            raise IntegrityError(f"{ref} is tracked by reference, and {path} is gone", hint=hint) from None
        if st.st_size == f.size and st.st_mtime_ns == f.mtime_ns and st.st_ino == f.inode:
            continue
        if st.st_size != f.size or file_sha256(path) != f.sha256:
            raise IntegrityError(f"{ref} is tracked by reference, and {path} changed since it was registered",
                                 hint=hint)
        f.mtime_ns, f.inode = st.st_mtime_ns, st.st_ino
        session.add(f)
    session.commit()


def _put_card(ctx: Context, text: str, *, store: bool) -> FileDigest:
    data = text.encode("utf-8")
    if store:
        blob = ctx.blobs.put_bytes(data)
        return FileDigest(sha256=blob.sha256, size=blob.size)
    from lorareg.store.digest import sha256_bytes

    return FileDigest(sha256=sha256_bytes(data), size=len(data))


def _claim_name(session: Session, name: str, kind: str) -> None:
    lookup.check_name_free_for(session, name, kind)
    if session.get(m.Artifact, name) is None:
        session.add(m.Artifact(name=name, kind=kind))
        session.flush()


def _next_number(session: Session, name: str) -> int:
    latest = session.exec(select(func.max(m.Version.version)).where(m.Version.name == name)).one()
    return (latest or 0) + 1


def _stat(folder: Path, rel: str):
    try:
        return (Path(folder) / rel).stat()
    except OSError:
        return None


def _with_retry(ctx: Context, name: str, fn):
    """Run ``fn`` in a transaction serialised with the other writers of ``name``
    (``db.writer_session``); should a constraint still fail, the whole transaction runs again."""
    from lorareg.registry.db import writer_session

    last: Exception | None = None
    for _ in range(RETRIES):
        with writer_session(ctx.db, name) as session:
            try:
                result = fn(session)
                session.commit()
                return result
            except SAIntegrityError as exc:
                session.rollback()
                last = exc
    raise LoraregError(f"could not number the new version after {RETRIES} tries: {last}",
                       hint="another writer is busy; try again")
