"""Experiment tracking on any version: params, metrics (with step) and tags; search and
sort by them; and a transformers Trainer callback that registers checkpoints."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Mapping

from sqlmodel import Session, select

from lorareg.errors import LoraregError, NotFoundError
from lorareg.registry import lookup
from lorareg.registry import models as m
from lorareg.registry.context import Context
from lorareg.registry.results import MetricPoint, SearchHit, Tracked, VersionInfo
from lorareg.registry.version_info import version_infos


def _upserting(ctx: Context):
    """A session for insert-or-update of params and tags, serialised with the other writers
    of them: two processes (say, two ranks of a training job) setting the same key must not
    both find it absent and both insert it.  ``~`` cannot start a version name."""
    from lorareg.registry.db import writer_session

    return writer_session(ctx.db, "~tracking")


def log_params(ctx: Context, *, ref: str, params: Mapping[str, Any]) -> None:
    with _upserting(ctx) as session:
        row = lookup.resolve(session, ref)
        for k, v in params.items():
            p = session.get(m.Param, (row.id, str(k))) or m.Param(version_id=row.id, key=str(k), value_json="")
            p.value_json = json.dumps(v, sort_keys=True, default=str)
            session.add(p)
        session.commit()


def log_metrics(ctx: Context, *, ref: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    with ctx.session() as session:
        row = lookup.resolve(session, ref)
        for k, v in metrics.items():
            value = float(v)
            if not math.isfinite(value):
                raise LoraregError(f"metric {k!r} is {value}", hint="log finite numbers only")
            session.add(m.Metric(version_id=row.id, key=str(k), value=value, step=step))
        session.commit()


def set_tags(ctx: Context, *, ref: str, tags: Mapping[str, str]) -> None:
    with _upserting(ctx) as session:
        row = lookup.resolve(session, ref)
        for k, v in tags.items():
            t = session.get(m.Tag, (row.id, str(k))) or m.Tag(version_id=row.id, key=str(k))
            t.value = str(v)
            session.add(t)
        session.commit()


def untag(ctx: Context, *, ref: str, keys: Sequence[str]) -> None:
    """Remove tags by key: all of them, or (when one is not set) none."""
    with ctx.session() as session:
        row = lookup.resolve(session, ref)
        found = {t.key: t for t in session.exec(select(m.Tag).where(m.Tag.version_id == row.id))}
        missing = [k for k in keys if k not in found]
        if missing:
            have = ", ".join(sorted(found)) or "none"
            raise NotFoundError(f"{lookup.ref_of(row)} has no tag {missing[0]!r} (its tags: {have})",
                                hint=f"see its tags with: lorareg show {lookup.ref_of(row)}")
        for k in dict.fromkeys(keys):
            session.delete(found[k])
        session.commit()


def _tracked(session: Session, row: m.Version) -> Tracked:
    return _tracked_many(session, [row])[row.id]


def _tracked_many(session: Session, rows: list[m.Version]) -> dict[int, Tracked]:
    """Each row's params, tags and metrics: one query per table (per ``lookup.IN_LIST`` rows), not per row."""
    params: dict[int, dict[str, Any]] = {}
    tags: dict[int, dict[str, str]] = {}
    points: dict[int, list[m.Metric]] = {}
    for chunk in lookup.chunks([r.id for r in rows]):
        for p in session.exec(select(m.Param).where(m.Param.version_id.in_(chunk))):
            params.setdefault(p.version_id, {})[p.key] = json.loads(p.value_json)
        for t in session.exec(select(m.Tag).where(m.Tag.version_id.in_(chunk))):
            tags.setdefault(t.version_id, {})[t.key] = t.value
        for pt in session.exec(select(m.Metric).where(m.Metric.version_id.in_(chunk)).order_by(m.Metric.id)):
            points.setdefault(pt.version_id, []).append(pt)
    out = {}
    for row in rows:
        mine = points.get(row.id, [])
        latest: dict[str, tuple[int, float]] = {}
        for pt in mine:
            order = pt.step if pt.step is not None else -1
            if pt.key not in latest or order >= latest[pt.key][0]:
                latest[pt.key] = (order, pt.value)
        out[row.id] = Tracked(ref=lookup.ref_of(row), params=params.get(row.id, {}), tags=tags.get(row.id, {}),
                              metrics={k: v for k, (_, v) in latest.items()},
                              history=tuple(MetricPoint(p.key, p.value, p.step, p.time) for p in mine))
    return out


