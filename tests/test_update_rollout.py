"""The pure decisions of the agent's update part: rollout, maintenance window, the gate, status."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from agent.status import update_line
from agent.update.gate import Observation, missing
from agent.update.rollout import (
    in_rollout,
    in_window,
    parse_window,
    rollout_slot,
    seconds_until_open,
)
from agent.update.state import ends_at


def test_rollout_slot_is_the_sha256_of_the_gateway_id_mod_100() -> None:
    for gateway in ("gw-test", "plant-7", "站点-1"):
        expected = int(hashlib.sha256(gateway.encode()).hexdigest(), 16) % 100
        assert rollout_slot(gateway) == expected
        assert not in_rollout(gateway, expected)
        assert in_rollout(gateway, expected + 1)
    assert not in_rollout("gw-test", 0)
    assert in_rollout("gw-test", 100)


def test_rollout_takes_about_the_share_asked_for() -> None:
    gateways = [f"gw-{n}" for n in range(2000)]
    share = sum(in_rollout(g, 25) for g in gateways) / len(gateways)
    assert 0.21 < share < 0.29


def at(hhmm: str) -> datetime:
    hour, minute = map(int, hhmm.split(":"))
    return datetime(2026, 3, 14, hour, minute)


@pytest.mark.parametrize(
    ("window", "now", "inside"),
    [
        (None, "13:00", True),
        ("02:00-05:00", "02:00", True),
        ("02:00-05:00", "04:59", True),
        ("02:00-05:00", "05:00", False),
        ("02:00-05:00", "01:59", False),
        ("22:00-04:00", "23:30", True),
        ("22:00-04:00", "00:00", True),
        ("22:00-04:00", "03:59", True),
        ("22:00-04:00", "04:00", False),
        ("22:00-04:00", "12:00", False),
        ("00:00-00:00", "12:00", True),
    ],
)
def test_window_local_time_may_wrap_midnight(window: str | None, now: str, inside: bool) -> None:
    assert in_window(window, at(now)) is inside
    assert (seconds_until_open(window, at(now)) == 0) is inside


def test_seconds_until_the_window_opens() -> None:
    assert seconds_until_open("02:00-05:00", at("01:00")) == 3600
    assert seconds_until_open("02:00-05:00", at("06:00")) == 20 * 3600
    assert seconds_until_open("22:00-04:00", at("21:30")) == 1800
    with pytest.raises(ValueError, match="HH:MM-HH:MM"):
        parse_window("2am-5am")


START = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


def seen(**changes: object) -> Observation:
    base = {
        "started_at": START,
        "last_good": {"plc-1": START + timedelta(seconds=3), "plc-2": START + timedelta(seconds=4)},
        "answering": frozenset({"plc-1", "plc-2"}),
        "uplink_connected": True,
        "last_ack_at": START + timedelta(seconds=5),
        "failing_checks": frozenset({"system:ntp"}),
        "checks_run": True,
    }
    base.update(changes)
    return Observation(**base)  # type: ignore[arg-type]


BASELINE = {
    "terminals": ["plc-1", "plc-2"],
    "uplink_connected": True,
    "failing_checks": ["system:ntp"],
}


def test_the_gate_passes_when_everything_is_as_good_as_the_baseline() -> None:
    assert missing(BASELINE, seen()) == []
    assert seen().baseline() == BASELINE


def test_the_gate_names_what_is_missing() -> None:
    before_start = START - timedelta(seconds=1)
    now = seen(
        last_good={"plc-1": before_start, "plc-2": START},
        last_ack_at=before_start,
        failing_checks=frozenset({"system:ntp", "terminals:poll:plc-2"}),
    )
    assert missing(BASELINE, now) == [
        "checks failing that did not before: terminals:poll:plc-2",
        "terminals not polled successfully: plc-1",
        "no publish acknowledged by the broker",
    ]
    assert missing(BASELINE, seen(checks_run=False, last_good={})) == [
        "no round of checks yet",
        "terminals not polled successfully: plc-1, plc-2",
    ]
    # Nothing to compare with (the old agent did not answer): checks alone.
    assert missing(None, seen(last_good={}, last_ack_at=None, failing_checks=frozenset())) == []


def test_status_shows_the_update_in_one_line() -> None:
    now = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
    committed = {"state": "committed", "current": "0.2.0", "last": None}
    assert str(update_line(committed, now)) == "update     committed 0.2.0"
    trial = {"state": "trial", "current": "0.3.0", "trial_ends_at": "2026-03-14T12:07:00Z"}
    assert str(update_line(trial, now)) == "update     on trial 0.3.0, 7m00s left"
    rolled = {
        "state": "rolled_back",
        "current": "0.2.0",
        "last": {"outcome": "rolled_back", "version": "0.3.0", "reason": "watchdog killed it"},
    }
    assert str(update_line(rolled, now)) == "update     rolled back 0.3.0: watchdog killed it"
    assert update_line(None, now) is None


def test_a_trial_window_is_never_shorter_than_the_probation() -> None:
    start = datetime(2026, 3, 14, 12, 0, 0, 800_000, tzinfo=UTC)
    assert ends_at(start, 5) == "2026-03-14T12:00:06Z"  # 5.2 s, not 4.2 s
    assert ends_at(start.replace(microsecond=0), 5) == "2026-03-14T12:00:05Z"
