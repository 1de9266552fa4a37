"""The agent as SL651 central station: real TCP connections and a real pty pair, simulated
stations, the acknowledgement rules of docs/sl651-notes.md §6 checked byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.config import Sl651Config, Sl651Terminal
from agent.control import request
from agent.model import Quality, Reading
from agent.protocols.sl651 import StreamDecoder, encode, parse_frame
from agent.protocols.sl651.body import decode_body
from agent.protocols.sl651.frame import Ctrl, Frame, LinkAddress
from agent.protocols.sl651.session import Centre
from agent.protocols.sl651.transport import CentralStation
from agent.sim.serial_line import VirtualSerialLine
from agent.sim.sl651_station import SimulatedStation, StationSchedule
from tests.agentproc import short_socket_path, write_config
from tests.broker import free_port

CENTER = 1


@dataclass
class Site:
    centre: Centre
    central: CentralStation
    readings: list[Reading] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    synced: list[bool] = field(default_factory=lambda: [True])

    @property
    def port(self) -> int:
        return self.central.addresses[0][1]

    def of(self, terminal: str) -> list[Reading]:
        return [r for r in self.readings if r.terminal == terminal]


def terminal(station: str, name: str, **extra: Any) -> Sl651Terminal:
    return Sl651Terminal.model_validate(
        {"name": name, "protocol": "sl651", "station": station, "password": "1234", **extra}
    )


class RecordingIntake:
    """An intake that keeps what it is given (commits at once)."""

    def __init__(self, readings: list[Reading], events: list[dict[str, Any]]) -> None:
        self.readings = readings
        self.events = events

    def submit(self, readings: Sequence[Reading]) -> None:
        self.readings.extend(readings)

    def commit(
        self, readings: Sequence[Reading], events: Sequence[dict[str, Any]]
    ) -> asyncio.Future[None]:
        self.readings.extend(readings)
        self.events.extend(events)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def congested(self) -> bool:
        return False


@contextlib.asynccontextmanager
async def central(terminals: Sequence[Sl651Terminal], **config: Any) -> AsyncIterator[Site]:
    settings = Sl651Config.model_validate(
        {"center": CENTER, "listen": ["127.0.0.1:0"], "packet_timeout": "500ms", **config}
    )
    site_box: list[Site] = []
    centre = Centre(settings, terminals, lambda: site_box[0].synced[-1])
    readings: list[Reading] = []
    events: list[dict[str, Any]] = []
    station = CentralStation(settings, centre, RecordingIntake(readings, events))
    site = Site(centre, station)
    site.readings, site.events = readings, events
    site_box.append(site)
    await station.start()
    try:
        yield site
    finally:
        await station.stop()


@contextlib.asynccontextmanager
async def running(stations: Sequence[SimulatedStation], port: int) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(s.run("127.0.0.1", port)) for s in stations]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def until(what: str, predicate: Any, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def expected_confirm(frame_up: Frame, ack: Frame, end: int) -> bytes:
    """The confirm the centre must send for `frame_up`, with the send time the ack carries."""
    serial = decode_body(frame_up).serial
    sent_at = decode_body(ack).sent_at
    assert serial is not None
    assert sent_at is not None
    link = LinkAddress(CENTER, frame_up.station, frame_up.password)
    return encode.confirm(link, frame_up.function, serial, sent_at, end=end)


class RawStation:
    """A station under the test's hand: writes the bytes it is given, collects the replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = StreamDecoder()
        self.frames: list[Frame] = []

    @classmethod
    async def connect(cls, port: int) -> RawStation:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, timeout: float = 3.0) -> Frame:
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(4096), timeout)
            assert data, "the centre closed the connection"
            self.decoder.feed(data)
            self.frames += [e for e in self.decoder.events() if isinstance(e, Frame)]
        return self.frames.pop(0)

    async def silence(self, seconds: float = 0.5) -> None:
        with contextlib.suppress(TimeoutError):
            data = await asyncio.wait_for(self.reader.read(4096), seconds)
            assert not data, f"expected no reply, got {data.hex()}"

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def test_many_stations_at_once_are_confirmed_byte_for_byte_and_give_readings() -> None:
    codes = [f"00123456{n:02d}" for n in range(5)]
    async with central([terminal(c, f"gauge-{i}") for i, c in enumerate(codes)]) as site:
        schedule = StationSchedule(keepalive=0.3, timed=0.5, hourly=1.0)
        stations = [SimulatedStation(c, CENTER, schedule=schedule) for c in codes]
        async with running(stations, site.port):
            await until("reports from all", lambda: all(site.of(f"gauge-{i}") for i in range(5)))
            await until("hourly blocks", lambda: all(
                any(r.point == "DRP" for r in site.of(f"gauge-{i}")) for i in range(5)
            ))  # fmt: skip
            await until("three confirms each", lambda: all(
                len([f for f in s.received if f.function in (0x32, 0x34)]) >= 3 for s in stations
            ))  # fmt: skip
    for station in stations:
        ups = [parse_frame(b) for b in station.sent]
        reports = [f for f in ups if f.function in (0x32, 0x34)]
        acks = {
            (f.function, decode_body(f).serial): f
            for f in station.received
            if f.function in (0x32, 0x34)
        }
        # Every report has its confirm (the last one may still be on its way when we stop).
        unanswered = [r for r in reports if (r.function, decode_body(r).serial) not in acks]
        assert len(reports) >= 3, station.station
        assert unanswered in ([], reports[-1:]), station.station
        for up in reports:
            ack = acks.get((up.function, decode_body(up).serial))
            if ack is not None:
                assert ack.raw == expected_confirm(up, ack, Ctrl.EOT)
        # keep-alives are never answered
        assert not [f for f in station.received if f.function == 0x2F]
    level = [r for r in site.of("gauge-0") if r.point == "Z"]
    assert level and all(r.quality is Quality.GOOD and r.unit == "m" for r in level)
    rain = [r for r in site.of("gauge-0") if r.point == "DRP"]
    # every 5-minute slot is its own reading, at its own time
    assert len({r.observed_at for r in rain}) >= 12


