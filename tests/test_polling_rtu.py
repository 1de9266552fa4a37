"""Modbus RTU over a real pseudo-terminal pair: one bus owner, several unit ids."""

from __future__ import annotations

import asyncio
import itertools
import os
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import ModbusRtuTerminal, ModbusTcpTerminal
from agent.model import Quality
from agent.protocols.modbus.adu import ReplyFault
from agent.protocols.modbus.driver import ModbusDriver, serial_settings
from agent.protocols.modbus.links import BusLink, ModbusFailure, SerialBus, SerialSettings
from agent.protocols.modbus.poller import Poller
from agent.sim.hostile_modbus import Answer, HostileRtuDevice
from agent.sim.modbus_device import RegisterMap, SimulatedModbusDevice
from agent.sim.serial_line import VirtualSerialLine
from tests.conftest import ListSink, make_config


def rtu(device: str, unit: int, points: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    terminal = {
        "name": f"unit{unit}",
        "protocol": "modbus-rtu",
        "device": device,
        "baudrate": 19200,
        "unit": unit,
        "period": "200ms",
        "timeout": "300ms",
        "retries": 0,
        "points": points,
    }
    terminal.update(extra)
    return terminal


async def bus_device(line: VirtualSerialLine, units: list[int]) -> SimulatedModbusDevice:
    sim = SimulatedModbusDevice({u: RegisterMap() for u in units})
    for u in units:
        sim.units[u].set_registers("holding", 0, [u * 100 + i for i in range(20)])
    await sim.serve_serial(line.b_path, 19200)
    return sim


async def test_two_unit_ids_share_one_bus_and_both_are_read(serial_line: VirtualSerialLine) -> None:
    sim = await bus_device(serial_line, [3, 4])
    config = make_config(
        [
            rtu(serial_line.a_path, 3, [{"name": "a", "address": 0}, {"name": "b", "address": 1}]),
            rtu(serial_line.a_path, 4, [{"name": "a", "address": 5, "type": "uint32"}]),
        ]
    )
    sink = ListSink()
    acquisition = ModbusDriver(config.terminals_of(ModbusRtuTerminal, ModbusTcpTerminal), sink)
    try:
        await acquisition.start()
        await asyncio.sleep(1.2)
        assert len(acquisition.serial_buses) == 1  # one owner for the device path
        bus = acquisition.serial_buses[serial_line.a_path]
        utilisation = bus.utilisation()
    finally:
        await acquisition.stop()
        await sim.stop()
    latest = {(r.terminal, r.point): r for r in sink.readings}
    assert latest[("unit3", "a")].value == 300
    assert latest[("unit3", "b")].value == 301
    assert latest[("unit4", "a")].value == (405 << 16) | 406
    assert all(r.quality is Quality.GOOD for r in sink.readings)
    assert {r.unit for r in sim.requests} == {3, 4}
    assert 0 < utilisation < 1


async def test_the_bus_serves_unit_ids_in_turn(serial_line: VirtualSerialLine) -> None:
    """A terminal with many reads cannot starve another one queued behind it."""
    sim = await bus_device(serial_line, [3, 4])
    many = [{"name": f"p{i}", "address": i * 3} for i in range(5)]  # 5 reads with max_gap 0
    config = make_config(
        [
            rtu(serial_line.a_path, 3, many, max_gap=0),
            rtu(
                serial_line.a_path,
                4,
                [{"name": "a", "address": 0}, {"name": "b", "address": 9}],
                max_gap=0,
            ),
        ]
    )
    t3, t4 = config.terminals
    assert isinstance(t3, ModbusRtuTerminal)
    bus = SerialBus(serial_settings(t3))
    try:
        await asyncio.gather(
            Poller(t3, BusLink(bus), ListSink()).poll_once(),
            Poller(t4, BusLink(bus), ListSink()).poll_once(),
        )
    finally:
        await bus.close()
        await sim.stop()
    units = [r.unit for r in sim.requests]
    assert units == [3, 4, 3, 4, 3, 3, 3]


async def test_the_line_stays_silent_for_the_frame_gap_between_requests(
    serial_line: VirtualSerialLine,
) -> None:
    sim = await bus_device(serial_line, [3])
    config = make_config(
        [
            rtu(
                serial_line.a_path,
                3,
                [{"name": f"p{i}", "address": i * 4} for i in range(4)],
                max_gap=0,
                frame_gap="60ms",
            )
        ]
    )
    [t] = config.terminals
    assert isinstance(t, ModbusRtuTerminal)
    bus = SerialBus(serial_settings(t))
    try:
        await Poller(t, BusLink(bus), ListSink()).poll_once()
    finally:
        await bus.close()
        await sim.stop()
    arrivals = [r.at for r in sim.requests]
    assert len(arrivals) == 4
    assert all(b - a >= 0.06 for a, b in itertools.pairwise(arrivals))


async def test_a_silent_unit_times_out_without_stalling_the_bus(
    serial_line: VirtualSerialLine,
) -> None:
    sim = await bus_device(serial_line, [3])
    config = make_config(
        [
            rtu(serial_line.a_path, 3, [{"name": "a", "address": 0}]),
            rtu(serial_line.a_path, 9, [{"name": "a", "address": 0}]),  # nobody answers unit 9
        ]
    )
    sink = ListSink()
    acquisition = ModbusDriver(config.terminals_of(ModbusRtuTerminal, ModbusTcpTerminal), sink)
    try:
        await acquisition.start()
        # Each attempt at the silent unit holds the line for its timeout and the late-reply
        # guard; backoff spaces the attempts out, and the live unit keeps its turns.
        await asyncio.sleep(3.0)
        live = acquisition.pollers["unit3"].stats
    finally:
        await acquisition.stop()
        await sim.stop()
    silent = [r for r in sink.readings if r.terminal == "unit9"]
    assert silent and all(r.error == "no reply within 0.3s" for r in silent)
    assert live.polls >= 5 and live.failed_polls == 0


async def test_garbage_on_the_line_gives_bad_readings_then_polling_recovers(
    serial_line: VirtualSerialLine,
) -> None:
    config = make_config([rtu(serial_line.a_path, 3, [{"name": "a", "address": 0}])])
    [t] = config.terminals
    assert isinstance(t, ModbusRtuTerminal)
    bus = SerialBus(serial_settings(t))
    poller = Poller(t, BusLink(bus), ListSink())
    fd = os.open(serial_line.b_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    loop = asyncio.get_running_loop()

    def answer_with_noise() -> None:
        os.read(fd, 256)
        os.write(fd, b"\x03\x03\x02\xff\xff\x00\x00garbage\x7e\x7e")  # wrong CRC, junk after

    loop.add_reader(fd, answer_with_noise)
    try:
        [bad] = await poller.poll_once()
        loop.remove_reader(fd)
        os.close(fd)
        sim = await bus_device(serial_line, [3])
        try:
            [good] = await poller.poll_once()
        finally:
            await sim.stop()
    finally:
        await bus.close()
    assert bad.quality is Quality.BAD and bad.error is not None
    assert bad.error.startswith("bad CRC: frame 03 03 02 ff ff 00 00 carries CRC 0x0000")
    assert good.quality is Quality.GOOD and good.value == 300


async def test_a_missing_serial_device_says_so(tmp_path: Path) -> None:
    config = make_config([rtu(str(tmp_path / "ttyUSB9"), 3, [{"name": "a", "address": 0}])])
    [t] = config.terminals
    assert isinstance(t, ModbusRtuTerminal)
    bus = SerialBus(serial_settings(t))
    try:
        [r] = await Poller(t, BusLink(bus), ListSink()).poll_once()
    finally:
        await bus.close()
    assert r.error == f"serial device {tmp_path / 'ttyUSB9'} does not exist (adapter unplugged?)"


async def test_polling_over_a_socat_pty_pair(tmp_path: Path) -> None:
    """The same bus over a pty pair made by socat, independent of our own line emulator."""
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    socat = await asyncio.create_subprocess_exec(
        "socat",
        f"pty,raw,echo=0,link={a}",
        f"pty,raw,echo=0,link={b}",
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while not (a.exists() and b.exists()):
            assert asyncio.get_running_loop().time() < deadline, "socat made no pty pair"
            await asyncio.sleep(0.02)
        sim = SimulatedModbusDevice({7: RegisterMap()})
        sim.units[7].set_number("input", 2, -12.75, "float32", "CDAB")
        await sim.serve_serial(str(b), 19200)
        config = make_config(
            [
                rtu(
                    str(a),
                    7,
                    [
                        {
                            "name": "flow",
                            "table": "input",
                            "address": 2,
                            "type": "float32",
                            "word_order": "CDAB",
                        }
                    ],
                ),
            ]
        )
        [t] = config.terminals
        assert isinstance(t, ModbusRtuTerminal)
        bus = SerialBus(serial_settings(t))
        try:
            [r] = await Poller(t, BusLink(bus), ListSink()).poll_once()
        finally:
            await bus.close()
            await sim.stop()
    finally:
        socat.terminate()
        await socat.wait()
    assert r.quality is Quality.GOOD
    assert r.value == -12.75


async def test_a_late_reply_is_never_taken_for_the_next_requests_answer(
    serial_line: VirtualSerialLine,
) -> None:
    """RTU frames carry no transaction id: after a timeout, a late reply must be thrown away,
    not handed to the next request (same unit, same count: indistinguishable)."""
    delays = [0.35, 0.0, 0.0]  # the first reply comes after its request's timeout
    fd = os.open(serial_line.b_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    loop = asyncio.get_running_loop()
    pending = bytearray()
    busy_until = [0.0]  # a device answers one request after the other

    def reply(request: bytes) -> None:
        unit, function, address, count = struct.unpack(">BBHH", request[:6])
        body = bytes([unit, function, 2 * count]) + b"".join(
            struct.pack(">H", address + i) for i in range(count)
        )
        crc = 0xFFFF
        for byte in body:
            crc ^= byte
            for _ in range(8):
                crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        os.write(fd, body + struct.pack("<H", crc))

    def readable() -> None:
        pending.extend(os.read(fd, 256))
        while len(pending) >= 8:
            request = bytes(pending[:8])
            del pending[:8]
            at = max(loop.time(), busy_until[0]) + (delays.pop(0) if delays else 0.0)
            busy_until[0] = at
            loop.call_at(at, reply, request)

    loop.add_reader(fd, readable)
    config = make_config([rtu(serial_line.a_path, 1, [{"name": "x", "address": 0}])])
    [t] = config.terminals
    assert isinstance(t, ModbusRtuTerminal)
    bus = SerialBus(serial_settings(t))
    try:
        with pytest.raises(ModbusFailure, match=r"no reply within 0\.2s"):
            await bus.read(1, "holding", 0, 2, 0.2)
        assert list(await bus.read(1, "holding", 100, 2, 0.5)) == [100, 101]
        assert list(await bus.read(1, "holding", 200, 2, 0.5)) == [200, 201]
    finally:
        loop.remove_reader(fd)
        os.close(fd)
        await bus.close()


HOSTILE_RTU = {
    Answer.BAD_CRC: (ReplyFault.BAD_CRC, "bad CRC: frame 03 03 04 00 0a 00 0b"),
    Answer.GARBAGE: (ReplyFault.UNPARSEABLE, "unparseable reply: 64 bytes that are not"),
    Answer.WRONG_UNIT: (ReplyFault.WRONG_UNIT, "wrong unit id: unit 4 answered"),
    Answer.WRONG_FUNCTION: (ReplyFault.WRONG_FUNCTION, "wrong function code: 0x10"),
    Answer.WRONG_BYTE_COUNT: (
        ReplyFault.WRONG_BYTE_COUNT,
        "wrong byte count: 6 bytes of data for 2 registers (expected 4)",
    ),
}


@pytest.mark.parametrize("answer", list(HOSTILE_RTU))
async def test_a_malformed_frame_is_named_and_the_line_is_clean_for_the_next_request(
    answer: Answer,
) -> None:
    line = VirtualSerialLine(baudrate=19200).open()  # bytes take their time on the wire
    fault, reason = HOSTILE_RTU[answer]
    hostile = HostileRtuDevice(line.b_path, [answer])
    hostile.start()
    bus = SerialBus(SerialSettings(line.a_path, 19200, "N", 1, 8, 0.002))
    try:
        started = time.monotonic()
        with pytest.raises(ModbusFailure) as caught:
            await bus.read(3, "holding", 10, 2, 2.0)
        elapsed = time.monotonic() - started
        assert list(await bus.read(3, "holding", 20, 2, 2.0)) == [20, 21]
        assert list(await bus.read(3, "holding", 30, 2, 2.0)) == [30, 31]
    finally:
        await bus.close()
        hostile.stop()
        line.close()
    assert caught.value.fault is fault
    assert caught.value.reason.startswith(reason), caught.value.reason
    assert elapsed < 2.0  # named when the frame ended, not when the timeout ran out
