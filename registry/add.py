"""Registering bases and adapters (from a folder, or from the Hub).

Everything is checked and hashed first; ``register.register_version`` then puts the bytes
in the store, commits the rows and links the version folder."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from sqlmodel import Session

from lorareg.errors import CheckpointError, LoraregError
from lorareg.registry import events, lookup
from lorareg.registry import models as m
from lorareg.registry.context import Context
from lorareg.registry.inputs import check_adapter, check_base, describe_base
from lorareg.registry.refs import check_name, default_name
from lorareg.registry.register import NewVersion, folder_of, register_version
from lorareg.registry.results import VersionInfo
from lorareg.registry.version_info import version_info

Progress = Callable[[int], None] | None


def content_digest_of(digest: str, files: Mapping, extra: Mapping | None = None) -> str:
    """What makes two registrations "the same content": the digest, every file's hash, and
    ``extra`` (where a base lives, what an adapter was trained on)."""
    from lorareg.store.digest import digest_json

    return digest_json({"digest": digest, "files": {k: v.sha256 for k, v in files.items()}, **(extra or {})})


def _name_for(name: str | None, path: Path, hub: Mapping | None) -> str:
    if name is not None:
        return check_name(name)
    return default_name(hub["repo_id"].split("/")[-1] if hub else Path(path).resolve().name)


def _existing(ctx: Context, name: str, content: str) -> VersionInfo | None:
    with ctx.session() as session:
        found = lookup.with_content(session, name, content)
        return version_info(session, ctx.home, found, existed=True) if found is not None else None


def add_base(ctx: Context, *, path: Path, name: str | None, reference: bool, allow_pickle: bool,
             progress: Progress, hub: Mapping | None = None) -> VersionInfo:
    from lorareg.store.digest import checkpoint_digest, manifest_text

    checked = check_base(Path(path), allow_pickle=allow_pickle, scratch=ctx.home.tmp)
    try:
        if reference and checked.converted_from_pickle:
            raise CheckpointError("a pickle checkpoint cannot be tracked by reference: it must be converted",
                                  hint="drop --reference to store a converted safetensors copy")
        name = _name_for(name, path, hub)
        cd = checkpoint_digest(checked.folder, progress=progress)
        summary = describe_base(checked.folder, cd.tensors)
        source = "hub" if hub else ("reference" if reference else "store")
        source_path = str(checked.folder) if reference else None
        content = content_digest_of(cd.digest, cd.files, {"source": source, "path": source_path})
        existing = _existing(ctx, name, content)
        if existing is not None:
            return existing
        hub = hub or {}

        def add_rows(session: Session, row: m.Version) -> None:
            session.add(m.Base(
                version_id=row.id, source=source, source_path=source_path, hub_repo=hub.get("repo_id"),
                hub_revision=hub.get("revision"), hub_commit=hub.get("commit_sha"),
                architecture=summary["architecture"], dtype=summary["dtype"], param_count=summary["param_count"],
                summary_json=events.dumps(summary)))

        return register_version(ctx, NewVersion(
            name=name, kind="base", digest=cd.digest, content_digest=content, files=cd.files, folder=checked.folder,
            store=not reference, manifest=manifest_text(cd.tensors).encode(), add_rows=add_rows,
            event={"source": source, "path": str(Path(path))}), progress=progress)
    finally:
        if checked.converted_from_pickle:
            shutil.rmtree(checked.folder, ignore_errors=True)


def add_adapter(ctx: Context, *, path: Path, base: str, name: str | None, allow_pickle: bool,
                progress: Progress, hub: Mapping | None = None) -> VersionInfo:
    from lorareg.merge import check_adapter_fits
    from lorareg.store.digest import checkpoint_digest, digest_json, manifest_text

    checked = check_adapter(Path(path), allow_pickle=allow_pickle, scratch=ctx.home.tmp)
    try:
        name = _name_for(name, path, hub)
        with ctx.session() as session:
            base_row = lookup.resolve(session, base)
            if base_row.kind != "base":
                raise LoraregError(f"{base} is a {base_row.kind}; adapters are registered against a base",
                                   hint="list bases with: lorareg ls bases")
            base_folder = folder_of(ctx, session, base_row)
        summary = check_adapter_fits(base=base_folder, adapter=checked.folder)
        config_digest = digest_json(summary.normalized_config)
        cd = checkpoint_digest(checked.folder, progress=progress)
        content = content_digest_of(cd.digest, cd.files, {"config": config_digest, "base": base_row.digest})
        existing = _existing(ctx, name, content)
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
            session.add(m.Adapter(
                version_id=row.id, base_version_id=base_row.id, config_digest=config_digest, r=summary.r,
                lora_alpha=float(summary.lora_alpha), use_rslora=bool(summary.use_rslora),
                use_dora=bool(summary.use_dora), hub_repo=hub.get("repo_id"), hub_commit=hub.get("commit_sha"),
                summary_json=events.dumps(details)))

        return register_version(ctx, NewVersion(
            name=name, kind="adapter", digest=cd.digest, content_digest=content, files=cd.files,
            folder=checked.folder, manifest=manifest_text(cd.tensors).encode(), add_rows=add_rows,
            event={"base": lookup.ref_of(base_row), "path": str(Path(path))}), progress=progress)
    finally:
        if checked.converted_from_pickle:
            shutil.rmtree(checked.folder, ignore_errors=True)


def add_from_hub(ctx: Context, *, uri: str, kind: str, base: str | None, name: str | None, reference: bool,
                 allow_pickle: bool, endpoint: str | None, progress: Progress) -> VersionInfo:
    """Download ``hf://ORG/NAME[@REV]`` pinned to the commit it resolves to, then add it."""
    from lorareg.registry import hub_client

    repo_id, revision = hub_client.parse_hub_uri(uri)
    snap = hub_client.download(repo_id=repo_id, revision=revision, allow_pickle=allow_pickle, endpoint=endpoint,
                               kind=kind)
    meta = {"repo_id": snap.repo_id, "revision": snap.revision, "commit_sha": snap.commit_sha}
    if kind == "base":
        return add_base(ctx, path=snap.path, name=name, reference=reference, allow_pickle=allow_pickle,
                        progress=progress, hub=meta)
    return add_adapter(ctx, path=snap.path, base=base, name=name, allow_pickle=allow_pickle, progress=progress,
                       hub=meta)
