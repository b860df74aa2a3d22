"""The ``Registry`` facade: the one entry point the CLI and Python users call.

It only delegates: each method opens nothing but the module that does the job, handing it
the registry's ``Context``.  Those modules call each other, never this class back.  Every
public method is keyword-only and returns frozen dataclasses from ``lorareg.registry.results``
(re-exported by ``lorareg``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lorareg.registry.results import (AliasInfo, DiffResult, EventInfo, GcResult, Kind, Lineage, PushInfo,
                                      RebuildResult, RegistryLocation, SearchHit, Tracked, VerifyResult, VersionInfo,
                                      VersionPage)
from lorareg.registry.results import QueryHit, RemoveResult, RenameResult
from lorareg.registry.results import CheckResult
from lorareg.registry.results import CacheReport

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from lorareg.registry.context import Context

HashProgress = Callable[[int], None] | None  # bytes hashed since the last call
StepProgress = Callable[[int, int, str], None] | None  # (done, total, tensor name)
Dtype = Literal["auto", "bfloat16", "float16", "float32"]
AdapterDtype = Literal["float32", "base"]
AdapterSpec = str | tuple[str, float]  # "chat@2", "chat@2:0.5" or ("chat@2", 0.5)


class Registry:
    """A registry of base models, LoRA adapters and merged versions.

    Example::

        reg = Registry.open()                      # LORAREG_HOME or ~/.lorareg
        base = reg.add_base(path="./llama-tiny")
        ad = reg.add_adapter(path="./my-lora", base=base.ref)
    """

    def __init__(self, *, context: "Context") -> None:
        self._ctx = context

    @classmethod
    def open(cls, *, home: str | os.PathLike[str] | None = None, database_url: str | None = None,
             blobs: str | os.PathLike[str] | None = None) -> "Registry":
        """Open (creating if needed) the registry at ``home``; upgrades its schema to head.

        ``database_url`` (or ``LORAREG_DATABASE_URL``) puts the tables in another database,
        e.g. PostgreSQL for a team; ``blobs`` (or ``LORAREG_BLOBS``) the team's blob store:
        ``s3://bucket/prefix`` (S3-compatible object storage, credentials from the standard AWS
        settings, read through a cache in ``home/cache``) or a folder every machine mounts
        (default ``home/blobs``).  Version folders of links stay per ``home``."""
        from lorareg.registry.context import Context

        return cls(context=Context.open(home=home, database_url=database_url, blobs=blobs))

    def close(self) -> None:
        self._ctx.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def location(self) -> RegistryLocation:
        """Where this registry keeps its database, blobs and version folders."""
        url = self._ctx.home.blob_url  # an object store: its URL, and this machine's cache of it
        return RegistryLocation(home=self._ctx.home.root, blobs=url or self._ctx.home.blobs,
                                cache=self._ctx.home.cache if url else None,
                                database=self._ctx.db.url.render_as_string(hide_password=True))

    # -- registering ------------------------------------------------------------------
    def add_base(self, *, path: str | os.PathLike[str], name: str | None = None, reference: bool = False,
                 allow_pickle: bool = False, progress: HashProgress = None) -> VersionInfo:
        """Register a Hugging Face checkpoint folder (copied into the store, or tracked by reference)."""
        from lorareg.registry.add import add_base

        return add_base(self._ctx, path=Path(path), name=name, reference=reference, allow_pickle=allow_pickle,
                        progress=progress)

    def add_adapter(self, *, path: str | os.PathLike[str], base: str, name: str | None = None,
                    allow_pickle: bool = False, progress: HashProgress = None) -> VersionInfo:
        """Register a PEFT adapter folder against ``base`` after checking it fits."""
        from lorareg.registry.add import add_adapter

        return add_adapter(self._ctx, path=Path(path), base=base, name=name, allow_pickle=allow_pickle,
                           progress=progress)

    def add_base_from_hub(self, *, uri: str, name: str | None = None, reference: bool = False,
                          allow_pickle: bool = False, endpoint: str | None = None,
                          progress: HashProgress = None) -> VersionInfo:
        """Register ``hf://ORG/NAME[@REV]`` as a base, pinned to the commit the revision resolves to."""
        from lorareg.registry.add import add_from_hub

        return add_from_hub(self._ctx, uri=uri, kind="base", base=None, name=name, reference=reference,
                            allow_pickle=allow_pickle, endpoint=endpoint, progress=progress)

    def add_adapter_from_hub(self, *, uri: str, base: str, name: str | None = None, allow_pickle: bool = False,
                             endpoint: str | None = None, progress: HashProgress = None) -> VersionInfo:
        """Register ``hf://ORG/NAME[@REV]`` as an adapter of ``base``."""
        from lorareg.registry.add import add_from_hub

        return add_from_hub(self._ctx, uri=uri, kind="adapter", base=base, name=name, reference=False,
                            allow_pickle=allow_pickle, endpoint=endpoint, progress=progress)

    # -- reading ----------------------------------------------------------------------
    def get(self, *, ref: str) -> VersionInfo:
        """Resolve ``name``, ``name@3`` or ``name@alias``."""
        from lorareg.registry.listing import get

        return get(self._ctx, ref=ref)

    def ls(self, *, kind: Kind | None = None, name: str | None = None, limit: int | None = None,
           offset: int = 0, after: str | None = None) -> list[VersionInfo]:
        """Versions (of one kind, or one name), without their file lists; ``limit``/``offset`` page them;
        ``after`` (a ref, the last one of the previous page): the versions registered before it, newest first."""
        from lorareg.registry.listing import ls

        return ls(self._ctx, kind=kind, name=name, limit=limit, offset=offset, after=after)

    def count(self, *, kind: Kind | None = None, name: str | None = None, where: Sequence[str] = (),
              tags: Mapping[str, str | None] | None = None, removed: bool = False, after: str | None = None) -> int:
        """How many versions ``ls`` (or ``query``) with the same filters would list without a limit (past ``after``)."""
        from lorareg.registry.listing import count

        return count(self._ctx, kind=kind, name=name, where=tuple(where), tags=tags, removed=removed, after=after)

    def browse(self, *, kind: Kind | None = None, name: str | None = None, contains: str | None = None,
               tags: Mapping[str, str | None] | None = None, alias: str | None = None, order_by: str | None = None,
               descending: bool = False, limit: int = 50, offset: int = 0) -> VersionPage:
        """One page of versions filtered by kind, name (exact, or ``contains``), tags (``None``: any
        value) and alias, sorted by ``kind`` (default), ``created``, ``size``, ``name`` or ``metric:KEY``."""
        from lorareg.registry.listing import browse

        return browse(self._ctx, kind=kind, name=name, contains=contains, tags=tags, alias=alias, order_by=order_by,
                      descending=descending, limit=limit, offset=offset)

    def model_card(self, *, ref: str) -> str | None:
        """The text of ``ref``'s README.md from the blob store (None: no card, or its bytes are not stored)."""
        from lorareg.registry.listing import model_card

        return model_card(self._ctx, ref=ref)

    def query(self, *, kind: Kind | None = None, name: str | None = None, where: Sequence[str] = (),
              tags: Mapping[str, str | None] | None = None, sort: str | None = None, descending: bool = False,
              removed: bool = False, limit: int | None = None, offset: int = 0, after: str | None = None
              ) -> list[QueryHit]:
        """Versions matching every ``where`` comparison (``"eval_loss<0.5"``, ``"param.lr>=1e-4"``)
        and tag (``None``: any value), sorted by a metric, a param, ``created``, ``name`` or ``size``
        (``"-KEY"``: largest first); ``removed`` lists removed versions too; ``after`` (a ref): the
        matching versions registered before it, newest first (a cursor; refused with another sort)."""
        from lorareg.registry.listing import query

        return query(self._ctx, kind=kind, name=name, where=tuple(where), tags=tags, sort=sort,
                     descending=descending, removed=removed, limit=limit, offset=offset, after=after)

    def ref_candidates(self, *, prefix: str = "", kind: Kind | None = None) -> list[str]:
        """Names (or after ``NAME@``, that name's versions and aliases) starting with ``prefix``: shell completion."""
        from lorareg.registry.listing import ref_candidates

        return ref_candidates(self._ctx, prefix=prefix, kind=kind)

    def same_content(self, *, ref: str) -> list[str]:
        """Live versions under other names with ``ref``'s digest (the same model registered twice)."""
        from lorareg.registry.listing import same_content

        return same_content(self._ctx, ref=ref)

    def log(self, *, ref: str | None = None, limit: int = 50) -> list[EventInfo]:
        """Events, newest first (optionally only those of one name)."""
        from lorareg.registry.listing import log

        return log(self._ctx, ref=ref, limit=limit)

    def folder(self, *, ref: str, progress: StepProgress = None) -> Path:
        """The folder ``from_pretrained`` loads for ``ref`` (a recipe-only merge gets its files back first)."""
        from lorareg.registry.listing import folder

        return folder(self._ctx, ref=ref, progress=progress)

    # -- integrity ---------------------------------------------------------------------
    def verify(self, *, ref: str | None = None, all_versions: bool = False,
               progress: HashProgress = None) -> list[VerifyResult]:
        """Re-hash the files of ``ref`` (or, with ``all_versions=True``, of every version and blob)."""
        from lorareg.registry.verify import verify

        return verify(self._ctx, ref=ref, all_versions=all_versions, progress=progress)

    # -- aliases ------------------------------------------------------------------------
    def set_alias(self, *, name: str, alias: str, version: int, require_check: bool | None = None) -> AliasInfo:
        """Point ``name@alias`` at ``version`` (recorded as an event, so history is kept).

        ``require_check=True`` refuses a merge whose latest check did not pass; None follows
        the registry's ``require-check`` setting."""
        from lorareg.registry.aliases import set_alias

        return set_alias(self._ctx, name=name, alias=alias, version=version, require_check=require_check)

    def remove_alias(self, *, name: str, alias: str) -> None:
        from lorareg.registry.aliases import remove_alias

        remove_alias(self._ctx, name=name, alias=alias)

    def aliases(self, *, name: str | None = None) -> list[AliasInfo]:
        from lorareg.registry.aliases import aliases

        return aliases(self._ctx, name=name)

    def alias_history(self, *, name: str, alias: str | None = None, at: datetime | None = None) -> list[AliasInfo]:
        """Every move of ``name``'s aliases, oldest first; with ``at``, what each pointed at then."""
        from lorareg.registry.aliases import alias_history

        return alias_history(self._ctx, name=name, alias=alias, at=at)

    def alias_events(self, *, name: str | None = None, limit: int = 100) -> list[EventInfo]:
        """The last alias moves (of ``name``, or all), newest first, with who made each."""
        from lorareg.registry.aliases import alias_events

        return alias_events(self._ctx, name=name, limit=limit)

    # -- merging ------------------------------------------------------------------------
    def merge(self, *, base: str, adapters: Sequence[AdapterSpec], name: str, method: str = "linear",
              params: Mapping[str, Any] | None = None, seed: int | None = None, dtype: Dtype = "auto",
              adapter_dtype: AdapterDtype = "float32", as_adapter: Literal["cat", "svd"] | None = None,
              rank: int | None = None, keep: Literal["files", "recipe"] = "files", allow_base_mismatch: bool = False,
              max_shard_size: int = 5 * 2**30, message: str | None = None,
              progress: StepProgress = None, allow_noop: bool = False,
              tokenizer_from: str | None = None, base_quantization: Mapping[str, Any] | None = None) -> VersionInfo:
        """Merge adapters (``"chat@2"``, ``"chat@2:0.5"`` or ``("chat@2", 0.5)``) into ``base``.

        ``base`` may be a merged model (adapter chains: an adapter trained on it).  The
        adapters' tokenizer, chat template and generation config replace the base's;
        ``tokenizer_from`` (an adapter's ref, or the base's) picks when adapters disagree.
        ``allow_noop`` merges an untrained adapter, or one whose changes round away.
        ``base_quantization`` (QLoRA adapters), e.g. ``{"quant_type": "nf4", "double_quant": True,
        "blocksize": 64}``: merge into bitsandbytes' dequantize(quantize(base)), the weights the
        adapter was trained on (needs ``lorareg[qlora]``).

        ``params`` are the method's own parameters (``lorareg.merge.METHODS[method].params``),
        e.g. ``{"density": 0.5}`` for ties.  The recipe (input digests, weights, method,
        parameters, seed, dtype, library versions) is recorded; an identical recipe under the
        same name returns the existing version."""
        from lorareg.registry.merging import merge

        return merge(self._ctx, name=name, keep=keep, message=message, progress=progress, base=base,
                     adapters=adapters, method=method, params=params or {}, seed=seed, dtype=dtype,
                     adapter_dtype=adapter_dtype, output=as_adapter or "model", rank=rank,
                     max_shard_size=max_shard_size, allow_base_mismatch=allow_base_mismatch,
                     allow_noop=allow_noop, tokenizer_from=tokenizer_from, base_quantization=base_quantization)

    def export(self, *, ref: str, dest: str | os.PathLike[str], copy: bool = False,
               progress: StepProgress = None, copy_progress: Callable[[int, int], None] | None = None
               ) -> VersionInfo:
        """Write a version's files to ``dest`` as a standalone folder (rebuilt first if recipe only).
        Files are reflinks or hard links to the read-only blobs where possible; ``copy`` forces copies.
        ``copy_progress(n, total)`` is told each step of a real copy (bytes, of the version's total)."""
        from lorareg.registry.export import export

        return export(self._ctx, ref=ref, dest=Path(dest), copy=copy, progress=progress,
                      copy_progress=copy_progress)

    def materialize(self, *, ref: str, progress: StepProgress = None) -> VersionInfo:
        """Give a recipe-only merge its files back (rebuilt, digest checked, stored)."""
        from lorareg.registry.listing import get
        from lorareg.registry.rebuild import materialize

        materialize(self._ctx, ref=ref, progress=progress)
        return get(self._ctx, ref=ref)

    def rebuild(self, *, ref: str, keep_files: bool = False, progress: StepProgress = None) -> RebuildResult:
        """Re-run a merge's recipe and compare digests (``ok``, or which tensors differ)."""
        from lorareg.registry.rebuild import rebuild

        return rebuild(self._ctx, ref=ref, keep_files=keep_files, progress=progress)

    def rollback_adapter(self, *, ref: str, adapter: str, strategy: Literal["rebuild", "subtract"] = "rebuild",
                         message: str | None = None, progress: StepProgress = None) -> VersionInfo:
        """A new version of the merge ``ref`` without ``adapter``: rebuilt from its base (exact), or
        with ``strategy="subtract"`` its delta taken out of the merged weights (linear merges only)."""
        from lorareg.registry.rollback import rollback_adapter

        return rollback_adapter(self._ctx, ref=ref, adapter=adapter, strategy=strategy, message=message,
                                progress=progress)

    def rollback_alias(self, *, name: str, to: int, alias: str = "current", message: str | None = None) -> AliasInfo:
        """Move ``name@alias`` back to version ``to``, instantly."""
        from lorareg.registry.aliases import rollback_alias

        return rollback_alias(self._ctx, name=name, to=to, alias=alias, message=message)

    def lineage(self, *, ref: str, down: bool = False, max_nodes: int | None = None,
                per_node: int | None = None) -> Lineage:
        """The graph of what ``ref`` was made from (or, with ``down``, what was made from it);
        ``max_nodes`` keeps the nearest that many versions (``truncated`` then says so); down,
        ``per_node`` the newest that many made from each one (``more`` counts what was left out)."""
        from lorareg.registry.lineage import lineage

        return lineage(self._ctx, ref=ref, down=down, max_nodes=max_nodes, per_node=per_node)

    def diff(self, *, a: str, b: str) -> DiffResult:
        """Recipe differences, and tensor differences when both versions have their files."""
        from lorareg.registry.lineage import diff

        return diff(self._ctx, a=a, b=b)

    def remove(self, *, refs: Sequence[str], force: bool = False, message: str | None = None) -> RemoveResult:
        """Remove versions (rows kept as tombstones, bytes evicted); one that something still uses
        (a merge, an adapter, an alias, a Hub push) is refused unless ``force``."""
        from lorareg.registry.remove import remove

        return remove(self._ctx, refs=tuple(refs), force=force, message=message)

    def rename(self, *, old: str, new: str) -> RenameResult:
        """Give a name (all its versions) a new one; recorded recipes follow."""
        from lorareg.registry.remove import rename

        return rename(self._ctx, old=old, new=new)

    def gc(self, *, evict: Sequence[str] = (), merges_older_than_days: float | None = None,
           dry_run: bool = False) -> GcResult:
        """Evict merges to recipe only (optional), then delete blobs nothing references and stale temp files."""
        from lorareg.registry.gc import gc

        return gc(self._ctx, evict=tuple(evict), merges_older_than_days=merges_older_than_days, dry_run=dry_run)

    def cache_ls(self) -> CacheReport:
        """This machine's cache of the object store (LORAREG_BLOBS=s3://...): blobs, least recently used first."""
        from lorareg.registry.cache import cache_ls

        return cache_ls(self._ctx)

    def cache_prune(self, *, max_bytes: int | None = None) -> CacheReport:
        """Evict cached blobs, least recently used first, down to ``max_bytes`` (default LORAREG_CACHE_MAX)."""
        from lorareg.registry.cache import cache_prune

        return cache_prune(self._ctx, max_bytes=max_bytes)

    # -- experiment tracking ----------------------------------------------------------------
    def log_params(self, *, ref: str, params: Mapping[str, Any]) -> None:
        """Record hyper-parameters (JSON values) on any version; later values replace earlier ones."""
        from lorareg.registry.tracking import log_params

        log_params(self._ctx, ref=ref, params=params)

    def log_metrics(self, *, ref: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Append metric points (optionally at a training step) to any version."""
        from lorareg.registry.tracking import log_metrics

        log_metrics(self._ctx, ref=ref, metrics=metrics, step=step)

    def set_tags(self, *, ref: str, tags: Mapping[str, str]) -> None:
        from lorareg.registry.tracking import set_tags

        set_tags(self._ctx, ref=ref, tags=tags)

    def untag(self, *, ref: str, keys: Sequence[str]) -> None:
        """Remove tags by key (all, or none when one is not set)."""
        from lorareg.registry.tracking import untag

        untag(self._ctx, ref=ref, keys=tuple(keys))

    def tracked(self, *, ref: str) -> Tracked:
        """Params, tags, latest metrics and metric history of ``ref``."""
        from lorareg.registry.tracking import tracked

        return tracked(self._ctx, ref=ref)

    def metric_keys(self) -> list[str]:
        """Every metric key logged on any version (what ``browse`` can sort by)."""
        from lorareg.registry.tracking import metric_keys

        return metric_keys(self._ctx)

    def search(self, *, kind: Kind | None = None, tags: Mapping[str, str] | None = None,
               params: Mapping[str, Any] | None = None, order_by: str | None = None,
               descending: bool = False) -> list[SearchHit]:
        """Versions matching ``tags``/``params`` exactly, sorted by ``metric:KEY`` or ``param:KEY``."""
        from lorareg.registry.tracking import search

        return search(self._ctx, kind=kind, tags=tags, params=params, order_by=order_by, descending=descending)

    def trainer_callback(self, *, base: str, name: str, tags: Mapping[str, str] | None = None) -> "TrainerCallback":
        """A transformers TrainerCallback registering each saved adapter checkpoint as ``name``'s next version."""
        from lorareg.registry.tracking import trainer_callback

        return trainer_callback(self._ctx, base=base, name=name, tags=tags)

    # -- the Hugging Face Hub ----------------------------------------------------------------
    def push(self, *, ref: str, repo: str, tag: str | None = None, branch: str | None = None, private: bool = False,
             adapter_only: bool = False, endpoint: str | None = None, token: str | None = None,
             require_check: bool | None = None) -> PushInfo:
        """Upload a version with its model card in one commit tagged ``v<version>``; a no-op if already there.

        ``require_check=True`` refuses a merge whose latest check did not pass; None follows
        the registry's ``require-check`` setting.  The card cites the latest passing check."""
        from lorareg.registry.push import push

        return push(self._ctx, ref=ref, repo_id=repo, tag=tag, branch=branch, private=private,
                    adapter_only=adapter_only, endpoint=endpoint, token=token, require_check=require_check)

    def pushes(self, *, ref: str | None = None) -> list[PushInfo]:
        """Where versions live on the Hub, oldest push first (optionally of one version)."""
        from lorareg.registry.push import pushes

        return pushes(self._ctx, ref=ref)

    # -- checks and settings --------------------------------------------------------------
    def check(self, *, ref: str, prompts: str | os.PathLike[str] | None = None, chat: bool = False,
              samples: int | None = None, max_new_tokens: int | None = None, seed: int = 0, device: str = "cpu",
              progress: StepProgress = None) -> CheckResult:
        """Compare the merged version ``ref`` with the unmerged model its recipe describes, and record it.

        Inputs: ``samples`` (default 8) token sequences drawn from the vocabulary with ``seed``,
        or the lines of ``prompts`` (``chat`` applies the chat template).  ``max_new_tokens``
        also compares greedy generations.  The result says whether it passed (the rule is
        ``lorareg.merge.behaviour.RULE``); a failing check is recorded too.  ``progress`` gets
        (done, total, what) for a recipe-only version's rebuild, then for the three runs."""
        from lorareg.registry.check import check

        return check(self._ctx, ref=ref, prompts=Path(prompts) if prompts is not None else None, chat=chat,
                     samples=samples, max_new_tokens=max_new_tokens, seed=seed, device=device, progress=progress)

    def checks(self, *, ref: str) -> list[CheckResult]:
        """Every recorded check of ``ref``, oldest first."""
        from lorareg.registry.check import checks

        return checks(self._ctx, ref=ref)

    def get_setting(self, *, key: str) -> str:
        """A registry-wide setting (e.g. ``require-check``: ``"true"`` or ``"false"``)."""
        from lorareg.registry.settings import get_setting

        return get_setting(self._ctx, key=key)

    def set_setting(self, *, key: str, value: str | bool) -> str:
        """Set a registry-wide setting; returns the value as stored."""
        from lorareg.registry.settings import set_setting

        return set_setting(self._ctx, key=key, value=str(value))

    def settings(self) -> dict[str, str]:
        """Every known setting with its value."""
        from lorareg.registry.settings import all_settings

        return all_settings(self._ctx)
