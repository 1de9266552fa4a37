"""A terminal's recent windows are bounded and compact, and give what a deque gave.

TerminalStats keeps the last poll durations and start lateness as single-precision floats in
one array (RecentSamples) and the last outcomes as bits (RecentOutcomes); status, health, metrics
and the terminal checks read percentiles and ratios from them, which must be those of the same
window kept in a bounded deque (of the samples as single precision keeps them: 7 digits).
"""

from __future__ import annotations

import statistics
import sys
from array import array
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.model import (
    LATENCY_BUCKETS,
    LATENESS_KEPT,
    OUTCOMES_KEPT,
    POLL_SECONDS_KEPT,
    RecentOutcomes,
    RecentSamples,
    TerminalStats,
)

floats = st.floats(0, 1e4, allow_nan=False)


def single(values: list[float]) -> list[float]:
    """The values as single precision keeps them."""
    return array("f", values).tolist()


@given(st.integers(1, 20), st.lists(floats, max_size=80))
def test_recent_samples_keep_the_last_maxlen_in_order(maxlen: int, values: list[float]) -> None:
    kept = RecentSamples(maxlen)
    reference: deque[float] = deque(maxlen=maxlen)
    for value in values:
        kept.append(value)
        reference.append(value)
        assert list(kept) == single(list(reference))
        assert len(kept) == len(reference) <= maxlen
        for newest in (0, 1, maxlen // 2, maxlen + 3):  # the tail, oldest first
            assert kept.newest(newest) == single(list(reference)[max(0, len(reference) - newest) :])


@given(st.integers(1, 120), st.lists(st.booleans(), max_size=300))
def test_recent_outcomes_keep_the_last_maxlen_in_order(maxlen: int, values: list[bool]) -> None:
    kept = RecentOutcomes(maxlen)
    reference: deque[bool] = deque(maxlen=maxlen)
    for value in values:
        kept.append(value)
        reference.append(value)
    assert list(kept) == list(reference)
    assert len(kept) == len(reference)
    assert kept.yes() == sum(kept) == sum(reference)


@given(
    st.lists(floats, max_size=3 * LATENESS_KEPT),
    st.lists(floats, max_size=2 * POLL_SECONDS_KEPT),
    st.lists(st.booleans(), max_size=3 * OUTCOMES_KEPT),
)
def test_percentiles_and_ratio_are_those_of_the_window(
    lateness: list[float], seconds: list[float], outcomes: list[bool]
) -> None:
    stats = TerminalStats()
    stats.lateness.extend(lateness)
    stats.outcomes.extend(outcomes)
    for s in seconds:
        stats.record_latency(s)

    def p(window: list[float], pct: int) -> float | None:
        if len(window) < 2:
            return window[0] if window else None
        return statistics.quantiles(window, n=100, method="inclusive")[pct - 1]

    assert stats.lateness_p99() == p(single(lateness[-LATENESS_KEPT:]), 99)
    assert stats.latency_p95() == p(single(seconds[-POLL_SECONDS_KEPT:]), 95)
    window = outcomes[-OUTCOMES_KEPT:]
    assert stats.success_ratio == (sum(window) / len(window) if window else None)
    assert stats.latency_count == len(seconds)
    # The metrics' histogram: polls at or under each bound, cumulative.
    assert stats.latency_buckets == [sum(1 for s in seconds if s <= b) for b in LATENCY_BUCKETS]


def test_a_terminal_that_ran_for_days_holds_a_few_kilobytes_of_windows() -> None:
    """The windows' size does not grow with the polls once full: about 4 bytes a sample."""
    stats = TerminalStats()
    for i in range(5 * LATENESS_KEPT):
        stats.lateness.append(i / 1000)
        stats.record_latency(i / 1000)
        stats.outcomes.append(i % 7 != 0)
    assert len(stats.lateness) == LATENESS_KEPT
    assert len(stats.poll_seconds) == POLL_SECONDS_KEPT
    assert len(stats.outcomes) == OUTCOMES_KEPT
    held = sum(
        sys.getsizeof(w._values) for w in (stats.lateness, stats.poll_seconds)
    ) + sys.getsizeof(stats.outcomes._bits)
    assert held < (LATENESS_KEPT + POLL_SECONDS_KEPT) * 4 * 1.2 + 200
    # A deque of the same floats took about 32 bytes each (a pointer and a float object).
    assert held < (LATENESS_KEPT + POLL_SECONDS_KEPT) * 32 / 3


def test_a_window_needs_room_for_one_sample() -> None:
    with pytest.raises(ValueError, match="maxlen"):
        RecentSamples(0)
    with pytest.raises(ValueError, match="maxlen"):
        RecentOutcomes(0)


@given(floats)
def test_a_sample_reads_back_within_seven_digits(value: float) -> None:
    kept = RecentSamples(1, [value])
    (kept_value,) = kept
    assert kept_value == pytest.approx(value, rel=1e-7, abs=1e-38)
