"""Network checks: a broker that is down (a closed loopback port) and one that listens, DNS of a
name that does not resolve, the uplink's connected ratio, and a real outbox's backlog."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.check_settings import ChecksConfig
from agent.checks import AgentView, Status
from agent.checks.framework import CheckResult, CheckRunner
from agent.checks.network import Backlog, UplinkRatio, acks
from agent.checks.registry import build_checks
from agent.outbox import Outbox, Priority
from agent.signing import DeviceKey
from agent.uplink import UplinkState
from tests.conftest import make_config

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def view_with_broker(broker: str, **extra: Any) -> AgentView:
    return AgentView(make_config([], state_dir="/tmp/unused", uplink={"broker": broker}), **extra)


async def run(view: AgentView, check_id: str, settings: ChecksConfig | None = None) -> CheckResult:
    checks = [c for c in build_checks(view.config, settings) if c.id == check_id]
    runner = CheckRunner(checks)
    try:
        [result] = (await runner.run_all(view)).results
    finally:
        runner.close()
    return result


@pytest.fixture
async def listener() -> AsyncIterator[int]:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


async def test_a_broker_that_is_down_fails_the_tcp_check() -> None:
    port = free_port()
    result = await run(view_with_broker(f"mqtt://127.0.0.1:{port}"), "network.broker_tcp")
    assert result.status is Status.FAIL
    assert result.message == f"cannot connect to 127.0.0.1:{port}: connection refused"


async def test_a_listening_broker_passes_with_its_connect_time(listener: int) -> None:
    result = await run(view_with_broker(f"mqtt://127.0.0.1:{listener}"), "network.broker_tcp")
    assert result.status is Status.OK
    assert isinstance(result.value, float) and 0 <= result.value < 1
    assert result.unit == "s"


async def test_a_broker_name_that_does_not_resolve_fails_the_dns_check() -> None:
    settings = ChecksConfig.model_validate({"network": {"connect_timeout": "1s"}})
    view = view_with_broker("mqtt://broker.edge-agent.invalid:1883")
    result = await run(view, "network.broker_dns", settings)
    assert result.status is Status.FAIL
    assert "broker.edge-agent.invalid" in result.message
    # One fault, one finding: the TCP check does not fail a second time for it.
    tcp = await run(view, "network.broker_tcp", settings)
    assert tcp.status is Status.UNKNOWN
    assert tcp.message == (
        "not tried: broker.edge-agent.invalid does not resolve (see network.broker_dns)"
    )
    by_ip = await run(view_with_broker("mqtt://127.0.0.1:1883"), "network.broker_dns")
    assert (by_ip.status, by_ip.message) == (Status.OK, "127.0.0.1 is an IP address: no DNS needed")


def test_without_a_broker_there_are_no_broker_checks() -> None:
    ids = {c.id for c in build_checks(make_config([], state_dir="/tmp/unused"))}
    assert not {"network.broker_tcp", "network.broker_dns", "network.uplink", "network.acks"} & ids
    assert {"network.backlog", "network.evictions"} <= ids


def test_the_uplink_ratio_is_taken_over_the_window() -> None:
    view = view_with_broker("mqtt://127.0.0.1:1883")
    start = NOW.timestamp()
    state = UplinkState(broker="mqtt://127.0.0.1:1883", started_at=start)
    ratio = UplinkRatio(ChecksConfig())
    early = ratio(AgentView(view.config, uplink=state), NOW + timedelta(seconds=10))
    assert early.status is Status.UNKNOWN  # not connected yet, 10 s after start
    # Connected for the first 30 minutes, then down for 30 minutes.
    state.connected_seconds = 1800.0
    state.disconnected_since = start + 1800
    later = ratio(AgentView(view.config, uplink=state), NOW + timedelta(hours=1))
    assert later.status is Status.WARN
    assert later.value == pytest.approx(0.5, abs=0.01)
    assert later.message.startswith("connected 50.1% of the last 59m50s; now disconnected")
    # Down for the whole next hour: the window now only sees the outage.
    down = ratio(AgentView(view.config, uplink=state), NOW + timedelta(hours=2))
    assert (down.status, down.value) == (Status.FAIL, 0.0)
    # Connected again since then, for an hour.
    state.connected, state.connected_since = True, start + 7200
    up = ratio(AgentView(view.config, uplink=state), NOW + timedelta(hours=3))
    assert (up.status, up.value) == (Status.OK, 1.0)


class Clock:
    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def __call__(self) -> float:
        return self.now


def test_a_backlog_that_keeps_growing_warns_after_the_threshold_and_clears_when_it_drains(
    tmp_path: Path,
) -> None:
    clock = Clock()
    outbox = Outbox(tmp_path / "outbox.db", DeviceKey.generate(), "gw-1", clock=clock)
    outbox.open()
    try:
        config = make_config([], state_dir=str(tmp_path))
        backlog = Backlog(ChecksConfig())
        results = []
        for minute in range(0, 25, 5):  # a reading every 5 minutes, nothing leaves
            clock.now = NOW.timestamp() + minute * 60
            outbox.put("telemetry", {"readings": [minute]}, Priority.TELEMETRY)
            at = NOW + timedelta(minutes=minute)
            results.append(backlog(AgentView(config, outbox=outbox.stats()), at))
        assert [r.status for r in results] == [Status.OK] * 4 + [Status.WARN]
        assert results[-1].value == 5
        assert "the oldest for 20m00s; growing for 20m00s, longer than 15m" in results[-1].message
        outbox.ack([m.id for m in outbox.pending(3)])
        drained = backlog(AgentView(config, outbox=outbox.stats()), NOW + timedelta(minutes=26))
        assert (drained.status, drained.value) == (Status.OK, 2)
        clock.now = NOW.timestamp() + 3 * 3600
        old = backlog(AgentView(config, outbox=outbox.stats()), NOW + timedelta(hours=3))
        assert old.status is Status.WARN and "the oldest for" in old.message
    finally:
        outbox.close()


async def test_evictions_from_a_full_outbox_warn(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", DeviceKey.generate(), "gw-1", max_bytes=20_000)
    outbox.open()
    try:
        config = make_config([], state_dir=str(tmp_path))
        assert (
            await run(AgentView(config, outbox=outbox.stats()), "network.evictions")
        ).status is (Status.OK)
        for i in range(12):
            outbox.put("telemetry", {"readings": ["x" * 2000], "i": i}, Priority.TELEMETRY)
        stats = outbox.stats()
        assert stats.evicted > 0
        result = await run(AgentView(config, outbox=stats), "network.evictions")
        assert (result.status, result.value) == (Status.WARN, stats.evicted)
        assert "readings lost" in result.message
    finally:
        outbox.close()
    assert (await run(AgentView(config), "network.backlog")).status is Status.UNKNOWN


def test_acknowledgements_late_beyond_ack_warn_warn_and_unsaved_ones_warn_too() -> None:
    view = view_with_broker("mqtt://127.0.0.1:1883")
    state = UplinkState(broker="mqtt://127.0.0.1:1883", connected=True, inflight=9)
    settings = ChecksConfig.model_validate({"network": {"ack_warn": "20s"}})

    def outcome(at: datetime) -> Any:
        return acks(AgentView(view.config, uplink=state), at, settings)

    assert outcome(NOW).status is Status.OK  # nothing waits for a PUBACK
    state.unacked_since = NOW.timestamp()
    assert outcome(NOW + timedelta(seconds=19)).status is Status.OK
    late = outcome(NOW + timedelta(seconds=25))
    assert (late.status, late.value, late.threshold) == (Status.WARN, 25.0, 20.0)
    assert late.message.startswith("connected, no acknowledgement for 25s (9 publishes wait")
    state.acks_unsaved = 4  # acknowledged, being deleted from the outbox: no finding
    assert outcome(NOW + timedelta(seconds=5)).status is Status.OK
    state.connected = False  # disconnected: network.uplink says so
    assert outcome(NOW + timedelta(seconds=25)).status is Status.UNKNOWN
    state.acks_unsaved, state.ack_error = 60, "database or disk is full"
    unsaved = outcome(NOW + timedelta(seconds=25))
    assert (unsaved.status, unsaved.value) == (Status.WARN, 60)
    assert "database or disk is full" in unsaved.message


def test_with_a_broker_acknowledgements_are_checked() -> None:
    ids = {c.id for c in build_checks(view_with_broker("mqtt://127.0.0.1:1883").config)}
    assert "network.acks" in ids
