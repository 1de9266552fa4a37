"""Data checks: series with each anomaly (range, stuck, spike, gap, counter going back), fed
through the monitor as the pollers would, and judged by the checks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from agent.check_settings import ChecksConfig, PointChecks, split_key
from agent.checks import AgentView, DataMonitor, Status, build_checks, data_monitor
from agent.checks.framework import CheckResult, CheckRunner
from agent.config import Config
from agent.model import Quality, Reading
from tests.conftest import make_config

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
PERIOD = 60.0


def config() -> Config:
    points = [{"name": n, "address": i} for i, n in enumerate(("level", "rain", "flow", "name"))]
    return make_config(
        [
            {
                "name": "dam.plc",
                "protocol": "modbus-tcp",
                "host": "127.0.0.1",
                "period": "1m",
                "points": points,
            }
        ]
    )


def reading(point: str, value: object, minute: float, quality: Quality = Quality.GOOD) -> Reading:
    return Reading(
        "dam.plc",
        point,
        value,  # type: ignore[arg-type]
        "m",
        quality,
        T0 + timedelta(minutes=minute),
        "holding:0",
        None if quality is Quality.GOOD else "timeout",
    )


def feed(monitor: DataMonitor, point: str, values: Sequence[object], start: float = 0) -> list[str]:
    kinds = []
    for i, v in enumerate(values):
        kinds += [a.kind for a in monitor.observe([reading(point, v, start + i)])]
    return kinds


async def judge(
    monitor: DataMonitor, settings: ChecksConfig, now: datetime
) -> dict[str, CheckResult]:
    cfg = config()
    runner = CheckRunner(
        [c for c in build_checks(cfg, settings, monitor=monitor) if c.family == "data"]
    )
    try:
        done = await runner.run_all(AgentView(cfg), now)
    finally:
        runner.close()
    return {r.id: r for r in done.results}


def settings(**points: PointChecks) -> ChecksConfig:
    return ChecksConfig(data={f"dam.plc.{k}": v for k, v in points.items()})


async def test_a_value_outside_its_physical_range_fails_while_it_is_outside() -> None:
    s = settings(level=PointChecks(range=(100.0, 130.0)))
    monitor = data_monitor(config(), s)
    assert feed(monitor, "level", [110.0, 131.5, 140.0, 120.0]) == ["range"]  # one onset
    now = T0 + timedelta(minutes=3)
    assert (await judge(monitor, s, now))["data.range:dam.plc.level"].status is Status.OK
    feed(monitor, "level", [-5.0], start=4)
    outside = (await judge(monitor, s, now))["data.range:dam.plc.level"]
    assert (outside.status, outside.value, outside.threshold) == (Status.FAIL, -5.0, "[100, 130]")


async def test_a_flat_lined_value_is_stuck_after_n_equal_samples() -> None:
    s = settings(flow=PointChecks(stuck_samples=5))
    monitor = data_monitor(config(), s)
    assert feed(monitor, "flow", [3.0, 3.1, 3.1, 3.1, 3.1, 3.1, 3.1, 3.1]) == ["stuck"]
    stuck = (await judge(monitor, s, T0 + timedelta(minutes=8)))["data.stuck:dam.plc.flow"]
    assert (stuck.status, stuck.value) == (Status.WARN, 7)
    assert stuck.message == "flat-lined: 3.1 for 7 samples in a row"
    feed(monitor, "flow", [3.2], start=8)
    moving = (await judge(monitor, s, T0 + timedelta(minutes=9)))["data.stuck:dam.plc.flow"]
    assert moving.status is Status.OK


async def test_a_spike_beyond_the_rate_limit_warns_for_the_hold_time() -> None:
    s = settings(level=PointChecks(spike_per_s=0.01))  # 0.6 m per minute at most
    monitor = data_monitor(config(), s)
    kinds = feed(monitor, "level", [120.0, 120.2, 124.0, 120.3, 120.4])
    assert kinds == ["spike", "spike"]  # up and back down
    soon = (await judge(monitor, s, T0 + timedelta(minutes=5)))["data.spike:dam.plc.level"]
    assert (soon.status, soon.value) == (Status.WARN, 2)
    later = (await judge(monitor, s, T0 + timedelta(hours=2)))["data.spike:dam.plc.level"]
    assert later.status is Status.OK


async def test_missing_samples_are_found_as_gaps_and_counted() -> None:
    s = settings(level=PointChecks(gap_factor=1.5))
    monitor = data_monitor(config(), s)
    monitor.observe([reading("level", 1.0, 0), reading("level", 1.0, 1)])
    monitor.observe([reading("level", None, 2, Quality.BAD)])  # a failed poll is a missing sample
    found = monitor.observe([reading("level", 1.0, 5)])
    assert [(a.kind, a.value) for a in found] == [("gap", 3)]
    result = (await judge(monitor, s, T0 + timedelta(minutes=5, seconds=30)))[
        "data.gap:dam.plc.level"
    ]
    assert (result.status, result.value) == (Status.WARN, 3)
    silent = (await judge(monitor, s, T0 + timedelta(hours=3)))["data.gap:dam.plc.level"]
    assert silent.status is Status.WARN
    assert silent.message.startswith("no sample for 2h55m (expected every "), silent.message
    assert found[0].detail.startswith("3 samples missing: none for 4m00s ("), found[0].detail


async def test_a_counter_that_goes_backwards_fails() -> None:
    s = settings(rain=PointChecks(counter=True))
    monitor = data_monitor(config(), s)
    assert feed(monitor, "rain", [10.0, 10.5, 10.5, 11.0, 3.0, 3.5]) == ["counter"]
    result = (await judge(monitor, s, T0 + timedelta(minutes=6)))["data.counter:dam.plc.rain"]
    assert (result.status, result.value) == (Status.FAIL, -8.0)
    assert "the latest by 8" in result.message


async def test_data_checks_are_off_by_default_and_only_judge_good_numbers() -> None:
    assert [c for c in build_checks(config()) if c.family == "data"] == []
    s = settings(name=PointChecks(range=(0, 1), stuck_samples=2))
    monitor = data_monitor(config(), s)
    assert feed(monitor, "name", ["GAUGE", "GAUGE", True, True]) == []
    waiting = await judge(monitor, s, T0)
    assert {r.status for r in waiting.values()} == {Status.UNKNOWN}


async def test_a_data_key_that_names_no_configured_point_is_unknown() -> None:
    s = ChecksConfig(data={"dam.plc.nope": PointChecks(range=(0, 1))})
    result = (await judge(data_monitor(config(), s), s, T0))["data.range:dam.plc.nope"]
    assert result.status is Status.UNKNOWN
    assert result.message.startswith("no point dam.plc.nope in the config")


def test_keys_split_on_the_longest_terminal_name_and_settings_refuse_nonsense() -> None:
    assert split_key("dam.plc.level", ["dam", "dam.plc"]) == ("dam.plc", "level")
    assert split_key("other.level", ["dam"]) is None
    with pytest.raises(ValueError, match="lo is above hi"):
        PointChecks(range=(5, 1))
    with pytest.raises(ValueError, match="greater than 1"):
        PointChecks(gap_factor=0.5)
    assert PointChecks(range=(0, 1), counter=True).kinds == ["range", "counter"]


def test_anomalies_wait_for_the_history_in_a_bounded_queue() -> None:
    s = settings(rain=PointChecks(counter=True))
    monitor = DataMonitor(s, {"dam.plc": PERIOD}, pending_max=3)
    feed(monitor, "rain", [5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    taken = monitor.take_anomalies()
    assert [a.value for a in taken] == [2.0, 1.0, 0.0]
    assert monitor.dropped == 2 and monitor.found["counter"] == 5
    assert monitor.take_anomalies() == []
    assert taken[0].to_dict()["kind"] == "counter"
