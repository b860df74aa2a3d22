"""``push``: a version to the Hugging Face Hub as one tagged commit with its model card, and the
record of where each version went.  ``hub_client`` talks to the Hub; this module records."""

from __future__ import annotations

from sqlmodel import select

from lorareg.errors import HubError, LoraregError
from lorareg.registry import events, lookup
from lorareg.registry import models as m
from lorareg.registry.card import version_card
from lorareg.registry.check import require_check as require_check_gate
from lorareg.registry.context import Context
from lorareg.registry.rebuild import materialize
from lorareg.registry.register import folder_of
from lorareg.registry.results import PushInfo


def push(ctx: Context, *, ref: str, repo_id: str, tag: str | None, branch: str | None, private: bool,
         adapter_only: bool, endpoint: str | None, token: str | None, require_check: bool | None = None) -> PushInfo:
    from lorareg.registry import hub_client

    with ctx.session() as session:
        row = lookup.resolve(session, ref)
        require_check_gate(session, row, require=require_check, action="push")  # before anything is uploaded
    if adapter_only:
        if row.kind == "merge":
            raise LoraregError(f"{lookup.ref_of(row)} is a merged model; --adapter-only pushes adapters",
                               hint="merge with --as-adapter cat to get an adapter, or drop --adapter-only")
        if row.kind != "adapter":
            raise LoraregError(f"{lookup.ref_of(row)} is a {row.kind}, not an adapter", hint="drop --adapter-only")
    materialize(ctx, ref=lookup.ref_of(row))  # a recipe-only merge: rebuilt, digest-checked and stored first
    with ctx.session() as session:
        row = session.get(m.Version, row.id)
        folder = folder_of(ctx, session, row)
        expected = {f.path: f.sha256 for f in lookup.file_rows(session, row)}
        card = version_card(session, row, adapter_only=adapter_only)
    ref = lookup.ref_of(row)
    tag = tag or f"v{row.version}"
    # The version folder is pushed as it is (links into the store); the card takes README.md's
    # place, and every file is checked against its recorded sha256 while it is hashed for upload.
    res = hub_client.push_folder(folder=folder, repo_id=repo_id, tag=tag, branch=branch, private=private,
                                 endpoint=endpoint, token=token, card=card, expected=expected,
                                 commit_message=f"lorareg: {ref} ({row.digest[:19]})")
    if not res.commit_sha:
        raise HubError(f"the Hub returned no commit for {repo_id}", hint="rerun lorareg push; nothing was recorded")
    with ctx.session() as session:
        existing = session.exec(select(m.HubPush).where(
            m.HubPush.version_id == row.id, m.HubPush.repo_id == repo_id, m.HubPush.tag == res.tag,
            m.HubPush.commit_sha == res.commit_sha)).first()
        if existing is None:
            existing = m.HubPush(version_id=row.id, repo_id=repo_id, endpoint=res.endpoint, branch=res.branch,
                                 tag=res.tag, commit_sha=res.commit_sha, adapter_only=adapter_only)
            session.add(existing)
        events.record(session, "push", ref=ref, version_id=row.id, repo=repo_id, tag=res.tag, commit=res.commit_sha,
                      noop=res.noop, uploaded=len(res.uploaded), reused=len(res.reused))
        session.commit()
        return PushInfo(ref=ref, repo_id=repo_id, tag=res.tag, branch=res.branch, commit_sha=res.commit_sha,
                        endpoint=res.endpoint, adapter_only=adapter_only, pushed_at=existing.pushed_at,
                        noop=res.noop, uploaded=tuple(res.uploaded), reused=tuple(res.reused), url=res.url)


def pushes(ctx: Context, *, ref: str | None = None) -> list[PushInfo]:
    """Every recorded push, oldest first (optionally only those of one version)."""
    with ctx.session() as session:
        q = select(m.HubPush, m.Version).where(m.HubPush.version_id == m.Version.id)
        if ref:
            q = q.where(m.Version.id == lookup.resolve(session, ref).id)
        return [PushInfo(ref=lookup.ref_of(v), repo_id=p.repo_id, tag=p.tag, branch=p.branch,
                         commit_sha=p.commit_sha, endpoint=p.endpoint, adapter_only=p.adapter_only,
                         pushed_at=p.pushed_at) for p, v in session.exec(q.order_by(m.HubPush.id)).all()]
