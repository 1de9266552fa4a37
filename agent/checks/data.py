"""Data checks: anomalies in the readings themselves, per point, each off until configured.

`DataMonitor` is fed every batch of readings (it is a reading sink: put it in the FanOut) and
keeps a little state per configured point; it finds:
- range:   a good value outside the configured physical [lo, hi] (fail while it is outside);
- stuck:   `stuck_samples` equal good values in a row (warn while the run lasts);
- spike:   |change| / second between two good samples beyond `spike_per_s` (warn for
           `anomaly_hold` after the last one);
- gap:     two good samples further apart than `gap_factor` x the terminal's interval, or none
           for that long now (warn; the missing samples are counted);
- counter: a value lower than the one before, for points that only count up (fail for
           `anomaly_hold`).
Each onset is also an `Anomaly` record (`take_anomalies()`) for the history. Only good numeric
readings are judged; a bad reading is a missing sample, found as a gap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from agent.check_settings import KINDS, ChecksConfig, PointChecks, split_key
from agent.checks.framework import Check, Outcome, Probe, Scalar, Status, unknown
from agent.checks.view import AgentView
from agent.durations import approximate_duration, format_duration
from agent.model import Quality, Reading, format_timestamp

FAMILY = "data"
EVENTS_KEPT = 256  # per point and kind
PENDING_MAX = 1000  # anomalies waiting for the history; older ones are dropped (counted)


@dataclass(frozen=True, slots=True)
class Anomaly:
    terminal: str
    point: str
    kind: str  # range | stuck | spike | gap | counter
    at: datetime
    value: Scalar
    detail: str

    @property
    def key(self) -> str:
        return f"{self.terminal}.{self.point}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "terminal": self.terminal,
            "point": self.point,
            "kind": self.kind,
            "at": format_timestamp(self.at),
            "value": self.value,
            "detail": self.detail,
        }


@dataclass
class PointState:
    """What the monitor remembers of one point."""

    settings: PointChecks
    samples: int = 0
    last_value: float | None = None
    last_at: datetime | None = None
    run_value: float | None = None
    run_length: int = 0
    stuck_reported: bool = False
    out_of_range: bool = False
    events: dict[str, deque[tuple[datetime, float]]] = field(
        default_factory=lambda: {k: deque(maxlen=EVENTS_KEPT) for k in ("spike", "gap", "counter")}
    )

    def recent(self, kind: str, since: datetime) -> list[tuple[datetime, float]]:
        return [e for e in self.events[kind] if e[0] > since]


def numeric(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class DataMonitor:
    """Watches the configured points of every batch of readings (a reading sink)."""

    def __init__(
        self,
        settings: ChecksConfig,
        intervals: Mapping[str, float] | None = None,
        *,
        pending_max: int = PENDING_MAX,
    ) -> None:
        self.settings = settings
        self.intervals: dict[str, float] = dict(intervals or {})
        self.points: dict[str, PointState] = {k: PointState(v) for k, v in settings.data.items()}
        # Per terminal name: its checked points by point name (None: none), found on first
        # sight, so that a poll of a terminal without data checks costs one lookup.
        self._watched: dict[str, dict[str, PointState] | None] = {}
        self._pending: deque[Anomaly] = deque(maxlen=pending_max)
        self.dropped = 0
        self.found: dict[str, int] = dict.fromkeys(KINDS, 0)

    def set_intervals(self, intervals: Mapping[str, float]) -> None:
        """Each terminal's expected interval between samples (its period), after a reload."""
        self.intervals = dict(intervals)

    def submit(self, readings: Sequence[Reading]) -> None:
        self.observe(readings)

    def observe(self, readings: Sequence[Reading]) -> list[Anomaly]:
        """Judge a batch; returns the anomalies it started (also kept for `take_anomalies`)."""
        found: list[Anomaly] = []
        if not self.points or not readings:
            return found
        terminals = {r.terminal for r in readings}  # one, for a poll
        if all(self._points_of(t) is None for t in terminals):
            return found
        for r in readings:
            watched = self._watched[r.terminal]
            state = None if watched is None else watched.get(r.point)
            if state is None or r.quality is not Quality.GOOD:
                continue
            value = numeric(r.value)
            if value is None:
                continue
            found += self._judge(r, value, state)
        for a in found:
            if len(self._pending) == self._pending.maxlen:
                self.dropped += 1
            self._pending.append(a)
            self.found[a.kind] += 1
        return found

    def _points_of(self, terminal: str) -> dict[str, PointState] | None:
        try:
            return self._watched[terminal]
        except KeyError:
            prefix = f"{terminal}."
            mine = {
                key[len(prefix) :]: state
                for key, state in self.points.items()
                if key.startswith(prefix) and len(key) > len(prefix)
            }
            watched = self._watched[terminal] = mine or None
            return watched

    def take_anomalies(self) -> list[Anomaly]:
        """The anomalies found since the last call (for the history)."""
        out = list(self._pending)
        self._pending.clear()
        return out

    def _judge(self, r: Reading, value: float, s: PointState) -> list[Anomaly]:
        c = s.settings
        out: list[Anomaly] = []

        def anomaly(kind: str, detail: str, shown: Scalar = value) -> None:
            out.append(Anomaly(r.terminal, r.point, kind, r.observed_at, shown, detail))

        at = r.observed_at
        dt = (at - s.last_at).total_seconds() if s.last_at is not None else None
        interval = self.intervals.get(r.terminal)
        if dt is not None and dt > 0 and s.last_value is not None:
            if c.gap_factor is not None and interval and dt > c.gap_factor * interval:
                missing = max(1, round(dt / interval) - 1)
                s.events["gap"].append((at, missing))
                anomaly(
                    "gap",
                    f"{missing} samples missing: none for {approximate_duration(dt)} "
                    f"(expected every {format_duration(interval)})",
                    missing,
                )
            rate = abs(value - s.last_value) / dt
            if c.spike_per_s is not None and rate > c.spike_per_s:
                s.events["spike"].append((at, rate))
                anomaly(
                    "spike",
                    f"changed {s.last_value:g} -> {value:g} in {dt:g}s "
                    f"({rate:.3g}/s, limit {c.spike_per_s:g}/s)",
                )
            if c.counter and value < s.last_value:
                s.events["counter"].append((at, value - s.last_value))
                anomaly("counter", f"counter went back from {s.last_value:g} to {value:g}")
        if c.range is not None:
            lo, hi = c.range
            outside = value < lo or value > hi
            if outside and not s.out_of_range:
                anomaly("range", f"{value:g} is outside the range [{lo:g}, {hi:g}]")
            s.out_of_range = outside
        if value == s.run_value:
            s.run_length += 1
        else:
            s.run_value, s.run_length, s.stuck_reported = value, 1, False
        if c.stuck_samples is not None and s.run_length >= c.stuck_samples and not s.stuck_reported:
            s.stuck_reported = True
            anomaly("stuck", f"the same value {value:g} {s.run_length} times in a row")
        if s.last_at is None or at >= s.last_at:
            s.last_value, s.last_at = value, at
        s.samples += 1
        return out


