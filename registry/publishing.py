"""The registry's side of the Hub: registering from ``hf://`` and pushing versions with
their lineage; ``registry/hub.py`` talks to the Hub, this module records what happened."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlmodel import Session, select

from lorareg.errors import HubError, LoraregError
from lorareg.registry import catalog
from lorareg.registry import models as m
from lorareg.registry.results import VersionInfo, _AsDict

if TYPE_CHECKING:
    from lorareg.registry.api import Registry


@dataclass(frozen=True)
class PushInfo(_AsDict):
    ref: str
    repo_id: str
    tag: str
    branch: str
    commit_sha: str
    endpoint: str
    adapter_only: bool
    pushed_at: datetime
    noop: bool = False
    uploaded: tuple[str, ...] = ()
    reused: tuple[str, ...] = ()
    url: str = ""


def add_from_hub(reg: "Registry", *, uri: str, kind: str, base: str | None, name: str | None, reference: bool,
                 allow_pickle: bool, endpoint: str | None, progress) -> VersionInfo:
    from lorareg.registry import adding, hub

    repo_id, revision = hub.parse_hub_uri(uri)
    snap = hub.download(repo_id=repo_id, revision=revision, allow_pickle=allow_pickle, endpoint=endpoint, kind=kind)
    meta = {"repo_id": snap.repo_id, "revision": snap.revision, "commit_sha": snap.commit_sha}
    if kind == "base":
        return adding.add_base(reg, path=snap.path, name=name, reference=reference, allow_pickle=allow_pickle,
                               progress=progress, hub=meta)
    return adding.add_adapter(reg, path=snap.path, base=base, name=name, allow_pickle=allow_pickle,
                              progress=progress, hub=meta)


def _card_for(reg: "Registry", info: VersionInfo, *, adapter_only: bool) -> str:
    from lorareg import __version__
    from lorareg.registry.card import render_card
    from lorareg.registry.merging import render_card as merge_card
    from lorareg.registry.merging import source_of, stored_recipe

    if info.kind == "merge":
        with Session(reg.engine) as session:
            recipe = stored_recipe(session, catalog.resolve(session, info.ref))
        return merge_card(reg, recipe, name=info.name, version=info.version, output_digest=info.digest)
    inputs: list[dict] = []
    recipe: dict = {}
    base_model = None
    if info.kind == "adapter":
        base = reg.get(info.details["base"])
        base_model = base.details.get("hub_repo")
        inputs = [{"role": "base", "ref": base.ref, "digest": base.digest, "source": source_of(base)}]
        recipe = {"adapter": info.ref, "r": info.details.get("r"), "lora_alpha": info.details.get("lora_alpha")}
    return render_card(kind="adapter" if adapter_only or info.kind == "adapter" else "merge", name=info.name,
                       version=info.version, base_model=base_model, recipe=recipe, inputs=inputs,
                       output_digest=info.digest, lorareg_version=__version__)


def push(reg: "Registry", *, ref: str, repo_id: str, tag: str | None, branch: str | None, private: bool,
         adapter_only: bool, endpoint: str | None, token: str | None) -> PushInfo:
    from lorareg.registry import hub

    info = reg.get(ref)
    if adapter_only:
        if info.kind == "merge":
            raise LoraregError(f"{info.ref} is a merged model; --adapter-only pushes adapters",
                               hint="merge with --as-adapter cat to get an adapter, or drop --adapter-only")
        if info.kind != "adapter":
            raise LoraregError(f"{info.ref} is a {info.kind}, not an adapter", hint="drop --adapter-only")
    if info.kind == "merge" and not info.stored:
        info = reg.materialize(info.ref)  # rebuilt and digest-checked first
    folder = reg.materialize_path(info)
    tag = tag or f"v{info.version}"
    card = _card_for(reg, info, adapter_only=adapter_only)
    # The version folder is pushed as it is (links into the store); the card takes README.md's
    # place, and every file is checked against its recorded sha256 while it is hashed for upload.
    res = hub.push_folder(folder=folder, repo_id=repo_id, tag=tag, branch=branch, private=private,
                          endpoint=endpoint, token=token, card=card, expected={f.path: f.sha256 for f in info.files},
                          commit_message=f"lorareg: {info.ref} ({info.digest[:19]})")
    if not res.commit_sha:
        raise HubError(f"the Hub returned no commit for {repo_id}", hint="rerun lorareg push; nothing was recorded")
    ep = res.endpoint
    with Session(reg.engine) as session:
        row = catalog.resolve(session, info.ref)
        existing = session.exec(select(m.HubPush).where(
            m.HubPush.version_id == row.id, m.HubPush.repo_id == repo_id, m.HubPush.tag == res.tag,
            m.HubPush.commit_sha == res.commit_sha)).first()
        if existing is None:
            existing = m.HubPush(version_id=row.id, repo_id=repo_id, endpoint=ep, branch=res.branch, tag=res.tag,
                                 commit_sha=res.commit_sha, adapter_only=adapter_only)
            session.add(existing)
        catalog.record_event(session, "push", ref=info.ref, version_id=row.id, repo=repo_id, tag=res.tag,
                             commit=res.commit_sha, noop=res.noop, uploaded=len(res.uploaded), reused=len(res.reused))
        session.commit()
        return PushInfo(ref=info.ref, repo_id=repo_id, tag=res.tag, branch=res.branch, commit_sha=res.commit_sha,
                        endpoint=ep, adapter_only=adapter_only, pushed_at=existing.pushed_at, noop=res.noop,
                        uploaded=tuple(res.uploaded), reused=tuple(res.reused), url=res.url)


def pushes(reg: "Registry") -> dict[str, list[PushInfo]]:
    with Session(reg.engine) as session:
        out: dict[str, list[PushInfo]] = {}
        rows = session.exec(select(m.HubPush, m.Version).where(m.HubPush.version_id == m.Version.id)
                            .order_by(m.HubPush.id)).all()
        for p, v in rows:
            ref = f"{v.name}@{v.version}"
            out.setdefault(ref, []).append(PushInfo(ref=ref, repo_id=p.repo_id, tag=p.tag, branch=p.branch,
                                                    commit_sha=p.commit_sha, endpoint=p.endpoint,
                                                    adapter_only=p.adapter_only, pushed_at=p.pushed_at))
        return out