async def test_an_etb_frame_is_answered_with_ack_and_a_keepalive_with_nothing() -> None:
    code = "0012345678"
    async with central([terminal(code, "gauge")]) as site:
        sim = SimulatedStation(code, CENTER)
        raw = await RawStation.connect(site.port)
        try:
            await raw.send(sim.keepalive())
            await raw.silence()
            up = parse_frame(encode.report(
                sim.link, 0x32, 7, sim.clock(), category=ord("H"), groups=[], end=Ctrl.ETB,
            ))  # fmt: skip
            await raw.send(up.raw)
            ack = await raw.reply()
            assert ack.raw == expected_confirm(up, ack, Ctrl.ACK)
        finally:
            await raw.close()


async def test_m3_missing_packet_is_nakd_then_the_whole_is_confirmed() -> None:
    code = "0012345678"
    async with central([terminal(code, "camera")]) as site:
        sim = SimulatedStation(code, CENTER)
        observed = sim.clock().replace(second=0)
        packets = encode.picture_report(
            sim.link, 9, sim.clock(), category=ord("H"), observed_at=observed,
            jpeg=os.urandom(900), max_body=200,
        )  # fmt: skip
        total = len(packets)
        assert total >= 4
        raw = await RawStation.connect(site.port)
        try:
            for i, packet in enumerate(packets, start=1):
                if i != 3:
                    await raw.send(packet)
            nak = await raw.reply()
            assert nak.end == Ctrl.NAK
            assert nak.packet == (total, 3)
            link = LinkAddress(CENTER, code, "1234")
            sent_at = decode_body(nak).sent_at
            assert sent_at is not None
            assert nak.raw == encode.nak_packet(link, 0x36, 9, sent_at, total, 3)
            await raw.send(packets[2])  # the station resends packet 3
            done = await raw.reply()
            assert done.packet == (total, total)
            assert done.end == Ctrl.EOT
            sent_at = decode_body(done).sent_at
            assert sent_at is not None
            assert done.raw == encode.confirm_packets(link, 0x36, 9, sent_at, total)
        finally:
            await raw.close()


async def test_a_silent_gap_in_m3_gets_a_nak_after_the_packet_timeout() -> None:
    code = "0012345678"
    async with central([terminal(code, "camera")]) as site:
        sim = SimulatedStation(code, CENTER)
        packets = encode.picture_report(
            sim.link, 4, sim.clock(), category=ord("H"), observed_at=sim.clock(),
            jpeg=os.urandom(600), max_body=200,
        )  # fmt: skip
        raw = await RawStation.connect(site.port)
        try:
            await raw.send(packets[0])  # then the station goes quiet
            nak = await raw.reply(timeout=3)
            assert nak.end == Ctrl.NAK
            assert nak.packet == (len(packets), 2)
        finally:
            await raw.close()


