"""Aliases (``name@prod``, ``name@current``): moving, removing, listing, and their history,
which is read from the event log."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from sqlmodel import select

from lorareg.errors import NotFoundError
from lorareg.registry import events, lookup
from lorareg.registry.check import require_check as require_check_gate
from lorareg.registry import models as m
from lorareg.registry.context import Context
from lorareg.registry.refs import check_alias, check_name
from lorareg.registry.results import AliasInfo, EventInfo


def set_alias(ctx: Context, *, name: str, alias: str, version: int, action: str = "alias",
              message: str | None = None, require_check: bool | None = False) -> AliasInfo:
    """Point ``name@alias`` at ``version`` (recorded as an event, so history is kept)."""
    from lorareg.registry.db import writer_session

    check_alias(alias)
    # Serialised with every other writer of ``name``: two processes moving the same alias must
    # not both find it absent and both insert it (seen on PostgreSQL in the team campaign).
    with writer_session(ctx.db, check_name(name)) as session:
        row = lookup.resolve(session, f"{name}@{int(version)}")
        # the release gate (``alias set --require-check``, or the registry's require-check setting
        # when None); ``rollback --to`` keeps the default False: going back is never blocked
        require_check_gate(session, row, require=require_check, action=f"alias set {name} {alias}")
        existing = session.get(m.Alias, (name, alias))
        before = session.get(m.Version, existing.version_id).version if existing else None
        if existing is None:
            existing = m.Alias(name=name, alias=alias, version_id=row.id)
        existing.version_id = row.id
        existing.updated_at = m.utcnow()
        session.add(existing)
        events.record(session, "alias", ref=f"{name}@{alias}", version_id=row.id, alias=alias, version=row.version,
                      previous=before)
        if action != "alias":
            events.record(session, action, ref=f"{name}@{alias}", alias=alias, to=row.version, message=message)
        session.commit()
        return AliasInfo(name=name, alias=alias, version=row.version, updated_at=existing.updated_at)


def rollback_alias(ctx: Context, *, name: str, to: int, alias: str, message: str | None) -> AliasInfo:
    """``rollback NAME --to N``: move the alias (default ``current``) back, instantly."""
    return set_alias(ctx, name=name, alias=alias, version=to, action="rollback", message=message)


def remove_alias(ctx: Context, *, name: str, alias: str) -> None:
    from lorareg.registry.db import writer_session

    with writer_session(ctx.db, check_name(name)) as session:
        existing = session.get(m.Alias, (check_name(name), check_alias(alias)))
        if existing is None:
            raise NotFoundError(f"{name} has no alias {alias!r}", hint=f"see its aliases with: lorareg alias ls {name}")
        before = session.get(m.Version, existing.version_id).version
        session.delete(existing)
        events.record(session, "alias-rm", ref=f"{name}@{alias}", alias=alias, previous=before)
        session.commit()


def aliases(ctx: Context, *, name: str | None = None) -> list[AliasInfo]:
    with ctx.session() as session:
        q = select(m.Alias, m.Version).where(m.Alias.version_id == m.Version.id)
        if name:
            q = q.where(m.Alias.name == name)
        return [AliasInfo(name=a.name, alias=a.alias, version=v.version, updated_at=a.updated_at)
                for a, v in session.exec(q.order_by(m.Alias.name, m.Alias.alias)).all()]


def alias_events(ctx: Context, *, name: str | None = None, limit: int = 100) -> list[EventInfo]:
    """The last ``limit`` moves of aliases (of one name, or all), newest first, with who made
    them: events ``alias`` (args: alias, version, previous) and ``alias-rm`` (alias, previous).
    A move made by ``rollback --to`` carries ``rollback: True`` and its message."""
    q = select(m.Event).where(m.Event.action.in_(("alias", "alias-rm", "rollback")))
    if name:
        q = q.where(m.Event.ref.startswith(f"{check_name(name)}@"))
    with ctx.session() as session:
        # rollback events of new versions (not alias moves) share the action: fetch a margin
        rows = session.exec(q.order_by(m.Event.id.desc()).limit(3 * limit)).all()
    moves: list[EventInfo] = []
    pending: dict[str, dict] = {}  # ref -> args of an alias rollback, waiting for its move (older id)
    for e in rows:
        args = json.loads(e.args_json)
        if e.action == "rollback":
            if "alias" in args and "to" in args:  # recorded right after the move it explains
                pending[e.ref] = {"rollback": True, "message": args.get("message")}
            continue
        extra = pending.pop(e.ref, {}) if e.action == "alias" else {}
        moves.append(EventInfo(id=e.id, time=e.time, user=e.user, action=e.action, ref=e.ref, args={**args, **extra}))
    return moves[:limit]


def alias_history(ctx: Context, *, name: str, alias: str | None = None, at: datetime | None = None) -> list[AliasInfo]:
    """Every move of ``name``'s aliases, oldest first.  With ``at``, only what each alias
    pointed at at that moment: "what was live on Tuesday"."""
    from lorareg.registry.remove import under_any_name

    with ctx.session() as session:
        rows = session.exec(select(m.Event).where(m.Event.action.in_(("alias", "alias-rm")),
                                                  under_any_name(session, check_name(name)))
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
