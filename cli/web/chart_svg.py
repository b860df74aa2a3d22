"""Metric charts for SVG: one small line chart per metric key, value over training step.

Points without a step are drawn in the order they were logged when no point of that key
has a step; when some have steps, the step-less ones are left out and counted in the note.
Only geometry and plain strings come out of here; the template escapes and draws."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from lorareg.cli.web.words import number

W, H = 340, 190
LEFT, RIGHT, TOP, BOTTOM = 58, 14, 14, 34


@dataclass(frozen=True)
class Tick:
    pos: float
    text: str


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    title: str


@dataclass(frozen=True)
class Chart:
    key: str
    latest: str
    points: tuple[Point, ...]
    path: str
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    x_label: str
    note: str
    width: int = W
    height: int = H
    left: int = LEFT
    top: int = TOP
    plot_right: int = W - RIGHT
    plot_bottom: int = H - BOTTOM


def nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """Round numbers covering [lo, hi] (1, 2 or 5 times a power of ten apart)."""
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t < hi + step * 0.999:
        ticks.append(round(t, 12))
        t += step
    return ticks


def charts(history: Iterable, latest: dict[str, float]) -> list[Chart]:
    """``history`` is ``Tracked.history`` (MetricPoint: key, value, step, time), oldest first."""
    by_key: dict[str, list] = {}
    for p in history:
        by_key.setdefault(p.key, []).append(p)
    return [_chart(key, pts, latest.get(key)) for key, pts in sorted(by_key.items())]


def _chart(key: str, pts: list, latest: float | None) -> Chart:
    with_step = [p for p in pts if p.step is not None]
    note = ""
    if with_step:
        xs = [float(p.step) for p in with_step]
        drawn, x_label = with_step, "step"
        if len(with_step) < len(pts):
            note = f"{len(pts) - len(with_step)} point(s) logged without a step are not drawn"
    else:
        xs = [float(i + 1) for i in range(len(pts))]
        drawn, x_label = pts, "logged (no step)"
    order = sorted(range(len(drawn)), key=lambda i: xs[i])  # stable: re-logged steps keep log order
    values = [drawn[i].value for i in order]
    xs = [xs[i] for i in order]
    y_ticks = nice_ticks(min(values), max(values))
    y_lo, y_hi = y_ticks[0], y_ticks[-1]
    x_lo, x_hi = min(xs), max(xs)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (pw / 2 if x_hi == x_lo else (x - x_lo) / (x_hi - x_lo) * pw)

    def sy(y: float) -> float:
        return TOP + ph - (y - y_lo) / (y_hi - y_lo) * ph

    points = tuple(Point(round(sx(x), 1), round(sy(drawn[i].value), 1),
                         f"{key} = {number(drawn[i].value)} at {x_label} {number(int(x)) if x == int(x) else x}")
                   for x, i in zip(xs, order))
    path = " ".join(f"{'M' if j == 0 else 'L'}{p.x},{p.y}" for j, p in enumerate(points))
    x_vals = sorted({x_lo, x_hi} | ({round((x_lo + x_hi) / 2)} if x_hi - x_lo >= 4 else set()))
    x_ticks = tuple(Tick(round(sx(x), 1), number(int(x)) if x == int(x) else number(x)) for x in x_vals)
    return Chart(key=key, latest="-" if latest is None else number(latest), points=points, path=path,
                 x_ticks=x_ticks, y_ticks=tuple(Tick(round(sy(t), 1), number(t)) for t in y_ticks),
                 x_label=x_label, note=note)
