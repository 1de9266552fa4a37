"""The shared vocabulary of the agent: plain, immutable values that every part may import.

Nothing here does IO or knows a protocol; protocols produce these, sinks and the uplink consume them.
"""

from __future__ import annotations

import enum
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

Value = float | int | bool | str | None


class Quality(enum.StrEnum):
    """How far a reading can be trusted (DESIGN.md, Reading)."""

    GOOD = "good"
    BAD = "bad"
    STALE = "stale"
    UNCERTAIN = "uncertain"


class ReadingSink(Protocol):
    """Where readings go: must not block on the network or the disk, nor raise for content."""

    def submit(self, readings: Sequence[Reading]) -> None:
        """Take a batch of readings (one poll's worth)."""
        ...


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


def parse_timestamp(text: str) -> datetime:
    """The inverse of format_timestamp (any RFC 3339 time; no zone is taken as UTC).
    Raises ValueError."""
    at = datetime.fromisoformat(text)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def format_timestamp(at: datetime) -> str:
    """RFC 3339 UTC with milliseconds and a Z, the form every timestamp leaves the agent in."""
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class TerminalStats:
    """What a poller has seen, for status, checks and benchmarks (bounded windows)."""

    polls: int = 0
    failed_polls: int = 0
    consecutive_failures: int = 0
    missed_slots: int = 0
    last_good_at: datetime | None = None
    last_error: str | None = None
    poll_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=512))
    lateness: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=100))
    # Cumulative since start, for metrics: count of polls at or under each LATENCY_BUCKETS bound.
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_sum: float = 0.0
    latency_count: int = 0

    def record_latency(self, seconds: float) -> None:
        """One poll's (or query's) duration: the recent window and the cumulative histogram."""
        self.poll_seconds.append(seconds)
        self.latency_sum += seconds
        self.latency_count += 1
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_buckets[i] += 1

    @property
    def success_ratio(self) -> float | None:
        return sum(self.outcomes) / len(self.outcomes) if self.outcomes else None

    def latency_p95(self) -> float | None:
        return _percentile(self.poll_seconds, 95)

    def lateness_p99(self) -> float | None:
        return _percentile(self.lateness, 99)


def _percentile(samples: Sequence[float], pct: int) -> float | None:
    if not samples:
        return None
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]
