"""The event log: who did what, when.  Every change to the registry adds one row."""

from __future__ import annotations

import getpass
import json
import os
from typing import Any

from sqlmodel import Session, select

from lorareg.registry import models as m
from lorareg.registry.results import EventInfo


def current_user() -> str:
    try:
        return os.environ.get("LORAREG_USER") or getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def record(session: Session, action: str, *, ref: str = "", version_id: int | None = None, **args: Any) -> None:
    """Add an event to the session's transaction (it commits with the change it describes)."""
    session.add(m.Event(action=action, ref=ref, version_id=version_id, user=current_user(), args_json=dumps(args)))


def recent(session: Session, *, ref: str | None = None, limit: int = 50) -> list[EventInfo]:
    """Events, newest first (optionally only those of one name)."""
    q = select(m.Event)
    if ref:
        name = ref.partition("@")[0]
        if session.get_bind().dialect.name == "sqlite":
            # A range, not LIKE 'name@%': SQLite's LIKE ignores case, so it cannot use
            # ix_events_ref and scans every event.  In byte order (SQLite's), "A" follows "@".
            prefix = (m.Event.ref >= f"{name}@") & (m.Event.ref < f"{name}A")
        else:  # a locale's collation may not sort "@" before "A"; escaped: "_" in a name is no wildcard
            prefix = m.Event.ref.startswith(f"{name}@", autoescape=True)
        q = q.where((m.Event.ref == name) | prefix)
    rows = session.exec(q.order_by(m.Event.id.desc()).limit(limit)).all()
    return [EventInfo(id=e.id, time=e.time, user=e.user, action=e.action, ref=e.ref, args=json.loads(e.args_json))
            for e in rows]
