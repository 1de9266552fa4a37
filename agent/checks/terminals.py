"""Terminal checks, one set per configured terminal: success ratio over the last polls, p95 poll
latency (against the period), age of the last good reading (stale after `stale_periods` periods,
or `stale_reports` report intervals for terminals that report on their own), and the
utilisation of each serial bus; and one check for them all, `terminals.overload`: the share of
poll slots the agent itself was behind on (skipped as too late to start or held back while the
outbox caught up, or started over a quarter period late) since it last ran — one alarm for an
overloaded agent, not one per terminal. A late start is the agent's own event loop lagging, and
the same lag stretches the poll's measured latency, so an agent busy enough to start its polls
late is overloaded even while it skips few slots. While it warns or fails, the checks of each
polled terminal are `unknown` ("not judged while the agent is overloaded"): their late, skipped
or timed-out polls are the agent's doing, and `unknown` neither raises nor clears an alarm.
Once it clears, `freshness` is judged again at once; `success` and `latency` judge only the
polls made since the agent was last behind (`latency`: those answered), from `AFTER_OVERLOAD`
of them on (until then `unknown`): their windows still hold polls timed by an agent that could
not keep up (an agent that stalls every few seconds is ok in the seconds between, and those
polls are not the terminals' doing either). A terminal polled seldom is judged on its whole
window again after `AFTER_OVERLOAD_TIME`, and one failing now at once (its outage is
freshness's one finding). The running agent keeps one `Overload` across reloads
(agent/inspection.py), so a reload forgets nothing of this.

One finding per fault: a terminal that does not answer now is one finding, on its freshness
check ("not answering: <reason>"), warning while its data is still fresh and failing once it
is stale. Its other checks stand down: `success` judges only the polls before the current run
of failures (a flaky terminal is its business, an outage is freshness'), and `latency` only
polls that got an answer (the poller times those alone), so a timeout never reads as a slow
terminal. So a dead terminal raises one alarm, not three.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import NamedTuple

from agent.check_settings import ChecksConfig
from agent.checks.framework import Check, Outcome, Probe, Status, level, unknown
from agent.checks.view import AgentView
from agent.durations import approximate_duration, format_duration
from agent.model import TerminalInfo, TerminalStats

FAMILY = "terminals"
AFTER_OVERLOAD = 20  # polls made since the agent was last behind before success/latency judge
AFTER_OVERLOAD_TIME = 600.0  # ... or seconds since then, whichever comes first
OVERLOADED = "not judged while the agent is overloaded (terminals.overload)"


def checks(
    settings: ChecksConfig, terminals: Sequence[TerminalInfo], overload: Overload | None = None
) -> list[Check]:
    """Checks for these terminals: all get freshness; polled ones success ratio and latency;
    shared lines (serial buses) utilisation. `overload`: the one kept by the running agent
    across reloads (what it last judged, and since when it is behind), or a new one."""
    s = settings.terminals

    def make(check_id: str, probe: Probe) -> Check:
        # All judge the running agent's polls and buses.
        return Check(check_id, FAMILY, probe, s.interval, settings.timeout, needs_agent=True)

    if overload is None:
        overload = Overload(settings)
    overload.settings = settings
    out: list[Check] = []
    for t in terminals:
        name = t.name
        if t.polled:
            out.append(make(f"terminals.success:{name}", _success(name, settings, overload)))
            out.append(make(f"terminals.latency:{name}", _latency(name, settings, overload)))
            out.append(
                make(f"terminals.freshness:{name}", overload.unless(_freshness(name, settings)))
            )
        else:
            out.append(make(f"terminals.freshness:{name}", _freshness(name, settings)))
    if any(t.polled for t in terminals):
        out.append(make("terminals.overload", overload))
    devices = sorted({t.bus for t in terminals if t.bus})
    for device in devices:
        out.append(make(f"terminals.bus:{device}", _bus(device, settings)))
    return out


def _success(name: str, settings: ChecksConfig, overload: Overload) -> Probe:
    needed = min(AFTER_OVERLOAD, settings.terminals.success_window)
    return overload.after(
        name, needed, lambda v, newest: success(v, name, settings, newest), answered=False
    )


def _latency(name: str, settings: ChecksConfig, overload: Overload) -> Probe:
    return overload.after(  # only the polls that got an answer are timed
        name, AFTER_OVERLOAD, lambda v, newest: latency(v, name, settings, newest), answered=True
    )


def _freshness(name: str, settings: ChecksConfig) -> Probe:
    return lambda v, now: freshness(v, now, name, settings)


def _bus(device: str, settings: ChecksConfig) -> Probe:
    return lambda v, now: bus(v, device, settings)


def success(
    view: AgentView, name: str, settings: ChecksConfig, newest: int | None = None
) -> Outcome:
    """The share of the last `success_window` polls answered (of the newest `newest` at most)."""
    t = view.terminals.get(name)
    if t is None:
        return unknown(f"terminal {name} is not running")
    n = (
        settings.terminals.success_window
        if newest is None
        else min(newest, settings.terminals.success_window)
    )
    outcomes = list(t.stats.outcomes)[-n:] if n else []
    if not outcomes:
        return unknown(f"{name} has not been polled yet")
    failing = _trailing_failures(outcomes)
    if failing == len(outcomes):  # an outage, not an unreliable link: freshness says it
        return Outcome(
            Status.OK,
            None,
            "",
            None,
            f"none of the last {failing} polls answered: see terminals.freshness:{name}",
        )
    judged = outcomes[: len(outcomes) - failing]
    good = sum(judged)
    ratio = round(good / len(judged), 4)
    limits = settings.terminals.success_ratio
    before = f" before the {failing} failing now (terminals.freshness:{name})" if failing else ""
    return level(
        ratio,
        warn=limits.warn,
        fail=limits.fail,
        higher_is_worse=False,
        describe=lambda r: f"{good} of the last {len(judged)} polls answered ({r:.0%}){before}",
    )


def _trailing_failures(outcomes: Sequence[bool]) -> int:
    """How many of the newest outcomes in a row are failures (the current outage)."""
    count = 0
    for answered in reversed(outcomes):
        if answered:
            break
        count += 1
    return count


def latency(
    view: AgentView, name: str, settings: ChecksConfig, newest: int | None = None
) -> Outcome:
    """p95 poll time against the period (of the newest `newest` answered polls at most)."""
    t = view.terminals.get(name)
    if t is None:
        return unknown(f"terminal {name} is not running")
    p95 = t.stats.latency_p95(newest)  # of polls that got an answer only
    if p95 is None:
        if t.stats.consecutive_failures:
            return Outcome(
                Status.OK, None, "s", None, f"no answer to time: see terminals.freshness:{name}"
            )
        return unknown(f"{name} has not been polled yet")
    period = t.period
    if not period:
        return Outcome(Status.OK, round(p95, 4), "s", None, f"p95 poll time {p95 * 1000:.0f} ms")
    limits = settings.terminals.latency_p95
    warn = None if limits.warn is None else limits.warn * period
    fail = None if limits.fail is None else limits.fail * period
    return level(
        round(p95, 4),
        warn=warn,
        fail=fail,
        higher_is_worse=True,
        unit="s",
        describe=lambda p: f"p95 poll time {p * 1000:.0f} ms (period {format_duration(period)})",
    )


def stale_limit(view: AgentView, name: str, settings: ChecksConfig) -> float | None:
    t = view.terminals[name]
    s = settings.terminals
    if t.report_interval:
        return s.stale_reports * t.report_interval
    if t.period:
        return s.stale_periods * t.period
    return None


def freshness(view: AgentView, now: datetime, name: str, settings: ChecksConfig) -> Outcome:
    t = view.terminals.get(name)
    if t is None:
        return unknown(f"terminal {name} is not running")
    limit = stale_limit(view, name, settings)
    if limit is None:
        return unknown(f"{name}: no period or report interval to judge its readings by")
    stats = t.stats
    last = stats.last_good_at
    why = f" ({stats.last_error})" if stats.last_error else ""
    # Polls failing now: the terminal's one finding, with the reason first.
    failing = stats.consecutive_failures
    down = f"not answering: {stats.last_error or 'no good reading'}" if failing else ""
    if last is None:
        running = (now - view.started_at).total_seconds()
        since = f"since the agent started {approximate_duration(running)} ago"
        if running <= limit:
            if failing:
                return Outcome(Status.WARN, None, "s", limit, f"{down} ({since})")
            return unknown(
                f"no good reading from {name} yet (started {approximate_duration(running)} ago)"
            )
        message = (
            f"{down}; no good reading {since}"
            if failing
            else (f"no good reading from {name} {since}{why}")
        )
        return Outcome(Status.FAIL, None, "s", limit, message)
    age = round(max(0.0, (now - last).total_seconds()), 1)
    shown = approximate_duration(age) if age >= 1 else f"{age:g}s"
    if age > limit:
        message = (
            f"{down}; last good reading {shown} ago, stale after {format_duration(limit)}"
            if failing
            else f"stale: last good reading {shown} ago, over {format_duration(limit)}{why}"
        )
        return Outcome(Status.FAIL, age, "s", limit, message)
    if failing:
        polls = "the last poll" if failing == 1 else f"the last {failing} polls"
        return Outcome(
            Status.WARN, age, "s", limit, f"{down} ({polls}); last good reading {shown} ago"
        )
    return Outcome(Status.OK, age, "s", limit, f"last good reading {shown} ago")


class Counts(NamedTuple):
    """A terminal's poll counts at one moment (as in `TerminalStats`), and whose they were."""

    stats: TerminalStats
    polls: int
    latency_count: int  # polls that got an answer: the ones timed


