"""Self-inspection in the running agent: health retained upstream, alarms when a terminal dies,
`edge-agent check`, and `edge-agent report` from the history the agent kept."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from agent.checks.history import History
from agent.sim.modbus_device import SimulatedModbusDevice
from tests.agentproc import Agent, write_config
from tests.broker import Mosquitto
from tests.collector import Collector, verify
from tests.conftest import PYTHON, ROOT, tcp_terminal
from tests.lockshare import LockSharingThread
from tests.test_store_forward import keys_show

Device = tuple[SimulatedModbusDevice, int]
PREFIX = "edge/gw-test"
FAST_CHECKS = {
    "system": {"interval": "1s"},
    "terminals": {"interval": "500ms"},
    "network": {"interval": "1s"},
    "alarms": {"raise_after": 2, "clear_after": 2, "min_interval": "0s"},
}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path / "broker")
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


def config_for(tmp_path: Path, port: int, broker: Mosquitto) -> Path:
    config = tmp_path / "config.yaml"
    write_config(
        config,
        tmp_path / "state",
        [tcp_terminal(port, [{"name": "level", "address": 0}], period="200ms", timeout="200ms")],
        uplink={"broker": broker.url, "backoff_min": "200ms"},
        checks=FAST_CHECKS,
        health={"interval": "2s", "min_gap": "0s"},
    )
    return config


async def test_health_is_published_retained_and_a_dead_terminal_raises_then_clears_an_alarm(
    tmp_path: Path, device: Device, broker: Mosquitto, agent_factory: Any
) -> None:
    sim, port = device
    config = config_for(tmp_path, port, broker)
    async with Collector(broker.port, f"{PREFIX}/#") as collector:
        agent: Agent = await agent_factory(config)
        await collector.wait_for("health", lambda: collector.on("health"))
        jwk = keys_show(config)["jwk"]
        health = verify(collector.on("health")[0].payload, jwk)
        assert health["kind"] == "health"
        report = health["body"]
        assert report["gateway"] == "gw-test"
        assert {c["id"] for c in report["checks"]} >= {"system.disk", "terminals.freshness:plc"}
        assert [t["name"] for t in report["terminals"]] == ["plc"]

        await sim.stop()  # the terminal stops answering

        def alarms(action: str) -> list[dict[str, Any]]:
            bodies = [verify(m.payload, jwk)["body"] for m in collector.on("events")]
            return [b for b in bodies if b["action"] == action and b["check"].endswith(":plc")]

        await collector.wait_for("an alarm", lambda: alarms("raised"), timeout=20)
        raised = alarms("raised")[0]
        assert raised["type"] == "alarm"
        assert raised["status"] in ("warn", "fail")
        await sim.serve_tcp("127.0.0.1", port)  # it answers again
        await collector.wait_for("cleared", lambda: alarms("cleared"), timeout=20)
        assert await agent.stop() == 0
    # A late subscriber finds the latest health report, retained.
    async with Collector(broker.port, f"{PREFIX}/health", client_id="late") as late:
        await late.wait_for("retained", lambda: late.messages)
    assert late.messages[0].retain


async def test_check_json_and_exit_code(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    write_config(
        config,
        tmp_path / "state",
        [],
        checks={"system": {"disk": {"warn_free_percent": 100, "fail_free_percent": 99.99}}},
    )
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "agent",
        "check",
        "--json",
        "--config",
        str(config),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    answer = json.loads(out)
    assert (answer["schema"], answer["source"], answer["summary"]["status"]) == (1, "probe", "fail")
    results = answer["checks"]
    assert process.returncode == 1  # the disk check fails: nothing is 99.99 % free
    assert results[0]["status"] == "fail"
    assert results[0]["id"] == "system.disk"
    assert {"id", "family", "status", "value", "unit", "threshold", "message", "since"} <= set(
        results[0]
    )


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


async def test_report_is_written_from_the_history_the_agent_kept(
    tmp_path: Path, device: Device, agent_factory: Any
) -> None:
    _sim, port = device
    config = tmp_path / "config.yaml"
    write_config(
        config,
        tmp_path / "state",
        [tcp_terminal(port, [{"name": "level", "address": 0}], period="200ms")],
        checks={**FAST_CHECKS, "history": {"flush_interval": "1s"}},
    )
    started = time.time()
    agent: Agent = await agent_factory(config)
    await agent.wait_for("readings", lambda: len(agent.readings()) >= 10)
    stopping = time.time()
    assert await agent.stop() == 0
    stopped = time.time()
    # The agent recorded its run, and marked it alive as it stopped: what follows is known as
    # time it did not run.
    with History(tmp_path / "state" / "history.db") as history:
        [(start, end)] = history.runs(datetime.fromtimestamp(started, UTC), datetime.now(UTC)).spans
    assert started <= start < stopping <= end <= stopped
    out = tmp_path / "report.html"
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "agent",
        "report",
        "--since",
        "1h",
        "--out",
        str(out),
        "--config",
        str(config),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 0, err
    html = out.read_text()
    parser = _Tags()
    parser.feed(html)
    assert "svg" in parser.tags
    assert "gw-test" in html
    # What the agent recorded is in it: the point's trend, and polls answered (not 0 of n).
    assert "plc.level" in html
    row = re.search(
        r'<tr>\s*<td>plc</td><td class="num">([\d.]+)%</td><td class="num">([\d,]+) / ([\d,]+)</td>',
        html,
    )
    assert row is not None
    availability = float(row[1])
    answered, expected = (int(n.replace(",", "")) for n in (row[2], row[3]))
    assert availability > 50
    assert 0 < answered <= expected


async def test_a_reload_gives_the_data_checks_the_new_poll_periods(tmp_path: Path) -> None:
    from agent.inspection import Inspection
    from agent.outbox import AsyncOutbox, Outbox
    from agent.signing import init_key
    from agent.writer import OutboxWriter
    from tests.conftest import make_config

    before = make_config([tcp_terminal(1502, [{"name": "a", "address": 0}], period="1s")])
    after = make_config([
        tcp_terminal(1502, [{"name": "a", "address": 0}], period="10s"),
        tcp_terminal(1503, [{"name": "a", "address": 0}], name="new", period="5s"),
    ])  # fmt: skip
    box = Outbox(tmp_path / "outbox.db", init_key(tmp_path), "gw-test")
    box.open()
    try:
        outbox = AsyncOutbox(box)
        inspection = Inspection(before, OutboxWriter(outbox), view=None)  # type: ignore[arg-type]
        assert inspection.monitor.intervals == {"plc": 1.0}
        await inspection.reload(after)
        assert inspection.monitor.intervals == {"plc": 10.0, "new": 5.0}
        # The reloaded checks ask the agent's one judge of overload, which knows what came
        # before the reload (tests/test_checks_terminals.py: what it then decides).
        [overload] = [c.probe for c in inspection.runner.checks if c.id == "terminals.overload"]
        assert overload is inspection.overload
    finally:
        box.close()


async def test_an_alarm_is_stored_even_when_its_state_file_cannot_be_saved(tmp_path: Path) -> None:
    """A failed save of the alarm state (a full disk, say) must not skip the event: the event
    is stored, the status announced once it is, and the save tried again by the next round."""
    from agent.check_settings import AlarmSettings
    from agent.checks import AlarmTracker, CheckResult, Status
    from agent.checks.framework import Round, utc_now
    from agent.inspection import Inspection
    from agent.outbox import AsyncOutbox, Outbox
    from agent.signing import init_key
    from agent.writer import OutboxWriter
    from tests.conftest import make_config

    blocker = tmp_path / "state"
    blocker.write_text("a file where the state folder should be: every save fails\n")
    box = Outbox(tmp_path / "outbox.db", init_key(tmp_path), "gw-test")
    box.open()
    try:
        async with OutboxWriter(AsyncOutbox(box), retry=0.05) as writer:
            config = make_config([tcp_terminal(1502, [{"name": "a", "address": 0}])])
            inspection = Inspection(config, writer, view=None)  # type: ignore[arg-type]
            tracker = AlarmTracker(AlarmSettings(raise_after=1), blocker / "alarms.json")
            inspection.alarms = tracker
            inspection.health.sent(time.monotonic())  # no health report due in this test
            now = utc_now()
            failing = CheckResult("system.disk", "system", Status.FAIL, 99, "%", 95, "", now, now)
            await inspection._on_round(Round(now, [failing], []))
            deadline = time.monotonic() + 10
            while box.stats().events < 1 or tracker.announced != {"system.disk": Status.FAIL}:
                assert time.monotonic() < deadline, box.stats()
                await asyncio.sleep(0.02)
            [message] = box.pending(10)
            assert message.kind == "event"
            while inspection._saver is not None and not inspection._saver.done():
                await asyncio.sleep(0.02)
            assert tracker.dirty  # not saved: kept to try again
            blocker.unlink()
            await inspection._on_round(Round(now, [failing], []))
            while tracker.dirty or not (blocker / "alarms.json").exists():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            saved = json.loads((blocker / "alarms.json").read_text())
            assert saved["checks"]["system.disk"]["announced"] == "fail"
            assert box.stats().events == 1  # the retried save raised nothing new
    finally:
        box.close()


async def test_the_history_save_at_stop_takes_at_most_its_share_of_the_5_s(tmp_path: Path) -> None:
    """At thousands of terminals the last save of the history takes seconds; the agent must end
    within 5 s of SIGTERM all the same. A save that cannot finish in `HISTORY_STOP` (here:
    another process holds the history's write lock) is left behind, and said to be lost."""
    import sqlite3

    from structlog.testing import capture_logs

    from agent.checks.view import AgentView
    from agent.inspection import HISTORY_STOP, Inspection
    from agent.outbox import AsyncOutbox, Outbox
    from agent.signing import init_key
    from agent.writer import OutboxWriter
    from tests.conftest import make_config

    config = make_config(
        [tcp_terminal(1502, [{"name": "a", "address": 0}])], state_dir=str(tmp_path / "state")
    )

    async def view() -> AgentView:
        return AgentView(config)

    box = Outbox(tmp_path / "outbox.db", init_key(tmp_path), "gw-test")
    box.open()
    holder: sqlite3.Connection | None = None
    try:
        async with OutboxWriter(AsyncOutbox(box)) as writer:
            inspection = Inspection(config, writer, view=view)
            await inspection.__aenter__()  # opened the history and noted this start (buffered)
            assert inspection.history is not None
            holder = sqlite3.connect(inspection.history.path, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")  # the history's save now waits for this lock
            with capture_logs() as logs:
                started = time.monotonic()
                await inspection.__aexit__(None, None, None)
                took = time.monotonic() - started
            assert HISTORY_STOP <= took < HISTORY_STOP + 1.0
            assert [e["event"] for e in logs if e["log_level"] == "error"] == [
                "history not saved on the way out: out of time (the statistics since the last "
                "save are lost)"
            ]
    finally:
        if holder is not None:
            holder.execute("ROLLBACK")
            holder.close()
        box.close()


async def test_the_check_loop_runs_only_between_start_checks_and_stop_checks(
    tmp_path: Path,
) -> None:
    """Checks judge the running agent: no round before the daemon says every part is up, none
    after it says the drivers are about to leave (a round then would report a site without its
    terminals, and its health report would be the last one kept on disk)."""
    from agent.checks.view import AgentView
    from agent.inspection import Inspection
    from agent.outbox import AsyncOutbox, Outbox
    from agent.signing import init_key
    from agent.writer import OutboxWriter
    from tests.conftest import make_config

    config = make_config(
        [tcp_terminal(1502, [{"name": "a", "address": 0}])],
        state_dir=str(tmp_path / "state"),
        checks={"system": {"interval": "100ms"}, "terminals": {"interval": "100ms"}},
    )
    views = 0

    async def view() -> AgentView:
        nonlocal views
        views += 1
        return AgentView(config)

    box = Outbox(tmp_path / "outbox.db", init_key(tmp_path), "gw-test")
    box.open()
    try:
        async with (
            OutboxWriter(AsyncOutbox(box)) as writer,
            Inspection(config, writer, view=view) as inspection,
        ):
            await asyncio.sleep(0.5)
            assert views == 0  # entered, but not started: no round
            inspection.start_checks()
            deadline = time.monotonic() + 10
            while views < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            assert "checks" in inspection.progress.ages()  # watched while it runs
            await inspection.stop_checks()
            stopped_at = views
            assert "checks" not in inspection.progress.ages()  # no stall when it ends
            await asyncio.sleep(0.5)
            assert views == stopped_at  # no round after the stop
    finally:
        box.close()


async def test_a_large_round_is_recorded_in_slices_that_leave_the_interpreter_to_a_polling_thread(
    tmp_path: Path,
) -> None:
    """At thousands of terminals a round is tens of thousands of results: recorded in the
    history in one go they held the interpreter's lock for tens of milliseconds, and the TCP
    engine's thread (which gives the lock up at every socket call and gets it back only every
    5 ms, the switch interval) polled that much late. Recorded in slices, with pauses, the
    thread goes on."""
    from agent.checks import CheckResult, Status
    from agent.checks.framework import Round, utc_now
    from agent.checks.view import AgentView
    from agent.inspection import RECORD_SLICE, Inspection
    from agent.outbox import AsyncOutbox, Outbox
    from agent.signing import init_key
    from agent.writer import OutboxWriter
    from tests.conftest import make_config

    config = make_config(
        [tcp_terminal(1502, [{"name": "a", "address": 0}])], state_dir=str(tmp_path / "state")
    )

    async def view() -> AgentView:
        return AgentView(config)

    now = utc_now()
    results = [
        CheckResult(f"terminals.freshness:t{i}", "terminals", Status.OK, 1, "s", 5, "", now, now)
        for i in range(30 * RECORD_SLICE)
    ]
    box = Outbox(tmp_path / "outbox.db", init_key(tmp_path), "gw-test")
    box.open()
    try:
        async with OutboxWriter(AsyncOutbox(box)) as writer:
            inspection = Inspection(config, writer, view=view)
            await inspection.__aenter__()
            history = inspection.history
            assert history is not None
            inspection.health.sent(time.monotonic())  # no health report due: only the records
            with LockSharingThread() as thread:
                await inspection._on_round(Round(now, results, []))
            await asyncio.to_thread(history.flush)
            hour = timedelta(hours=1)
            recorded = await asyncio.to_thread(history.checks, now - hour, now + hour)
            await inspection.__aexit__(None, None, None)
    finally:
        box.close()
    assert len(recorded) == len(results)  # every result recorded, in whichever slice
    # Recorded in one go, the thread made a few dozen steps while the round was handled (31
    # and 46 when checked, the slicing taken out); in slices, hundreds (860 and 1,093).
    assert thread.steps >= 100, thread.steps
