"""The local sinks take a poll as a whole: the same figures as reading by reading.

`History.observe` takes a poll of good numbers (one terminal, one time) as a whole and folds
its values by position; any other batch goes reading by reading. Both must leave the same rows
in the database, whatever the mix of polls, points, hours and reloads. The metrics counter
counts a good poll in one step, and the data monitor looks a poll's terminal up once.
"""

from __future__ import annotations

import sqlite3
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.check_settings import ChecksConfig
from agent.checks.data import DataMonitor
from agent.checks.history import FOLD_POLLS, History
from agent.model import PollReadings, Quality, Reading
from agent.reading_counts import ReadingCounter

START = datetime(2026, 12, 1, 9, 58, tzinfo=UTC)

values = st.one_of(
    st.integers(-(2**31), 2**31),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([None, True, "text"]),
)
qualities = st.sampled_from([Quality.GOOD, Quality.GOOD, Quality.GOOD, Quality.BAD])


@st.composite
def polls(draw: st.DrawFn) -> list[list[Reading]]:
    """Polls of two terminals, seconds apart across an hour's end; points and units change at
    times (a reload), some readings are bad or not numbers, a few polls arrive late."""
    out = []
    for n in range(draw(st.integers(1, 3 * FOLD_POLLS))):
        terminal = draw(st.sampled_from(["dam", "gauge"]))
        at = START + timedelta(seconds=draw(st.integers(0, 240)))
        names = draw(st.sampled_from([("a", "b", "c"), ("a", "b"), ("c", "a", "b")]))
        unit = draw(st.sampled_from(["m", "m", "cm"]))
        all_good = draw(st.booleans())
        poll = []
        for point in names:
            if all_good:
                value: object = draw(st.one_of(st.integers(0, 1000), st.floats(0, 100)))
                quality = Quality.GOOD
            else:
                value, quality = draw(values), draw(qualities)
            poll.append(Reading(terminal, point, value, unit, quality, at, f"n{n}"))  # type: ignore[arg-type]
        out.append(poll)
    return out


def rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(path)
    try:
        return {
            "terminal_hours": conn.execute("SELECT * FROM terminal_hours ORDER BY 1, 2").fetchall(),
            "point_hours": conn.execute("SELECT * FROM point_hours ORDER BY 1, 2, 3").fetchall(),
        }
    finally:
        conn.close()


def close(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-9, abs=1e-6)  # sums added in another order
    return a == b


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=polls(), flush_every=st.integers(1, 50))
def test_statistics_kept_per_poll_equal_those_kept_per_reading(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[Reading]], flush_every: int
) -> None:
    folder = tmp_path_factory.mktemp("history")
    per_poll = History(folder / "per-poll.db", clock=lambda: START.timestamp())
    per_reading = History(folder / "per-reading.db", clock=lambda: START.timestamp())
    in_bulk = History(folder / "in-bulk.db", clock=lambda: START.timestamp())
    layouts: dict[tuple[tuple[str, str, str], ...], tuple[tuple[str, str, str], ...]] = {}
    with per_poll, per_reading, in_bulk:
        for i, batch in enumerate(batches):
            per_poll.observe(batch)
            per_reading._observe_each(batch)  # the reading-by-reading path, as the reference
            in_bulk.observe(as_poller_hands_it(batch, layouts))
            if i % flush_every == flush_every - 1:
                per_poll.flush()
                per_reading.flush()
                in_bulk.flush()
    want = rows(folder / "per-reading.db")
    for got in (rows(folder / "per-poll.db"), rows(folder / "in-bulk.db")):
        assert got["terminal_hours"] == want["terminal_hours"]
        assert len(got["point_hours"]) == len(want["point_hours"])
        for a, b in zip(got["point_hours"], want["point_hours"], strict=True):
            assert all(close(x, y) for x, y in zip(a, b, strict=True)), (a, b)


def as_poller_hands_it(
    batch: list[Reading],
    layouts: dict[tuple[tuple[str, str, str], ...], tuple[tuple[str, str, str], ...]],
) -> Sequence[Reading]:
    """An all-good poll as the Modbus poller hands it (values in bulk, the same layout tuple
    poll after poll: PollReadings.plain); any other batch as it is."""
    if any(r.quality is not Quality.GOOD for r in batch):
        return batch
    layout = tuple((r.point, r.unit, r.source or "") for r in batch)
    layout = layouts.setdefault(layout, layout)
    first = batch[0]
    return PollReadings.plain(first.terminal, first.observed_at, layout, [r.value for r in batch])


