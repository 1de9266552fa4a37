"""Terminal checks on a real poller polling a real simulated Modbus device over loopback, which
then stops answering."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

from agent.check_settings import AlarmSettings, ChecksConfig
from agent.checks import AgentView, AlarmTracker, Status, build_checks
from agent.checks.framework import CheckResult, CheckRunner
from agent.checks.terminals import AFTER_OVERLOAD_TIME, Overload
from agent.config import Config, ModbusTcpTerminal
from agent.model import TerminalStats, TerminalView
from agent.protocols.modbus.links import TcpLink
from agent.protocols.modbus.poller import Poller
from agent.sim.modbus_device import RegisterMap, SimulatedModbusDevice
from tests.conftest import ListSink, make_config, tcp_terminal

SETTINGS = ChecksConfig.model_validate({"terminals": {"success_window": 4}})


async def results(view: AgentView, settings: ChecksConfig = SETTINGS) -> dict[str, CheckResult]:
    runner = CheckRunner(
        [c for c in build_checks(view.config, settings) if c.family == "terminals"]
    )
    try:
        done = await runner.run_all(view)
    finally:
        runner.close()
    return {r.id: r for r in done.results}


async def wait_until(what: str, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def config_for(port: int, **extra: object) -> tuple[Config, ModbusTcpTerminal]:
    config = make_config(
        [
            tcp_terminal(
                port, [{"name": "level", "address": 0}], period="200ms", timeout="300ms", **extra
            )
        ]
    )
    [terminal] = config.terminals
    assert isinstance(terminal, ModbusTcpTerminal)
    return config, terminal


@contextlib.asynccontextmanager
async def polled_device(
    delay: float = 0.0,
) -> AsyncIterator[tuple[SimulatedModbusDevice, Config, ModbusTcpTerminal, Poller]]:
    """A simulated device on loopback and a real poller polling it every 200 ms; both stopped
    at the end."""
    sim = SimulatedModbusDevice({1: RegisterMap()})
    sim.delay = delay
    port = await sim.serve_tcp("127.0.0.1", 0)
    config, terminal = config_for(port)
    link = TcpLink(terminal.host, terminal.port)
    poller = Poller(terminal, link, ListSink())
    task = asyncio.create_task(poller.run())
    try:
        yield sim, config, terminal, poller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await link.close()
        await sim.stop()


async def test_a_terminal_that_stops_answering_is_one_finding_with_its_reason() -> None:
    """A dead terminal fails its freshness check, which says why it does not answer; its
    success and latency checks stand down and point there (one finding per fault), and the
    latency they report is that of the polls that were answered, never the failures'."""
    started = datetime.now(UTC)
    async with polled_device() as (sim, config, terminal, poller):
        port = terminal.port
        await wait_until("three good polls", lambda: poller.stats.polls >= 3)

        def view() -> AgentView:
            return AgentView(
                config,
                started_at=started,
                terminals={"plc": TerminalView(terminal.info, poller.stats)},
            )

        healthy = await results(view())
        assert healthy["terminals.freshness:plc"].status is Status.OK
        assert healthy["terminals.success:plc"].value == 1.0
        assert healthy["terminals.latency:plc"].status is Status.OK
        answered = poller.stats.latency_count

        await sim.stop()  # the terminal stops answering
        stale_after = 3 * terminal.period
        await wait_until(
            "the last good reading to age past 3 periods",
            lambda: (
                poller.stats.last_good_at is not None
                and (datetime.now(UTC) - poller.stats.last_good_at).total_seconds()
                > stale_after + 0.1
                and poller.stats.consecutive_failures >= 2
            ),
        )
        dead = await results(view())
        fresh = dead["terminals.freshness:plc"]
        assert fresh.status is Status.FAIL
        assert fresh.message.startswith(f"not answering: cannot connect to 127.0.0.1:{port}")
        assert "connection refused" in fresh.message
        assert "stale after" in fresh.message
        assert fresh.threshold == stale_after
        assert [r.id for r in dead.values() if r.status is not Status.OK] == [fresh.id]
        assert "terminals.freshness:plc" in dead["terminals.success:plc"].message
        assert poller.stats.latency_count == answered  # the failed polls were not timed


