"""Graceful overload of the pollers: late slots are skipped on the grid and counted, slots
started late are counted, a held poller polls nothing, and the first connections of a site stay spread over the first period
even when the event loop stalls at start (issue 14).

Real TCP peers: a simulated Modbus device (pymodbus) and, for the connection times, plain
asyncio servers that note when each terminal connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from agent.model import Reading
from agent.protocols.driver import DriverError, HaltingDriver
from agent.protocols.modbus.driver import ModbusDriver
from agent.protocols.modbus.links import TcpLink
from agent.protocols.modbus.poller import Poller
from agent.protocols.schedule import FixedRateSchedule, phase_of
from agent.sim.modbus_device import RegisterMap, SimulatedModbusDevice
from tests.conftest import ListSink, make_config, tcp_terminal


async def test_a_slot_too_late_to_start_is_skipped_counted_and_the_grid_keeps_its_phase() -> None:
    period = 0.2
    schedule = FixedRateSchedule(period, "plc", backoff_max=60.0)
    assert schedule.max_late == pytest.approx(period / 2)
    await schedule.wait()
    t0 = schedule.due
    schedule.advance()
    time.sleep(2.6 * period)  # noqa: ASYNC251 -- the loop stalls: slots 1, 2 pass, 3 is near
    late = await schedule.wait()
    assert schedule.take_skipped() >= 2  # too late to start: skipped, not polled in a bunch
    assert schedule.take_skipped() == 0  # taken once
    assert late <= schedule.max_late
    slots = (schedule.due - t0) / period
    assert slots == pytest.approx(round(slots), abs=1e-6) and round(slots) >= 3  # on the grid


def test_a_terminal_s_phase_is_stable_and_within_its_period() -> None:
    phases = [phase_of(f"t{i:04d}", 1.0) for i in range(1000)]
    assert phases == [phase_of(f"t{i:04d}", 1.0) for i in range(1000)]  # same name, same phase
    assert all(0 <= p < 1.0 for p in phases)
    # Spread: every tenth of the period holds some of them, none holds most.
    tenths = [sum(1 for p in phases if k / 10 <= p < (k + 1) / 10) for k in range(10)]
    assert min(tenths) > 50 and max(tenths) < 200


@contextlib.asynccontextmanager
async def polling(poller: Poller, device: SimulatedModbusDevice) -> AsyncIterator[None]:
    """The poller's loop runs inside; then it is cancelled, its link and the device closed."""
    task = asyncio.create_task(poller.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await poller.link.close()
        await device.stop()


async def test_a_slot_started_late_is_polled_and_counted_as_a_late_start() -> None:
    """A slot that starts over a quarter period late (but within half a period) is polled, and
    counted in `late_starts`: the agent's loop was behind (terminals.overload judges it)."""
    period = 1.0  # wide margins: a late start is 0.25-0.5 s late, the jump 0.35 s
    assert FixedRateSchedule(period, "plc", backoff_max=60.0).late_start == pytest.approx(0.25)
    device = SimulatedModbusDevice({1: RegisterMap(size=8)})
    port = await device.serve_tcp("127.0.0.1", 0)
    [t] = make_config([tcp_terminal(port, [{"name": "a", "address": 0}], period="1s")]).terminals
    loop = asyncio.get_running_loop()
    shift = [0.0]  # the poller's clock runs this far ahead of the monotonic clock
    jumps = [0.35]  # after the first poll, while the poller sleeps: its next slot starts late

    class Sink(ListSink):
        def submit(self, readings: Sequence[Reading]) -> None:
            super().submit(readings)
            if jumps:  # after the poller has gone to sleep for its next slot
                loop.call_soon(shift.__setitem__, 0, shift[0] + jumps.pop())

    sink = Sink()
    poller = Poller(t, TcpLink("127.0.0.1", port), sink, clock=lambda: time.monotonic() + shift[0])
    async with polling(poller, device):
        async with asyncio.timeout(10):
            while len(sink.batches) < 3:
                await asyncio.sleep(0.02)
        s = poller.stats
        assert s.late_starts == 1 and s.polls >= 3  # the late slot was polled, and counted once
        assert s.behind_slots == 0 and s.missed_slots == 0  # not skipped
        assert max(s.lateness) == pytest.approx(0.35, abs=0.1)


async def test_a_held_poller_skips_its_slots_counts_them_and_polls_nothing() -> None:
    device = SimulatedModbusDevice({1: RegisterMap(size=8)})
    port = await device.serve_tcp("127.0.0.1", 0)
    [t] = make_config([tcp_terminal(port, [{"name": "a", "address": 0}], period="50ms")]).terminals
    sink = ListSink()
    held = True
    poller = Poller(t, TcpLink("127.0.0.1", port), sink, held=lambda: held)
    async with polling(poller, device):
        await asyncio.sleep(0.6)
        s = poller.stats
        assert sink.batches == [] and s.polls == 0 and device.requests == []
        assert s.held_slots >= 4 and s.missed_slots >= s.behind_slots >= s.held_slots
        held = False  # the outbox caught up: polling resumes on the same grid
        await asyncio.sleep(0.4)
        assert len(sink.batches) >= 3 and sink.batches[0][0].value is not None


@contextlib.asynccontextmanager
async def noting_servers(count: int) -> AsyncIterator[tuple[list[int], dict[int, float]]]:
    """`count` TCP servers that note (loop time) when each is first connected to, by port."""
    first: dict[int, float] = {}
    loop = asyncio.get_running_loop()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first.setdefault(writer.get_extra_info("sockname")[1], loop.time())
        with contextlib.suppress(OSError):
            await reader.read()  # never answers: the poll times out, that is all
        writer.close()

    servers = [await asyncio.start_server(accepted, "127.0.0.1", 0) for _ in range(count)]
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    try:
        yield ports, first
    finally:
        for server in servers:
            server.close()
        for server in servers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await server.wait_closed()


def busiest(times: list[float], window: float) -> int:
    """The most of `times` within any `window` seconds."""
    times = sorted(times)
    return max(sum(1 for u in times[i:] if u < t + window) for i, t in enumerate(times))


@pytest.mark.parametrize(
    ("stall", "host"),
    [(0.0, "127.0.0.1"), (1.5, "localhost")],
    ids=["quiet start (the TCP engine)", "loop stalls at start (asyncio: a host name)"],
)
async def test_first_connections_are_spread_over_the_first_period(stall: float, host: str) -> None:
    """Each terminal connects first at its own phase of the period; after a stall of the
    event loop longer than the period, the terminals polled on it (a host name, not an
    address: not the TCP engine's, whose thread the loop does not hold up) do not all
    connect at once when it ends: each late one waits for its own next slot."""
    count, period = 40, 1.0
    async with noting_servers(count) as (ports, first):
        config = make_config(
            [
                tcp_terminal(
                    port, [{"name": "a", "address": 0}], name=f"t{i:02d}", period="1s", host=host
                )
                for i, port in enumerate(ports)
            ]
        )
        driver = ModbusDriver(config.terminals, ListSink())
        async with driver:
            await asyncio.sleep(0.01)  # every poller has started its schedule
            time.sleep(stall)  # noqa: ASYNC251 -- a stalled loop (a long start, a full collection)
            async with asyncio.timeout(10):
                while len(first) < count:
                    await asyncio.sleep(0.05)
        times = list(first.values())
    assert max(times) - min(times) > 0.5 * period  # over the period, not at once
    # Evenly spread would put 4 of the 40 in each tenth of the period; all at once, 40.
    assert busiest(times, 0.1 * period) <= count // 3


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"], ids=["engine", "asyncio"])
async def test_a_halted_driver_takes_no_reading_at_once_and_starts_no_poller(host: str) -> None:
    """`halt` (the agent asked to stop) cancels every poller without waiting: no poll under
    way hands its readings over, none starts, a reload or a restart starts no poller, no poll
    on request opens a link again; leaving then closes every connection."""
    count = 20
    device = SimulatedModbusDevice({1: RegisterMap(size=8)})
    port = await device.serve_tcp("127.0.0.1", 0)
    terminals = [
        tcp_terminal(
            port, [{"name": "a", "address": 0}], name=f"t{i:02d}", period="50ms", host=host
        )
        for i in range(count)
    ]
    config = make_config(terminals)
    sink = ListSink()
    driver = ModbusDriver(config.terminals, sink)
    assert isinstance(driver, HaltingDriver)  # what the daemon looks for to halt it
    try:
        async with driver:
            async with asyncio.timeout(10):
                while {r.terminal for r in sink.readings} != {t.name for t in config.terminals}:
                    await asyncio.sleep(0.02)
            device.delay = 0.3  # every reply now takes 0.3 s: polls are under way at the halt
            asked = len(device.requests)
            await asyncio.sleep(0.1)
            taken = len(sink.batches)
            assert len(device.requests) >= asked + count  # a request of each, unanswered
            assert device.connections > 0
            driver.halt()  # the TCP engine closes the connections of the polls it ends at once
            await asyncio.sleep(0.5)  # their replies have come (and gone unread)
            assert len(sink.batches) == taken  # not even the polls under way hand readings over
            requests = len(device.requests)
            await asyncio.sleep(0.2)
            assert len(device.requests) == requests  # no poll starts
            more = make_config(
                [*terminals, tcp_terminal(port, [{"name": "a", "address": 0}], name="late")]
            )
            await driver.apply(more)
            assert "late" not in driver.pollers
            with pytest.raises(DriverError, match="stopping"):
                await driver.restart("t00")
            with pytest.raises(DriverError, match="stopping"):
                await driver.poll("t00")  # its link is closing: a poll would open it again
        # Every link closed by the time the driver has left: the device sees them go at once.
        async with asyncio.timeout(1):
            while device.connections:
                await asyncio.sleep(0.01)
    finally:
        await device.stop()