def tracked(ctx: Context, *, ref: str) -> Tracked:
    with ctx.session() as session:
        return _tracked(session, lookup.resolve(session, ref, removed_ok=True))


def metric_keys(ctx: Context) -> list[str]:
    """Every metric key logged on any version, sorted (what a metric can be sorted by)."""
    with ctx.session() as session:
        return sorted(session.exec(select(m.Metric.key).distinct()).all())


def search(ctx: Context, *, kind: str | None = None, tags: Mapping[str, str] | None = None,
           params: Mapping[str, Any] | None = None, order_by: str | None = None,
           descending: bool = False) -> list[SearchHit]:
    """Versions whose tags and params match exactly, sorted by ``metric:KEY`` or ``param:KEY``."""
    with ctx.session() as session:
        q = select(m.Version).where(m.Version.removed_at.is_(None))  # lorareg rm: nothing left to pick
        if kind:
            q = q.where(m.Version.kind == kind)
        rows = session.exec(q.order_by(m.Version.id)).all()
        tracked_of = _tracked_many(session, rows)
        kept = [r for r in rows
                if not any(tracked_of[r.id].tags.get(k) != str(v) for k, v in (tags or {}).items())
                and not any(tracked_of[r.id].params.get(k) != v for k, v in (params or {}).items())]
        out = [SearchHit(ref=lookup.ref_of(r), info=info, tracked=tracked_of[r.id])
               for r, info in zip(kept, version_infos(session, ctx.home, kept))]
    if order_by:
        source, _, key = order_by.partition(":")
        if source not in ("metric", "param") or not key:
            raise LoraregError(f"cannot sort by {order_by!r}", hint="use metric:KEY or param:KEY")
        pick = (lambda h: h.tracked.metrics.get(key)) if source == "metric" else (lambda h: h.tracked.params.get(key))
        have = [h for h in out if pick(h) is not None]
        have.sort(key=pick, reverse=descending)
        out = have + [h for h in out if pick(h) is None]
    return out


def trainer_callback(ctx: Context, *, base: str, name: str, tags: Mapping[str, str] | None = None):
    """A ``transformers.TrainerCallback`` that registers every saved checkpoint's adapter as a
    new version of ``name`` and records the run's hyper-parameters and logged metrics on it."""
    from transformers import TrainerCallback

    class LoraregCallback(TrainerCallback):
        def __init__(self) -> None:
            self.registered: list[VersionInfo] = []

        def on_save(self, args, state, control, **kwargs):
            from pathlib import Path

            if not state.is_world_process_zero:
                return
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not (folder / "adapter_config.json").exists():
                return
            from lorareg.registry.add import add_adapter

            info = add_adapter(ctx, path=folder, base=base, name=name, allow_pickle=False, progress=None)
            hp = {k: v for k, v in args.to_dict().items() if isinstance(v, (int, float, str, bool)) and v is not None}
            log_params(ctx, ref=info.ref, params={**hp, "global_step": state.global_step})
            if (folder / "trainer_state.json").is_file():  # add_adapter logged its metrics already
                self.registered.append(info)
                set_tags(ctx, ref=info.ref, tags={"checkpoint": str(state.global_step), **(tags or {})})
                return
            for entry in state.log_history:
                step = entry.get("step")
                nums = {k: v for k, v in entry.items() if k not in ("step", "epoch") and isinstance(v, (int, float))
                        and math.isfinite(v)}
                if nums:
                    log_metrics(ctx, ref=info.ref, metrics=nums, step=step)
            set_tags(ctx, ref=info.ref, tags={"checkpoint": str(state.global_step), **(tags or {})})
            self.registered.append(info)

    return LoraregCallback()
