"""Registering bases and adapters (from a folder, or from the Hub).

Everything is checked first, then hashed in one read that also puts each file into the blob
store (unless tracked by reference), under the writer's lease; ``register.register_version``
then commits the rows and links the version folder."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlmodel import Session

from lorareg.errors import CheckpointError
from lorareg.registry import events, leases, lookup
from lorareg.registry import models as m
from lorareg.registry.context import Context
from lorareg.registry.inputs import check_adapter, check_base, describe_base
from lorareg.registry.refs import check_name, default_name, default_name_for_folder
from lorareg.registry.register import NewVersion, register_version
from lorareg.registry.results import VersionInfo
from lorareg.registry.version_info import version_info

if TYPE_CHECKING:
    from lorareg.store.blobs import BlobStore

Progress = Callable[[int], None] | None


def content_digest_of(digest: str, extra: Mapping | None = None) -> str:
    """What makes two registrations "the same content": the whole-model digest (a README or
    training state does not count) and ``extra`` (where a base lives, what an adapter was
    trained on, which recipe made a merge)."""
    from lorareg.store.digest import digest_json

    return digest_json({"digest": digest, **(extra or {})})


def _same_content(name: str, content: str):
    return lambda session: lookup.with_content(session, name, content)


def _name_for(name: str | None, path: Path, hub: Mapping | None) -> str:
    if name is not None:
        return check_name(name)
    return default_name(hub["repo_id"].split("/")[-1]) if hub else default_name_for_folder(Path(path).resolve())


def _existing(ctx: Context, name: str, content: str) -> VersionInfo | None:
    with ctx.session() as session:
        found = lookup.with_content(session, name, content)
        return version_info(session, ctx.home, found, existed=True) if found is not None else None


def add_base(ctx: Context, *, path: Path, name: str | None, reference: bool, allow_pickle: bool,
             progress: Progress, hub: Mapping | None = None) -> VersionInfo:
    checked = check_base(Path(path), allow_pickle=allow_pickle, scratch=ctx.scratch())
    try:
        if reference and checked.converted_from_pickle:
            raise CheckpointError("a pickle checkpoint cannot be tracked by reference: it must be converted",
                                  hint="drop --reference to store a converted safetensors copy")
        name = _name_for(name, path, hub)
        with _storing(ctx, not reference) as sink:  # one read: hashed and stored together
            info = _add_base(ctx, checked, name=name, path=path, reference=reference, hub=hub, sink=sink,
                             progress=progress)
        _record_training(ctx, info, checked)
        return info
    finally:
        if checked.converted_from_pickle:
            shutil.rmtree(checked.folder, ignore_errors=True)


@contextmanager
def _storing(ctx: Context, store: bool) -> Iterator[BlobStore | None]:
    """The blob store to write while hashing, under the writer's lease (held from the first
    blob written to the commit of the rows: ``register_version`` runs inside it and shares
    it); None when nothing is stored (``--reference``)."""
    if not store:
        yield None
        return
    with leases.writing(ctx):
        yield ctx.blobs


def _add_base(ctx: Context, checked, *, name: str, path: Path, reference: bool, hub: Mapping | None,
              sink: BlobStore | None, progress: Progress) -> VersionInfo:
    from lorareg.store.digest import checkpoint_digest, manifest_text

    cd = checkpoint_digest(checked.folder, progress=progress, skip=checked.skipped, sink=sink)
    summary = {**describe_base(checked.folder, cd.tensors), **_skipped(checked)}
    source = "hub" if hub else ("reference" if reference else "store")
    source_path = str(checked.folder) if reference else None
    content = content_digest_of(cd.digest, {"source": source, "path": source_path})
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
        name=name, kind="base", digest=cd.digest, weights_digest=cd.weights_digest, content_digest=content,
        files=cd.files, folder=checked.folder, store=not reference, in_store=sink is not None,
        manifest=manifest_text(cd.tensors).encode(), add_rows=add_rows, existing=_same_content(name, content),
        event={"source": source, "path": str(Path(path)), "skipped": list(checked.skipped)}), progress=progress)


def add_adapter(ctx: Context, *, path: Path, base: str, name: str | None, allow_pickle: bool,
                progress: Progress, hub: Mapping | None = None) -> VersionInfo:
    from lorareg.merge import check_adapter_fits
    from lorareg.store.digest import checkpoint_digest, digest_json, manifest_text

    checked = check_adapter(Path(path), allow_pickle=allow_pickle, scratch=ctx.scratch())
    try:
        name = _name_for(name, path, hub)
        from contextlib import ExitStack

        from lorareg.registry.chains import resolve_base
        from lorareg.registry.produce import input_folder

        with ctx.session() as session:
            base_row = resolve_base(session, base)  # a base, or a merged model (an adapter chain)
        with ExitStack() as temporary:  # a merged model kept as recipe only is rebuilt to be checked
            summary = check_adapter_fits(base=input_folder(ctx, lookup.ref_of(base_row), temporary, lazy=True),
                                         adapter=checked.folder)
        config_digest = digest_json(summary.normalized_config)
        with _storing(ctx, True) as sink:  # one read: hashed and stored together
            cd = checkpoint_digest(checked.folder, progress=progress, skip=checked.skipped,
                                   extra={"adapter_config": config_digest}, sink=sink)
            content = content_digest_of(cd.digest, {"base": base_row.digest})
            existing = _existing(ctx, name, content)
            if existing is not None:
                return existing
            details = {
                "r": summary.r, "lora_alpha": summary.lora_alpha, "use_rslora": summary.use_rslora,
                "use_dora": summary.use_dora, "target_modules": list(summary.target_modules),
                "modules_to_save": list(summary.modules_to_save or ()), "lora_bias": summary.lora_bias,
                "fan_in_fan_out": summary.fan_in_fan_out, "peft_type": summary.peft_type,
                "base_model_name_or_path": summary.base_model_name_or_path,
                "trainable_params": sum(math.prod(t.shape) for t in cd.tensors), **_skipped(checked),
            }
            hub = hub or {}

            def add_rows(session: Session, row: m.Version) -> None:
                session.add(m.Adapter(
                    version_id=row.id, base_version_id=base_row.id, config_digest=config_digest, r=summary.r,
                    lora_alpha=float(summary.lora_alpha), use_rslora=bool(summary.use_rslora),
                    use_dora=bool(summary.use_dora), hub_repo=hub.get("repo_id"), hub_commit=hub.get("commit_sha"),
                    summary_json=events.dumps(details)))

            info = register_version(ctx, NewVersion(
                name=name, kind="adapter", digest=cd.digest, weights_digest=cd.weights_digest,
                content_digest=content, files=cd.files, folder=checked.folder, in_store=True,
                manifest=manifest_text(cd.tensors).encode(), add_rows=add_rows, existing=_same_content(name, content),
                event={"base": lookup.ref_of(base_row), "path": str(Path(path)), "skipped": list(checked.skipped)}),
                progress=progress)
        _record_training(ctx, info, checked)
        return info
    finally:
        if checked.converted_from_pickle:
            shutil.rmtree(checked.folder, ignore_errors=True)


def _skipped(checked) -> dict:
    return {"skipped_training_state": list(checked.skipped)} if checked.skipped else {}


def _record_training(ctx: Context, info: VersionInfo, checked) -> None:
    """A Trainer checkpoint's trainer_state.json becomes the version's params and metrics
    (instead of a stored file): its step, epoch and every logged number, at its step."""
    import math as _math

    from lorareg.registry.tracking import log_metrics, log_params

    state = checked.trainer_state
    if not state or info.existed:
        return
    log_params(ctx, ref=info.ref, params={k: state[k] for k in ("global_step", "epoch", "max_steps")
                                          if isinstance(state.get(k), (int, float))})
    for entry in state.get("log_history") or []:
        if not isinstance(entry, dict):
            continue
        numbers = {k: v for k, v in entry.items() if k not in ("step", "epoch") and isinstance(v, (int, float))
                   and not isinstance(v, bool) and _math.isfinite(v)}
        if numbers:
            log_metrics(ctx, ref=info.ref, metrics=numbers, step=entry.get("step"))


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