async def test_a_dead_terminal_raises_one_alarm_not_three() -> None:
    """Round after round of checks while a terminal dies: the alarm tracker raises the
    freshness check alone (warning while its data is fresh, then failing), with the reason."""
    started = datetime.now(UTC)
    tracker = AlarmTracker(AlarmSettings(min_interval=0))
    events: list[dict[str, object]] = []
    async with polled_device() as (sim, config, terminal, poller):
        runner = CheckRunner([c for c in build_checks(config, SETTINGS) if c.family == "terminals"])

        async def round_of_checks() -> dict[str, CheckResult]:
            terminals = {"plc": TerminalView(terminal.info, poller.stats)}
            done = await runner.run_all(AgentView(config, started_at=started, terminals=terminals))
            events.extend(tracker.update(done.results))
            return {r.id: r for r in done.results}

        await wait_until("three good polls", lambda: poller.stats.polls >= 3)
        for _ in range(3):
            await round_of_checks()
        await sim.stop()
        failed_rounds = 0
        deadline = time.monotonic() + 10
        while failed_rounds < 3:  # enough rounds for any check to be confirmed
            assert time.monotonic() < deadline, events
            await asyncio.sleep(0.1)
            done = await round_of_checks()
            failed_rounds += done["terminals.freshness:plc"].status is Status.FAIL
    assert {e["check"] for e in events} == {"terminals.freshness:plc"}, events
    assert events[-1]["status"] == "fail"
    assert "connection refused" in str(events[-1]["message"])


async def test_a_flaky_terminal_keeps_its_success_finding_between_failures() -> None:
    """Every other poll failing is an unreliable link, judged by `success` whether or not the
    latest poll failed; the failures now only make freshness warn."""
    config, terminal = config_for(1)
    for last in (True, False):
        stats = TerminalStats(last_good_at=datetime.now(UTC))
        stats.outcomes.extend([True, False] * 2 + [True])
        if not last:
            stats.outcomes.append(False)
            stats.consecutive_failures = 1
            stats.last_error = "no reply within 0.3s"
        view = AgentView(config, terminals={"plc": TerminalView(terminal.info, stats)})
        done = await results(view, ChecksConfig.model_validate({}))  # a window of 20 polls
        success = done["terminals.success:plc"]
        assert (success.status, success.value) == (Status.WARN, 0.6), success  # 3 of 5
        fresh = done["terminals.freshness:plc"]
        assert fresh.status is (Status.OK if last else Status.WARN)


async def test_a_slow_terminal_warns_on_its_p95_poll_time() -> None:
    # 130 ms of a 200 ms period: over half of it
    async with polled_device(delay=0.13) as (_sim, config, terminal, poller):
        await wait_until("three polls", lambda: poller.stats.polls >= 3)
        view = AgentView(config, terminals={"plc": TerminalView(terminal.info, poller.stats)})
        latency = (await results(view))["terminals.latency:plc"]
    assert latency.status is Status.WARN
    assert latency.threshold == 0.1
    assert isinstance(latency.value, float) and latency.value > 0.1


async def test_a_terminal_never_heard_from_fails_once_it_had_time_to_answer() -> None:
    config, terminal = config_for(1)
    stats = TerminalStats()
    view = AgentView(
        config,
        started_at=datetime.now(UTC) - timedelta(seconds=3700.5),
        terminals={"plc": TerminalView(terminal.info, stats)},
    )
    fresh = (await results(view))["terminals.freshness:plc"]
    assert fresh.status is Status.FAIL
    # The age in words, as the CLI writes ages (not 3700s).
    assert fresh.message.startswith("no good reading from plc since the agent started 1h01m ago")
    just_started = AgentView(config, terminals={"plc": TerminalView(terminal.info, stats)})
    assert (await results(just_started))["terminals.freshness:plc"].status is Status.UNKNOWN
    gone = AgentView(config)
    assert (await results(gone))["terminals.freshness:plc"].message == "terminal plc is not running"


async def test_a_reporting_terminal_is_stale_after_its_expected_interval() -> None:
    config, terminal = config_for(1)
    stats = TerminalStats()
    stats.last_good_at = datetime.now(UTC) - timedelta(minutes=100)
    view = AgentView(
        config, terminals={"plc": TerminalView(terminal.info, stats, expected_interval=3600)}
    )
    fresh = (await results(view))["terminals.freshness:plc"]
    assert (fresh.status, fresh.threshold) == (Status.FAIL, 5400.0)  # 1.5 report intervals


async def test_a_busy_serial_bus_fails_its_utilisation_check() -> None:
    rtu = {
        "name": "pump",
        "protocol": "modbus-rtu",
        "device": "/dev/ttyEDGE0",
        "points": [{"name": "flow", "address": 0}],
    }
    config = make_config([rtu])
    busy = await results(AgentView(config, buses={"/dev/ttyEDGE0": 0.95}))
    bus = busy["terminals.bus:/dev/ttyEDGE0"]
    assert (bus.status, bus.value, bus.threshold) == (Status.FAIL, 0.95, 0.9)
    assert bus.message == "/dev/ttyEDGE0 busy 95% of the time, above 0.9"
    quiet = await results(AgentView(config, buses={"/dev/ttyEDGE0": 0.2}))
    assert quiet["terminals.bus:/dev/ttyEDGE0"].status is Status.OK


