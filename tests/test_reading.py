"""Reading: its constructor (a faster one than the dataclass's) keeps the dataclass's contract."""

from __future__ import annotations

import dataclasses
import pickle
from datetime import UTC, datetime

import pytest

from agent.model import Quality, Reading

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
