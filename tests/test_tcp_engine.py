"""The Modbus TCP engine: which terminals it polls, how it hands polls to the event loop, how
it stops (agent/protocols/modbus/tcp_engine.py). Its reads and their failures are tested with
asyncio's links in tests/test_polling_tcp.py (every test there runs with both)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from agent.model import Quality
from agent.protocols.modbus.config import ModbusTcpTerminal
from agent.protocols.modbus.driver import ModbusDriver, engine_polled
from agent.protocols.modbus.tcp_engine import EngineLink, EngineStopped, TcpEngine
from agent.sim.modbus_device import RegisterMap, SimulatedModbusDevice
from tests.conftest import ListSink, make_config, tcp_terminal

Device = tuple[SimulatedModbusDevice, int]


async def test_terminals_named_by_address_are_polled_by_the_engine_and_by_name_by_asyncio(
    device: Device,
) -> None:
    sim, port = device
    sim.units[1].set_registers("holding", 0, [42, 43])
    points = [{"name": "a", "address": 0}, {"name": "b", "address": 1}]
    config = make_config(
        [
            tcp_terminal(port, points, name="by-address", period="100ms"),
            tcp_terminal(port, points, name="by-name", period="100ms", host="localhost"),
        ]
    )
    by_address, by_name = config.terminals
    assert isinstance(by_address, ModbusTcpTerminal) and isinstance(by_name, ModbusTcpTerminal)
    assert engine_polled(by_address) and not engine_polled(by_name)
    sink = ListSink()
    async with ModbusDriver(config.terminals, sink) as driver:
        async with asyncio.timeout(5):
            while {r.terminal for r in sink.readings} != {"by-address", "by-name"}:
                await asyncio.sleep(0.05)
        assert isinstance(driver.pollers["by-address"].link, EngineLink)
        assert not isinstance(driver.pollers["by-name"].link, EngineLink)
        answer = await driver.poll("by-address")  # on request: in the engine, between polls
    values = {(r.terminal, r.point): r.value for r in sink.readings}
    assert values == {
        ("by-address", "a"): 42, ("by-address", "b"): 43,
        ("by-name", "a"): 42, ("by-name", "b"): 43,
    }  # fmt: skip
    assert all(r.quality is Quality.GOOD for r in sink.readings)
    assert [(r.point, r.value) for r in answer.readings] == [("a", 42), ("b", 43)]


@contextlib.contextmanager
def device_in_a_thread() -> Iterator[int]:
    """A simulated device on an event loop of its own, in a thread: it answers while the
    test's event loop is held up. Its port."""
    loop = asyncio.new_event_loop()
    sim = SimulatedModbusDevice({1: RegisterMap()})
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield asyncio.run_coroutine_threadsafe(sim.serve_tcp("127.0.0.1", 0), loop).result(5)
    finally:
        asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def test_an_event_loop_behind_taking_polls_in_makes_the_engine_skip_slots_as_behind() -> None:
    """The engine does not run ahead of an event loop that cannot take its polls in (memory
    would grow with every poll it hands over): once the oldest batch it handed over has
    waited more than half a period, its slots are skipped and counted as the agent's."""
    with device_in_a_thread() as port:
        await _held_up_loop(port)


async def _held_up_loop(port: int) -> None:
    count = 5
    config = make_config(
        [
            tcp_terminal(port, [{"name": "a", "address": 0}], name=f"t{i}", period="50ms")
            for i in range(count)
        ]
    )
    sink = ListSink()
    async with ModbusDriver(config.terminals, sink) as driver:
        async with asyncio.timeout(5):
            while len({r.terminal for r in sink.readings}) < count:
                await asyncio.sleep(0.05)
        before = {name: p.stats.polls for name, p in driver.pollers.items()}
        time.sleep(1.0)  # noqa: ASYNC251 -- the event loop held up: 20 slots of each terminal
        during = {name: p.stats.polls - before[name] for name, p in driver.pollers.items()}
        await asyncio.sleep(0.3)
        stats = [p.stats for p in driver.pollers.values()]
    # Polled until the first batch had waited half a period, then skipped as behind.
    assert all(polled <= 3 for polled in during.values()), during
    assert all(s.behind_slots >= 15 for s in stats), [s.behind_slots for s in stats]
    assert all(s.missed_slots >= s.behind_slots for s in stats)
    assert all(s.polls > before[f"t{i}"] + during[f"t{i}"] for i, s in enumerate(stats))


async def test_stopping_the_engine_closes_its_connections_and_refuses_reads(
    device: Device,
) -> None:
    sim, port = device
    engine = TcpEngine(lambda polls: None)
    engine.start()
    link = EngineLink(engine, "127.0.0.1", port)
    try:
        assert list(await link.read(1, "holding", 0, 2, 1.0)) == [0, 0]
        assert sim.connections == 1
    finally:
        await engine.stop()
    async with asyncio.timeout(1):
        while sim.connections:
            await asyncio.sleep(0.01)
    with pytest.raises(EngineStopped):
        await link.read(1, "holding", 0, 2, 1.0)


