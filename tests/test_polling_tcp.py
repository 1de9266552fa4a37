"""Polling Modbus TCP terminals against a real pymodbus server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agent.config import ModbusRtuTerminal, ModbusTcpTerminal
from agent.model import Quality
from agent.protocols.modbus import codec
from agent.protocols.modbus.adu import ReplyFault
from agent.protocols.modbus.driver import ModbusDriver
from agent.protocols.modbus.links import Link, ModbusFailure, TcpLink
from agent.protocols.modbus.poller import Poller
from agent.protocols.modbus.tcp_engine import EngineLink, TcpEngine
from agent.sim.hostile_modbus import Answer, HostileTcpDevice
from agent.sim.modbus_device import RegisterMap, SimulatedModbusDevice
from tests.conftest import ListSink, make_config, tcp_terminal

Device = tuple[SimulatedModbusDevice, int]

# The link a test reads through: asyncio's `TcpLink`, or an `EngineLink` of a TCP engine (its
# reads run in the engine's thread): every test of this module runs with each (`_each_link`).
new_link: Callable[[str, int], Link] = TcpLink
# The host a driver-level test names its terminals by: a host name puts them on asyncio tasks,
# an address on the driver's TCP engine.
driver_host = "localhost"


@pytest.fixture(params=["asyncio", "engine"], autouse=True)
async def _each_link(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    global new_link, driver_host  # the link and host of the test under way
    if request.param == "asyncio":
        new_link, driver_host = TcpLink, "localhost"
        yield
        return
    driver_host = "127.0.0.1"
    engine = TcpEngine(lambda polls: None)  # nothing on its schedule: reads on request only
    engine.start()
    new_link = lambda host, port: EngineLink(engine, host, port)  # noqa: E731
    try:
        yield
    finally:
        new_link, driver_host = TcpLink, "localhost"
        await engine.stop()


def terminal(port: int, points: list[dict[str, Any]], **extra: Any) -> ModbusTcpTerminal:
    [t] = make_config([tcp_terminal(port, points, **extra)]).terminals
    assert isinstance(t, ModbusTcpTerminal)
    return t


async def poll(t: ModbusTcpTerminal) -> dict[str, Any]:
    link = new_link(t.host, t.port)
    try:
        readings = await Poller(t, link, ListSink()).poll_once()
    finally:
        await link.close()
    return {r.point: r for r in readings}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


NUMBERS = {
    "uint16": 65000,
    "int16": -1234,
    "uint32": 4_000_000_000,
    "int32": -2_000_000_000,
    "uint64": 2**63 + 12345,
    "int64": -(2**62) - 7,
    "float32": 12.5,
    "float64": -1234.56789012345,
}


async def test_every_type_and_word_order_reads_back_what_the_device_holds(device: Device) -> None:
    sim, port = device
    memory = sim.units[1]
    points, address = [], 0
    for order in ("ABCD", "CDAB", "BADC", "DCBA"):
        for type_, value in NUMBERS.items():
            memory.set_number("holding", address, value, type_, order)
            points.append(
                {"name": f"{type_}_{order}", "address": address, "type": type_, "word_order": order}
            )
            address += codec.WIDTH[type_]
    memory.set_registers("holding", 200, codec.encode_string("GAUGE-7", 5))
    memory.set_registers("holding", 210, [0b0100])
    memory.coil[3] = True
    memory.discrete[4] = True
    points += [
        {"name": "name", "address": 200, "type": "string", "length": 5},
        {"name": "flag", "address": 210, "type": "bool", "bit": 2},
        {"name": "not_flag", "address": 210, "type": "bool", "bit": 1},
        {"name": "coil3", "table": "coil", "address": 3, "type": "bool"},
        {"name": "coil2", "table": "coil", "address": 2, "type": "bool"},
        {"name": "di4", "table": "discrete", "address": 4, "type": "bool"},
    ]
    readings = await poll(terminal(port, points))
    for order in ("ABCD", "CDAB", "BADC", "DCBA"):
        for type_, value in NUMBERS.items():
            r = readings[f"{type_}_{order}"]
            assert r.quality is Quality.GOOD, r
            assert r.value == pytest.approx(value, rel=1e-7), (type_, order)
    assert readings["name"].value == "GAUGE-7"
    assert readings["flag"].value is True and readings["not_flag"].value is False
    assert readings["coil3"].value is True and readings["coil2"].value is False
    assert readings["di4"].value is True


async def test_adjacent_points_are_read_in_the_fewest_requests(device: Device) -> None:
    sim, port = device
    points = [{"name": f"h{i}", "address": i * 2, "type": "float32"} for i in range(10)]
    points += [{"name": f"i{i}", "table": "input", "address": 100 + i} for i in range(3)]
    points += [{"name": "far", "address": 500}]
    await poll(terminal(port, points, max_gap=8))
    assert sim.count("holding") == 2  # 0..19 in one read, 500 in another
    assert sim.count("input") == 1
    assert len(sim.requests) == 3


async def test_an_exception_response_gives_bad_readings_with_its_meaning(device: Device) -> None:
    sim, port = device
    sim.refuse = 4
    readings = await poll(
        terminal(port, [{"name": "a", "address": 0}, {"name": "b", "address": 1}])
    )
    for r in readings.values():
        assert r.quality is Quality.BAD and r.value is None
        assert (
            r.error
            == "exception 0x04: server device failure (the device hit an error while reading)"
        )


async def test_reads_made_at_once_on_one_link_take_turns_and_each_gets_its_own_reply(
    device: Device,
) -> None:
    """A poll and an engineer's read-point share the terminal's link: neither may fail because
    the other is waiting for its reply."""
    sim, port = device
    sim.units[1].set_registers("holding", 0, list(range(100, 120)))
    link = new_link("127.0.0.1", port)
    try:
        values = await asyncio.gather(
            *(link.read(1, "holding", address, 1, 2.0) for address in range(20))
        )
    finally:
        await link.close()
    assert [list(v) for v in values] == [[100 + a] for a in range(20)]


async def test_a_refused_coalesced_read_falls_back_to_one_read_per_point(device: Device) -> None:
    sim, port = device
    sim.units[1].holes.add(3)  # an unmapped register between the two points
    sim.units[1].set_registers("holding", 0, [11])
    sim.units[1].set_registers("holding", 6, [66])
    t = terminal(port, [{"name": "a", "address": 0}, {"name": "b", "address": 6}], max_gap=8)
    link = new_link(t.host, t.port)
    poller = Poller(t, link, ListSink())
    try:
        first_poll = await poller.poll_once()
        sim.requests.clear()
        second_poll = await poller.poll_once()
    finally:
        await link.close()
    first = {r.point: r.value for r in first_poll}
    second = {r.point: r.value for r in second_poll}
    assert first == second == {"a": 11, "b": 66}
    # The poll whose reads changed under it hands no values in bulk; the next one does.
    assert first_poll.values is None and first_poll.layout is None
    assert second_poll.values == [11, 66]
    assert second_poll.layout == (("a", "", "holding:0"), ("b", "", "holding:6"))
    assert len(sim.requests) == 2  # the split is remembered: no refused read any more
    assert len(poller.reads) == 2


async def test_a_poll_hands_its_values_in_bulk_only_when_all_are_plain_and_good(
    device: Device,
) -> None:
    sim, port = device
    sim.units[1].set_registers("holding", 0, [7, 8])
    sim.units[1].coil[1] = True
    plain = [
        {"name": "a", "address": 0, "unit": "mm"},
        {"name": "c", "table": "coil", "address": 1, "type": "bool"},
        {"name": "b", "address": 1},
    ]
    link = new_link("127.0.0.1", port)
    try:
        polled = await Poller(terminal(port, plain), link, ListSink()).poll_once()
        scaled = await Poller(
            terminal(port, [*plain, {"name": "s", "address": 5, "scale": 0.5}]), link, ListSink()
        ).poll_once()
        sim.units[1].holes.add(0)  # the device refuses the holding read: some readings bad
        failed = await Poller(terminal(port, plain, max_gap=0), link, ListSink()).poll_once()
    finally:
        await link.close()
    # Values in the reads' order (table, then address), each with its point, unit and source.
    assert polled.values == [True, 7, 8]
    assert polled.layout == (("c", "", "coil:1"), ("a", "mm", "holding:0"), ("b", "", "holding:1"))
    assert [(r.point, r.value) for r in polled] == [("c", True), ("a", 7), ("b", 8)]
    assert scaled.values is None and {r.point: r.value for r in scaled}["s"] == 0.0
    assert any(r.quality is Quality.BAD for r in failed) and failed.values is None


async def test_a_slow_device_times_out_with_bad_readings_and_bounded_delay(device: Device) -> None:
    sim, port = device
    sim.delay = 1.0
    t = terminal(
        port,
        [{"name": "a", "address": 0}, {"name": "b", "address": 300}],
        timeout="200ms",
        retries=1,
    )
    started = time.monotonic()
    readings = await poll(t)
    elapsed = time.monotonic() - started
    assert {r.error for r in readings.values()} == {"no reply within 0.2s"}
    assert all(r.quality is Quality.BAD for r in readings.values())
    # One read with one retry, then the rest of the poll is skipped: ~0.4 s, not 4 timeouts.
    assert elapsed < 0.9


async def test_an_unreachable_terminal_says_connection_refused() -> None:
    readings = await poll(terminal(free_port(), [{"name": "a", "address": 0}]))
    [r] = readings.values()
    assert r.quality is Quality.BAD
    assert r.error is not None
    assert "cannot connect to 127.0.0.1" in r.error and "connection refused" in r.error


async def test_a_garbled_reply_gives_bad_readings_and_the_next_poll_still_works(
    device: Device,
) -> None:
    sim, port = device
    sim.units[1].set_registers("holding", 0, [42])

    writers: list[asyncio.StreamWriter] = []

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read(12)
        writer.write(b"\x00\x01\x00\x00\x00\x09\x01\x03\x99garbage-bytes")
        await writer.drain()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    bad_port = server.sockets[0].getsockname()[1]
    try:
        t = terminal(bad_port, [{"name": "a", "address": 0}], timeout="300ms")
        [r] = (await poll(t)).values()
        assert r.quality is Quality.BAD
        assert r.error == "wrong byte count: 153 bytes of data for 1 register (expected 2)"
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()
    [ok] = (await poll(terminal(port, [{"name": "a", "address": 0}]))).values()
    assert ok.value == 42


async def test_a_dead_terminal_never_delays_a_live_one(device: Device) -> None:
    _sim, port = device
    slow = SimulatedModbusDevice({1: RegisterMap()})
    slow_port = await slow.serve_tcp("127.0.0.1", 0)
    slow.delay = 5.0
    config = make_config(
        [
            tcp_terminal(
                port, [{"name": "a", "address": 0}], name="live", period="100ms", host=driver_host
            ),
            tcp_terminal(
                slow_port,
                [{"name": "a", "address": 0}],
                name="slow",
                period="100ms",
                timeout="1s",
                retries=2,
                host=driver_host,
            ),
            tcp_terminal(
                free_port(),
                [{"name": "a", "address": 0}],
                name="dead",
                period="100ms",
                host=driver_host,
            ),
        ]
    )
    sink = ListSink()
    acquisition = ModbusDriver(config.terminals_of(ModbusRtuTerminal, ModbusTcpTerminal), sink)
    try:
        await acquisition.start()
        engine = isinstance(acquisition.pollers["live"].link, EngineLink)
        assert engine == (driver_host == "127.0.0.1")  # each way of polling, in turn
        await asyncio.sleep(2.0)
        live = acquisition.pollers["live"].stats
    finally:
        await acquisition.stop()
        await slow.stop()
    assert live.polls >= 17  # 20 slots in 2 s, minus the start phase
    assert live.failed_polls == 0 and live.missed_slots == 0
    assert max(live.lateness) < 0.05
    live_readings = [r for r in sink.readings if r.terminal == "live"]
    assert all(r.quality is Quality.GOOD for r in live_readings)
    assert any(r.terminal == "dead" and r.quality is Quality.BAD for r in sink.readings)


async def test_a_dead_terminal_is_retried_with_exponential_backoff_then_recovers() -> None:
    port = free_port()
    [t] = make_config(
        [tcp_terminal(port, [{"name": "a", "address": 0}], period="100ms", backoff_max="800ms")]
    ).terminals
    sink = ListSink()
    poller = Poller(t, new_link("127.0.0.1", port), sink)
    task = asyncio.create_task(poller.run())
    try:
        await asyncio.sleep(2.2)
        attempts = poller.stats.polls
        # Without backoff 20+ attempts; with it slots 0, 1, 3, 7, 15 (then every 8th): <= 6.
        assert 3 <= attempts <= 6
        assert poller.stats.consecutive_failures == attempts
        sim = SimulatedModbusDevice({1: RegisterMap()})
        await sim.serve_tcp("127.0.0.1", port)
        try:
            deadline = time.monotonic() + 3
            while poller.stats.consecutive_failures and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert poller.stats.consecutive_failures == 0
            assert sink.batches[-1][0].quality is Quality.GOOD
        finally:
            await sim.stop()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await poller.link.close()


async def test_the_schedule_is_fixed_rate_without_drift(device: Device) -> None:
    sim, port = device
    sim.delay = 0.03  # each poll takes 30 ms: a sleep-after-poll loop would drift by that
    [t] = make_config([tcp_terminal(port, [{"name": "a", "address": 0}], period="100ms")]).terminals
    sink = ListSink()
    poller = Poller(t, new_link("127.0.0.1", port), sink)
    task = asyncio.create_task(poller.run())
    try:
        await asyncio.sleep(1.6)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await poller.link.close()
    stamps = [b[0].observed_at.timestamp() for b in sink.batches]
    assert len(stamps) >= 10
    span = stamps[-1] - stamps[0]
    assert span == pytest.approx(0.1 * (len(stamps) - 1), abs=0.03)


HOSTILE_TCP = {
    Answer.GARBAGE: (ReplyFault.UNPARSEABLE, "unparseable reply: not a Modbus TCP header"),
    Answer.WRONG_TRANSACTION: (ReplyFault.WRONG_TRANSACTION, "wrong transaction id: "),
    Answer.HUGE_LENGTH: (ReplyFault.BAD_LENGTH, "bad length: MBAP length 65535"),
    Answer.WRONG_UNIT: (ReplyFault.WRONG_UNIT, "wrong unit id: unit 2 answered"),
    Answer.WRONG_FUNCTION: (ReplyFault.WRONG_FUNCTION, "wrong function code: 0x10"),
    Answer.WRONG_BYTE_COUNT: (
        ReplyFault.WRONG_BYTE_COUNT,
        "wrong byte count: 6 bytes of data for 2 registers (expected 4)",
    ),
}


@pytest.mark.parametrize("answer", list(HOSTILE_TCP))
async def test_a_malformed_reply_is_named_when_it_comes_and_the_next_read_is_good(
    answer: Answer,
) -> None:
    fault, reason = HOSTILE_TCP[answer]
    hostile = HostileTcpDevice([Answer.HONEST, answer])
    port = await hostile.serve()
    link = new_link("127.0.0.1", port)
    try:
        assert list(await link.read(1, "holding", 10, 2, 3.0)) == [10, 11]
        started = time.monotonic()
        with pytest.raises(ModbusFailure) as caught:
            await link.read(1, "holding", 10, 2, 3.0)
        elapsed = time.monotonic() - started
        assert list(await link.read(1, "holding", 20, 2, 3.0)) == [20, 21]
        assert list(await link.read(1, "holding", 30, 2, 3.0)) == [30, 31]
    finally:
        await link.close()
        await hostile.stop()
    assert caught.value.fault is fault
    assert caught.value.reason.startswith(reason), caught.value.reason
    assert elapsed < 3.0  # named as it came, not when the timeout ran out
    # The connection that carried it is dropped; the healthy ones before and after are kept.
    assert hostile.connections == 2


async def test_a_reply_that_never_comes_stays_a_timeout_and_one_cut_short_says_so() -> None:
    hostile = HostileTcpDevice([Answer.SILENT])
    port = await hostile.serve()
    t = terminal(port, [{"name": "a", "address": 0}], timeout="300ms")
    try:
        [silent] = (await poll(t)).values()
    finally:
        await hostile.stop()
    assert silent.quality is Quality.BAD and silent.error == "no reply within 0.3s"

    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readexactly(12)
            writer.write(request[:2] + bytes.fromhex("00000005010302"))  # 11 announced, 9 sent
            await writer.drain()
            await reader.read()  # until the agent hangs up
        finally:
            writer.close()

    server = await asyncio.start_server(half, "127.0.0.1", 0)
    try:
        t = terminal(
            server.sockets[0].getsockname()[1], [{"name": "a", "address": 0}], timeout="300ms"
        )
        [cut] = (await poll(t)).values()
    finally:
        server.close()
        await server.wait_closed()
    assert cut.error == "bad length: the MBAP length announces 11 bytes, 9 came within 0.3s"


async def test_a_hostile_reply_gives_bad_readings_with_its_reason() -> None:
    hostile = HostileTcpDevice([Answer.WRONG_TRANSACTION])
    port = await hostile.serve()
    t = terminal(port, [{"name": "a", "address": 0}, {"name": "b", "address": 1}], retries=0)
    try:
        readings = await poll(t)
    finally:
        await hostile.stop()
    for r in readings.values():
        assert r.quality is Quality.BAD and r.value is None
        assert r.error == (
            "wrong transaction id: the reply carries 1001, the request 1 "
            "(a late reply, or a gateway mixing up its clients)"
        )