async def test_a_station_that_disconnects_mid_frame_or_sends_garbage_breaks_nothing() -> None:
    code = "0012345678"
    async with central([terminal(code, "gauge")]) as site:
        sim = SimulatedStation(code, CENTER)
        frame = sim.timed_report()
        half = await RawStation.connect(site.port)
        await half.send(frame[: len(frame) // 2])
        await half.close()
        noisy = await RawStation.connect(site.port)
        try:
            await noisy.send(os.urandom(300) + b"\x7e\x7e\x01garbage" + frame + os.urandom(50))
            ack = await noisy.reply()
            assert ack.raw == expected_confirm(parse_frame(frame), ack, Ctrl.EOT)
        finally:
            await noisy.close()
        await until("rejections counted", lambda: site.central.rejected >= 2)
        assert len(site.of("gauge")) == len(decode_body(parse_frame(frame)).elements) + 11
        await until("both links closed", lambda: not site.central.links)


async def test_unknown_stations_are_reported_or_refused_by_config() -> None:
    sim = SimulatedStation("0099999999", CENTER)
    async with central([], accept_unknown=True) as site:
        raw = await RawStation.connect(site.port)
        try:
            await raw.send(sim.timed_report())
            await raw.reply()
        finally:
            await raw.close()
        assert {r.terminal for r in site.readings} == {"sl651-0099999999"}
    async with central([], accept_unknown=False) as site:
        raw = await RawStation.connect(site.port)
        try:
            await raw.send(sim.timed_report())
            await raw.silence()
        finally:
            await raw.close()
        assert site.readings == []
        assert site.centre.refused == 1


async def test_realtime_queries_on_query_period_are_matched_to_their_responses() -> None:
    code = "0012345678"
    async with central([terminal(code, "gauge", query_period="500ms")]) as site:
        schedule = StationSchedule(keepalive=0.2, timed=60, hourly=600)
        sim = SimulatedStation(code, CENTER, schedule=schedule)
        async with running([sim], site.port):
            await until("queries answered", lambda: len(
                [f for f in sim.received if f.function == 0x37 and f.end == Ctrl.ENQ]
            ) >= 2)  # fmt: skip
            await until("confirmed response", lambda: any(
                f.function == 0x37 and f.end == Ctrl.EOT for f in sim.received
            ))  # fmt: skip
        state = site.centre.stations[code]
        assert state.query_latency is not None
        assert state.query_latency < 1.0
    queries = [f for f in sim.received if f.function == 0x37 and f.end == Ctrl.ENQ]
    assert all(decode_body(q).serial == 0 for q in queries)  # centre-initiated: serial 0


async def test_a_station_clock_off_by_an_hour_is_set_only_when_ours_is_synchronised() -> None:
    code = "0012345678"
    async with central([terminal(code, "gauge")]) as site:
        site.synced.append(False)
        schedule = StationSchedule(keepalive=0.2, timed=0.3, hourly=600)
        sim = SimulatedStation(code, CENTER, schedule=schedule, clock_offset=3600)
        async with running([sim], site.port):
            await until("a report", lambda: site.of("gauge"))
            await asyncio.sleep(1.0)
            assert not [f for f in sim.received if f.function == 0x4A]
            offset = site.centre.stations[code].clock_offset
            assert offset is not None
            assert 3590 < offset < 3610
            site.synced.append(True)
            await until("clock set", lambda: [f for f in sim.received if f.function == 0x4A])
            await until(
                "clock right", lambda: abs(site.centre.stations[code].clock_offset or 1e9) < 5
            )
    # one clock set (ENQ), then the confirm of the station's answer (EOT)
    [setting] = [f for f in sim.received if f.function == 0x4A and f.end == Ctrl.ENQ]
    sent_at = decode_body(setting).sent_at
    assert sent_at is not None
    now_local = datetime.now(UTC).astimezone(site.centre.tz).replace(tzinfo=None)
    assert abs((sent_at - now_local).total_seconds()) < 5  # the time to set is ours


async def test_the_status_word_gives_named_readings_and_raises_a_battery_alarm() -> None:
    code = "0012345678"
    async with central([terminal(code, "gauge")]) as site:
        sim = SimulatedStation(code, CENTER)
        raw = await RawStation.connect(site.port)
        try:
            await raw.send(sim.timed_report())
            await raw.reply()
            sim.battery_low = True
            await raw.send(sim.timed_report())
            await raw.reply()
        finally:
            await raw.close()
    flags = {r.point: r.value for r in site.readings if r.point.startswith("ZT.")}
    assert flags["ZT.battery_low"] is True
    assert flags["ZT.door_open"] is False
    [event] = site.events
    assert event["flag"] == "battery_low"
    assert event["action"] == "raised"
    assert event["terminal"] == "gauge"


async def test_serial_end_to_end_over_a_pty_pair() -> None:
    code = "0012345678"
    line = VirtualSerialLine().open()
    try:
        settings = Sl651Config.model_validate(
            {"center": CENTER, "serial": [{"device": line.a_path, "baudrate": 9600}]}
        )
        readings: list[Reading] = []
        centre = Centre(settings, [terminal(code, "gauge")], lambda: True)
        station = CentralStation(settings, centre, RecordingIntake(readings, []))
        await station.start()
        try:
            sim = SimulatedStation(code, CENTER)
            fd = os.open(line.b_path, os.O_RDWR | os.O_NOCTTY)
            try:
                report = sim.timed_report()
                os.write(fd, report)
                loop = asyncio.get_running_loop()
                decoder = StreamDecoder()
                deadline = loop.time() + 5
                frames: list[Frame] = []
                os.set_blocking(fd, False)
                while not frames:
                    assert loop.time() < deadline, "no confirm over the serial line"
                    with contextlib.suppress(BlockingIOError):
                        decoder.feed(os.read(fd, 4096))
                    frames = [e for e in decoder.events() if isinstance(e, Frame)]
                    await asyncio.sleep(0.02)
                assert frames[0].raw == expected_confirm(parse_frame(report), frames[0], Ctrl.EOT)
            finally:
                os.close(fd)
        finally:
            await station.stop()
    finally:
        line.close()
    assert {r.point for r in readings} >= {"Z", "PJ", "VT"}
    assert all(abs(r.observed_at - datetime.now(UTC)) < timedelta(minutes=2) for r in readings)


@pytest.mark.parametrize("ack_end", ["EOT", "ESC"])
async def test_the_confirm_end_character_follows_config(ack_end: str) -> None:
    code = "0012345678"
    async with central([terminal(code, "gauge")], ack_end=ack_end) as site:
        sim = SimulatedStation(code, CENTER)
        raw = await RawStation.connect(site.port)
        try:
            report = sim.timed_report()
            await raw.send(report)
            ack = await raw.reply()
        finally:
            await raw.close()
    end = Ctrl.EOT if ack_end == "EOT" else Ctrl.ESC
    assert ack.raw == expected_confirm(parse_frame(report), ack, end)


async def test_the_agent_process_takes_station_reports_into_its_outbox(
    tmp_path: Path, agent_factory: Any
) -> None:
    port = free_port()
    config = tmp_path / "config.yaml"
    write_config(
        config, tmp_path / "state",
        [{"name": "gauge", "protocol": "sl651", "station": "0012345678", "password": "1234",
          "expected_interval": "1m"}],
        sl651={"center": CENTER, "listen": [f"127.0.0.1:{port}"]},
    )  # fmt: skip
    agent = await agent_factory(config)
    await agent.wait_for("listening", lambda: agent.events("SL651 central station listening"))
    sim = SimulatedStation(
        "0012345678", CENTER, schedule=StationSchedule(keepalive=1, timed=0.3, hourly=600),
        battery_low=True,
    )  # fmt: skip
    async with running([sim], port):
        await agent.wait_for("readings", lambda: len(agent.readings()) >= 20)
        await until("confirms", lambda: any(f.function == 0x32 for f in sim.received))
        socket = Path(short_socket_path(config))
        answer = await request(socket, "sl651-query", {"terminal": "gauge", "elements": ["Z"]})
        assert answer == {"query": "sending"}
        await until("the 3A query", lambda: any(f.function == 0x3A for f in sim.received))
    assert await agent.stop() == 0
    readings = agent.readings()
    assert {r["terminal"] for r in readings} == {"gauge"}
    assert {"Z", "PJ", "VT", "ZT.battery_low"} <= {r["point"] for r in readings}
    [alarm] = agent.events("station alarm")
    assert alarm["flag"] == "battery_low"


async def test_a_query_for_specified_elements_goes_out_and_its_answer_is_matched() -> None:
    code = "0012345678"
    async with central([terminal(code, "gauge")]) as site:
        schedule = StationSchedule(keepalive=0.2, timed=600, hourly=600)
        sim = SimulatedStation(code, CENTER, schedule=schedule)
        with pytest.raises(KeyError, match="no SL651 terminal named 'nope'"):
            site.centre.ask_elements("nope", ["Z"])
        async with running([sim], site.port):
            await until("online", lambda: site.centre.stations[code].link is not None)
            assert site.centre.ask_elements("gauge", ["Z", "PJ"]) == "sending"
            with pytest.raises(ValueError, match="not an element identifier"):
                site.centre.ask_elements("gauge", ["NOPE"])
            await until("answered", lambda: any(
                f.function == 0x3A and f.end == Ctrl.EOT for f in sim.received
            ))  # fmt: skip
    [query] = [f for f in sim.received if f.function == 0x3A and f.end == Ctrl.ENQ]
    sent_at = decode_body(query).sent_at
    assert sent_at is not None
    link = LinkAddress(CENTER, code, "1234")
    assert query.raw == encode.query_elements(link, sent_at, ["Z", "PJ"])
    assert site.centre.stations[code].query_latency is not None
    assert any(r.point == "Z" for r in site.of("gauge"))
