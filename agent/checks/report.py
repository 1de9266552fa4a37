"""The inspection report, written from the history: what a support engineer hands the site owner.

`render_report(history, since, until, format, language=…)` gives one document (HTML or
Markdown, in English or Chinese): a conclusion a site owner understands (what worked, what failed
and for how long, what changed against the previous period, what to do); the key figures;
availability and data completeness per terminal; the comparison with the previous period of the
same length; the alarms, the checks that were not ok and the anomalies; and the trend of each
key point. The HTML is one self-contained, print-ready file (A4): inline CSS and SVG charts, no
script, no external asset.

Rules. The site's completeness and availability are the mean over the terminals of each one's
own figure, capped at 1, so that a station reporting more often than expected cannot hide a
dead one; the worst terminal is named. Terminals are judged over the time the agent ran: the
time it did not run is its own fact (said in the conclusion and the key figures), not blamed on
the terminals or the checks. The period starts on a whole hour (the history keeps hours), and
never before the history begins. Durations are in words at the unit that fits, failing times
measured from the checks' status changes, each status lasting until the next change, the next
start or the end of the run it was seen in. Figures are gathered here; the words
live in `report_words`, the charts' geometry in `report_charts`, the layout in the Jinja2
templates of `templates/` (autoescaped), imported only when a report is rendered.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, TypedDict, Unpack

from agent.checks.data import Anomaly
from agent.checks.framework import Status
from agent.checks.history import AlarmRecord, CheckFigures, History, HourStats, TerminalFigures
from agent.checks.report_charts import (
    COLOURS,
    OK_RATIO,
    BarChart,
    TrendChart,
    completeness_chart,
    grade,
    trend_chart,
)
from agent.checks.report_words import Words
from agent.checks.runs import Runs
from agent.config_base import Language

if TYPE_CHECKING:
    from agent.config import SiteConfig

Format = Literal["html", "md"]
FORMATS: tuple[Format, ...] = ("html", "md")
# (terminal, point, language) -> the point's plain name, if it has one (Config.point_label).
PointNames = Callable[[str, str, Language], str | None]
MAX_ROWS = 200  # alarms / anomaly groups / checks listed at most; the rest are counted
SAME = 0.005  # ratios closer than this (half a percentage point) are "same"
NAMED = 3  # terminals, checks and changes the conclusion names at most
NOTED = 60.0  # seconds: a shorter time without data or with the agent off goes unmentioned
_BARS = "▁▂▃▄▅▆▇█"


def _hour_floor(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _at(posix: float) -> datetime:
    return datetime.fromtimestamp(posix, UTC)


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


# -- figures ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckTime:
    """Seconds a check spent failing and warning in a period; None where the history kept no
    status change of it (the report then says "up to" its failing hours)."""

    fail: float | None
    warn: float | None


@dataclass(frozen=True)
class Timeline:
    """The checks' status changes, the agent's starts and its runs, oldest first: how long each
    status lasted. A status holds until the next change, the next start, or the end of the run
    it was seen in (the agent's last mark of life) — never into time the agent did not run. In
    a history older than its runs, until the end of the check's last hour instead."""

    changes: list[tuple[datetime, str, str]]  # (at, check id, status)
    starts: list[datetime]
    runs: Runs

    @classmethod
    def load(cls, history: History, since: datetime, until: datetime) -> Timeline:
        changes = [(c["at"], c["id"], c["status"]) for c in history.changes(since, until)]
        return cls(changes, history.starts(since, until), history.runs(since, until))

    def off(self, since: datetime, until: datetime) -> list[tuple[datetime, datetime]]:
        """The stretches of [since, until) the agent did not run."""
        return [(_at(a), _at(b)) for a, b in self.runs.off(since.timestamp(), until.timestamp())]

    def times(
        self, checks: Sequence[CheckFigures], since: datetime, until: datetime
    ) -> dict[str, CheckTime]:
        by_id: dict[str, list[tuple[datetime, str]]] = {}
        for at, check_id, status in self.changes:
            by_id.setdefault(check_id, []).append((at, status))
        out = {}
        for check in checks:
            events = by_id.get(check.id)
            if not events:
                out[check.id] = CheckTime(None, None)
                continue
            spent = {Status.FAIL.value: 0.0, Status.WARN.value: 0.0}
            for i, (at, status) in enumerate(events):
                if status not in spent:
                    continue
                stop = events[i + 1][0] if i + 1 < len(events) else until
                restart = bisect.bisect_right(self.starts, at)
                if restart < len(self.starts):
                    stop = min(stop, self.starts[restart])
                run_end = self.runs.end_of(at.timestamp())
                if run_end is not None:
                    stop = min(stop, _at(run_end))
                elif check.last_seen is not None:
                    stop = min(stop, check.last_seen)
                begin, end = max(at, since), min(stop, until)
                if end > begin:
                    spent[status] += (end - begin).total_seconds()
            out[check.id] = CheckTime(spent[Status.FAIL.value], spent[Status.WARN.value])
        return out


@dataclass(frozen=True)
class Period:
    since: datetime
    until: datetime
    terminals: list[TerminalFigures]
    checks: list[CheckFigures]
    alarms: list[AlarmRecord]
    anomalies: list[Anomaly]
    starts: list[datetime]
    times: Mapping[str, CheckTime]
    off: list[tuple[datetime, datetime]]  # the stretches the agent did not run

    @property
    def seconds(self) -> float:
        return (self.until - self.since).total_seconds()

    @property
    def off_seconds(self) -> float:
        """How long, in all, the agent did not run."""
        return sum((b - a).total_seconds() for a, b in self.off)

    @property
    def longest_off(self) -> tuple[datetime, datetime] | None:
        return max(self.off, key=lambda s: s[1] - s[0], default=None)

    @property
    def never_ran(self) -> bool:
        return self.off_seconds >= self.seconds

    @property
    def raised(self) -> int:
        return sum(1 for a in self.alarms if a.action == "raised")

    @property
    def cleared(self) -> int:
        return sum(1 for a in self.alarms if a.action == "cleared")

    @property
    def open_alarms(self) -> int:
        """Checks whose last alarm in the period left them not ok."""
        last = {a.check: a.status for a in self.alarms}
        return sum(1 for status in last.values() if status != Status.OK.value)

    @property
    def worst(self) -> Status | None:
        if not self.checks:
            return None
        return max((c.worst for c in self.checks), key=lambda s: s.severity)

    @property
    def failed(self) -> list[CheckFigures]:
        """The checks that failed, the longest failing first."""
        out = [c for c in self.checks if c.worst is Status.FAIL]
        return sorted(out, key=lambda c: (-self.fail_seconds(c), c.id))

    def fail_seconds(self, check: CheckFigures) -> float:
        known = self.times.get(check.id, CheckTime(None, None)).fail
        return float(check.fail_hours * 3600) if known is None else known

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
        """The mean of the terminals' own availability (each capped at 1)."""
        return _mean(t.availability for t in self.terminals)

    @property
    def completeness(self) -> float | None:
        """The mean of the terminals' own data completeness (each capped at 1)."""
        return _mean(t.completeness for t in self.terminals)

    @property
    def expected(self) -> list[TerminalFigures]:
        """The terminals that were expected to report in the period."""
        return [t for t in self.terminals if t.completeness is not None]

    @property
    def worst_terminal(self) -> TerminalFigures | None:
        """The least complete terminal (then the least available, then by name)."""
        ranked = sorted(
            self.expected,
            key=lambda t: (t.completeness or 0.0, t.availability or 0.0, t.name),
        )
        return ranked[0] if ranked else None

    @property
    def incomplete(self) -> list[TerminalFigures]:
        """The terminals below the ok line, the least complete first."""
        bad = [t for t in self.expected if (t.completeness or 0.0) < OK_RATIO]
        return sorted(bad, key=lambda t: (t.completeness or 0.0, t.name))

    def terminal(self, name: str) -> TerminalFigures | None:
        return next((t for t in self.terminals if t.name == name), None)


def gather(history: History, since: datetime, until: datetime, timeline: Timeline) -> Period:
    checks = history.checks(since, until)
    return Period(
        since,
        until,
        history.terminals(since, until),
        checks,
        history.alarms(since, until),
        history.anomalies(since, until),
        history.starts(since, until),
        timeline.times(checks, since, until),
        timeline.off(since, until),
    )


@dataclass(frozen=True, slots=True)
class Comparison:
    metric: str
    now: str
    before: str
    verdict: str  # better · worse · same · none
    verdict_text: str


def _ratio_verdict(now: float | None, before: float | None) -> str:
    if now is None or before is None:
        return "none"
    if abs(now - before) < SAME:
        return "same"
    return "better" if now > before else "worse"


def _count_verdict(now: int, before: int, had_data: bool) -> str:
    if not had_data:
        return "none"
    if now == before:
        return "same"
    return "better" if now < before else "worse"


def compare(current: Period, previous: Period, w: Words) -> list[Comparison]:
    """Each figure of this period against the previous one (higher ratios, fewer events: better)."""

    def row(metric: str, now: str, before: str, verdict: str) -> Comparison:
        return Comparison(metric, now, before, verdict, w(f"verdict_{verdict}"))

    out = [
        row(
            w("cmp_completeness"),
            w.pct(current.completeness),
            w.pct(previous.completeness),
            _ratio_verdict(current.completeness, previous.completeness),
        ),
        row(
            w("cmp_availability"),
            w.pct(current.availability),
            w.pct(previous.availability),
            _ratio_verdict(current.availability, previous.availability),
        ),
    ]
    for t in current.terminals:
        before = previous.terminal(t.name)
        b = before.completeness if before else None
        out.append(
            row(
                w("cmp_terminal", terminal=t.name),
                w.pct(t.completeness),
                w.pct(b),
                _ratio_verdict(t.completeness, b),
            )
        )
    had = previous.has_data
    for key, now, then in (
        ("cmp_alarms", current.raised, previous.raised),
        ("cmp_anomalies", len(current.anomalies), len(previous.anomalies)),
        ("cmp_failing", len(current.failed), len(previous.failed)),
        ("cmp_starts", len(current.starts), len(previous.starts)),
    ):
        before_text = w.number(then) if had else w("na")
        out.append(row(w(key), w.number(now), before_text, _count_verdict(now, then, had)))
    return out


@dataclass(frozen=True, slots=True)
class AnomalyGroup:
    terminal: str
    point: str
    kind: str
    count: int
    first: datetime
    last: datetime
    example: Anomaly  # the latest


def group_anomalies(anomalies: Sequence[Anomaly]) -> list[AnomalyGroup]:
    groups: dict[tuple[str, str, str], list[Anomaly]] = {}
    for a in anomalies:
        groups.setdefault((a.terminal, a.point, a.kind), []).append(a)
    out = [
        AnomalyGroup(t, p, k, len(items), items[0].at, items[-1].at, items[-1])
        for (t, p, k), items in groups.items()
    ]
    return sorted(out, key=lambda g: (-g.count, g.terminal, g.point, g.kind))


def key_series(
    history: History, period: Period, key_points: Sequence[str] | None, max_trends: int
) -> list[tuple[str, str, str, list[HourStats]]]:
    """(terminal, point, unit, hourly stats) of the key points: those named, else every numeric
    point."""
    points = history.numeric_points(period.since, period.until)
    if key_points:
        wanted = set(key_points)
        points = [p for p in points if f"{p[0]}.{p[1]}" in wanted]
    return [
        (terminal, point, unit, history.point_series(terminal, point, period.since, period.until))
        for terminal, point, unit in points[:max_trends]
    ]


# -- the document ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TerminalRow:
    name: str
    availability: str
    polls: str
    completeness: str
    readings: str
    bad: str
    missing: str
    previous: str
    verdict: str
    verdict_text: str
    grade: str


@dataclass(frozen=True, slots=True)
class CheckRow:
    name: str
    id: str
    status: str
    status_text: str
    failing: str
    warning: str


@dataclass(frozen=True, slots=True)
class Trend:
    chart: TrendChart
    sparkline: str


@dataclass(frozen=True)
class Report:
    """Everything a template lays out, in words of the report's language."""

    language: Language
    t: Words
    title: str
    site: list[tuple[str, str]]
    period: str
    generated: str
    zone: str
    clamped: str | None
    conclusion: str
    figures: list[tuple[str, str]]
    chart: BarChart | None
    terminals: list[TerminalRow]
    previous: str
    comparison: list[Comparison]
    alarms: list[list[str]]
    alarms_more: str | None
    alarms_head: str
    checks: list[CheckRow]
    checks_none: str  # what to say when no check was not ok
    anomalies: list[list[str]]
    anomalies_head: str
    trends: list[Trend]
    starts: list[str]


class _Names:
    """Plain names of points and checks in the report's language."""

    def __init__(self, w: Words, names: PointNames | None, terminals: Iterable[str]) -> None:
        self.w = w
        self._names = names
        # the longest first: "a.b" before "a" when a target reads "a.b.level"
        self._terminals = sorted(set(terminals), key=len, reverse=True)

    def point(self, terminal: str, point: str) -> str:
        label = self._names(terminal, point, self.w.language) if self._names else None
        return self.w.point_name(terminal, point, label)

    def target(self, check_id: str) -> str | None:
        """What follows ':' in a data check's id ("dam.level") as a point's plain name."""
        name, _, rest = check_id.partition(":")
        if not name.startswith("data."):
            return None
        for terminal in self._terminals:
            if rest.startswith(f"{terminal}."):
                return self.point(terminal, rest[len(terminal) + 1 :])
        return None

    def check(self, check_id: str) -> str:
        return self.w.check_name(check_id, self.target(check_id))

    def action(self, check_id: str) -> str:
        return self.w.check_action(check_id, self.target(check_id))


def _terminal_of(check_id: str) -> str | None:
    """The terminal a terminal check is about (`terminals.freshness:dam` -> dam)."""
    name, _, rest = check_id.partition(":")
    if name in ("terminals.success", "terminals.latency", "terminals.freshness"):
        return rest
    return None


def conclude(current: Period, previous: Period, w: Words, names: _Names) -> str:
    """One paragraph: what worked, what failed and for how long, what changed, what to do."""
    length = w.duration(current.seconds)
    start, end = w.when(current.since), w.when(current.until)
    out: list[str] = []
    todo: list[str] = []
    expected, incomplete = current.expected, current.incomplete
    worst = current.worst_terminal
    if current.never_ran:
        out.append(w("c_never_ran", length=length, start=start, end=end))
        todo.append(w("do_off"))
    elif not expected:
        out.append(w("c_none", length=length, start=start, end=end))
    elif not incomplete:
        out.append(
            w(
                "c_all_ok" if len(expected) > 1 else "c_one_ok",
                length=length,
                start=start,
                end=end,
                count=len(expected),
                completeness=w.pct(current.completeness),
            )
        )
    else:
        assert worst is not None
        out.append(
            w(
                "c_some",
                length=length,
                start=start,
                end=end,
                good=len(expected) - len(incomplete),
                count=len(expected),
                completeness=w.pct(current.completeness),
                worst=worst.name,
                worst_completeness=w.pct(worst.completeness),
            )
        )
    longest = current.longest_off
    if not current.never_ran and longest is not None and current.off_seconds >= NOTED:
        out.append(
            w(
                "c_off",
                duration=w.duration(current.off_seconds),
                start=w.when(longest[0]),
                end=w.when(longest[1]),
            )
        )
        todo.append(w("do_off"))
    for t in incomplete[:NAMED]:
        missing = w.duration(t.missing_seconds)
        if not t.good_readings:
            out.append(w("c_dead", terminal=t.name, duration=missing))
        elif t.missing_seconds >= NOTED:
            out.append(
                w("c_short", terminal=t.name, duration=missing, completeness=w.pct(t.completeness))
            )
        else:
            out.append(w("c_bad", terminal=t.name, completeness=w.pct(t.completeness)))
    if len(incomplete) > NAMED:
        out.append(w("c_more", count=len(incomplete) - NAMED))
    for t in incomplete:
        if not t.good_readings:
            todo.append(w("do_dead", terminal=t.name))
        elif t.missing_seconds >= NOTED:
            todo.append(w("do_link", terminal=t.name))
        else:
            todo.append(w("do_sensor", point=t.name))
    told = {t.name for t in incomplete}
    failed = [c for c in current.failed if _terminal_of(c.id) not in told]
    if failed:
        items = [
            w("c_check_item", name=names.check(c.id), duration=_fail_time(current, c, w))
            for c in failed[:NAMED]
        ]
        out.append(w("c_checks", items=w.join(items)))
        todo += [names.action(c.id) for c in failed]
    if current.open_alarms:
        out.append(w("c_open", count=current.open_alarms))
    out += _changes(current, previous, w)
    actions = list(dict.fromkeys(todo))  # each once, in order
    out.append(w("c_todo", items=w.join(actions)) if actions else w("c_nothing"))
    return w.sentences(out)


def _changes(current: Period, previous: Period, w: Words) -> list[str]:
    if not previous.has_data or previous.completeness is None:
        return [w("c_no_history")]
    length = w.duration(previous.seconds)
    now, before = current.completeness, previous.completeness
    verdict = _ratio_verdict(now, before)
    key = {"same": "c_same", "better": "c_up", "worse": "c_down"}.get(verdict)
    out = [] if key is None else [w(key, length=length, now=w.pct(now), before=w.pct(before))]
    moved: dict[str, list[str]] = {"better": [], "worse": []}
    for t in current.terminals:
        then = previous.terminal(t.name)
        b = then.completeness if then else None
        verdict = _ratio_verdict(t.completeness, b)
        if verdict in moved:
            moved[verdict].append(
                w("c_change_item", terminal=t.name, before=w.pct(b), now=w.pct(t.completeness))
            )
    for verdict, key in (("worse", "c_worse"), ("better", "c_better")):
        if moved[verdict]:
            out.append(w(key, items=w.join(moved[verdict][:NAMED])))
    return out


def _fail_time(period: Period, check: CheckFigures, w: Words) -> str:
    known = period.times.get(check.id, CheckTime(None, None)).fail
    if known is None:
        return w("up_to", duration=w.duration(check.fail_hours * 3600))
    return w.duration(known)


def _warn_time(period: Period, check: CheckFigures, w: Words) -> str:
    known = period.times.get(check.id, CheckTime(None, None)).warn
    if known is None:
        return w("up_to", duration=w.duration(check.warn_hours * 3600)) if check.warn_hours else "—"
    return w.duration(known) if known else "—"


def sparkline(series: Sequence[HourStats], width: int = 48) -> str:
    """The hourly means as a line of block characters (the Markdown report's chart)."""
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


def _caption(unit: str, series: Sequence[HourStats], w: Words) -> str:
    lows = [s.min for s in series if s.min is not None]
    highs = [s.max for s in series if s.max is not None]
    total = sum(s.count for s in series)
    if not lows or not highs:
        return w("no_values")
    mean = sum(s.mean * s.count for s in series if s.mean is not None) / total if total else 0.0
    return w(
        "trend_caption",
        min=w.value(min(lows), unit),
        mean=w.value(mean, unit),
        max=w.value(max(highs), unit),
        count=w.number(total),
    )


class ReportOptions(TypedDict, total=False):
    key_points: Sequence[str] | None  # "<terminal>.<point>" to chart; None or empty: all numeric
    max_trends: int  # trend charts at most (12)
    gateway: str | None  # default: the gateway id the history holds
    now: datetime | None  # default: the history's clock
    language: Language  # en (default) or zh
    site: SiteConfig | None  # the config's `site:` (name, contact, time zone)
    names: PointNames | None  # points' plain names (Config.point_label)


def build_report(
    history: History,
    since: datetime,
    until: datetime | None = None,
    **options: Unpack[ReportOptions],
) -> Report:
    """The report of [since, until) (until: now), compared with the period of the same length
    before it: its figures put in words."""
    key_points = options.get("key_points")
    max_trends = options.get("max_trends", 12)
    gateway = options.get("gateway")
    now = options.get("now")
    language = options.get("language", "en")
    site = options.get("site")
    names = options.get("names")
    now = now or datetime.fromtimestamp(history.clock(), UTC)
    until = until or now
    since = _hour_floor(since)
    begins = history.begins()
    clamped = begins is not None and since < begins < until
    if clamped:
        assert begins is not None
        since = begins
    if until <= since:
        raise ValueError("the report period is empty: since must be before until")
    length = until - since
    timeline = Timeline.load(history, begins or since - length, until)
    current = gather(history, since, until, timeline)
    if clamped:  # the previous period lies before the history (its hour may hold our data)
        previous = Period(since - length, since, [], [], [], [], [], {}, [])
    else:
        previous = gather(history, since - length, since, timeline)
    w = Words(language, site.zone if site is not None else UTC)
    named = _Names(w, names, (t.name for t in current.terminals))
    gateway = gateway or history.meta("gateway") or "gateway"
    site_name = site.name if site is not None and site.name else gateway
    site_lines = []
    if site is not None:
        site_lines += [(w("site"), site.name)] if site.name else []
        site_lines += [
            (w(key), value)
            for key, value in (
                ("location", site.location),
                ("owner", site.owner),
                ("contact", site.contact),
            )
            if value
        ]
    site_lines.append((w("gateway"), gateway))
    worst = current.worst_terminal
    status = current.worst
    figures = [
        (w("fig_status"), w(f"status_{status.value}") if status else w("status_none")),
        (w("fig_completeness"), w.pct(current.completeness)),
        (w("fig_availability"), w.pct(current.availability)),
        (
            w("fig_worst"),
            w("worst_value", terminal=worst.name, completeness=w.pct(worst.completeness))
            if worst
            else w("na"),
        ),
        (w("fig_terminals"), w.number(len(current.terminals))),
        (w("fig_alarms"), f"{w.number(current.raised)} / {w.number(current.cleared)}"),
        (w("fig_anomalies"), w.number(len(current.anomalies))),
        (w("fig_failing"), w.number(len(current.failed))),
        (w("fig_starts"), w.number(len(current.starts))),
        (w("fig_off"), w.duration(current.off_seconds) if current.off_seconds >= 1 else "—"),
    ]
    rows = []
    for t in current.terminals:
        before = previous.terminal(t.name)
        b = before.completeness if before else None
        verdict = _ratio_verdict(t.completeness, b)
        rows.append(
            TerminalRow(
                t.name,
                w.pct(t.availability),
                f"{w.number(t.good_polls)} / {w.number(t.expected_polls)}",
                w.pct(t.completeness),
                f"{w.number(t.good_readings)} / {w.number(t.expected_readings)}",
                w.number(t.bad_readings),
                w.duration(t.missing_seconds) if t.missing_seconds >= 1 else "—",
                w.pct(b),
                verdict,
                w(f"verdict_{verdict}"),
                grade(t.completeness),
            )
        )
    chart = (
        completeness_chart(
            w("chart_completeness"), [(t.name, t.completeness) for t in current.terminals], w
        )
        if current.terminals
        else None
    )
    alarms = [
        [
            w.when(a.at),
            named.check(a.check),
            w(f"action_{a.action}") if a.action in ("raised", "cleared", "changed") else a.action,
            f"{_status_text(a.previous, w)} → {_status_text(a.status, w)}",
            w.agent_text(a.message, w.measured(a.check, a.value, a.unit, a.threshold)),
        ]
        for a in current.alarms[:MAX_ROWS]
    ]
    more = len(current.alarms) - MAX_ROWS
    bad = [c for c in current.checks if c.worst in (Status.FAIL, Status.WARN)]
    bad.sort(key=lambda c: (-c.worst.severity, -current.fail_seconds(c), -c.warn_hours, c.id))
    checks = [
        CheckRow(
            named.check(c.id),
            c.id,
            c.worst.value,
            _status_text(c.worst.value, w),
            _fail_time(current, c, w) if c.fail_hours else "—",
            _warn_time(current, c, w),
        )
        for c in bad[:MAX_ROWS]
    ]
    units = {(t, p): u for t, p, u in history.numeric_points(current.since, current.until)}
    anomalies = [
        [
            named.point(g.terminal, g.point),
            w(f"kind_{g.kind}") if f"kind_{g.kind}" in _KINDS else g.kind,
            w.number(g.count),
            w.when(g.first),
            w.when(g.last),
            w.agent_text(
                g.example.detail,
                w.anomaly_detail(g.kind, g.example.value, units.get((g.terminal, g.point), "")),
            ),
        ]
        for g in group_anomalies(current.anomalies)[:MAX_ROWS]
    ]
    trends = [
        Trend(
            trend_chart(
                named.point(terminal, point),
                _caption(unit, series, w),
                unit,
                series,
                current.since,
                current.until,
                w,
            ),
            sparkline(series),
        )
        for terminal, point, unit, series in key_series(history, current, key_points, max_trends)
    ]
    return Report(
        language=language,
        t=w,
        title=f"{w('title')} — {site_name}",
        site=site_lines,
        period=w(
            "period_value",
            start=w.when(since),
            end=w.when(until),
            length=w.duration(length.total_seconds()),
        ),
        generated=w.when(now),
        zone=w("zone", zone=_zone_name(w, until)),
        clamped=w("clamped", when=w.when(since)) if clamped else None,
        conclusion=conclude(current, previous, w, named),
        figures=figures,
        chart=chart,
        terminals=rows,
        previous=w("previous_period", start=w.when(previous.since), end=w.when(previous.until)),
        comparison=compare(current, previous, w),
        alarms=alarms,
        alarms_more=w("more", count=more) if more > 0 else None,
        alarms_head=w("alarms_head", raised=current.raised, cleared=current.cleared),
        checks=checks,
        checks_none=w("checks_ok") if current.checks else w("no_checks"),
        anomalies=anomalies,
        anomalies_head=w("anomalies_head", count=w.number(len(current.anomalies))),
        trends=trends,
        starts=[w.when(s) for s in current.starts[:MAX_ROWS]],
    )


_KINDS = frozenset(f"kind_{k}" for k in ("range", "stuck", "spike", "gap", "counter"))


def _status_text(status: str, w: Words) -> str:
    known = {s.value for s in Status}
    return w(f"status_{status}") if status in known else status


def _zone_name(w: Words, at: datetime) -> str:
    name = str(getattr(w.zone, "key", None) or w.zone)
    offset = at.astimezone(w.zone).strftime("%z")
    return name if name == "UTC" else f"{name} (UTC{offset[:3]}:{offset[3:]})"


def render_report(
    history: History,
    since: datetime,
    until: datetime | None = None,
    format: Format = "html",
    **options: Unpack[ReportOptions],
) -> str:
    """The inspection report of [since, until) as HTML or Markdown."""
    if format not in FORMATS:
        raise ValueError(f"unknown report format {format!r} (html or md)")
    return render(build_report(history, since, until, **options), format)


def render(report: Report, format: Format) -> str:
    """A built report laid out by its template (Jinja2, imported here: the daemon never needs
    it)."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("agent.checks", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["cell"] = _md_cell
    return environment.get_template(f"report.{format}").render(r=report, colours=COLOURS)


def _md_cell(text: object) -> str:
    """A Markdown table cell: pipes escaped, one line."""
    return str(text).replace("|", "\\|").replace("\n", " ")