async def test_a_read_under_way_when_the_engine_stops_fails_rather_than_hang() -> None:
    slow = SimulatedModbusDevice({1: RegisterMap()})
    port = await slow.serve_tcp("127.0.0.1", 0)
    slow.delay = 5.0
    engine = TcpEngine(lambda polls: None)
    engine.start()
    link = EngineLink(engine, "127.0.0.1", port)
    try:
        read = asyncio.ensure_future(link.read(1, "holding", 0, 1, 10.0))
        await asyncio.sleep(0.2)  # on the wire, unanswered
        started = time.monotonic()
        await engine.stop()
        with pytest.raises(EngineStopped):
            await asyncio.wait_for(read, 2)
        assert time.monotonic() - started < 1.5
    finally:
        await slow.stop()


async def test_an_address_it_cannot_even_try_gives_bad_readings_and_the_others_go_on(
    device: Device,
) -> None:
    """An IPv6 address whose scope names no interface (a typo) makes the socket call itself
    fail: that terminal's readings are bad with the reason, and the engine polls the rest."""
    _, port = device
    config = make_config(
        [
            tcp_terminal(port, [{"name": "a", "address": 0}], name="live", period="100ms"),
            tcp_terminal(
                502, [{"name": "a", "address": 0}], name="typo", period="100ms",
                host="fe80::1%nosuchif0",
            ),
        ]
    )  # fmt: skip
    sink = ListSink()
    async with ModbusDriver(config.terminals, sink) as driver:
        assert all(isinstance(p.link, EngineLink) for p in driver.pollers.values())
        await asyncio.sleep(1.2)
        live, typo = driver.pollers["live"].stats, driver.pollers["typo"].stats
        assert live.polls >= 8 and live.failed_polls == 0
        assert typo.polls >= 1 and typo.failed_polls == typo.polls
    bad = [r for r in sink.readings if r.terminal == "typo"]
    assert bad and all(r.quality is Quality.BAD for r in bad)
    assert bad[0].error is not None
    assert bad[0].error.startswith("cannot connect to fe80::1%nosuchif0:502: ")


async def test_a_dead_terminal_polled_by_the_engine_is_retried_with_backoff() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])  # nothing listens there once closed
    config = make_config(
        [tcp_terminal(port, [{"name": "a", "address": 0}], period="100ms", backoff_max="800ms")]
    )
    async with ModbusDriver(config.terminals, ListSink()) as driver:
        assert isinstance(driver.pollers["plc"].link, EngineLink)
        await asyncio.sleep(2.2)
        attempts = driver.pollers["plc"].stats.polls
    # Without backoff 20+ attempts; with it slots 0, 1, 3, 7, 15 (then every 8th): <= 6.
    assert 3 <= attempts <= 6


async def test_removing_a_terminal_read_on_request_ends_the_read_and_its_connection(
    device: Device,
) -> None:
    """A poll on request under way when its terminal is removed (a reload) ends at once,
    reads no further and leaves no connection open."""
    sim, port = device
    points = [{"name": "a", "address": 0}, {"name": "b", "address": 50}]  # two reads
    config = make_config([tcp_terminal(port, points, name="t", period="1h", max_gap=0)])
    async with ModbusDriver(config.terminals, ListSink()) as driver:
        sim.delay = 0.5
        asked = asyncio.ensure_future(driver.poll("t"))
        await asyncio.sleep(0.2)  # its first read is on the wire
        assert sim.connections == 1
        await driver.apply(make_config([]))
        answer = await asyncio.wait_for(asked, 1)
        await asyncio.sleep(0.6)  # the first reply has come (and gone unread)
        assert sim.connections == 0
        assert len(sim.requests) == 1  # the second read never went out
    assert all(r.quality is Quality.BAD for r in answer.readings)
    assert answer.readings[1].error == "the terminal was removed or restarted while it was read"


@pytest.mark.parametrize("where", ["slot_begins", "slot_ends"])
async def test_an_error_in_one_pollers_slot_stops_that_poller_and_not_the_engine(
    device: Device, where: str
) -> None:
    _, port = device
    config = make_config(
        [
            tcp_terminal(port, [{"name": "a", "address": 0}], name=name, period="100ms")
            for name in ("broken", "fine")
        ]
    )
    async with ModbusDriver(config.terminals, ListSink()) as driver:
        broken = driver.pollers["broken"]

        def bug(*args: object) -> bool:
            raise RuntimeError(f"a bug in {where}")

        setattr(broken, where, bug)  # before its first slot (62 ms)
        await asyncio.sleep(1.0)
        assert broken.stats.polls == 0
        assert driver.pollers["fine"].stats.polls >= 7
        assert isinstance(broken.link, EngineLink) and broken.link.engine.running
