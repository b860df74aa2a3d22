"""Registering bases and adapters.  Order matters for crash safety: everything is
checked and hashed first, bytes enter the blob store next, and only then the rows are
committed in one transaction; the version folder of links is derived last and can be
rebuilt from the rows at any time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from sqlmodel import Session

from lorareg.errors import IntegrityError
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


def add_base(reg: "Registry", *, path: Path, name: str | None, reference: bool, allow_pickle: bool,
             progress: Progress, hub: dict | None = None) -> VersionInfo:
    from lorareg.store.digest import checkpoint_digest, manifest_text

    checked = check_base(Path(path), allow_pickle=allow_pickle, scratch=reg.home.tmp)
    if reference and checked.converted_from_pickle:
        from lorareg.errors import CheckpointError

        raise CheckpointError("a pickle checkpoint cannot be tracked by reference: it must be converted",
                              hint="drop --reference to store a converted safetensors copy")
    name = check_name(name) if name is not None else default_name(hub["repo_id"].split("/")[-1] if hub else Path(path).resolve().name)
    try:
        cd = checkpoint_digest(checked.folder, progress=progress)
        summary = describe_base(checked.folder, cd.tensors)
        source = "hub" if hub else ("reference" if reference else "store")
        content = content_digest_of(cd.digest, cd.files, {"source": source, "path": str(checked.folder) if reference else None})
        with Session(reg.engine) as session:
            found = catalog.existing_with_content(session, name, content)
            if found is not None:
                return catalog.to_info(session, reg.home, found, existed=True)
        lock = locking.writing(reg.home.blobs)
        lock.__enter__()  # held from the first blob to the commit of the rows (below)
        try:
            if not reference:
                store_files(reg, checked.folder, cd.files, progress=progress)
            manifest = reg.blobs.put_bytes(manifest_text(cd.tensors).encode())
        except BaseException:
            lock.__exit__(None, None, None)
            raise

        def write(session: Session) -> m.Version:
            catalog.ensure_artifact(session, name, "base")
            row = catalog.insert_version(session, m.Version(
                name=name, version=0, kind="base", digest=cd.digest, content_digest=content,
                manifest_sha256=manifest.sha256, size_bytes=sum(f.size for f in cd.files.values()),
                stored=not reference, created_by=catalog.current_user()))
            for rel, info in cd.files.items():
                session.add(m.FileRow(version_id=row.id, path=rel, sha256=info.sha256, size=info.size))
            session.add(m.Base(
                version_id=row.id, source=source, source_path=str(checked.folder) if reference else None,
                hub_repo=(hub or {}).get("repo_id"), hub_revision=(hub or {}).get("revision"),
                hub_commit=(hub or {}).get("commit_sha"), architecture=summary["architecture"],
                dtype=summary["dtype"], param_count=summary["param_count"], summary_json=catalog.dumps(summary)))
            catalog.record_event(session, "add", ref=f"{name}@{row.version}", version_id=row.id, kind="base",
                                 source=source, path=str(Path(path)), digest=cd.digest)
            return row

        try:
            row = catalog.with_retry(reg.engine, write)
        finally:
            lock.__exit__(None, None, None)
        if not reference:
            link_version(reg, name, row.version, {k: v.sha256 for k, v in cd.files.items()})
        with Session(reg.engine) as session:
            return catalog.to_info(session, reg.home, session.get(m.Version, row.id))
    finally:
        if checked.converted_from_pickle:
            shutil.rmtree(checked.folder, ignore_errors=True)


def add_adapter(reg: "Registry", *, path: Path, base: str, name: str | None, allow_pickle: bool,
                progress: Progress, hub: dict | None = None) -> VersionInfo:
    from lorareg.merge import check_adapter_fits
    from lorareg.store.digest import checkpoint_digest, digest_json, manifest_text

    checked = check_adapter(Path(path), allow_pickle=allow_pickle, scratch=reg.home.tmp)
    name = check_name(name) if name is not None else default_name(hub["repo_id"].split("/")[-1] if hub else Path(path).resolve().name)
    try:
        base_info = reg.get(base)
        if base_info.kind != "base":
            from lorareg.errors import LoraregError

            raise LoraregError(f"{base} is a {base_info.kind}; adapters are registered against a base",
                               hint="list bases with: lorareg ls bases")
        reg.materialize_path(base_info)
        summary = check_adapter_fits(base=base_info.path, adapter=checked.folder)
        config_digest = digest_json(summary.normalized_config)
        cd = checkpoint_digest(checked.folder, progress=progress)
        content = content_digest_of(cd.digest, cd.files, {"config": config_digest, "base": base_info.digest})
        with Session(reg.engine) as session:
            found = catalog.existing_with_content(session, name, content)
            if found is not None:
                return catalog.to_info(session, reg.home, found, existed=True)
        lock = locking.writing(reg.home.blobs)
        lock.__enter__()  # held from the first blob to the commit of the rows (below)
        try:
            store_files(reg, checked.folder, cd.files, progress=progress)
            manifest = reg.blobs.put_bytes(manifest_text(cd.tensors).encode())
        except BaseException:
            lock.__exit__(None, None, None)
            raise
        details = {
            "r": summary.r, "lora_alpha": summary.lora_alpha, "use_rslora": summary.use_rslora,
            "use_dora": summary.use_dora, "target_modules": list(summary.target_modules),
            "modules_to_save": list(summary.modules_to_save or ()), "lora_bias": summary.lora_bias,
            "fan_in_fan_out": summary.fan_in_fan_out, "peft_type": summary.peft_type,
            "base_model_name_or_path": summary.base_model_name_or_path,
            "trainable_params": sum(_numel(t.shape) for t in cd.tensors),
        }

        def write(session: Session) -> m.Version:
            catalog.ensure_artifact(session, name, "adapter")
            base_row = catalog.resolve(session, base_info.ref)
            row = catalog.insert_version(session, m.Version(
                name=name, version=0, kind="adapter", digest=cd.digest, content_digest=content,
                manifest_sha256=manifest.sha256, size_bytes=sum(f.size for f in cd.files.values()),
                stored=True, created_by=catalog.current_user()))
            for rel, info in cd.files.items():
                session.add(m.FileRow(version_id=row.id, path=rel, sha256=info.sha256, size=info.size))
            session.add(m.Adapter(
                version_id=row.id, base_version_id=base_row.id, config_digest=config_digest, r=summary.r,
                lora_alpha=float(summary.lora_alpha), use_rslora=bool(summary.use_rslora),
                use_dora=bool(summary.use_dora), hub_repo=(hub or {}).get("repo_id"),
                hub_commit=(hub or {}).get("commit_sha"), summary_json=json.dumps(details, sort_keys=True, default=str)))
            catalog.record_event(session, "add", ref=f"{name}@{row.version}", version_id=row.id, kind="adapter",
                                 base=base_info.ref, path=str(Path(path)), digest=cd.digest)
            return row

        try:
            row = catalog.with_retry(reg.engine, write)
        finally:
            lock.__exit__(None, None, None)
        link_version(reg, name, row.version, {k: v.sha256 for k, v in cd.files.items()})
        with Session(reg.engine) as session:
            return catalog.to_info(session, reg.home, session.get(m.Version, row.id))
    finally:
        if checked.converted_from_pickle:
            shutil.rmtree(checked.folder, ignore_errors=True)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
