"""Limits of the SL651 centre that a hostile or broken peer meets: bounded M3 transfers and
unknown stations (sans IO), the listener's connection cap, the per-connection budgets (real
TCP), the descriptor limit helper, and the decoder's cost bound on hostile input."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from datetime import UTC, datetime

import pytest

from agent.config import Sl651Config, Sl651Terminal
from agent.limits import RESERVE_MIN, descriptor_budget, raise_descriptor_limit
from agent.protocols.sl651 import StreamDecoder, build_frame, encode, parse_frame
from agent.protocols.sl651.frame import Ctrl, LinkAddress
from agent.protocols.sl651.session import Centre
from agent.protocols.sl651.transport import connection_cap
from agent.sim.hostile_sl651 import claims, overlapping_headers
from agent.sim.sl651_station import SimulatedStation
from tests.test_sl651_central import central, terminal, until

CODE = "0012345678"
LINK = LinkAddress(1, CODE, "1234")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def centre(clock: Clock, **config: object) -> Centre:
    settings = Sl651Config.model_validate({"center": 1, **config})
    t = Sl651Terminal.model_validate(
        {"name": "camera", "protocol": "sl651", "station": CODE, "password": "1234"}
    )
    return Centre(settings, [t], lambda: True, clock)


def packet(total: int, seq: int, size: int = 4000, station: str = CODE) -> bytes:
    link = LinkAddress(1, station, "1234")
    end = Ctrl.ETX if seq == total else Ctrl.ETB
    return build_frame(link, 0x36, os.urandom(size), direction="up", end=end, packet=(total, seq))


def now() -> datetime:
    return datetime.now(UTC)


# -- M3 and unknown stations (sans IO) ------------------------------------------------------------


def test_a_transfer_announcing_more_packets_than_allowed_holds_nothing_and_is_counted() -> None:
    c, link = centre(Clock(), m3_max_packets=100), object()
    for seq in range(2, 400):  # packet 1 never comes, as in the flood that grew RSS by 32 MB
        c.receive(link, parse_frame(packet(4000, seq, 200)), now())
    assert c.m3_bytes == 0
    assert c.stations[CODE].m3_bytes == 0
    assert c.evicted["packets"] == 1
    assert "packets" in (c.stations[CODE].last_error or "")


def test_a_station_over_its_m3_bytes_loses_its_oldest_transfer() -> None:
    clock, link = Clock(), object()
    c = centre(clock, m3_max_bytes=65536)
    for seq in range(2, 100):
        clock.t += 0.01
        c.receive(link, parse_frame(packet(1000, seq)), now())
        assert c.stations[CODE].m3_bytes <= 65536
    assert c.evicted["bytes"] >= 1
    assert c.m3_bytes == c.stations[CODE].m3_bytes <= 65536


def test_all_stations_together_stay_within_m3_total_bytes() -> None:
    clock = Clock()
    c = Centre(
        Sl651Config.model_validate(
            {"center": 1, "m3_max_bytes": 65536, "m3_max_total_bytes": 131072}
        ),
        [],
        lambda: True,
        clock,
    )
    for n in range(6):
        station = f"00000000{n:02d}"
        for seq in range(2, 8):
            clock.t += 0.01
            c.receive(object(), parse_frame(packet(50, seq, station=station)), now())
            assert c.m3_bytes <= 131072
    assert c.evicted["total_bytes"] >= 1
    assert c.m3_bytes == sum(s.m3_bytes for s in c.stations.values())


def test_a_transfer_older_than_m3_max_age_is_dropped_on_the_tick() -> None:
    clock, link = Clock(), object()
    c = centre(clock, m3_max_age="60s", packet_timeout="1h")
    for seq in range(2, 6):
        clock.t += 1
        c.receive(link, parse_frame(packet(50, seq)), now())
    assert c.m3_bytes > 0
    clock.t += 61
    c.tick(link, now())
    assert c.m3_bytes == 0 and c.stations[CODE].assemblies == {}
    assert c.evicted["age"] == 1


def test_a_completed_transfer_releases_its_bytes() -> None:
    c, link = centre(Clock()), object()
    sim = SimulatedStation(CODE)
    pictures = encode.picture_report(
        sim.link, 1, sim.clock(), category=ord("H"), observed_at=sim.clock(),
        jpeg=os.urandom(600), max_body=200,
    )  # fmt: skip
    replies = [c.receive(link, parse_frame(p), now()).send for p in pictures]
    assert replies[-1] and c.m3_bytes == 0 and not c.evicted


def test_one_link_brings_at_most_max_unknown_per_link_stations() -> None:
    c, link = centre(Clock(), max_unknown_per_link=3), object()
    for n in range(10):
        station = f"99000000{n:02d}"
        frame = encode.keepalive(LinkAddress(1, station, "0000"), 1, datetime(2024, 1, 1))
        c.receive(link, parse_frame(frame), now())
    unknown = [s for s in c.stations.values() if not s.configured]
    assert len(unknown) == 3
    assert c.unknown_refused == 7
    c.link_closed(link)
    assert not [s for s in c.stations.values() if not s.configured]
    other = encode.keepalive(LinkAddress(1, "9900000099", "0000"), 1, datetime(2024, 1, 1))
    c.receive(object(), parse_frame(other), now())  # another link has its own allowance
    assert "9900000099" in c.stations


# -- descriptors --------------------------------------------------------------------------------


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        limit = raise_descriptor_limit()
        assert limit.before == min(256, hard)
        assert limit.soft == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert limit.error is None
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_max_connections_is_capped_below_the_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))
        assert descriptor_budget() == 300 - RESERVE_MIN
        assert connection_cap(Sl651Config(max_connections=2000)) == 300 - RESERVE_MIN
        assert connection_cap(Sl651Config(max_connections=10)) == 10
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- the listener and per-connection budgets (real TCP) -------------------------------------------


async def report_confirmed(port: int) -> bytes:
    sim = SimulatedStation(CODE)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(sim.timed_report())
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read(4096)
    finally:
        writer.close()


async def test_a_full_listener_accepts_nothing_refuses_the_backlog_and_serves_again() -> None:
    async with central([terminal(CODE, "gauge")], max_connections=3) as site:
        idle = [await asyncio.open_connection("127.0.0.1", site.port) for _ in range(3)]
        await until("three links", lambda: len(site.central.links) == 3)
        extra = [await asyncio.open_connection("127.0.0.1", site.port) for _ in range(4)]
        for reader, writer in extra:  # refused within the tick: closed without a byte
            async with asyncio.timeout(5):
                assert await reader.read(10) == b""
            writer.close()
        assert site.central.refused_connections == 4
        assert len(site.central.links) == 3
        for _, writer in idle[:1]:
            writer.close()
        await until("a slot freed", lambda: len(site.central.links) == 2)
        reply = await report_confirmed(site.port)
        assert parse_frame(reply).function == 0x32
        counters = site.central.counters()
        assert counters["refused_connections"] == 4 and counters["max_connections"] == 3
        for _, writer in idle[1:]:
            writer.close()


async def test_a_trickler_is_dropped_by_its_frame_timeout() -> None:
    """Each byte used to reset idle_timeout: a header sent a byte at a time held its slot."""
    async with central([], frame_timeout="1s", min_rate=1) as site:
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        started = time.monotonic()
        for byte in b"\x7e\x7e\x01\x00\x12\x34" * 10:  # a header, a byte at a time
            if site.central.dropped["frame_timeout"]:
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)
        await until("dropped", lambda: site.central.dropped["frame_timeout"] == 1)
        assert time.monotonic() - started < 5
        async with asyncio.timeout(5):
            assert await reader.read(10) == b""
        assert not site.central.links
        writer.close()


async def test_a_peer_below_min_rate_is_dropped_as_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.protocols.sl651.transport.RATE_GRACE", 0.5)
    async with central([], min_rate=100) as site:
        _, writer = await asyncio.open_connection("127.0.0.1", site.port)
        for byte in bytes.fromhex("7E7E010012345678123432") * 3:  # a header, 10 bytes/s
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)
            if site.central.dropped["slow"]:
                break
        assert site.central.dropped["slow"] == 1
        assert site.central.counters()["dropped_slow"] == 1
        writer.close()


async def test_a_modems_heartbeat_between_frames_starts_no_frame_clock() -> None:
    """Bytes that make no frame are thrown away: a DTU's heartbeat does not get its station cut
    off by frame_timeout or min_rate; only idle_timeout, counted from the last good frame."""
    async with central([], frame_timeout="500ms", min_rate=1000, idle_timeout="3s") as site:
        _, writer = await asyncio.open_connection("127.0.0.1", site.port)
        began = time.monotonic()
        while not site.central.dropped["idle"]:
            writer.write(b"www.usr.cn heartbeat\r\n")  # every 0.2 s: each byte resets nothing
            await asyncio.sleep(0.2)
            assert time.monotonic() - began < 10, site.central.dropped
        assert time.monotonic() - began >= 2.5  # held until idle_timeout, not frame_timeout
        assert site.central.dropped["frame_timeout"] == 0 and site.central.dropped["slow"] == 0
        writer.close()


async def test_a_flooding_peer_is_read_no_faster_than_max_rate() -> None:
    async with central([], max_rate=16384) as site:
        _, writer = await asyncio.open_connection("127.0.0.1", site.port)
        started = time.monotonic()
        writer.write(b"\x00" * (32768 + 32768))  # the two-second burst, then two seconds' worth
        await until("a read held back", lambda: site.central.throttled >= 1)
        await until(
            "every byte read", lambda: sum(link.rejected for link in site.central.links) >= 7
        )
        assert time.monotonic() - started >= 1.0  # generous: two seconds at max_rate
        writer.close()


# -- the decoder's cost ---------------------------------------------------------------------------


@pytest.mark.parametrize("make", [claims, overlapping_headers], ids=["claims", "overlap"])
def test_hostile_frames_cost_about_one_crc_over_the_input(make: object) -> None:
    """Each CRC covers up to 4 KB: without the credit, overlapping headers cost one per 14
    bytes. The decoder's own CRC work stays within twice the input plus its credit."""
    assert callable(make)
    data = make(1 << 20)
    decoder = StreamDecoder()
    crc_bytes = 0
    for i in range(0, len(data), 4096):
        decoder.feed(data[i : i + 4096])
        for event in decoder.events():
            crc_bytes += len(getattr(event, "data", b"")) if event.reason.value == "bad_crc" else 0
    assert crc_bytes <= 2 * len(data) + 4 * decoder.max_frame_bytes
    assert decoder.coarse > 0
