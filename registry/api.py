"""The ``Registry`` facade: the one entry point the CLI and Python users call.

Every public method is keyword-only and returns frozen dataclasses from
``lorareg.registry.results``; the heavy lifting lives in small modules next to this one."""

from __future__ import annotations

import os
from pathlib import Path
from datetime import datetime
from typing import Any, Callable, Mapping, Sequence

from sqlmodel import Session, select

from lorareg.errors import LoraregError
from lorareg.registry import catalog
from lorareg.registry import models as m
from lorareg.registry.home import Home
from lorareg.registry.refs import check_alias, check_name
from lorareg.registry.results import AliasInfo, EventInfo, GcResult, VerifyResult, VersionInfo

KINDS = ("base", "adapter", "merge")


class Registry:
    """A registry of base models, LoRA adapters and merged versions.

    Example::

        reg = Registry.open()                      # LORAREG_HOME or ~/.lorareg
        base = reg.add_base(path="./llama-tiny")
        ad = reg.add_adapter(path="./my-lora", base=base.ref)
    """

    def __init__(self, *, home: Home, engine, blobs) -> None:
        self.home = home
        self.engine = engine
        self.blobs = blobs

    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None, *, database_url: str | None = None,
             blobs: str | os.PathLike[str] | None = None) -> "Registry":
        """Open (creating if needed) the registry at ``home``; upgrades its schema to head.

        ``database_url`` (or ``LORAREG_DATABASE_URL``) puts the tables in another database,
        e.g. PostgreSQL for a team; ``blobs`` (or ``LORAREG_BLOBS``) a blob folder the team
        shares (default ``home/blobs``).  Version folders of links stay per ``home``."""
        from lorareg.registry.db import make_engine, sqlite_url, upgrade
        from lorareg.store.blobs import BlobStore

        h = Home.resolve(home, blobs)
        h.ensure()
        url = database_url or os.environ.get("LORAREG_DATABASE_URL") or sqlite_url(h.db_path)
        engine = make_engine(url)
        upgrade(engine)
        return cls(home=h, engine=engine, blobs=BlobStore(h.blobs))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- registering ------------------------------------------------------------------
    def add_base(self, *, path: str | os.PathLike[str], name: str | None = None, reference: bool = False,
                 allow_pickle: bool = False, progress: Callable[[int], None] | None = None) -> VersionInfo:
        """Register a Hugging Face checkpoint folder (copied into the store, or tracked by reference)."""
        from lorareg.registry.adding import add_base

        return add_base(self, path=Path(path), name=name, reference=reference, allow_pickle=allow_pickle,
                        progress=progress)

    def add_adapter(self, *, path: str | os.PathLike[str], base: str, name: str | None = None,
                    allow_pickle: bool = False, progress: Callable[[int], None] | None = None) -> VersionInfo:
        """Register a PEFT adapter folder against ``base`` after checking it fits."""
        from lorareg.registry.adding import add_adapter

        return add_adapter(self, path=Path(path), base=base, name=name, allow_pickle=allow_pickle, progress=progress)

    # -- reading ----------------------------------------------------------------------
    def get(self, ref: str) -> VersionInfo:
        """Resolve ``name``, ``name@3`` or ``name@alias``."""
        with Session(self.engine) as session:
            return catalog.to_info(session, self.home, catalog.resolve(session, ref))

    def ls(self, *, kind: str | None = None, name: str | None = None) -> list[VersionInfo]:
        if kind is not None and kind not in KINDS:
            raise LoraregError(f"unknown kind {kind!r}", hint="use one of: bases, adapters, merges")
        with Session(self.engine) as session:
            q = select(m.Version)
            if kind:
                q = q.where(m.Version.kind == kind)
            if name:
                q = q.where(m.Version.name == check_name(name))
            rows = session.exec(q.order_by(m.Version.kind, m.Version.name, m.Version.version)).all()
            return [catalog.to_info(session, self.home, r, with_files=False) for r in rows]

    def log(self, *, ref: str | None = None, limit: int = 50) -> list[EventInfo]:
        """Events, newest first (optionally only those of one name)."""
        import json

        with Session(self.engine) as session:
            q = select(m.Event)
            if ref:
                name = ref.partition("@")[0]
                q = q.where((m.Event.ref == name) | m.Event.ref.startswith(f"{name}@"))
            rows = session.exec(q.order_by(m.Event.id.desc()).limit(limit)).all()
            return [EventInfo(id=e.id, time=e.time, user=e.user, action=e.action, ref=e.ref,
                              args=json.loads(e.args_json)) for e in rows]

    def materialize_path(self, info: VersionInfo) -> Path:
        """The folder ``from_pretrained`` loads for ``info``; recreates missing link folders."""
        if info.kind == "merge" and not info.stored:
            info = self.materialize(info.ref)
        if info.path is None:
            raise LoraregError(f"{info.ref} has no files", hint=f"rebuild it with: lorareg rebuild {info.ref}")
        if not info.path.exists() and info.stored:
            from lorareg.registry.adding import link_version

            link_version(self, info.name, info.version, {f.path: f.sha256 for f in info.files})
        return info.path

    # -- integrity ---------------------------------------------------------------------
    def verify(self, *, ref: str | None = None, all: bool = False,
               progress: Callable[[int], None] | None = None) -> list[VerifyResult]:
        """Re-hash the files of ``ref`` (or of everything with ``all=True``)."""
        from lorareg.registry.verifying import verify_blobs, verify_version

        if not ref and not all:
            raise LoraregError("say what to verify", hint="lorareg verify NAME@VERSION, or lorareg verify --all")
        with Session(self.engine) as session:
            rows = [catalog.resolve(session, ref)] if ref else session.exec(select(m.Version).order_by(m.Version.id)).all()
            bad = self.blobs.verify_all() if all else None  # every blob hashed once
            results = [verify_version(self, session, r, progress=progress, hashed=None if bad is None else set(bad))
                       for r in rows]
            if bad:
                results += verify_blobs(self, session, bad)
            catalog.record_event(session, "verify", ref=ref or "*", ok=all_ok(results))
            session.commit()
            return results

    # -- aliases ------------------------------------------------------------------------
    def set_alias(self, *, name: str, alias: str, version: int) -> AliasInfo:
        """Point ``name@alias`` at ``version`` (recorded as an event, so history is kept)."""
        check_alias(alias)
        with Session(self.engine) as session:
            row = catalog.resolve(session, f"{check_name(name)}@{int(version)}")
            existing = session.get(m.Alias, (name, alias))
            before = session.get(m.Version, existing.version_id).version if existing else None
            if existing is None:
                existing = m.Alias(name=name, alias=alias, version_id=row.id)
            existing.version_id = row.id
            existing.updated_at = m.utcnow()
            session.add(existing)
            catalog.record_event(session, "alias", ref=f"{name}@{alias}", version_id=row.id,
                                 alias=alias, version=row.version, previous=before)
            session.commit()
            return AliasInfo(name=name, alias=alias, version=row.version, updated_at=existing.updated_at)

    def remove_alias(self, *, name: str, alias: str) -> None:
        with Session(self.engine) as session:
            existing = session.get(m.Alias, (check_name(name), check_alias(alias)))
            if existing is None:
                from lorareg.errors import NotFoundError

                raise NotFoundError(f"{name} has no alias {alias!r}", hint=f"see its aliases with: lorareg alias ls {name}")
            before = session.get(m.Version, existing.version_id).version
            session.delete(existing)
            catalog.record_event(session, "alias-rm", ref=f"{name}@{alias}", alias=alias, previous=before)
            session.commit()

    def aliases(self, *, name: str | None = None) -> list[AliasInfo]:
        with Session(self.engine) as session:
            q = select(m.Alias, m.Version).where(m.Alias.version_id == m.Version.id)
            if name:
                q = q.where(m.Alias.name == name)
            return [AliasInfo(name=a.name, alias=a.alias, version=v.version, updated_at=a.updated_at)
                    for a, v in session.exec(q.order_by(m.Alias.name, m.Alias.alias)).all()]

    def alias_history(self, *, name: str, alias: str | None = None, at: "datetime | None" = None) -> list[AliasInfo]:
        """Every move of ``name``'s aliases, oldest first (from the event log).  With ``at``, only
        what each alias pointed at at that moment: "what was live on Tuesday"."""
        import json
        from datetime import timezone

        with Session(self.engine) as session:
            rows = session.exec(select(m.Event).where(m.Event.action.in_(("alias", "alias-rm")),
                                                      m.Event.ref.startswith(f"{check_name(name)}@"))
                                .order_by(m.Event.id)).all()
        moves = []
        for e in rows:
            args = json.loads(e.args_json)
            if alias and args.get("alias") != alias:
                continue
            when = e.time if e.time.tzinfo else e.time.replace(tzinfo=timezone.utc)
            moves.append(AliasInfo(name=name, alias=args["alias"], version=args.get("version") or 0, updated_at=when))
        if at is None:
            return moves
        at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
        live: dict[str, AliasInfo] = {}
        for mv in moves:
            if mv.updated_at <= at:
                live[mv.alias] = mv
        return [a for a in live.values() if a.version]

    # -- merging ------------------------------------------------------------------------
    def merge(self, *, base: str, adapters: Sequence[str | tuple[str, float]], name: str, method: str = "linear",
              density: float | None = None, majority_sign_method: str = "total", seed: int | None = None,
              dtype: str = "auto", adapter_dtype: str = "float32", as_adapter: str | None = None,
              rank: int | None = None, keep: str = "files", allow_base_mismatch: bool = False,
              max_shard_size: int = 5 * 2**30, message: str | None = None,
              progress: Callable[[int, int, str], None] | None = None) -> VersionInfo:
        """Merge adapters (``"chat@2"``, ``"chat@2:0.5"`` or ``("chat@2", 0.5)``) into ``base``.

        The recipe (input digests, weights, method, parameters, seed, dtype, library versions)
        is recorded; an identical recipe under the same name returns the existing version."""
        from lorareg.registry.merging import merge

        return merge(self, base=base, adapters=adapters, name=name, method=method, density=density,
                     majority_sign_method=majority_sign_method, seed=seed, dtype=dtype, adapter_dtype=adapter_dtype,
                     output=as_adapter or "model", rank=rank, keep=keep, allow_base_mismatch=allow_base_mismatch,
                     max_shard_size=max_shard_size, progress=progress, message=message)

    def export(self, *, ref: str, dest: str | os.PathLike[str],
               progress: Callable[[int, int, str], None] | None = None) -> VersionInfo:
        """Write a version's files to ``dest`` as a standalone folder (rebuilt first if recipe only)."""
        from lorareg.registry.housekeeping import export

        return export(self, ref=ref, dest=Path(dest), progress=progress)

    def materialize(self, ref: str, *, progress: Callable[[int, int, str], None] | None = None) -> VersionInfo:
        """Give a recipe-only merge its files back (rebuilt, digest checked, stored)."""
        from lorareg.registry.rebuilding import materialize

        materialize(self, ref, progress=progress)
        return self.get(ref)

    def rebuild(self, *, ref: str, keep_files: bool = False,
                progress: Callable[[int, int, str], None] | None = None):
        """Re-run a merge's recipe and compare digests; returns a RebuildResult (``ok`` or what differs)."""
        from lorareg.registry.rebuilding import rebuild

        return rebuild(self, ref=ref, keep_files=keep_files, progress=progress)

    def rollback(self, *, ref: str, adapter: str | None = None, to: int | None = None, alias: str = "current",
                 strategy: str = "rebuild", message: str | None = None,
                 progress: Callable[[int, int, str], None] | None = None):
        """Take ``adapter`` out of a merge (a new version), or move ``alias`` back ``to`` a version."""
        from lorareg.registry import rollback as rb

        if (adapter is None) == (to is None):
            raise LoraregError("say what to roll back", hint="lorareg rollback REF --adapter NAME, or NAME --to VERSION")
        if to is not None:
            return rb.rollback_alias(self, name=ref.partition("@")[0], to=to, alias=alias, message=message)
        return rb.rollback_adapter(self, ref=ref, adapter=adapter, strategy=strategy, message=message,
                                   progress=progress)

    def lineage(self, *, ref: str, down: bool = False):
        """The graph of what ``ref`` was made from (or, with ``down``, what was made from it)."""
        from lorareg.registry.lineage import lineage

        return lineage(self, ref=ref, down=down)

    def diff(self, *, a: str, b: str) -> dict:
        from lorareg.registry.lineage import diff

        return diff(self, a=a, b=b)

    def gc(self, *, evict: Sequence[str] = (), merges_older_than_days: float | None = None,
           dry_run: bool = False) -> GcResult:
        """Evict merges to recipe only (optional), then delete blobs nothing references and stale temp files."""
        from lorareg.registry.housekeeping import gc

        return gc(self, evict_refs=tuple(evict), merges_older_than_days=merges_older_than_days, dry_run=dry_run)

    # -- experiment tracking ----------------------------------------------------------------
    def log_params(self, *, ref: str, params: Mapping[str, Any]) -> None:
        """Record hyper-parameters (JSON values) on any version; later values replace earlier ones."""
        from lorareg.registry import tracking

        tracking.log_params(self, ref=ref, params=params)

    def log_metrics(self, *, ref: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Append metric points (optionally at a training step) to any version."""
        from lorareg.registry import tracking

        tracking.log_metrics(self, ref=ref, metrics=metrics, step=step)

    def set_tags(self, *, ref: str, tags: Mapping[str, str]) -> None:
        from lorareg.registry import tracking

        tracking.set_tags(self, ref=ref, tags=tags)

    def tracked(self, *, ref: str):
        """Params, tags, latest metrics and metric history of ``ref``."""
        from lorareg.registry import tracking

        return tracking.tracked(self, ref=ref)

    def search(self, *, kind: str | None = None, tags: Mapping[str, str] | None = None,
               params: Mapping[str, Any] | None = None, order_by: str | None = None, descending: bool = False):
        """Versions matching ``tags``/``params`` exactly, sorted by ``metric:KEY`` or ``param:KEY``."""
        from lorareg.registry import tracking

        return tracking.search(self, kind=kind, tags=tags, params=params, order_by=order_by, descending=descending)

    def trainer_callback(self, *, base: str, name: str, tags: Mapping[str, str] | None = None):
        """A transformers TrainerCallback registering each saved adapter checkpoint as ``name``'s next version."""
        from lorareg.registry import tracking

        return tracking.trainer_callback(self, base=base, name=name, tags=tags)

    # -- the Hugging Face Hub ----------------------------------------------------------------
    def add_base_from_hub(self, *, uri: str, name: str | None = None, reference: bool = False,
                          allow_pickle: bool = False, endpoint: str | None = None,
                          progress: Callable[[int], None] | None = None) -> VersionInfo:
        """Register ``hf://ORG/NAME[@REV]`` as a base, pinned to the commit the revision resolves to."""
        from lorareg.registry.publishing import add_from_hub

        return add_from_hub(self, uri=uri, kind="base", base=None, name=name, reference=reference,
                            allow_pickle=allow_pickle, endpoint=endpoint, progress=progress)

    def add_adapter_from_hub(self, *, uri: str, base: str, name: str | None = None, allow_pickle: bool = False,
                             endpoint: str | None = None, progress: Callable[[int], None] | None = None) -> VersionInfo:
        """Register ``hf://ORG/NAME[@REV]`` as an adapter of ``base``."""
        from lorareg.registry.publishing import add_from_hub

        return add_from_hub(self, uri=uri, kind="adapter", base=base, name=name, reference=False,
                            allow_pickle=allow_pickle, endpoint=endpoint, progress=progress)

    def push(self, *, ref: str, repo: str, tag: str | None = None, branch: str | None = None, private: bool = False,
             adapter_only: bool = False, endpoint: str | None = None, token: str | None = None):
        """Upload a version with its model card in one commit tagged ``v<version>``; a no-op if already there."""
        from lorareg.registry.publishing import push

        return push(self, ref=ref, repo_id=repo, tag=tag, branch=branch, private=private, adapter_only=adapter_only,
                    endpoint=endpoint, token=token)

    def pushes(self) -> dict:
        """Where each version lives on the Hub: ref -> list of PushInfo."""
        from lorareg.registry.publishing import pushes

        return pushes(self)


def all_ok(results: list[VerifyResult]) -> bool:
    return all(r.ok for r in results)