class Overload:
    """The probe of `terminals.overload`: slots skipped because the agent was behind or started
    late, over the slots of every polled terminal since the previous run (the first run: since
    start)."""

    def __init__(self, settings: ChecksConfig) -> None:
        self.settings = settings
        # polls, missed, behind, held, late starts
        # Each polled terminal's stats at the last judgement, and its counts then.
        self._seen: dict[str, tuple[TerminalStats, tuple[int, ...]]] = {}
        self._view: AgentView | None = None  # the snapshot judged last, and its outcome
        self._outcome = unknown("not judged yet")
        # When the agent was last judged behind, and each polled terminal's counts then.
        self._behind_at: datetime | None = None
        self._behind: dict[str, Counts] = {}

    def __call__(self, view: AgentView, now: datetime) -> Outcome:
        """Judged once per snapshot (a round of checks shares one), whoever asks first."""
        if view is not self._view:
            self._view, self._outcome = view, self._judge(view)
            if self._outcome.status in (Status.WARN, Status.FAIL):
                self._behind_at = now
                self._behind = {
                    name: Counts(t.stats, t.stats.polls, t.stats.latency_count)
                    for name, t in view.terminals.items()
                    if t.info.polled
                }
        return self._outcome

    def unless(self, probe: Probe) -> Probe:
        """`probe`, or `unknown` while the agent is overloaded (one alarm, not one each)."""

        def judged(view: AgentView, now: datetime) -> Outcome | Awaitable[Outcome]:
            if self(view, now).status in (Status.WARN, Status.FAIL):
                return unknown(OVERLOADED)
            return probe(view, now)

        return judged

    def after(
        self,
        name: str,
        needed: int,
        probe: Callable[[AgentView, int | None], Outcome],
        *,
        answered: bool,
    ) -> Probe:
        """`probe` of the polls (all, or those `answered`) made since the agent was last
        behind, once there are `needed`; `unknown` while it is overloaded and until then.
        All of the terminal's polls are judged if the agent never was behind or was last
        behind `AFTER_OVERLOAD_TIME` ago (a terminal polled hourly would wait for days); a
        terminal failing now is handed to `probe` at once, whose outage case defers to its
        freshness check (one finding per fault)."""

        def judged(view: AgentView, now: datetime) -> Outcome:
            if self(view, now).status in (Status.WARN, Status.FAIL):
                return unknown(OVERLOADED)
            t, then = view.terminals.get(name), self._behind.get(name)
            if t is None or then is None or self._behind_at is None:
                return probe(view, None)
            if (now - self._behind_at).total_seconds() >= AFTER_OVERLOAD_TIME:
                return probe(view, None)
            s = t.stats
            made = s.latency_count if answered else s.polls
            if then.stats is s:  # else counted afresh (its poller made anew): all are new
                made -= then.latency_count if answered else then.polls
            if made < needed and not s.consecutive_failures:
                what = "answered polls" if answered else "polls"
                return unknown(
                    f"judged again after {needed} {what} since the agent caught up "
                    f"({made} so far; terminals.overload)"
                )
            return probe(view, made)

        return judged

    def _judge(self, view: AgentView) -> Outcome:
        seen: dict[str, tuple[TerminalStats, tuple[int, ...]]] = {}
        slots = behind = held = late = terminals = polled = 0
        for name, t in view.terminals.items():
            if not t.info.polled:
                continue
            polled += 1
            s = t.stats
            now_counts = (s.polls, s.missed_slots, s.behind_slots, s.held_slots, s.late_starts)
            seen[name] = (s, now_counts)
            d_polls, d_missed, d_behind, d_held, d_late = now_counts
            then = self._seen.get(name)
            if then is not None and then[0] is s:  # else counted afresh: its poller is new
                d_polls, d_missed, d_behind, d_held, d_late = (
                    a - b for a, b in zip(now_counts, then[1], strict=True)
                )
            slots += d_polls + d_missed
            behind += d_behind
            held += d_held
            late += d_late
            terminals += d_behind + d_late > 0
        self._seen = seen
        if not polled:
            return unknown("no polled terminal is running")
        if not slots:
            return unknown("no poll slot came since the last check")
        limits = self.settings.terminals.overload
        what = [f"{behind} skipped"] if behind or not late else []
        what += [f"{late} started late"] if late else []
        return level(
            round((behind + late) / slots, 4),
            warn=limits.warn,
            fail=limits.fail,
            higher_is_worse=True,
            describe=lambda share: (
                f"of {slots} poll slots since the last check, {' and '.join(what)} "
                f"({share:.1%}): "
                f"the agent is behind on {terminals} of {polled} terminals"
                + (f", {held} held back while the outbox caught up" if held else "")
            ),
        )


def bus(view: AgentView, device: str, settings: ChecksConfig) -> Outcome:
    used = view.buses.get(device)
    if used is None:
        return unknown(f"serial bus {device} is not open")
    limits = settings.terminals.bus_utilisation
    return level(
        round(used, 4),
        warn=limits.warn,
        fail=limits.fail,
        higher_is_worse=True,
        describe=lambda u: f"{device} busy {u:.0%} of the time",
    )