async def test_one_overload_check_for_the_site_judges_slots_skipped_while_the_agent_was_behind() -> (
    None
):
    """`terminals.overload` is one check whatever the number of terminals; it compares the
    slots skipped because the agent was behind (too late, or held by the outbox) with all
    slots since its previous run, and a slot lost to a slow terminal's own overrun is not
    the agent's overload."""
    names = [f"t{i}" for i in range(20)]
    config = make_config(
        [tcp_terminal(1, [{"name": "a", "address": 0}], name=n, period="1s") for n in names]
    )
    stats = {n: TerminalStats(last_good_at=datetime.now(UTC)) for n in names}
    for s in stats.values():  # every terminal answers, quickly
        s.outcomes.extend([True] * 20)
        s.poll_seconds.append(0.01)
    checks = [c for c in build_checks(config) if c.family == "terminals"]
    assert [c.id for c in checks if "overload" in c.id] == ["terminals.overload"]  # one
    runner = CheckRunner(checks)

    async def judge(judged: bool = True) -> CheckResult:
        """A round; `judged`: whether the terminals' success and latency are judged in it."""
        view = AgentView(  # a snapshot each round, as the daemon takes
            config,
            None,
            started_at=datetime.now(UTC),
            terminals={t.name: TerminalView(t.info, stats[t.name]) for t in config.terminals},
        )
        done = {r.id: r for r in (await runner.run_all(view)).results}
        overloaded = done["terminals.overload"].status is not Status.OK
        for n in names:  # while overloaded, no terminal of its own is judged (nor alarmed)
            mine = [done[f"terminals.{c}:{n}"] for c in ("success", "latency", "freshness")]
            if overloaded:
                assert {r.status for r in mine} == {Status.UNKNOWN}
                assert "not judged while the agent is overloaded" in mine[0].message
            elif judged:
                assert Status.UNKNOWN not in {r.status for r in mine}
            else:  # caught up, but too few polls since: freshness alone is judged
                assert [r.status for r in mine[:2]] == [Status.UNKNOWN] * 2
                assert "judged again after 20 polls since the agent caught up" in mine[0].message
                assert "judged again after 20 answered polls since" in mine[1].message
                assert mine[2].status is Status.OK
        return done["terminals.overload"]

    def run(
        polls: int,
        overrun: int = 0,
        late: int = 0,
        held: int = 0,
        late_starts: int = 0,
        took: float = 0.01,
    ) -> None:
        for s in stats.values():
            s.polls += polls
            s.outcomes.extend([True] * polls)
            for _ in range(polls):
                s.record_latency(took)
            s.missed_slots += overrun + late + held
            s.behind_slots += late + held
            s.held_slots += held
            s.late_starts += late_starts

    try:
        run(polls=10, overrun=5)  # slow terminals overran their slots: not overload
        assert (await judge()).status is Status.OK
        run(polls=9, late=1)  # 10% of the slots since the last run started too late
        result = await judge()
        assert result.status is Status.WARN and result.value == 0.1
        assert "of 200 poll slots since the last check, 20 skipped (10.0%)" in result.message
        assert "behind on 20 of 20 terminals" in result.message
        run(polls=5, late=2, held=3)  # half of the slots skipped: fail, held ones named
        result = await judge()
        assert result.status is Status.FAIL and result.value == 0.5
        assert "60 held back while the outbox caught up" in result.message
        # Every slot polled, but one in five started late: the agent's loop lags, which also
        # stretches the terminals' poll times (0.9 s of a 1 s period), so it is the agent that
        # is named, not them.
        run(polls=10, late_starts=2, took=0.9)
        result = await judge()
        assert result.status is Status.FAIL and result.value == 0.2
        assert "of 200 poll slots since the last check, 40 started late (20.0%)" in result.message
        run(polls=10)  # caught up: freshness judged at once, the rest once 20 polls are new
        assert (await judge(judged=False)).status is Status.OK
        run(polls=10)  # 20 since: judged on those alone (the slow ones would have warned)
        assert (await judge()).status is Status.OK
        latency = next(r for r in runner.results if r.id == "terminals.latency:t0")
        assert latency.status is Status.OK and stats["t0"].latency_p95() > 0.5  # the window: warn
    finally:
        runner.close()


