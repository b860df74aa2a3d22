"""Registry-wide settings, stored in the database so a team sharing a registry shares them
(``lorareg config set require-check true``).  Each known key declares its type; values are
stored as canonical text and every change is an event."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlmodel import Session, select

from lorareg.errors import LoraregError
from lorareg.registry import events
from lorareg.registry import models as m
from lorareg.registry.context import Context

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _bool(text: str) -> str:
    value = text.strip().lower()
    if value in _TRUE:
        return "true"
    if value in _FALSE:
        return "false"
    raise LoraregError(f"{text!r} is not true or false", hint="use true or false")


@dataclass(frozen=True)
class Setting:
    key: str
    default: str
    help: str
    parse: Callable[[str], str]  # the canonical text of a value, or LoraregError


SETTINGS = {s.key: s for s in (
    Setting("require-check", "false",
            "push and alias set refuse a merged version whose latest check did not pass "
            "(--no-require-check overrides it for one command)", _bool),
)}


def _known(key: str) -> Setting:
    try:
        return SETTINGS[key]
    except KeyError:
        raise LoraregError(f"unknown setting {key!r}", hint="settings: " + ", ".join(sorted(SETTINGS))) from None


def value_of(session: Session, key: str) -> str:
    row = session.get(m.Setting, _known(key).key)
    return row.value if row is not None else SETTINGS[key].default


def is_on(session: Session, key: str) -> bool:
    return value_of(session, key) == "true"


def get_setting(ctx: Context, *, key: str) -> str:
    with ctx.session() as session:
        return value_of(session, key)


def all_settings(ctx: Context) -> dict[str, str]:
    """Every known setting with its value (the default where none was set)."""
    with ctx.session() as session:
        stored = {s.key: s.value for s in session.exec(select(m.Setting)).all()}
    return {key: stored.get(key, s.default) for key, s in sorted(SETTINGS.items())}


def set_setting(ctx: Context, *, key: str, value: str) -> str:
    from lorareg.registry.db import writer_session

    setting = _known(key)
    text = setting.parse(str(value))
    with writer_session(ctx.db, "~settings") as session:  # serialised: two setters never both insert
        row = session.get(m.Setting, key)
        before = row.value if row is not None else None
        if row is None:
            row = m.Setting(key=key, value=text)
        row.value = text
        session.add(row)
        events.record(session, "config", key=key, value=text, previous=before)
        session.commit()
    return text
