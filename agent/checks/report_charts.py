"""The geometry of the inspection report's charts: numbers for the SVG the templates draw.

Sans-IO and markup-free: a bar chart of data completeness per terminal (a failing terminal's
0 % still shows a red bar, so that it cannot be overlooked on paper) and a trend chart per key
point whose time axis spans the data it has — from its first value (a series that began at
21:13 is not drawn from 21:00), and three minutes of history make a three-minute chart, not
seven days of empty box. Hours without data break the line instead of bridging it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from agent.checks.history import HOUR, HourStats
from agent.checks.report_words import Words

COLOURS: Final = {"ok": "#2e7d32", "warn": "#e0a100", "fail": "#c62828", "none": "#9e9e9e"}
ZERO_BAR = 6.0  # px: the width of a 0 % bar, wide enough to see and to print
OK_RATIO = 0.99  # at least this share is ok (green) ...
WARN_RATIO = 0.9  # ... at least this a warning (amber); below it a failure (red)


def grade(ratio: float | None) -> str:
    """ok · warn · fail for a share that should be 1, none where nothing was expected."""
    if ratio is None:
        return "none"
    if ratio >= OK_RATIO:
        return "ok"
    return "warn" if ratio >= WARN_RATIO else "fail"


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    y: float  # top of the bar
    width: float
    colour: str
    text: str


@dataclass(frozen=True, slots=True)
class Tick:
    at: float  # x (time axis, bar axis) or y (value axis)
    text: str
    anchor: str = "middle"


@dataclass(frozen=True, slots=True)
class BarChart:
    title: str
    width: int
    height: int
    left: int  # where the bars start (the labels end)
    length: int  # the length of a 100 % bar
    bar_height: int
    top: int
    bottom: float  # the lowest grid line
    bars: list[Bar]
    ticks: list[Tick]  # grid lines; those with text are labelled


def completeness_chart(title: str, rows: Sequence[tuple[str, float | None]], w: Words) -> BarChart:
    """One bar per (terminal, completeness)."""
    left, length, row, top = 170, 380, 24, 6
    bars = []
    for i, (name, ratio) in enumerate(rows):
        g = grade(ratio)
        width = round(length * (ratio or 0.0), 1)
        if g == "fail" and width < ZERO_BAR:
            width = ZERO_BAR
        bars.append(Bar(name, top + i * row + 3, width, COLOURS[g], w.pct(ratio)))
    bottom = top + len(rows) * row + 2
    ticks = [
        # 90 % is the warning line: drawn, but its label would crowd 100 %
        Tick(left + length * pct / 100, "" if pct == 90 else f"{pct}%")
        for pct in (0, 25, 50, 75, 90, 100)
    ]
    return BarChart(
        title, left + length + 70, round(bottom) + 16, left, length, 16, top, bottom, bars, ticks
    )


@dataclass(frozen=True, slots=True)
class TrendChart:
    title: str
    caption: str
    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    bands: list[str]  # polygon points: the min-to-max band of each run of hours
    lines: list[str]  # polyline points: the hourly means of each run
    empty: bool


def trend_chart(
    title: str,
    caption: str,
    unit: str,
    series: Sequence[HourStats],
    since: datetime,
    until: datetime,
    w: Words,
) -> TrendChart:
    """The hourly statistics of one point over [since, until), the time axis cut to its data."""
    width, height = 680, 200
    left, right, top, bottom = 64, 12, 10, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    pts = [s for s in series if s.mean is not None and s.min is not None and s.max is not None]
    start, end = since, until
    if pts:
        start = max(since, pts[0].first_at or pts[0].hour)
        end = min(until, pts[-1].hour + timedelta(seconds=HOUR))
    span = max(60.0, (end - start).total_seconds())
    values = [v for s in pts for v in (s.min, s.max, s.mean) if v is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi == lo:
        lo, hi = lo - 1, hi + 1

    def x(at: datetime) -> float:
        return round(left + plot_w * (at - start).total_seconds() / span, 1)

    def y(v: float) -> float:
        return round(top + plot_h * (1 - (v - lo) / (hi - lo)), 1)

    bands, lines = [], []
    for run in _runs(pts):
        drawn = list(
            zip(_positions(run, start, end), run if len(run) > 1 else run * 2, strict=True)
        )
        upper = [f"{x(t)},{y(s.max)}" for t, s in drawn if s.max is not None]
        lower = [f"{x(t)},{y(s.min)}" for t, s in drawn if s.min is not None]
        bands.append(" ".join(upper + lower[::-1]))
        lines.append(" ".join(f"{x(t)},{y(s.mean)}" for t, s in drawn if s.mean is not None))
    n = 4
    x_ticks = [
        Tick(
            x(start + timedelta(seconds=span * i / n)),
            w.tick(start + timedelta(seconds=span * i / n), span),
            "start" if i == 0 else "end" if i == n else "middle",
        )
        for i in range(n + 1)
    ]
    y_ticks = [Tick(y(v), w.value(v, unit), "end") for v in (lo, (lo + hi) / 2, hi)]
    return TrendChart(
        title,
        caption,
        width,
        height,
        left,
        top,
        plot_w,
        plot_h,
        x_ticks,
        y_ticks,
        bands,
        lines,
        not pts,
    )


def _runs(series: Sequence[HourStats]) -> list[list[HourStats]]:
    """Runs of consecutive hours: a missing hour breaks the line instead of bridging it."""
    out: list[list[HourStats]] = []
    for s in series:
        if out and (s.hour - out[-1][-1].hour).total_seconds() <= HOUR:
            out[-1].append(s)
        else:
            out.append([s])
    return out


def _positions(run: Sequence[HourStats], start: datetime, end: datetime) -> list[datetime]:
    """Where each hour of a run is drawn: the middle of the part of it inside the chart — or,
    for a run of one hour, both ends of that part, so that it shows as a level line."""
    parts = [(max(start, s.hour), min(end, s.hour + timedelta(seconds=HOUR))) for s in run]
    if len(run) == 1:
        return [parts[0][0], parts[0][1]]
    return [a + (b - a) / 2 for a, b in parts]