async def test_after_an_overload_reloads_keep_the_wait_dead_terminals_are_one_finding() -> None:
    """What `terminals.overload` knows survives a reload (the running agent keeps one judge);
    a terminal that fails after the overload is one finding (freshness), not a success and a
    latency check left unknown; and a terminal polled seldom is judged again on its whole
    window once AFTER_OVERLOAD_TIME has passed, rather than waiting 20 of its polls."""
    names = ["dies", "seldom"]
    config = make_config(
        [tcp_terminal(1, [{"name": "a", "address": 0}], name=n, period="1s") for n in names]
    )
    stats = {n: TerminalStats(last_good_at=datetime.now(UTC)) for n in names}
    now = [datetime.now(UTC)]

    def polls(name: str, count: int, good: bool = True, late: int = 0) -> None:
        s = stats[name]
        s.polls += count
        s.late_starts += late
        s.outcomes.extend([good] * count)
        if good:
            s.last_good_at = now[0]
            s.consecutive_failures = 0
            for _ in range(count):
                s.record_latency(0.01)
        else:
            s.failed_polls += count
            s.consecutive_failures += count
            s.last_error = "no reply within 1s"

    overload = Overload(ChecksConfig())
    runner = CheckRunner(
        [c for c in build_checks(config, overload=overload) if c.family == "terminals"],
        wall_clock=lambda: now[0],
    )

    async def judge() -> dict[str, CheckResult]:
        view = AgentView(
            config,
            None,
            started_at=now[0] - timedelta(hours=1),
            terminals={t.name: TerminalView(t.info, stats[t.name]) for t in config.terminals},
        )
        return {r.id: r for r in (await runner.run_all(view, now[0])).results}

    try:
        for name in names:
            polls(name, 30)
        assert (await judge())["terminals.overload"].status is Status.OK
        for name in names:
            polls(name, 10, late=5)  # half of the polls started late: overloaded
        assert (await judge())["terminals.overload"].status is Status.FAIL
        # A reload: the checks are made anew, with the agent's one judge of overload.
        runner.replace(
            [c for c in build_checks(config, overload=overload) if c.family == "terminals"]
        )
        now[0] += timedelta(seconds=2)
        polls("dies", 3, good=False)
        polls("seldom", 2)
        done = await judge()
        assert done["terminals.overload"].status is Status.OK
        # The dead terminal: freshness warns with the reason; success and latency stand down.
        assert done["terminals.freshness:dies"].status is Status.WARN
        assert "not answering: no reply within 1s" in done["terminals.freshness:dies"].message
        assert done["terminals.success:dies"].status is Status.OK
        assert "see terminals.freshness:dies" in done["terminals.success:dies"].message
        assert done["terminals.latency:dies"].status is Status.OK
        assert "see terminals.freshness:dies" in done["terminals.latency:dies"].message
        # The other waits for 20 polls made since (it has 2: the reload did not reset them).
        assert done["terminals.success:seldom"].status is Status.UNKNOWN
        assert "(2 so far" in done["terminals.success:seldom"].message
        now[0] += timedelta(seconds=AFTER_OVERLOAD_TIME)
        polls("seldom", 1)
        done = await judge()
        assert done["terminals.success:seldom"].status is Status.OK  # judged on its window
        assert done["terminals.latency:seldom"].status is Status.OK
    finally:
        runner.close()


def test_a_poller_made_anew_is_counted_from_its_start_even_past_the_old_one_s_counts() -> None:
    """A reload or restart gives a terminal a new poller, its counts from zero: the overload
    judge tells it by its stats object, not by counts going down (the new one may already have
    passed the old one's counts, and only its difference would then be counted)."""
    config = make_config([tcp_terminal(1, [{"name": "a", "address": 0}], name="t", period="1s")])
    [info] = [t.info for t in config.terminals]
    overload = Overload(ChecksConfig())
    now = datetime.now(UTC)

    def judge(stats: TerminalStats) -> tuple[Status, float | None, str]:
        view = AgentView(config, None, started_at=now, terminals={"t": TerminalView(info, stats)})
        outcome = overload(view, now)
        return outcome.status, outcome.value, outcome.message

    assert judge(TerminalStats(polls=10))[0] is Status.OK
    anew = TerminalStats(polls=12, missed_slots=8, behind_slots=8)  # every count >= the old
    status, value, message = judge(anew)
    assert value == 0.4 and "of 20 poll slots since the last check, 8 skipped" in message
    assert status is Status.FAIL
