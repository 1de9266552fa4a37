"""Alarms: status changes become events, with hysteresis that bounds a flapping value."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.check_settings import AlarmSettings
from agent.checks import AlarmTracker, CheckResult, Status

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
OK, WARN, FAIL, UNKNOWN = Status.OK, Status.WARN, Status.FAIL, Status.UNKNOWN


def result(status: Status, minute: float, check_id: str = "system.disk") -> CheckResult:
    at = T0 + timedelta(minutes=minute)
    return CheckResult(check_id, "system", status, 4.2, "%", 5.0, f"{status} at {minute:g}", at, at)


def feed(
    tracker: AlarmTracker, statuses: Iterable[Status], every: float = 1.0
) -> list[dict[str, Any]]:
    events = []
    for i, s in enumerate(statuses):
        events += tracker.update([result(s, i * every)])
    return events


def test_a_lasting_failure_raises_once_and_its_recovery_clears_once() -> None:
    tracker = AlarmTracker(AlarmSettings(min_interval=0))
    events = feed(tracker, [OK, FAIL, FAIL, FAIL, FAIL, OK, OK, OK, OK])
    assert [(e["action"], e["previous"], e["status"]) for e in events] == [
        ("raised", "ok", "fail"),
        ("cleared", "fail", "ok"),
    ]
    raised = events[0]
    assert raised == {
        "type": "alarm",
        "action": "raised",
        "check": "system.disk",
        "family": "system",
        "status": "fail",
        "previous": "ok",
        "value": 4.2,
        "unit": "%",
        "threshold": 5.0,
        "message": "fail at 2",
        "since": "2026-11-22T08:02:00.000Z",
        "at": "2026-11-22T08:02:00.000Z",
    }
    assert events[1]["at"] == "2026-11-22T08:07:00.000Z"  # after clear_after=3 ok results


def test_a_value_flapping_every_evaluation_never_alarms() -> None:
    tracker = AlarmTracker()
    assert feed(tracker, itertools.islice(itertools.cycle([OK, FAIL]), 500)) == []


def test_a_value_flapping_slower_gives_a_bounded_number_of_alarms() -> None:
    tracker = AlarmTracker(AlarmSettings(min_interval=600))
    pattern = [FAIL] * 3 + [OK] * 4  # long enough to confirm each way, every 7 minutes
    minutes = 24 * 60
    events = feed(tracker, itertools.islice(itertools.cycle(pattern), minutes))
    # Unbounded it would be two events per 7-minute cycle (~411 a day).
    assert 0 < len(events) <= 2 * minutes / 10 + 2
    actions = [e["action"] for e in events]
    assert all(a != b for a, b in itertools.pairwise(actions))  # raised, cleared, raised ...
    assert tracker.held_back > 0


def test_a_worsening_is_never_held_back_but_an_improvement_waits_for_min_interval() -> None:
    tracker = AlarmTracker(AlarmSettings(min_interval=600, clear_after=1))
    events = feed(tracker, [WARN, WARN, FAIL, FAIL, WARN, OK, OK])
    assert [(e["action"], e["status"]) for e in events] == [("raised", "warn"), ("changed", "fail")]
    later = tracker.update([result(OK, 20)])
    assert [(e["action"], e["previous"]) for e in later] == [("cleared", "fail")]


def test_unknown_results_neither_raise_nor_clear() -> None:
    tracker = AlarmTracker(AlarmSettings(min_interval=0))
    assert feed(tracker, [UNKNOWN] * 5) == []
    events = feed(tracker, [FAIL, UNKNOWN, FAIL, UNKNOWN, UNKNOWN, OK, UNKNOWN, OK, OK])
    assert [e["action"] for e in events] == ["raised", "cleared"]


def test_confirm_after_confirms_a_status_that_lasts_long_enough() -> None:
    tracker = AlarmTracker(AlarmSettings(raise_after=10, confirm_after=300))
    events = feed(tracker, [FAIL, FAIL, FAIL], every=3)  # 0, 3, 6 minutes
    assert [(e["action"], e["at"]) for e in events] == [("raised", "2026-11-22T08:06:00.000Z")]


def test_announced_statuses_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "alarms.json"
    before = AlarmTracker(AlarmSettings(min_interval=0), state_path=path)
    before.update([result(FAIL, 0), result(FAIL, 0, "system.memory")])
    for event in before.update([result(FAIL, 1), result(FAIL, 1, "system.memory")]):
        before.stored(event)
    before.save()
    assert before.announced == {"system.disk": FAIL, "system.memory": FAIL}
    after = AlarmTracker(AlarmSettings(min_interval=0), state_path=path)
    after.load()
    # Still failing: no second alarm. Recovered while down: cleared.
    events = []
    for minute in range(2, 6):
        events += after.update([result(FAIL, minute), result(OK, minute, "system.memory")])
    assert [(e["check"], e["action"]) for e in events] == [("system.memory", "cleared")]
    path.write_text("not json")
    damaged = AlarmTracker(state_path=path)
    damaged.load()
    assert damaged.announced == {}


def test_a_status_is_announced_only_once_its_event_is_stored() -> None:
    tracker = AlarmTracker(AlarmSettings(min_interval=0))
    [raised] = feed(tracker, [FAIL, FAIL])
    assert tracker.announced == {"system.disk": OK}  # made, not stored yet
    assert tracker.update([result(FAIL, 2)]) == []  # and not made twice while on its way
    tracker.stored(raised)
    assert tracker.announced == {"system.disk": FAIL}
    assert tracker.dirty


def test_an_event_the_outbox_gave_up_is_handed_out_again_with_its_original_time() -> None:
    tracker = AlarmTracker(AlarmSettings(min_interval=0))
    [raised] = feed(tracker, [FAIL, FAIL])
    tracker.not_stored(raised)
    again = tracker.update([result(FAIL, 30)])
    assert again == [raised]
    assert again[0]["at"] == "2026-11-22T08:01:00.000Z"
    assert tracker.update([result(FAIL, 31)]) == []  # handed out once, not every round
    assert tracker.announced == {"system.disk": OK}


def test_only_stored_statuses_are_kept_for_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "alarms.json"
    before = AlarmTracker(AlarmSettings(min_interval=0), state_path=path)
    feed(before, [FAIL, FAIL])  # the event never got stored (the agent stopped first)
    before.save()
    after = AlarmTracker(AlarmSettings(min_interval=0), state_path=path)
    after.load()
    assert [e["action"] for e in feed(after, [FAIL, FAIL])] == ["raised"]  # raised again


def test_a_removed_check_has_its_standing_alarm_cleared() -> None:
    tracker = AlarmTracker(AlarmSettings(min_interval=0))
    for event in feed(tracker, [FAIL, FAIL]):
        tracker.stored(event)
    events = tracker.retire(["system.memory"], T0 + timedelta(hours=1))
    assert [(e["check"], e["action"], e["message"]) for e in events] == [
        ("system.disk", "cleared", "the check was removed")
    ]
    assert tracker.announced == {}