def checks(settings: ChecksConfig, monitor: DataMonitor) -> list[Check]:
    out = []
    for key, point in settings.data.items():
        for kind in point.kinds:
            out.append(
                Check(
                    f"data.{kind}:{key}",
                    FAMILY,
                    _judge(monitor, key, kind),
                    settings.data_interval,
                    settings.timeout,
                    needs_agent=True,  # judges the readings the agent took
                )
            )
    return out


def _judge(monitor: DataMonitor, key: str, kind: str) -> Probe:
    return lambda v, now: judge(monitor, v, now, key, kind)


def judge(monitor: DataMonitor, view: AgentView, now: datetime, key: str, kind: str) -> Outcome:
    """The current status of one kind of anomaly of one point."""
    s = monitor.points.get(key)
    names = [t.name for t in view.config.terminals]
    where = split_key(key, names)
    if s is None:
        return unknown(f"{key} has no data checks configured")
    points = view.config.terminal(where[0]).info.points if where else None
    if where is None or (points is not None and where[1] not in points):
        return unknown(f"no point {key} in the config (checks.data keys are <terminal>.<point>)")
    if s.last_at is None:
        return unknown(f"no good numeric reading of {key} yet")
    c = s.settings
    hold = monitor.settings.anomaly_hold
    since = now - timedelta(seconds=hold)
    held = format_duration(hold)
    if kind == "range":
        assert c.range is not None
        lo, hi = c.range
        if s.out_of_range:
            return Outcome(
                Status.FAIL,
                s.last_value,
                "",
                f"[{lo:g}, {hi:g}]",
                f"{s.last_value:g} is outside [{lo:g}, {hi:g}]",
            )
        return Outcome(
            Status.OK, s.last_value, "", f"[{lo:g}, {hi:g}]", f"{s.last_value:g} within range"
        )
    if kind == "stuck":
        n = c.stuck_samples
        assert n is not None
        if s.run_length >= n:
            return Outcome(
                Status.WARN,
                s.run_length,
                "samples",
                n,
                f"flat-lined: {s.run_value:g} for {s.run_length} samples in a row",
            )
        return Outcome(
            Status.OK, s.run_length, "samples", n, f"moving ({s.run_length} equal in a row)"
        )
    if kind == "spike":
        spikes = s.recent("spike", since)
        if spikes:
            at, rate = spikes[-1]
            return Outcome(
                Status.WARN,
                len(spikes),
                "spikes",
                c.spike_per_s,
                f"{len(spikes)} spikes in the last {held}, the latest {rate:.3g}/s at {format_timestamp(at)}",
            )
        return Outcome(Status.OK, 0, "spikes", c.spike_per_s, f"no spike in the last {held}")
    if kind == "gap":
        assert c.gap_factor is not None
        gaps = s.recent("gap", since)
        missing = int(sum(m for _, m in gaps))
        running = view.terminals.get(where[0])
        interval = (running.interval if running else None) or monitor.intervals.get(where[0])
        silent = (now - s.last_at).total_seconds()
        if interval and silent > c.gap_factor * interval:
            return Outcome(
                Status.WARN,
                missing + max(1, round(silent / interval) - 1),
                "samples",
                c.gap_factor,
                f"no sample for {approximate_duration(silent)} (expected every {format_duration(interval)})",
            )
        if gaps:
            return Outcome(
                Status.WARN,
                missing,
                "samples",
                c.gap_factor,
                f"{missing} samples missing in {len(gaps)} gaps in the last {held}",
            )
        return Outcome(Status.OK, 0, "samples", c.gap_factor, f"no gap in the last {held}")
    if kind == "counter":
        backs = s.recent("counter", since)
        if backs:
            at, step = backs[-1]
            return Outcome(
                Status.FAIL,
                round(step, 6),
                "",
                0,
                f"went back {len(backs)} times in the last {held}, the latest by {-step:g} at {format_timestamp(at)}",
            )
        return Outcome(Status.OK, 0, "", 0, f"never went back in the last {held}")
    return unknown(f"unknown anomaly kind {kind!r}")
