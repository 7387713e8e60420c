"""Chart geometry for hand-written SVG: numbers in, coordinates out.

No chart library and no script: the templates draw ``<rect>``, ``<line>`` and
``<polyline>`` from these plain structures (SVG presentation attributes are
not styles, so the strict Content-Security-Policy allows them), and every
chart comes with the same numbers as a table for screen readers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal


def nice_max(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^n at or above ``value`` (at least 1)."""
    if value <= 1:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return float(step * exp)
    return float(10 * exp)  # pragma: no cover


def ticks(top: float) -> list[float]:
    """Gridlines at round steps: 5 for 1, 2.5 and 5 x 10^n, 4 for 2 x 10^n."""
    lead = top / 10 ** math.floor(math.log10(top)) if top > 0 else 1
    count = 4 if math.isclose(lead, 2) else 5
    return [top * i / count for i in range(count + 1)]


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    percent: float  # of the largest bar, 0..100 (the drawn width)
    share: float  # of the total, 0..100
    kind: str = ""  # a CSS class: send, skip, error


def bars(items: Sequence[tuple[str, int, str]]) -> list[Bar]:
    """Horizontal bars, largest first: (label, value, kind)."""
    items = sorted(items, key=lambda it: (-it[1], it[0]))
    top = max((v for _, v, _ in items), default=0) or 1
    total = sum(v for _, v, _ in items) or 1
    return [Bar(label, v, 100.0 * v / top, 100.0 * v / total, kind) for label, v, kind in items]


@dataclass(frozen=True)
class Column:
    x: float
    width: float
    label: str  # the day
    values: tuple[int, ...]
    heights: tuple[float, ...]
    ys: tuple[float, ...]
    show_label: bool


@dataclass(frozen=True)
class ColumnChart:
    width: int
    height: int
    plot_top: int
    plot_bottom: int
    left: int
    columns: list[Column]
    gridlines: list[tuple[float, str]]  # y, label
    empty: bool


def columns(
    days: Sequence[date], series: Sequence[Sequence[int]], *, width: int = 960, height: int = 260
) -> ColumnChart:
    """Grouped columns per day (e.g. sent beside delivered) on a shared scale."""
    left, top, bottom = 44, 12, height - 28
    n = max(len(days), 1)
    slot = (width - left - 8) / n
    top_value = nice_max(max((v for s in series for v in s), default=0))
    scale = (bottom - top) / top_value
    k = max(len(series), 1)
    bar_w = max(slot * 0.8 / k, 1.0)
    every = max(1, math.ceil(n / 12))  # at most ~12 day labels
    cols = []
    for i, day in enumerate(days):
        vals = tuple(int(s[i]) for s in series)
        hs = tuple(v * scale for v in vals)
        cols.append(
            Column(
                x=left + i * slot + slot * 0.1,
                width=bar_w,
                label=f"{day:%b} {day.day}",
                values=vals,
                heights=hs,
                ys=tuple(bottom - h for h in hs),
                show_label=i % every == 0,
            )
        )
    grid = [(bottom - t * scale, f"{t:,.1f}".removesuffix(".0")) for t in ticks(top_value)]
    empty = not any(v for s in series for v in s)
    return ColumnChart(width, height, top, bottom, left, cols, grid, empty)


@dataclass(frozen=True)
class Interval:
    label: str
    kind: str  # recipients | holdout | lift
    value: float  # fraction
    low: float
    high: float
    x: float
    x_low: float
    x_high: float


@dataclass(frozen=True)
class IntervalChart:
    """Dots with whiskers on one axis (conversion rates, or lift around zero)."""

    width: int
    left: int
    right: int
    rows: list[Interval]
    axis: list[tuple[float, str]]
    zero: float | None


def intervals(
    rows: Sequence[tuple[str, str, float, tuple[float, float] | None]],
    *,
    width: int = 560,
    left: int = 150,
    symmetric: bool = False,
) -> IntervalChart:
    """``rows`` = (label, kind, value, (low, high) or None); values are fractions."""
    right = width - 16
    lows = [min(v, ci[0]) if ci else v for _, _, v, ci in rows] or [0.0]
    highs = [max(v, ci[1]) if ci else v for _, _, v, ci in rows] or [0.0]
    if symmetric:
        reach = nice_max(max(abs(min(lows)), abs(max(highs)), 0.0001) * 100) / 100
        lo, hi = -reach, reach
    else:
        lo, hi = 0.0, nice_max(max(max(highs), 0.0001) * 100) / 100

    def x(v: float) -> float:
        return left + (right - left) * (v - lo) / ((hi - lo) or 1)

    out = []
    for label, kind, v, ci in rows:
        low, high = ci if ci else (v, v)
        out.append(Interval(label, kind, v, low, high, x(v), x(low), x(high)))
    axis = [(x(lo + (hi - lo) * i / 4), f"{(lo + (hi - lo) * i / 4) * 100:+.1f}%"
             if symmetric else f"{(lo + (hi - lo) * i / 4) * 100:.1f}%") for i in range(5)]
    return IntervalChart(width, left, right, out, axis, x(0.0) if symmetric else None)


@dataclass(frozen=True)
class LineChart:
    width: int
    height: int
    points: str  # "x,y x,y ..." for <polyline>
    dots: list[tuple[float, float, str, str]]  # x, y, day, value
    gridlines: list[tuple[float, str]]
    low: float
    high: float


def line(
    days: Sequence[date], values: Sequence[float | Decimal | None], *, unit: str = "",
    width: int = 560, height: int = 180,
) -> LineChart | None:
    pts = [(d, float(v)) for d, v in zip(days, values, strict=True) if v is not None]
    if not pts:
        return None
    left, top, bottom, right = 52, 10, height - 24, width - 10
    lo_v, hi_v = min(v for _, v in pts), max(v for _, v in pts)
    pad = (hi_v - lo_v) * 0.1 or max(abs(hi_v) * 0.1, 1.0)
    lo_v, hi_v = lo_v - pad, hi_v + pad
    n = max(len(days) - 1, 1)
    index = {d: i for i, d in enumerate(days)}

    def xy(d: date, v: float) -> tuple[float, float]:
        return (
            left + (right - left) * index[d] / n,
            bottom - (bottom - top) * (v - lo_v) / ((hi_v - lo_v) or 1),
        )

    coords = [(*xy(d, v), d, v) for d, v in pts]
    fmt = (lambda v: f"{v:.1f}%") if unit == "%" else (lambda v: f"{v:,.2f}")
    grid = [
        (bottom - (bottom - top) * i / 4, fmt(lo_v + (hi_v - lo_v) * i / 4)) for i in range(5)
    ]
    return LineChart(
        width,
        height,
        " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in coords),
        [(x, y, f"{d:%b} {d.day}", fmt(v)) for x, y, d, v in coords],
        grid,
        lo_v,
        hi_v,
    )
