"""Registering bases and adapters.  Order matters for crash safety: everything is
checked and hashed first, bytes enter the blob store next, and only then the rows are
committed in one transaction; the version folder of links is derived last and can be
rebuilt from the rows at any time."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from sqlmodel import Session

from lorareg.errors import CheckpointError, IntegrityError, LoraregError
from lorareg.registry import catalog, locking
from lorareg.registry import models as m
from lorareg.registry.ingest import check_adapter, check_base, describe_base
from lorareg.registry.refs import check_name, default_name
from lorareg.registry.results import VersionInfo

if TYPE_CHECKING:
    from lorareg.registry.api import Registry

Progress = Callable[[int], None] | None


def content_digest_of(digest: str, files: dict, extra: dict | None = None) -> str:
    from lorareg.store.digest import digest_json

    return digest_json({"digest": digest, "files": {k: v.sha256 for k, v in files.items()}, **(extra or {})})


def store_files(reg: "Registry", folder: Path, files: dict, *, progress: Progress = None, move: bool = False) -> None:
    for rel, info in files.items():
        try:
            reg.blobs.put_file(folder / rel, expected_sha256=info.sha256, move=move, progress=progress)
        except IntegrityError as exc:
            raise IntegrityError(f"{rel} changed while it was being added ({exc})",
                                 hint="make sure nothing writes to the folder, then add it again") from exc


def link_version(reg: "Registry", name: str, version: int, files: dict[str, str]) -> Path:
    from lorareg.store.snapshot import link_snapshot

    return link_snapshot(reg.blobs, reg.home.version_dir(name, version), files)


def _register(reg: "Registry", *, name: str, kind: str, folder: Path, cd, content: str, store: bool,
              add_rows: Callable[[Session, m.Version], None], event: dict, progress: Progress) -> VersionInfo:
    """Bytes first, then rows, then the link folder.  The writer lock is held from the first
    blob to the commit of the rows that reference it, so a gc cannot collect them in between."""
    from lorareg.store.digest import manifest_text

    def write(session: Session) -> m.Version:
        catalog.ensure_artifact(session, name, kind)
        row = catalog.insert_version(session, m.Version(
            name=name, version=0, kind=kind, digest=cd.digest, content_digest=content,
            manifest_sha256=manifest.sha256, size_bytes=sum(f.size for f in cd.files.values()),
            stored=store, created_by=catalog.current_user()))
        for rel, info in cd.files.items():
            session.add(m.FileRow(version_id=row.id, path=rel, sha256=info.sha256, size=info.size))
        add_rows(session, row)
        catalog.record_event(session, "add", ref=f"{name}@{row.version}", version_id=row.id, kind=kind,
                             digest=cd.digest, **event)
        return row

    with locking.writing(reg.home.blobs):
        if store:
            store_files(reg, folder, cd.files, progress=progress)
        manifest = reg.blobs.put_bytes(manifest_text(cd.tensors).encode())
        row = catalog.with_retry(reg.engine, write)
    if store:
        link_version(reg, name, row.version, {k: v.sha256 for k, v in cd.files.items()})
    with Session(reg.engine) as session:
        return catalog.to_info(session, reg.home, session.get(m.Version, row.id))


def _name_for(name: str | None, path: Path, hub: dict | None) -> str:
    if name is not None:
        return check_name(name)
    return default_name(hub["repo_id"].split("/")[-1] if hub else Path(path).resolve().name)


def _existing(reg: "Registry", name: str, content: str) -> VersionInfo | None:
    with Session(reg.engine) as session:
        found = catalog.existing_with_content(session, name, content)
        return catalog.to_info(session, reg.home, found, existed=True) if found is not None else None


def add_base(reg: "Registry", *, path: Path, name: str | None, reference: bool, allow_pickle: bool,
             progress: Progress, hub: dict | None = None) -> VersionInfo:
    from lorareg.store.digest import checkpoint_digest

    checked = check_base(Path(path), allow_pickle=allow_pickle, scratch=reg.home.tmp)
    if reference and checked.converted_from_pickle:
        shutil.rmtree(checked.folder, ignore_errors=True)
        raise CheckpointError("a pickle checkpoint cannot be tracked by reference: it must be converted",
                              hint="drop --reference to store a converted safetensors copy")
    name = _name_for(name, path, hub)
    try:
        cd = checkpoint_digest(checked.folder, progress=progress)
        summary = describe_base(checked.folder, cd.tensors)
        source = "hub" if hub else ("reference" if reference else "store")
        source_path = str(checked.folder) if reference else None
        content = content_digest_of(cd.digest, cd.files, {"source": source, "path": source_path})
        existing = _existing(reg, name, content)
        if existing is not None:
            return existing
        hub = hub or {}

        def add_rows(session: Session, row: m.Version) -> None:
            session.add(m.Base(
                version_id=row.id, source=source, source_path=source_path, hub_repo=hub.get("repo_id"),
                hub_revision=hub.get("revision"), hub_commit=hub.get("commit_sha"),
                architecture=summary["architecture"], dtype=summary["dtype"], param_count=summary["param_count"],
                summary_json=catalog.dumps(summary)))

        return _register(reg, name=name, kind="base", folder=checked.folder, cd=cd, content=content,
                         store=not reference, add_rows=add_rows, event={"source": source, "path": str(Path(path))},
                         progress=progress)
    finally:
        if checked.converted_from_pickle:
            shutil.rmtree(checked.folder, ignore_errors=True)


def add_adapter(reg: "Registry", *, path: Path, base: str, name: str | None, allow_pickle: bool,
                progress: Progress, hub: dict | None = None) -> VersionInfo:
    from lorareg.merge import check_adapter_fits
    from lorareg.store.digest import checkpoint_digest, digest_json

    checked = check_adapter(Path(path), allow_pickle=allow_pickle, scratch=reg.home.tmp)
    name = _name_for(name, path, hub)
    try:
        base_info = reg.get(base)
        if base_info.kind != "base":
            raise LoraregError(f"{base} is a {base_info.kind}; adapters are registered against a base",
                               hint="list bases with: lorareg ls bases")
        summary = check_adapter_fits(base=reg.materialize_path(base_info), adapter=checked.folder)
        config_digest = digest_json(summary.normalized_config)
        cd = checkpoint_digest(checked.folder, progress=progress)
        content = content_digest_of(cd.digest, cd.files, {"config": config_digest, "base": base_info.digest})
        existing = _existing(reg, name, content)
        if existing is not None:
            return existing
        details = {
            "r": summary.r, "lora_alpha": summary.lora_alpha, "use_rslora": summary.use_rslora,
            "use_dora": summary.use_dora, "target_modules": list(summary.target_modules),
            "modules_to_save": list(summary.modules_to_save or ()), "lora_bias": summary.lora_bias,
            "fan_in_fan_out": summary.fan_in_fan_out, "peft_type": summary.peft_type,
            "base_model_name_or_path": summary.base_model_name_or_path,
            "trainable_params": sum(math.prod(t.shape) for t in cd.tensors),
        }
        hub = hub or {}

        def add_rows(session: Session, row: m.Version) -> None:
            base_row = catalog.resolve(session, base_info.ref)
            session.add(m.Adapter(
                version_id=row.id, base_version_id=base_row.id, config_digest=config_digest, r=summary.r,
                lora_alpha=float(summary.lora_alpha), use_rslora=bool(summary.use_rslora),
                use_dora=bool(summary.use_dora), hub_repo=hub.get("repo_id"), hub_commit=hub.get("commit_sha"),
                summary_json=json.dumps(details, sort_keys=True, default=str)))

        return _register(reg, name=name, kind="adapter", folder=checked.folder, cd=cd, content=content, store=True,
                         add_rows=add_rows, event={"base": base_info.ref, "path": str(Path(path))}, progress=progress)
    finally:
        if checked.converted_from_pickle:
            shutil.rmtree(checked.folder, ignore_errors=True)
