"""The inspection report, written from the history: what a support engineer hands the site owner.

`render_report(history, since, until, format)` gives one document (HTML or Markdown): the
period's summary; availability and data completeness per terminal (received / expected); the
alarms raised and cleared; the anomalies found; the checks that were not ok; and a comparison
with the previous period of the same length (better / worse). The HTML is one self-contained
file: inline CSS and SVG charts (completeness per terminal, the hourly trend of each key point),
no script, no external asset, readable on paper.

Periods start on a whole hour (`since` is taken down to the hour), as the history keeps hours.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from agent.checks.data import Anomaly
from agent.checks.framework import Status
from agent.checks.history import (
    HOUR,
    AlarmRecord,
    CheckFigures,
    History,
    HourStats,
    TerminalFigures,
)
from agent.durations import format_duration

Format = Literal["html", "md"]
MAX_ROWS = 200  # alarms / anomaly groups listed at most; the rest are counted
SAME = 0.005  # ratios closer than this (half a percentage point) are "same"
_BARS = "▁▂▃▄▅▆▇█"
COLOURS = {"ok": "#2e7d32", "warn": "#e0a100", "fail": "#c62828", "none": "#9e9e9e"}


def _hour_floor(at: datetime) -> datetime:
    at = at.astimezone(UTC)
    return at.replace(minute=0, second=0, microsecond=0)


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.1f}%"


def _grade(ratio: float | None) -> str:
    if ratio is None:
        return "none"
    if ratio >= 0.99:
        return "ok"
    return "warn" if ratio >= 0.9 else "fail"


@dataclass(frozen=True)
class Period:
    since: datetime
    until: datetime
    terminals: list[TerminalFigures]
    checks: list[CheckFigures]
    alarms: list[AlarmRecord]
    anomalies: list[Anomaly]
    starts: list[datetime]

    @property
    def raised(self) -> int:
        return sum(1 for a in self.alarms if a.action == "raised")

    @property
    def cleared(self) -> int:
        return sum(1 for a in self.alarms if a.action == "cleared")

    @property
    def fail_hours(self) -> int:
        return sum(c.fail_hours for c in self.checks)

    @property
    def worst(self) -> Status | None:
        if not self.checks:
            return None
        return max((c.worst for c in self.checks), key=lambda s: s.severity)

    @property
    def has_data(self) -> bool:
        return bool(
            any(t.polls or t.expected_polls for t in self.terminals)
            or self.checks
            or self.alarms
            or self.anomalies
            or self.starts
        )

    @property
    def availability(self) -> float | None:
        expected = sum(t.expected_polls for t in self.terminals)
        got = sum(t.good_polls for t in self.terminals)
        return min(1.0, got / expected) if expected > 0 else None

    @property
    def completeness(self) -> float | None:
        expected = sum(t.expected_readings for t in self.terminals)
        got = sum(t.good_readings for t in self.terminals)
        return min(1.0, got / expected) if expected > 0 else None

    def terminal(self, name: str) -> TerminalFigures | None:
        return next((t for t in self.terminals if t.name == name), None)


def gather(history: History, since: datetime, until: datetime) -> Period:
    return Period(
        since,
        until,
        history.terminals(since, until),
        history.checks(since, until),
        history.alarms(since, until),
        history.anomalies(since, until),
        history.starts(since, until),
    )


@dataclass(frozen=True)
class Comparison:
    metric: str
    now: str
    before: str
    verdict: str  # better | worse | same | no data


def _ratio_verdict(now: float | None, before: float | None) -> str:
    if now is None or before is None:
        return "no data"
    if abs(now - before) < SAME:
        return "same"
    return "better" if now > before else "worse"


def _count_verdict(now: int, before: int, had_data: bool) -> str:
    if not had_data:
        return "no data"
    if now == before:
        return "same"
    return "better" if now < before else "worse"


def compare(current: Period, previous: Period) -> list[Comparison]:
    """Each figure of this period against the previous one (higher ratios, fewer events: better)."""
    had = previous.has_data
    out = [
        Comparison(
            "data completeness (all terminals)",
            _pct(current.completeness),
            _pct(previous.completeness),
            _ratio_verdict(current.completeness, previous.completeness),
        ),
        Comparison(
            "availability (all terminals)",
            _pct(current.availability),
            _pct(previous.availability),
            _ratio_verdict(current.availability, previous.availability),
        ),
    ]
    for t in current.terminals:
        before = previous.terminal(t.name)
        b = before.completeness if before else None
        out.append(
            Comparison(
                f"completeness of {t.name}",
                _pct(t.completeness),
                _pct(b),
                _ratio_verdict(t.completeness, b),
            )
        )
    for label, now, then in (
        ("alarms raised", current.raised, previous.raised),
        ("anomalies found", len(current.anomalies), len(previous.anomalies)),
        ("check-hours failing", current.fail_hours, previous.fail_hours),
        ("agent starts", len(current.starts), len(previous.starts)),
    ):
        out.append(
            Comparison(label, str(now), str(then) if had else "n/a", _count_verdict(now, then, had))
        )
    return out


@dataclass(frozen=True)
class AnomalyGroup:
    key: str
    kind: str
    count: int
    first: datetime
    last: datetime
    example: str


def group_anomalies(anomalies: Sequence[Anomaly]) -> list[AnomalyGroup]:
    groups: dict[tuple[str, str], list[Anomaly]] = {}
    for a in anomalies:
        groups.setdefault((a.key, a.kind), []).append(a)
    out = [
        AnomalyGroup(key, kind, len(items), items[0].at, items[-1].at, items[-1].detail)
        for (key, kind), items in groups.items()
    ]
    return sorted(out, key=lambda g: (-g.count, g.key, g.kind))


def key_series(
    history: History, period: Period, key_points: Sequence[str] | None, max_trends: int
) -> list[tuple[str, str, list[HourStats]]]:
    """(label, unit, hourly stats) of the key points: those named, else every numeric point."""
    points = history.numeric_points(period.since, period.until)
    if key_points:
        wanted = set(key_points)
        points = [p for p in points if f"{p[0]}.{p[1]}" in wanted]
    out = []
    for terminal, point, unit in points[:max_trends]:
        out.append(
            (
                f"{terminal}.{point}",
                unit,
                history.point_series(terminal, point, period.since, period.until),
            )
        )
    return out


def render_report(
    history: History,
    since: datetime,
    until: datetime | None = None,
    format: Format = "html",
    *,
    key_points: Sequence[str] | None = None,
    max_trends: int = 12,
    gateway: str | None = None,
    now: datetime | None = None,
) -> str:
    """The inspection report of [since, until) (until: now), compared with the period before."""
    now = now or datetime.fromtimestamp(history.clock(), UTC)
    until = until or now
    since = _hour_floor(since)
    if until <= since:
        raise ValueError("the report period is empty: since must be before until")
    length = until - since
    current = gather(history, since, until)
    previous = gather(history, since - length, since)
    gateway = gateway or history.meta("gateway") or "gateway"
    trends = key_series(history, current, key_points, max_trends)
    doc = _Doc(gateway, current, previous, compare(current, previous), trends, now)
    if format == "html":
        return doc.html()
    if format == "md":
        return doc.markdown()
    raise ValueError(f"unknown report format {format!r} (html or md)")


@dataclass(frozen=True)
class _Doc:
    gateway: str
    current: Period
    previous: Period
    comparison: list[Comparison]
    trends: list[tuple[str, str, list[HourStats]]]
    generated: datetime

    # -- shared wording ---------------------------------------------------------------------

    @property
    def title(self) -> str:
        return f"Inspection report — {self.gateway}"

    @property
    def period_line(self) -> str:
        c = self.current
        length = format_duration(round((c.until - c.since).total_seconds()))
        return f"{_when(c.since)} to {_when(c.until)} ({length})"

    def summary_lines(self) -> list[tuple[str, str]]:
        c = self.current
        worst = c.worst.value if c.worst else "no checks recorded"
        return [
            ("overall status (worst check in the period)", worst),
            ("data completeness", _pct(c.completeness)),
            ("terminal availability", _pct(c.availability)),
            ("terminals", str(len(c.terminals))),
            ("alarms raised / cleared", f"{c.raised} / {c.cleared}"),
            ("anomalies found", str(len(c.anomalies))),
            ("check-hours failing", str(c.fail_hours)),
            ("agent starts", str(len(c.starts))),
        ]

    def verdict(self) -> str:
        better = sum(1 for x in self.comparison if x.verdict == "better")
        worse = sum(1 for x in self.comparison if x.verdict == "worse")
        if not self.previous.has_data:
            return "No history for the previous period: nothing to compare with."
        if not better and not worse:
            return "Compared with the previous period: no change."
        return (
            f"Compared with the previous period: {better} figure{'s' * (better != 1)} better, "
            f"{worse} worse."
        )

    def terminal_rows(self) -> list[list[str]]:
        rows = []
        for t in self.current.terminals:
            before = self.previous.terminal(t.name)
            b = before.completeness if before else None
            rows.append(
                [
                    t.name,
                    _pct(t.availability),
                    f"{t.good_polls} / {t.expected_polls:.0f}",
                    _pct(t.completeness),
                    f"{t.good_readings} / {t.expected_readings:.0f}",
                    str(t.bad_readings),
                    _pct(b),
                    _ratio_verdict(t.completeness, b),
                ]
            )
        return rows

    TERMINAL_HEAD = (
        "terminal",
        "availability",
        "polls answered / expected",
        "completeness",
        "readings received / expected",
        "bad readings",
        "previous completeness",
        "change",
    )

    def alarm_rows(self) -> list[list[str]]:
        return [
            [_when(a.at), a.check, a.action, f"{a.previous} → {a.status}", a.message]
            for a in self.current.alarms[:MAX_ROWS]
        ]

    def anomaly_rows(self) -> list[list[str]]:
        return [
            [g.key, g.kind, str(g.count), _when(g.first), _when(g.last), g.example]
            for g in group_anomalies(self.current.anomalies)[:MAX_ROWS]
        ]

    def check_rows(self) -> list[list[str]]:
        bad = [c for c in self.current.checks if c.worst in (Status.FAIL, Status.WARN)]
        bad.sort(key=lambda c: (-c.worst.severity, -c.fail_hours, -c.warn_hours, c.id))
        return [[c.id, c.worst.value, str(c.fail_hours), str(c.warn_hours)] for c in bad[:MAX_ROWS]]

    def trend_caption(self, unit: str, series: list[HourStats]) -> str:
        lows = [s.min for s in series if s.min is not None]
        highs = [s.max for s in series if s.max is not None]
        total = sum(s.count for s in series)
        means = [s.mean * s.count for s in series if s.mean is not None]
        if not lows:
            return "no numeric values in the period"
        mean = sum(means) / total if total else 0.0
        u = f" {unit}" if unit else ""
        return f"min {min(lows):.4g}{u} · mean {mean:.4g}{u} · max {max(highs):.4g}{u} · {total} samples"

    # -- markdown ---------------------------------------------------------------------------

    def markdown(self) -> str:
        out = [
            f"# {self.title}",
            "",
            f"Period: {self.period_line}  ",
            f"Generated: {_when(self.generated)}",
            "",
        ]
        out += ["## Summary", "", self.verdict(), ""]
        out += _md_table(("figure", "value"), [list(x) for x in self.summary_lines()])
        out += ["", "## Terminals: availability and data completeness", ""]
        rows = self.terminal_rows()
        out += _md_table(self.TERMINAL_HEAD, rows) if rows else ["No terminal in this period."]
        out += ["", "## Compared with the previous period", ""]
        prev = self.previous
        out += [f"Previous period: {_when(prev.since)} to {_when(prev.until)}", ""]
        out += _md_table(
            ("figure", "this period", "previous period", "change"),
            [[x.metric, x.now, x.before, x.verdict] for x in self.comparison],
        )
        out += [
            "",
            f"## Alarms raised and cleared ({self.current.raised} raised, {self.current.cleared} cleared)",
            "",
        ]
        rows = self.alarm_rows()
        out += (
            _md_table(("time", "check", "action", "status", "message"), rows)
            if rows
            else ["No alarm."]
        )
        out += _more(len(self.current.alarms))
        out += ["", f"## Anomalies found ({len(self.current.anomalies)})", ""]
        rows = self.anomaly_rows()
        out += (
            _md_table(("point", "kind", "count", "first", "last", "latest detail"), rows)
            if rows
            else ["No anomaly."]
        )
        out += ["", "## Checks that were not ok", ""]
        rows = self.check_rows()
        out += (
            _md_table(("check", "worst status", "hours failing", "hours warning"), rows)
            if rows
            else ["Every check stayed ok."]
        )
        if self.trends:
            out += ["", "## Trends of key points (hourly means)", ""]
            for label, unit, series in self.trends:
                out += [f"- **{label}** `{_sparkline(series)}` {self.trend_caption(unit, series)}"]
        if self.current.starts:
            out += ["", "## Agent starts", ""]
            out += [f"- {_when(s)}" for s in self.current.starts[:MAX_ROWS]]
        return "\n".join(out) + "\n"

    # -- html -------------------------------------------------------------------------------

    def html(self) -> str:
        e = html.escape
        c = self.current
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{e(self.title)}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>{e(self.title)}</h1>",
            f'<p class="meta">Period: {e(self.period_line)}<br>Generated: {e(_when(self.generated))}</p>',
            "<h2>Summary</h2>",
            f"<p>{e(self.verdict())}</p>",
            _html_table(("figure", "value"), [list(x) for x in self.summary_lines()]),
            "<h2>Terminals: availability and data completeness</h2>",
        ]
        rows = self.terminal_rows()
        if rows:
            parts.append(_completeness_svg(c.terminals))
            parts.append(_html_table(self.TERMINAL_HEAD, rows, verdict_col=7))
        else:
            parts.append("<p>No terminal in this period.</p>")
        parts += [
            "<h2>Compared with the previous period</h2>",
            f'<p class="meta">Previous period: {e(_when(self.previous.since))} to '
            f"{e(_when(self.previous.until))}</p>",
            _html_table(
                ("figure", "this period", "previous period", "change"),
                [[x.metric, x.now, x.before, x.verdict] for x in self.comparison],
                verdict_col=3,
            ),
            f"<h2>Alarms raised and cleared ({c.raised} raised, {c.cleared} cleared)</h2>",
        ]
        rows = self.alarm_rows()
        parts.append(
            _html_table(("time", "check", "action", "status", "message"), rows)
            if rows
            else "<p>No alarm.</p>"
        )
        parts += [f"<p>{e(line)}</p>" for line in _more(len(c.alarms))]
        parts.append(f"<h2>Anomalies found ({len(c.anomalies)})</h2>")
        rows = self.anomaly_rows()
        parts.append(
            _html_table(("point", "kind", "count", "first", "last", "latest detail"), rows)
            if rows
            else "<p>No anomaly.</p>"
        )
        parts.append("<h2>Checks that were not ok</h2>")
        rows = self.check_rows()
        parts.append(
            _html_table(("check", "worst status", "hours failing", "hours warning"), rows)
            if rows
            else "<p>Every check stayed ok.</p>"
        )
        if self.trends:
            parts.append("<h2>Trends of key points (hourly mean, band: min to max)</h2>")
            for label, unit, series in self.trends:
                parts.append('<figure class="trend">')
                parts.append(_trend_svg(label, unit, series, c.since, c.until))
                parts.append(
                    f"<figcaption><b>{e(label)}</b> — {e(self.trend_caption(unit, series))}</figcaption>"
                )
                parts.append("</figure>")
        if c.starts:
            parts.append("<h2>Agent starts</h2><ul>")
            parts += [f"<li>{e(_when(s))}</li>" for s in c.starts[:MAX_ROWS]]
            parts.append("</ul>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"


def _more(total: int) -> list[str]:
    return [f"… and {total - MAX_ROWS} more."] if total > MAX_ROWS else []


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return out


def _html_table(
    head: Sequence[str], rows: Sequence[Sequence[str]], verdict_col: int | None = None
) -> str:
    e = html.escape
    out = ["<table><thead><tr>", *(f"<th>{e(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = f' class="{cell.replace(" ", "-")}"' if i == verdict_col else ""
            cells.append(f"<td{cls}>{e(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _sparkline(series: Sequence[HourStats], width: int = 48) -> str:
    means = [s.mean for s in series if s.mean is not None]
    if not means:
        return ""
    step = max(1, -(-len(means) // width))
    buckets = [
        sum(means[i : i + step]) / len(means[i : i + step]) for i in range(0, len(means), step)
    ]
    lo, hi = min(buckets), max(buckets)
    span = hi - lo
    return "".join(
        _BARS[0 if span == 0 else round((b - lo) / span * (len(_BARS) - 1))] for b in buckets
    )


def _completeness_svg(terminals: Sequence[TerminalFigures]) -> str:
    e = html.escape
    label_w, bar_w, row_h, pad = 170, 380, 24, 6
    width, height = label_w + bar_w + 70, len(terminals) * row_h + 2 * pad + 16
    out = [
        f'<svg class="bars" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="data completeness per terminal">',
        "<title>Data completeness per terminal</title>",
    ]
    for i, t in enumerate(terminals):
        y = pad + i * row_h
        ratio = t.completeness
        w = round(bar_w * (ratio or 0.0), 1)
        colour = COLOURS[_grade(ratio)]
        out += [
            f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end">{e(t.name)}</text>',
            f'<rect x="{label_w}" y="{y + 3}" width="{bar_w}" height="16" fill="#eeeeee"/>',
            f'<rect x="{label_w}" y="{y + 3}" width="{w}" height="16" fill="{colour}"/>',
            f'<text x="{label_w + bar_w + 6}" y="{y + 16}">{e(_pct(ratio))}</text>',
        ]
    axis_y = pad + len(terminals) * row_h + 12
    for pct in (0, 25, 50, 75, 90, 100):
        x = label_w + bar_w * pct / 100
        out.append(
            f'<line x1="{x}" y1="{pad}" x2="{x}" y2="{axis_y - 10}" stroke="#616161" '
            f'stroke-width="0.5" stroke-dasharray="2,2"/>'
        )
        if pct != 90:  # 90% is the warning line: drawn, but its label would crowd 100%
            out.append(
                f'<text class="tick" x="{x}" y="{axis_y}" text-anchor="middle">{pct}%</text>'
            )
    out.append("</svg>")
    return "".join(out)


def _trend_svg(
    label: str, unit: str, series: Sequence[HourStats], since: datetime, until: datetime
) -> str:
    e = html.escape
    width, height = 680, 200
    left, right, top, bottom = 64, 12, 10, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for s in series for v in (s.min, s.max, s.mean) if v is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    span_t = (until - since).total_seconds()

    def x(at: datetime) -> float:
        return round(left + plot_w * (at - since).total_seconds() / span_t, 1)

    def y(v: float) -> float:
        return round(top + plot_h * (1 - (v - lo) / (hi - lo)), 1)

    out = [
        f'<svg class="trend" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="trend of {e(label)}">',
        f"<title>{e(label)}</title>",
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#9e9e9e"/>',
    ]
    u = f" {unit}" if unit else ""
    for v in (lo, (lo + hi) / 2, hi):
        out.append(
            f'<text class="tick" x="{left - 4}" y="{y(v) + 4}" text-anchor="end">{e(f"{v:.4g}{u}")}</text>'
        )
    ticks = 4
    for i in range(ticks + 1):
        at = since + (until - since) * i / ticks
        anchor = "start" if i == 0 else "end" if i == ticks else "middle"
        out.append(
            f'<text class="tick" x="{x(at)}" y="{height - 8}" text-anchor="{anchor}">'
            f"{at.astimezone(UTC):%m-%d %H:%M}</text>"
        )
    for segment in _segments(series):
        pts = [s for s in segment if s.mean is not None and s.min is not None and s.max is not None]
        if not pts:
            continue
        centre = [s.hour + timedelta(seconds=HOUR / 2) for s in pts]
        upper = " ".join(
            f"{x(t)},{y(s.max)}" for t, s in zip(centre, pts, strict=True) if s.max is not None
        )
        lower = " ".join(
            f"{x(t)},{y(s.min)}"
            for t, s in reversed(list(zip(centre, pts, strict=True)))
            if s.min is not None
        )
        out.append(
            f'<polygon points="{upper} {lower}" fill="#90caf9" fill-opacity="0.45" stroke="none"/>'
        )
        line = " ".join(
            f"{x(t)},{y(s.mean)}" for t, s in zip(centre, pts, strict=True) if s.mean is not None
        )
        if len(pts) == 1:
            t, s = centre[0], pts[0]
            assert s.mean is not None
            out.append(f'<circle cx="{x(t)}" cy="{y(s.mean)}" r="2" fill="#0d47a1"/>')
        else:
            out.append(
                f'<polyline points="{line}" fill="none" stroke="#0d47a1" stroke-width="1.5"/>'
            )
    if not series:
        out.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle">no data</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _segments(series: Sequence[HourStats]) -> list[list[HourStats]]:
    """Runs of consecutive hours: a missing hour breaks the line instead of bridging it."""
    out: list[list[HourStats]] = []
    for s in series:
        if out and (s.hour - out[-1][-1].hour).total_seconds() <= HOUR:
            out[-1].append(s)
        else:
            out.append([s])
    return out


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#212121;
max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #bdbdbd;padding-bottom:.2rem}
.meta{color:#616161}table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #bdbdbd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.better{color:#2e7d32;font-weight:bold}
td.worse{color:#c62828;font-weight:bold}svg{font-size:12px;font-family:inherit;max-width:100%;
height:auto}svg .tick{font-size:10px;fill:#616161}figure{margin:1rem 0}
figcaption{font-size:.9rem;color:#424242}
@media print{body{margin:0;max-width:none}h2{break-after:avoid}table,figure{break-inside:avoid}}
"""
