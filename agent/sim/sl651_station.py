"""A simulated SL651-2014 station (an RTU at a river gauge) that reports to the agent over TCP.

It connects to the central station and sends keep-alives (2F), timed reports (32), hourly
reports (34) with F4 rain and F5 level blocks, add reports (33) when the level crosses a
threshold, and answers the centre's queries: real-time data (37), clock set (4A), clock query
(51). Its clock may run off by `clock_offset` seconds until the centre sets it. Every frame it
receives is kept in `received` (the tests check the centre's answers byte for byte).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

from agent.protocols.sl651 import encode
from agent.protocols.sl651.body import decode_body
from agent.protocols.sl651.elements import status_word
from agent.protocols.sl651.frame import Ctrl, Frame, LinkAddress
from agent.protocols.sl651.items import BlockValues, Group, Item, StatusValue, Value
from agent.protocols.sl651.message import BodyError
from agent.protocols.sl651.readings import CHINA_STANDARD_TIME
from agent.protocols.sl651.stream import StreamDecoder

RIVER = ord("H")


@dataclass
class StationSchedule:
    keepalive: float = 30.0
    timed: float = 300.0  # 32H timed report
    hourly: float = 3600.0  # 34H hourly report
    level_threshold: float = 12.6  # 33H add report when the level crosses it


@dataclass
class SimulatedStation:
    station: str
    center: int = 1
    password: str = "1234"  # noqa: S105 -- SL651's link password, the standard's sample value
    schedule: StationSchedule = field(default_factory=StationSchedule)
    clock_offset: float = 0.0  # seconds the station clock runs ahead
    tz: timezone = CHINA_STANDARD_TIME
    received: list[Frame] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    battery_low: bool = False
    _serial: int = 0
    _started: float = field(default_factory=time.monotonic)
    _above: bool = False
    _writer: asyncio.StreamWriter | None = None

    @property
    def link(self) -> LinkAddress:
        return LinkAddress(self.center, self.station, self.password)

    def clock(self) -> datetime:
        """The station's own wall clock (local, no zone), as it writes it in frames."""
        now = datetime.now(UTC) + timedelta(seconds=self.clock_offset)
        return now.astimezone(self.tz).replace(tzinfo=None, microsecond=0)

    def level(self) -> float:
        t = time.monotonic() - self._started
        return round(12.0 + 0.8 * math.sin(2 * math.pi * t / 600), 3)

    def next_serial(self) -> int:
        self._serial = self._serial % 65535 + 1
        return self._serial

    # -- frames ------------------------------------------------------------------------------

    def keepalive(self) -> bytes:
        return encode.keepalive(self.link, self._serial, self.clock())

    def timed_report(self, function: int = 0x32) -> bytes:
        sent = self.clock()
        observed = sent.replace(second=0)
        items: list[Item] = [
            Value("PJ", 1.5),
            Value("PT", 123.4),
            Value("Z", self.level()),
            StatusValue(status_word(battery_low=self.battery_low)),
            Value("VT", 12.55),
        ]
        return encode.report(
            self.link, function, self.next_serial(), sent, category=RIVER,
            groups=[Group(observed, items)],
        )  # fmt: skip

    def hourly_report(self) -> bytes:
        sent = self.clock()
        hour = sent.replace(minute=0, second=0)
        first = hour - timedelta(minutes=55)  # the first 5-minute slot of the past hour
        level = self.level()
        groups = [
            Group(first, [BlockValues("DRP", [0.5, 0.0, 0.0, 1.0, None, 0.0] * 2)]),
            Group(hour, [Value("PT", 124.9)]),
            Group(first, [BlockValues("DRZ1", [level + i * 0.01 for i in range(12)])]),
            Group(hour, [Value("Z", level), Value("VT", 12.5)]),
        ]
        return encode.report(
            self.link, 0x34, self.next_serial(), sent, category=RIVER, groups=groups
        )

    def answer(self, frame: Frame) -> list[bytes]:
        """The station's reply to a downlink from the centre."""
        if frame.function in (0x37, 0x3A):  # 3A: a real station sends only what was asked
            return [self.timed_report(frame.function)]
        if frame.function == 0x4A:
            try:
                message = decode_body(frame)
            except BodyError:
                return []
            if message.sent_at is not None:
                target = message.sent_at.replace(tzinfo=self.tz)
                self.clock_offset = (target - datetime.now(UTC)).total_seconds()
            return [encode.station_reply(self.link, 0x4A, self.next_serial(), self.clock())]
        if frame.function == 0x51:
            return [encode.station_reply(self.link, 0x51, self.next_serial(), self.clock())]
        return []

    # -- the session -------------------------------------------------------------------------

    async def run(self, host: str, port: int) -> None:
        """Connect and report on the schedule; reconnect after a lost connection."""
        while True:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(1.0)
                continue
            self._writer = writer
            listener = asyncio.create_task(self._listen(reader))
            try:
                await self._report(writer)
            except (ConnectionError, OSError):
                pass
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()
                self._writer = None
            await asyncio.sleep(1.0)

    def send(self, data: bytes) -> None:
        if self._writer is not None:
            self.sent.append(data)
            self._writer.write(data)

    async def _report(self, writer: asyncio.StreamWriter) -> None:
        s = self.schedule
        frames = {
            "timed": self.timed_report,
            "hourly": self.hourly_report,
            "keepalive": self.keepalive,
        }
        every = {"keepalive": s.keepalive, "timed": s.timed, "hourly": s.hourly}
        due = dict.fromkeys(frames, time.monotonic())
        due["keepalive"] += s.keepalive  # a report is as good as a keep-alive at first
        while True:
            now = time.monotonic()
            for kind, make in frames.items():
                if now >= due[kind]:
                    self.send(make())
                    due[kind] = now + every[kind]
            above = self.level() > s.level_threshold
            if above != self._above:
                self._above = above
                self.send(self.timed_report(0x33))
            await writer.drain()
            await asyncio.sleep(max(0.01, min(due.values()) - time.monotonic()))

    async def _listen(self, reader: asyncio.StreamReader) -> None:
        decoder = StreamDecoder()
        while data := await reader.read(4096):
            decoder.feed(data)
            for event in decoder.events():
                if isinstance(event, Frame):
                    self.received.append(event)
                    if event.end == Ctrl.ENQ:
                        for reply in self.answer(event):
                            self.send(reply)
