"""The shared vocabulary of the agent: plain, immutable values that every part may import.

Nothing here does IO or knows a protocol; protocols produce these, sinks and the uplink consume them.
`TerminalInfo` and `TerminalView` are how protocol-neutral parts (checks, history, status,
metrics) see a terminal of any protocol.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import itertools
import statistics
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, overload

Value = float | int | bool | str | None


class Quality(enum.StrEnum):
    """How far a reading can be trusted (docs/architecture.md, Reading)."""

    GOOD = "good"
    BAD = "bad"
    STALE = "stale"
    UNCERTAIN = "uncertain"


class ReadingSink(Protocol):
    """Where readings go: must not block on the network or the disk, nor raise for content."""

    def submit(self, readings: Sequence[Reading]) -> None:
        """Take a batch of readings (one poll's worth)."""
        ...


class Intake(ReadingSink, Protocol):
    """Where a protocol driver hands what it observed.

    `submit` takes polled readings at once (they become durable within `outbox.linger`);
    `commit` takes a report's readings and events and returns a future that completes only
    once all of them are durable in the outbox — what a driver waits for before it confirms
    the report to a terminal. It fails with `NotStored` if they could not be stored.
    `congested()` is true while the outbox is behind: a poller then skips its slot (counted)
    rather than take readings that would only wait in memory (backpressure).
    """

    def commit(
        self, readings: Sequence[Reading], events: Sequence[dict[str, Any]]
    ) -> asyncio.Future[None]: ...

    def congested(self) -> bool: ...


class NotStored(Exception):
    """Messages that were not made durable (given up on): nothing may be confirmed for them."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one point of one terminal, as observed.

    `source` is the protocol's own identifier of the value (``holding:40`` for a Modbus
    register, the element identifier for SL651) so that any reading can be traced to the wire.
    `error` says why a reading is not good; it is None for good readings.
    """

    terminal: str
    point: str
    value: Value
    unit: str
    quality: Quality
    observed_at: datetime
    source: str
    error: str | None = None

    def to_dict(self, observed_at: str | None = None) -> dict[str, Any]:
        """The JSON shape of a reading (stable: documented in README.md).

        `observed_at` may pass the timestamp already formatted, for batches that share one.
        """
        return {
            "terminal": self.terminal,
            "point": self.point,
            "value": self.value,
            "unit": self.unit,
            "quality": self.quality.value,
            "observed_at": observed_at or format_timestamp(self.observed_at),
            "source": self.source,
            "error": self.error,
        }


def _fast_init() -> Any:
    """Reading's constructor, setting its slots through their descriptors: what the frozen
    dataclass's own `__init__` does through `object.__setattr__`, at under half the cost (a
    poll makes one Reading per point). Same signature; instances stay frozen."""
    slot: dict[str, Any] = dict(vars(Reading))  # the member descriptors of its slots
    set_terminal, set_point = slot["terminal"].__set__, slot["point"].__set__
    set_value, set_unit = slot["value"].__set__, slot["unit"].__set__
    set_quality, set_observed_at = slot["quality"].__set__, slot["observed_at"].__set__
    set_source, set_error = slot["source"].__set__, slot["error"].__set__

    def __init__(
        self: Reading,
        terminal: str,
        point: str,
        value: Value,
        unit: str,
        quality: Quality,
        observed_at: datetime,
        source: str,
        error: str | None = None,
    ) -> None:
        set_terminal(self, terminal)
        set_point(self, point)
        set_value(self, value)
        set_unit(self, unit)
        set_quality(self, quality)
        set_observed_at(self, observed_at)
        set_source(self, source)
        set_error(self, error)

    __init__.__qualname__ = "Reading.__init__"
    return __init__


Reading.__init__ = _fast_init()  # type: ignore[method-assign]


# (point, unit, source) of each value of a poll handed over in bulk, in the values' order.
Layout = tuple[tuple[str, str, str], ...]


class PollReadings(Sequence[Reading]):
    """One poll's readings, as any batch — and, when they allow it, in bulk.

    When every reading of the poll is good and is the plain value of a configured point,
    the poller hands `values` with their `layout` ((point, unit, source) per value, the same
    tuple object poll after poll) and the readings themselves are made only if someone looks
    at them (iterates, indexes): a consumer that works per poll (the telemetry encoder) uses
    `terminal`, `observed_at`, `layout` and `values` and no Reading is built for it.
    Otherwise `layout` and `values` are None and the readings are all there is.
    """

    __slots__ = ("_readings", "layout", "observed_at", "terminal", "values")

    def __init__(self, readings: Sequence[Reading] = ()) -> None:
        self._readings: list[Reading] | None = list(readings)
        self.layout: Layout | None = None
        self.values: list[Value] | None = None
        self.terminal = readings[0].terminal if readings else ""
        self.observed_at: datetime | None = readings[0].observed_at if readings else None

    @classmethod
    def plain(
        cls, terminal: str, observed_at: datetime, layout: Layout, values: list[Value]
    ) -> PollReadings:
        """All good: `values[i]` is the value of point `layout[i]` (same length)."""
        if len(values) != len(layout):
            raise ValueError(f"{len(values)} values for {len(layout)} points")
        poll = cls()
        poll._readings = None
        poll.terminal, poll.observed_at, poll.layout, poll.values = (
            terminal,
            observed_at,
            layout,
            values,
        )
        return poll

    @property
    def readings(self) -> list[Reading]:
        """The readings (made at the first look, when the poll came in bulk)."""
        if self._readings is None:
            layout, values, at = self.layout, self.values, self.observed_at
            assert layout is not None
            assert values is not None
            assert at is not None
            terminal, good = self.terminal, Quality.GOOD
            self._readings = [
                Reading(terminal, name, value, unit, good, at, source)
                for (name, unit, source), value in zip(layout, values, strict=True)
            ]
        return self._readings

    def __len__(self) -> int:
        if self.values is not None:
            return len(self.values)
        return len(self.readings)

    @overload
    def __getitem__(self, index: int) -> Reading: ...

    @overload
    def __getitem__(self, index: slice) -> list[Reading]: ...

    def __getitem__(self, index: int | slice) -> Reading | list[Reading]:
        return self.readings[index]

    def __iter__(self) -> Iterator[Reading]:
        return iter(self.readings)

    def __repr__(self) -> str:
        return f"PollReadings({self.readings!r})"


@dataclass(frozen=True, slots=True)
class TerminalInfo:
    """A terminal as every protocol-neutral part sees it, whatever its protocol.

    `interval` is how often a reading is expected: the poll period of a polled terminal, the
    expected report interval of one that reports by itself. `points` names the configured
    points (None where the terminal decides what it sends); `bus` a line it shares with
    other terminals (a serial device), if any.
    """

    name: str
    protocol: str
    address: str  # where it is, for people
    interval: float
    polled: bool
    points: tuple[str, ...] | None = None
    bus: str | None = None


@dataclass(frozen=True, slots=True)
class TerminalClock:
    """A terminal's own clock as last seen: its time, and ours when we received it."""

    terminal_time: datetime
    local_time: datetime

    @property
    def offset(self) -> float:
        """Seconds the terminal is ahead of us (negative: behind)."""
        return (self.terminal_time - self.local_time).total_seconds()


@dataclass(frozen=True, slots=True)
class TerminalView:
    """One running terminal: what it is, and what has been seen of it.

    `expected_interval` overrides how often a report is expected from a terminal that reports
    by itself (default: its configured interval).
    """

    info: TerminalInfo
    stats: TerminalStats
    expected_interval: float | None = None

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def protocol(self) -> str:
        return self.info.protocol

    @property
    def period(self) -> float | None:
        """The poll period of a polled terminal."""
        return self.info.interval if self.info.polled else None

    @property
    def report_interval(self) -> float | None:
        """The expected report interval of a terminal that reports by itself (or overridden)."""
        if self.expected_interval:
            return self.expected_interval
        return None if self.info.polled else self.info.interval

    @property
    def interval(self) -> float:
        """How often a reading is expected."""
        return self.report_interval or self.info.interval

    @property
    def bus(self) -> str | None:
        return self.info.bus

    @property
    def address(self) -> str:
        return self.info.address


def parse_timestamp(text: str) -> datetime:
    """The inverse of format_timestamp (any RFC 3339 time; no zone is taken as UTC).
    Raises ValueError."""
    at = datetime.fromisoformat(text)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def format_timestamp(at: datetime, timespec: str = "milliseconds") -> str:
    """RFC 3339 UTC with a Z, the form every timestamp leaves the agent in: to the millisecond,
    or (`timespec="seconds"`) to the second where a record is read by people (update, consent)."""
    return at.isoformat(timespec=timespec).replace("+00:00", "Z")


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
POLL_SECONDS_KEPT = 512  # recent poll durations per terminal (latency p95)
LATENESS_KEPT = 1024  # recent poll start lateness per terminal (lateness p99)
OUTCOMES_KEPT = 100  # recent poll outcomes per terminal (success ratio)


class RecentSamples:
    """The last `maxlen` numbers, as single-precision floats in one array (4 bytes each, where
    a deque of floats takes about 32): a terminal keeps these for as long as the agent runs,
    1536 of them (12 KB as doubles, 12 MB for a thousand terminals). Durations in seconds keep
    7 significant digits: a sample reads back within 1e-7 of itself, relatively.

    Appends like a bounded deque; iterates oldest first.
    """

    __slots__ = ("_next", "_values", "maxlen")

    def __init__(self, maxlen: int, values: Iterable[float] = ()) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.maxlen = maxlen
        self._values = array("f")
        self._next = 0  # where the next sample goes once the array is full
        self.extend(values)

    def append(self, value: float) -> None:
        if len(self._values) < self.maxlen:
            self._values.append(value)
        else:
            self._values[self._next] = value
            self._next = (self._next + 1) % self.maxlen

    def extend(self, values: Iterable[float]) -> None:
        for value in values:
            self.append(value)

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[float]:
        values, cut = self._values, self._next
        return itertools.chain(values[cut:], values[:cut])

    def newest(self, count: int) -> list[float]:
        """The newest `count` samples kept (all of them if fewer), oldest first."""
        return list(itertools.islice(self, max(0, len(self) - count), None))

    def __repr__(self) -> str:
        return f"RecentSamples({list(self)!r}, maxlen={self.maxlen})"


class RecentOutcomes:
    """The last `maxlen` yes/no outcomes as the bits of one int (a deque of them takes a
    pointer each). Appends like a bounded deque; iterates oldest first; `sum()` counts the
    yeses."""

    __slots__ = ("_bits", "_count", "maxlen")

    def __init__(self, maxlen: int, values: Iterable[bool] = ()) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.maxlen = maxlen
        self._bits = 0  # bit 0 is the newest outcome
        self._count = 0
        self.extend(values)

    def append(self, value: bool) -> None:
        self._bits = ((self._bits << 1) | bool(value)) & ((1 << self.maxlen) - 1)
        self._count = min(self._count + 1, self.maxlen)

    def extend(self, values: Iterable[bool]) -> None:
        for value in values:
            self.append(value)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[bool]:
        bits = self._bits
        return (bool(bits >> i & 1) for i in range(self._count - 1, -1, -1))

    def yes(self) -> int:
        """How many of the outcomes kept are yes."""
        return self._bits.bit_count()

    def __repr__(self) -> str:
        return f"RecentOutcomes({list(self)!r}, maxlen={self.maxlen})"


@dataclass(slots=True)
class TerminalStats:
    """What a poller has seen, for status, checks and benchmarks (bounded windows, compact:
    RecentSamples and RecentOutcomes; slots: one per terminal, for as long as the agent runs)."""

    polls: int = 0
    failed_polls: int = 0
    consecutive_failures: int = 0
    missed_slots: int = 0  # slots skipped: the poll before overran, it started too late, or held
    behind_slots: int = 0  # of those, skipped because the agent was behind (late, or held)
    held_slots: int = 0  # of those, skipped because the outbox was behind (backpressure)
    late_starts: int = 0  # polls started late (over a quarter period): the agent was behind
    last_good_at: datetime | None = None
    last_error: str | None = None
    poll_seconds: RecentSamples = field(default_factory=lambda: RecentSamples(POLL_SECONDS_KEPT))
    lateness: RecentSamples = field(default_factory=lambda: RecentSamples(LATENESS_KEPT))
    outcomes: RecentOutcomes = field(default_factory=lambda: RecentOutcomes(OUTCOMES_KEPT))
    # Since start, for metrics: polls between each LATENCY_BUCKETS bound and the one below it
    # (the last: over the highest bound); `latency_buckets` adds them up.
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0

    def record_latency(self, seconds: float) -> None:
        """One poll's (or query's) duration: the recent window and the cumulative histogram."""
        self.poll_seconds.append(seconds)
        self.latency_sum += seconds
        self.latency_count += 1
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    @property
    def latency_buckets(self) -> list[int]:
        """Cumulative since start: polls at or under each LATENCY_BUCKETS bound."""
        return list(itertools.accumulate(self.latency_counts[:-1]))

    @property
    def success_ratio(self) -> float | None:
        return self.outcomes.yes() / len(self.outcomes) if self.outcomes else None

    def latency_p95(self, newest: int | None = None) -> float | None:
        """p95 of the poll times kept, or of the newest `newest` of them."""
        samples = self.poll_seconds
        return _percentile(list(samples) if newest is None else samples.newest(newest), 95)

    def lateness_p99(self) -> float | None:
        return _percentile(list(self.lateness), 99)


def _percentile(values: list[float], pct: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]
