"""Adapter chains: a merged model as the base of the next adapter (SFT -> DPO).

A merged version whose output is a model is a base like any other: adapters are registered
against it (their shapes checked against its folder) and merged into it.  A parent kept as
recipe only is rebuilt, and checked against its digest, before anything reads it
(``produce.input_folder``); rebuilding it may rebuild its own parent first, down to the root base."""

from __future__ import annotations

from sqlmodel import Session, select

from lorareg.errors import LoraregError
from lorareg.registry import lookup
from lorareg.registry import models as m
from lorareg.registry.recipe import resolve_dtype

__all__ = ["base_dtype", "resolve_base", "trained_on"]


def resolve_base(session: Session, ref: str) -> m.Version:
    """A version adapters can be trained on and merged into: a base, or a merged model."""
    row = lookup.resolve(session, ref)
    if row.kind == "base":
        return row
    if row.kind == "merge" and session.get(m.Merge, row.id).output == "model":
        return row
    what = "a merge written as an adapter" if row.kind == "merge" else f"an {row.kind}"
    raise LoraregError(f"{lookup.ref_of(row)} is {what}; adapters are trained on (and merged into) a base or a "
                       "merged model", hint="list them with: lorareg ls bases, lorareg ls merges")


def base_dtype(session: Session, row: m.Version, requested: str = "auto") -> str:
    """``requested`` resolved against a base's dtype (a merged model's is its recipe's)."""
    if row.kind == "merge":
        return requested if requested != "auto" else session.get(m.Merge, row.id).dtype
    return resolve_dtype(requested, session.get(m.Base, row.id).dtype)


def trained_on(session: Session, row: m.Version) -> list[str]:
    """The adapters registered against ``row`` (the next links of its chains)."""
    ids = session.exec(select(m.Adapter.version_id).where(m.Adapter.base_version_id == row.id)
                       .order_by(m.Adapter.version_id)).all()
    return [lookup.ref_of(session.get(m.Version, i)) for i in ids]
