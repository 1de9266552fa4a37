"""The parts wired as the daemon wires them: a real poller feeds the data monitor, the history
and the watchdog through the FanOut; the runner, the alarm tracker, the health report and the
inspection report work on what it saw — while the device goes out of range, then goes away."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.check_settings import ChecksConfig
from agent.checks import (
    AgentView,
    AlarmTracker,
    CheckRunner,
    HealthSchedule,
    History,
    Status,
    build_checks,
    build_health,
    data_monitor,
    terminal_plans,
)
from agent.checks.report import render_report
from agent.config import ModbusTcpTerminal
from agent.model import TerminalView
from agent.protocols.modbus.links import TcpLink
from agent.protocols.modbus.poller import Poller
from agent.sim.modbus_device import RegisterMap, SimulatedModbusDevice
from agent.sinks import FanOut
from agent.watchdog import BeatSink, Progress
from tests.conftest import make_config, tcp_terminal


async def test_a_device_going_out_of_range_then_away_raises_alarms_and_lands_in_the_report(
    tmp_path: Path,
) -> None:
    sim = SimulatedModbusDevice({1: RegisterMap()})
    sim.units[1].set_registers("holding", 0, [20])
    port = await sim.serve_tcp("127.0.0.1", 0)
    config = make_config(
        [tcp_terminal(port, [{"name": "level", "address": 0}], period="200ms", timeout="200ms")],
        state_dir=str(tmp_path),
    )
    [terminal] = config.terminals
    assert isinstance(terminal, ModbusTcpTerminal)
    settings = ChecksConfig.model_validate(
        {
            "terminals": {"interval": "100ms"},
            "data_interval": "100ms",
            "data": {"plc.level": {"range": [0, 50]}},
            "alarms": {"min_interval": 0},
            "disabled": ["system", "software", "security", "network"],
        }
    )
    monitor = data_monitor(config, settings)
    history = History(tmp_path / "history.db")
    history.open()
    history.set_meta("gateway", config.gateway.id)
    history.set_terminals(terminal_plans(config))
    progress = Progress()
    progress.register("polling", allowance=1.0)
    link = TcpLink(terminal.host, terminal.port)
    poller = Poller(terminal, link, FanOut([monitor, history, BeatSink(progress)]))
    runner = CheckRunner(build_checks(config, settings, monitor=monitor))
    tracker = AlarmTracker(settings.alarms)
    schedule = HealthSchedule(interval=300, min_gap=0)
    started = datetime.now(UTC)
    events: list[dict[str, Any]] = []
    published: list[dict[str, Any]] = []

    async def one_round() -> None:
        view = AgentView(
            config, started_at=started, terminals={"plc": TerminalView(terminal.info, poller.stats)}
        )
        done = await runner.run_due(view)
        new = tracker.update(done.results)
        events.extend(new)
        history.record_results(done.results, done.changed)
        history.record_alarms(new)
        history.record_anomalies(monitor.take_anomalies())
        if schedule.due(time.monotonic(), bool(done.changed)):
            published.append(build_health(runner.results, view))
            schedule.sent(time.monotonic())

    task = asyncio.create_task(poller.run())
    try:
        for step in range(30):
            if step == 8:
                sim.units[1].set_registers("holding", 0, [75])  # out of the physical range
            if step == 16:
                await sim.stop()  # the terminal goes away
            await one_round()
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await link.close()
        await sim.stop()
        runner.close()
    raised = {(e["check"], e["action"]) for e in events}
    assert ("data.range:plc.level", "raised") in raised
    assert ("terminals.freshness:plc", "raised") in raised
    assert progress.healthy()  # failing polls are still progress
    statuses = [p["summary"]["status"] for p in published]
    assert statuses[0] == "unknown"  # nothing polled yet
    assert "ok" in statuses and statuses[-1] == "fail"
    assert len(published) < 30  # only on changes
    history.flush()
    now = datetime.now(UTC)
    text = render_report(history, now - timedelta(hours=1), now + timedelta(seconds=1), "md")
    assert "terminals.freshness:plc" in text and "| plc.level | out of range | 1 |" in text
    assert next(r for r in runner.results if r.id == "data.range:plc.level").status is Status.FAIL
    history.close()
