"""The health report (its documented shape) and when it is published."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.check_settings import HealthConfig
from agent.checks import (
    AgentView,
    CheckRunner,
    HealthSchedule,
    LogCounter,
    Status,
    build_checks,
    build_health,
)
from agent.config import parse_config
from agent.model import TerminalStats, TerminalView
from agent.outbox import Outbox, Priority
from agent.signing import DeviceKey
from agent.uplink import UplinkState
from tests.conftest import make_config, tcp_terminal


async def test_the_health_report_summarises_every_result_and_the_agent(tmp_path: Path) -> None:
    config = make_config(
        [tcp_terminal(1, [{"name": "level", "address": 0}])],
        state_dir=str(tmp_path),
        uplink={"broker": "mqtt://127.0.0.1:1"},  # nothing listens there: a failing check
    )
    [terminal] = config.terminals
    now = datetime.now(UTC)
    stats = TerminalStats(polls=10, failed_polls=1, last_good_at=now - timedelta(seconds=1))
    stats.outcomes.extend([True] * 9 + [False])
    stats.poll_seconds.extend([0.01, 0.02, 0.03])
    outbox = Outbox(tmp_path / "outbox.db", DeviceKey.generate(), "gw-test")
    outbox.open()
    try:
        outbox.put("telemetry", {"readings": []}, Priority.TELEMETRY)
        view = AgentView(
            config,
            tmp_path / "config.yaml",
            started_at=now - timedelta(hours=2),
            restarts=[now - timedelta(hours=2), now - timedelta(days=3)],
            terminals={"plc": TerminalView(terminal.info, stats)},
            outbox=outbox.stats(),
            uplink=UplinkState(broker=config.uplink.broker, last_error="refused"),
            logs=LogCounter().snapshot(),
        )
    finally:
        outbox.close()
    runner = CheckRunner(build_checks(config))
    try:
        results = (await runner.run_all(view, now)).results
    finally:
        runner.close()
    report = build_health(results, view, now)
    assert json.loads(json.dumps(report)) == report  # plain JSON
    assert set(report) == {
        "schema",
        "gateway",
        "generated_at",
        "summary",
        "checks",
        "agent",
        "outbox",
        "uplink",
        "terminals",
        "terminals_summary",
        "checks_omitted",
        "truncated",
        "buses",
        "update",
    }
    assert report["truncated"] is False and report["checks_omitted"] == 0
    assert report["update"] is None  # no update part in this view
    summary = report["summary"]
    assert summary["status"] == "fail"
    assert "network.broker_tcp" in summary["failing"]
    assert sum(summary["counts"].values()) == len(results) == len(report["checks"])
    assert report["checks"][0]["status"] == "fail"  # failing first
    statuses = [Status(c["status"]).severity for c in report["checks"]]
    assert statuses == sorted(statuses, reverse=True)
    assert report["agent"]["restarts_24h"] == 1
    assert report["agent"]["uptime"] == 7200.0
    assert report["outbox"]["messages"]["telemetry"] == 1
    assert report["uplink"]["last_error"] == "refused" and report["uplink"]["connected"] is False
    assert view.terminals_ok() == (1, 1)
    [plc] = report["terminals"]
    assert plc["name"] == "plc" and plc["success_ratio"] == 0.9 and plc["polls"] == 10
    assert plc["status"] == "ok"


async def test_the_health_report_of_5000_failing_terminals_stays_bounded_and_is_stored(
    tmp_path: Path,
) -> None:
    """At K=5000 with every terminal failing, the report lists the worst 50
    terminals and their checks, counts the rest, and is stored by the outbox (4 MiB limit)
    with room to spare; `max_terminals` chooses how many are listed."""
    count = 5000
    points = [{"name": "r0", "address": 0}]  # the report is per terminal and per check
    terminals_config = [tcp_terminal(1, points, name=f"t{i:04d}") for i in range(count)]
    # JSON is YAML, and much quicker to write than block YAML for 5000 terminals.
    config = parse_config(
        json.dumps(
            {"gateway": {"id": "gw"}, "state_dir": str(tmp_path), "terminals": terminals_config}
        )
    )
    now = datetime.now(UTC)
    terminals = {}
    for i, t in enumerate(config.terminals):
        stats = TerminalStats(polls=100, failed_polls=100 - i % 7, consecutive_failures=i % 13)
        stats.missed_slots = i % 17
        stats.last_error = "cannot connect to 127.0.0.1:1: no answer to the connection attempt"
        stats.last_good_at = now - timedelta(seconds=60 + i % 7) if i % 2 else None
        stats.outcomes.extend([False] * 20)
        stats.poll_seconds.extend([1.0])
        terminals[t.name] = TerminalView(t.info, stats)
    view = AgentView(
        config, None, started_at=now - timedelta(hours=1), terminals=terminals, outbox=None
    )
    runner = CheckRunner([c for c in build_checks(config) if c.family == "terminals"])
    try:
        results = (await runner.run_all(view, now)).results
    finally:
        runner.close()
    assert len(results) == 3 * count + 1  # success, latency, freshness each; one overload

    report = build_health(results, view, now)
    size = len(json.dumps(report).encode())
    assert size < 256 * 1024, size  # a few tens of KiB; 6.4 MB before it was bounded
    listed = report["terminals"]
    assert len(listed) == 50
    # The worst first: failing terminals with the most failures in a row.
    assert {t["status"] for t in listed} == {"fail"}
    assert min(t["consecutive_failures"] for t in listed) == 12
    summary = report["terminals_summary"]
    assert summary["total"] == count and summary["listed"] == 50 and summary["omitted"] == 4950
    assert sum(summary["status"].values()) == count
    assert summary["missed_slots"] == sum(i % 17 for i in range(count))
    assert report["truncated"] is True
    assert report["checks_omitted"] == len(results) - len(report["checks"]) > 0
    assert sum(report["summary"]["counts"].values()) == len(results)  # all counted
    names = {t["name"] for t in listed}
    assert {c["id"].rpartition(":")[2] for c in report["checks"]} <= names | {"terminals.overload"}
    failing = report["summary"]["failing"]
    assert len(failing) == 100 and report["summary"]["failing_omitted"] > 0

    outbox = Outbox(tmp_path / "outbox.db", DeviceKey.generate(), "gw-test")
    outbox.open()
    try:
        outbox.put("health", report, Priority.HEALTH)  # raises over the message limit
    finally:
        outbox.close()
    assert len(build_health(results, view, now, max_terminals=5)["terminals"]) == 5


def test_health_is_published_at_start_every_interval_and_soon_after_a_change() -> None:
    schedule = HealthSchedule.from_config(HealthConfig(interval=300, min_gap=5))
    assert schedule.due(0.0)  # nothing published yet
    schedule.sent(0.0)
    assert not schedule.due(2.0, changed=True)  # a change right after one: wait for min_gap
    assert schedule.next_in(2.0) == 3.0
    assert schedule.due(5.0)  # the change was remembered
    schedule.sent(5.0)
    assert not schedule.due(100.0)
    assert schedule.next_in(100.0) == 205.0
    assert schedule.due(150.0, changed=True)  # at once on a change
    schedule.sent(150.0)
    assert not schedule.due(449.0)
    assert schedule.due(450.0)  # every interval
