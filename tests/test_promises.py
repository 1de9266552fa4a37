"""The promises of the outbox, end to end: the agent as a process, a real mosquitto.

- A confirm is a promise: the SL651 centre confirms a report only once its readings are
  durable. A station over TCP, the agent SIGKILLed right after a confirm, again and again:
  after the restarts every confirmed report is upstream.
- Anything stored wakes the uplink: with no telemetry flowing at all, an alarm and a health
  change reach the broker within a second of entering the outbox.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.model import parse_timestamp
from agent.protocols.sl651 import encode
from agent.protocols.sl651.body import frame_serial
from agent.protocols.sl651.frame import Frame, LinkAddress
from agent.protocols.sl651.items import Group, Value
from agent.protocols.sl651.stream import StreamDecoder
from tests.agentproc import Agent, write_config
from tests.broker import Mosquitto, free_port, persistent
from tests.collector import Collector, telemetry, verify
from tests.test_store_forward import keys_show

PREFIX = "edge/gw-test"
STATION = "0012345678"
CENTER = 1
RIVER = ord("H")
BASE = datetime(2026, 1, 1)  # observation times: one minute apart per report


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    mosquitto = persistent(tmp_path / "broker").start()
    yield mosquitto
    mosquitto.stop()


class Station:
    """An SL651 station of our own making: one report at a time, waits for each confirm."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.link = LinkAddress(CENTER, STATION, "1234")
        self.confirmed: list[int] = []  # serials of the reports the centre confirmed

    @staticmethod
    def level(serial: int) -> float:
        """Each report's water level is its own: it tells the reports apart upstream."""
        return round(10 + serial / 1000, 3)

    def report(self, serial: int) -> bytes:
        observed = BASE + timedelta(minutes=serial)
        items = [Value("Z", self.level(serial)), Value("VT", 12.5)]
        return encode.report(
            self.link, 0x32, serial, observed, category=RIVER, groups=[Group(observed, items)]
        )

    async def send_until_confirmed(self, first: int, count: int, on_confirm: Any) -> int:
        """Report serials first, first+1, … each after the last was confirmed; `on_confirm`
        runs right when a confirm arrives (before anything else). Returns the next serial."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        decoder = StreamDecoder()
        serial = first
        try:
            for serial in range(first, first + count):
                writer.write(self.report(serial))
                await writer.drain()
                frame = await self._confirm(reader, decoder)
                assert frame_serial(frame) == serial
                self.confirmed.append(serial)
                on_confirm(serial)
        finally:
            writer.close()
        return serial + 1

    @staticmethod
    async def _confirm(reader: asyncio.StreamReader, decoder: StreamDecoder) -> Frame:
        async with asyncio.timeout(10):
            while True:
                for event in decoder.events():
                    if isinstance(event, Frame) and event.direction == "down":
                        return event
                data = await reader.read(4096)
                if not data:
                    raise ConnectionError("the centre closed the link")
                decoder.feed(data)


def sl651_config(tmp_path: Path, port: int, broker: Mosquitto, **extra: Any) -> Path:
    config = tmp_path / "config.yaml"
    write_config(
        config,
        tmp_path / "state",
        [
            {
                "name": "gauge",
                "protocol": "sl651",
                "station": STATION,
                "password": "1234",
                "clock_sync": False,
            }
        ],
        sl651={"center": CENTER, "listen": [f"127.0.0.1:{port}"]},
        uplink={"broker": broker.url, "backoff_min": "100ms", "backoff_max": "1s"},
        **extra,
    )
    return config


async def test_every_confirmed_sl651_report_is_upstream_though_the_agent_is_killed_after_confirms(
    tmp_path: Path, broker: Mosquitto, agent_factory: Any
) -> None:
    port = free_port()
    config = sl651_config(tmp_path, port, broker)
    station = Station(port)
    serial = 1
    async with Collector(broker.port, f"{PREFIX}/#") as collector:
        for _kill in range(5):
            agent: Agent = await agent_factory(config)
            await agent.wait_for(
                "listening", lambda a=agent: a.events("SL651 central station listening")
            )

            def kill_now(confirmed: int, agent: Agent = agent, last: int = serial + 9) -> None:
                if confirmed == last:  # right after the confirm, before anything else runs
                    agent.process.send_signal(signal.SIGKILL)

            serial = await station.send_until_confirmed(serial, 10, kill_now)
            await agent.process.wait()
        # One more run, left to publish what the killed ones made durable.
        agent = await agent_factory(config)
        await agent.wait_for("started", lambda: agent.events("agent started"))
        jwk = keys_show(config)["jwk"]
        wanted = {Station.level(s) for s in station.confirmed}

        def upstream() -> set[float]:
            return {
                r["value"]
                for payload in telemetry(collector, jwk)
                for r in payload["body"]["readings"]
                if r["point"] == "Z"
            }

        try:
            await collector.wait_for("every confirmed report", lambda: wanted <= upstream(), 30)
        finally:
            assert await agent.stop() == 0
    assert len(station.confirmed) == 50


async def test_an_alarm_and_a_health_change_reach_the_broker_within_a_second_without_telemetry(
    tmp_path: Path, broker: Mosquitto, agent_factory: Any
) -> None:
    config = tmp_path / "config.yaml"
    settings = {
        "uplink": {"broker": broker.url},
        "health": {"interval": "1h", "min_gap": 0},
        "checks": {"software": {"interval": "500ms"}, "alarms": {"raise_after": 1}},
    }
    write_config(config, tmp_path / "state", [], **settings)
    async with Collector(broker.port, f"{PREFIX}/#") as collector:
        agent: Agent = await agent_factory(config)
        await collector.wait_for("online", lambda: collector.on("state"))
        await asyncio.sleep(2.0)  # the start-up health report and rounds are done
        seen = len(collector.messages)
        arrived: dict[int, float] = {}

        def note_arrivals() -> None:
            for i in range(seen, len(collector.messages)):
                arrived.setdefault(i, time.time())

        # The config on disk breaks: the config check fails, which raises an alarm and
        # changes the health report. Nothing else is going on: no terminal, no telemetry.
        config.write_text("gateway: [not, a, mapping")

        def both() -> bool:
            note_arrivals()
            fresh = collector.messages[seen:]
            return any(m.topic.endswith("/events") for m in fresh) and any(
                m.topic.endswith("/health") for m in fresh
            )

        await collector.wait_for("the alarm and the health change", both, 10)
        assert await agent.stop() == 0
    jwk = keys_show_from(tmp_path)
    fresh = list(enumerate(collector.messages))[seen:]
    assert not [m for _, m in fresh if m.topic.endswith("/telemetry")]
    latencies = {}
    for i, message in fresh:
        if message.topic.endswith(("/events", "/health")) and i in arrived:
            payload = verify(message.payload, jwk)
            stored_at = parse_timestamp(payload["ts"]).timestamp()
            latencies.setdefault(payload["kind"], arrived[i] - stored_at)
    assert set(latencies) >= {"event", "health"}
    assert all(latency < 1.0 for latency in latencies.values()), latencies


def keys_show_from(tmp_path: Path) -> dict[str, Any]:
    """The device key's JWK, read with a valid config pointing at the same state."""
    valid = tmp_path / "valid.yaml"
    write_config(valid, tmp_path / "state", [])
    jwk: dict[str, Any] = keys_show(valid)["jwk"]
    return jwk
