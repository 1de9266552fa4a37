"""Reading: its constructor (a faster one than the dataclass's) keeps the dataclass's contract."""

from __future__ import annotations

import dataclasses
import pickle
from datetime import UTC, datetime

import pytest

from agent.model import PollReadings, Quality, Reading

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_reading_is_built_by_position_or_keyword_and_stays_frozen() -> None:
    r = Reading("t", "level", 7, "mm", Quality.GOOD, NOW, "holding:0")
    same = Reading(
        terminal="t",
        point="level",
        value=7,
        unit="mm",
        quality=Quality.GOOD,
        observed_at=NOW,
        source="holding:0",
    )
    assert r == same and hash(r) == hash(same) and r.error is None
    assert Reading("t", "level", None, "mm", Quality.BAD, NOW, "holding:0", "timeout").error == (
        "timeout"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.value = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        Reading("t", "level")  # type: ignore[call-arg]
    assert pickle.loads(pickle.dumps(r)) == r  # noqa: S301 -- our own bytes
    assert dataclasses.replace(r, value=8).value == 8


def test_a_poll_in_bulk_gives_the_readings_its_values_stand_for() -> None:
    layout = (("level", "mm", "holding:0"), ("gate", "", "coil:1"))
    poll = PollReadings.plain("t", NOW, layout, [7, True])
    assert len(poll) == 2 and poll.values == [7, True] and poll.layout is layout
    assert list(poll) == [
        Reading("t", "level", 7, "mm", Quality.GOOD, NOW, "holding:0"),
        Reading("t", "gate", True, "", Quality.GOOD, NOW, "coil:1"),
    ]
    assert poll[1].value is True and [r.point for r in poll[:1]] == ["level"]
    with pytest.raises(ValueError, match="1 values for 2 points"):
        PollReadings.plain("t", NOW, layout, [7])
    # Readings that are not all good and plain: the list is all there is.
    bad = Reading("t", "level", None, "mm", Quality.BAD, NOW, "holding:0", "timeout")
    one_by_one = PollReadings([bad])
    assert list(one_by_one) == [bad] and one_by_one.values is None and one_by_one.layout is None
    assert one_by_one.terminal == "t" and one_by_one.observed_at == NOW and len(one_by_one) == 1