def test_a_poll_of_good_numbers_is_kept_by_position_and_bounded(tmp_path: Path) -> None:
    """Many polls of one terminal in one hour take one accumulator, whose raw values never
    exceed FOLD_POLLS polls; the figures written are those of every poll."""
    hour = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    count = 10 * FOLD_POLLS + 3
    with History(tmp_path / "h.db", clock=lambda: hour.timestamp()) as history:
        for n in range(count):
            at = hour + timedelta(seconds=n)
            history.observe(
                [
                    Reading("dam", p, n * (j + 1), "m", Quality.GOOD, at, f"holding:{j}")
                    for j, p in enumerate(("level", "flow"))
                ]
            )
            [acc] = history._polls.values()
            assert len(acc.pending) <= FOLD_POLLS * 2
        history.flush()
        [level] = history.point_series("dam", "level", hour, hour + timedelta(hours=1))
        [flow] = history.point_series("dam", "flow", hour, hour + timedelta(hours=1))
        [figures] = history.terminals(hour, hour + timedelta(hours=1))
    assert (level.count, level.min, level.max, level.last) == (count, 0, count - 1, count - 1)
    assert level.mean == pytest.approx((count - 1) / 2)
    assert (flow.count, flow.min, flow.max, flow.last) == (
        count,
        0,
        2 * (count - 1),
        2 * (count - 1),
    )
    assert (figures.polls, figures.good_polls, figures.good_readings) == (count, count, 2 * count)


def test_a_flush_writes_a_thousand_terminals_hour_row_by_row(tmp_path: Path) -> None:
    """20,000 point rows are made one at a time as SQLite takes them: the flush holds no list
    of them (it held 10 MB for a moment, which the allocator kept)."""
    hour = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    layout = tuple((f"r{j}", "m", f"holding:{j}") for j in range(20))
    with History(tmp_path / "h.db", clock=lambda: hour.timestamp()) as history:
        for i in range(1000):
            for n in range(3):
                at = hour + timedelta(seconds=n)
                history.observe(
                    PollReadings.plain(f"t{i:04d}", at, layout, [n + j for j in range(20)])
                )
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            history.flush()
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        [last] = history.point_series("t0999", "r19", hour, hour + timedelta(hours=1))
    assert (last.count, last.min, last.max, last.last) == (3, 19, 21, 21)
    assert peak < 3 * 2**20, f"flush peak {peak} bytes"


def test_the_metrics_counter_counts_every_reading_by_terminal_and_quality() -> None:
    at = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)

    def r(terminal: str, quality: Quality) -> Reading:
        return Reading(terminal, "p", 1, "", quality, at, "holding:0")

    batches = [
        [r("dam", Quality.GOOD)] * 20,  # a good poll
        [r("dam", Quality.GOOD), r("dam", Quality.BAD), r("dam", Quality.STALE)],
        [r("gauge", Quality.GOOD), r("dam", Quality.GOOD)],  # two terminals in one batch
        [],
    ]
    counter = ReadingCounter()
    for batch in batches:
        counter.submit(batch)
    expected = Counter((x.terminal, x.quality.value) for batch in batches for x in batch)
    assert counter.counts == expected
    assert counter.counts[("dam", "good")] == 22


def test_data_checks_judge_the_points_of_their_terminal_only() -> None:
    """Keys are "<terminal>.<point>" and names may hold dots: a poll of terminal "site.a" is
    judged against "site.a.level", one of another terminal is not looked at."""
    at = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    settings = ChecksConfig.model_validate({"data": {"site.a.level": {"range": [0, 10]}}})
    monitor = DataMonitor(settings)

    def poll(terminal: str, value: float) -> list[Reading]:
        return [
            Reading(terminal, point, value, "m", Quality.GOOD, at, "holding:0")
            for point in ("level", "flow")
        ]

    assert monitor.observe(poll("site", 50)) == []  # "site.level", "site.flow": not checked
    assert monitor.observe(poll("other", 50)) == []
    [found] = monitor.observe(poll("site.a", 50))
    assert (found.terminal, found.point, found.kind) == ("site.a", "level", "range")
    assert monitor.points["site.a.level"].last_value == 50
