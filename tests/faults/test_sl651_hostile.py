"""Hostile SL651 peers against the agent as a process: a connection flood beyond its descriptor
limit, a trickler, 1 MiB of frames claiming 4,095 bytes, an M3 transfer that never completes.

The agent runs with a low RLIMIT_NOFILE (soft and hard, set in the child before exec, so its own
raise at start changes nothing): 1,200 idle connections used to make it log 223,795 tracebacks,
refuse a real station and fail to save its health report. Figures are asserted with generous
margins (a shared, noisy machine); bench/hostile.py measures them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.protocols.sl651 import StreamDecoder, build_frame
from agent.protocols.sl651.frame import Ctrl, Frame, LinkAddress
from agent.sim.hostile_sl651 import claims
from agent.sim.sl651_station import SimulatedStation
from agent.storage.layout import StateLayout
from tests.agentproc import Agent, write_config
from tests.broker import free_port
from tests.conftest import PYTHON, ROOT
from tests.procstat import cpu_seconds, rss_mb

STATION = "0012345678"
NOFILE = 256  # the agent's descriptor limit in these tests: 1,200 connections exceed it

Start = Callable[[Path], Awaitable[Agent]]


@pytest.fixture
def limited_agent(agent_factory: Any) -> Start:
    """Like tests/conftest.py's agent_factory, with RLIMIT_NOFILE = NOFILE in the child."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))

    async def start(config: Path) -> Agent:
        agent: Agent = await agent_factory(config, preexec_fn=limit)
        return agent

    return start


def configure(tmp_path: Path, port: int, **sl651: Any) -> Path:
    config = tmp_path / "config.yaml"
    write_config(
        config,
        tmp_path / "state",
        [{"name": "gauge", "protocol": "sl651", "station": STATION, "password": "1234"}],
        sl651={"listen": [f"127.0.0.1:{port}"], **sl651},
        health={"interval": "2s", "min_gap": 0},
        checks={"software": {"interval": "1s"}},
    )
    return config


async def started(agent: Agent) -> None:
    await agent.wait_for("the listener", lambda: agent.events("SL651 central station listening"))


def counters(config: Path) -> dict[str, int]:
    out = subprocess.run(
        [PYTHON, "-m", "agent", "status", "--json", "--config", str(config)],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=20,
    )  # fmt: skip
    return dict(json.loads(out.stdout)["counters"])


async def confirmed_report(port: int, prefix: bytes = b"", timeout: float = 15) -> Frame:
    """Send `prefix` and a timed report on a new connection; the confirm (function 0x32)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(prefix + SimulatedStation(STATION).timed_report())
        decoder = StreamDecoder()
        async with asyncio.timeout(timeout):
            while data := await reader.read(4096):
                decoder.feed(data)
                for event in decoder.events():
                    if isinstance(event, Frame) and event.function == 0x32:
                        return event
        raise AssertionError("the connection closed without a confirm")
    finally:
        writer.close()


def tracebacks(agent: Agent) -> int:
    return sum("Traceback" in json.dumps(line) for line in agent.log_lines)


async def test_1200_idle_connections_beyond_the_descriptor_limit_leave_the_agent_working(
    tmp_path: Path, limited_agent: Start
) -> None:
    port = free_port()
    config = configure(tmp_path, port, idle_timeout="1h")
    agent = await limited_agent(config)
    await started(agent)
    health = StateLayout(tmp_path / "state").health
    await agent.wait_for("a health report", health.exists, timeout=10)
    capped = agent.events("SL651 max_connections capped by the descriptor limit")
    assert capped and capped[0]["cap"] < NOFILE  # 2000 asked, the descriptors allow fewer
    lines_before = len(agent.log_lines)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(1200):
            with contextlib.suppress(OSError):
                idle.append(await asyncio.open_connection("127.0.0.1", port))
        await asyncio.sleep(3.0)  # the refusals of a few ticks, a health report or two
        saved_at = health.stat().st_mtime
        await agent.wait_for(
            "the health report saved again", lambda: health.stat().st_mtime > saved_at
        )
        count = counters(config)
        assert 0 < count["sl651.connections"] == count["sl651.max_connections"] < NOFILE
        assert count["sl651.refused_connections"] > 0
        assert tracebacks(agent) == 0
        flood_lines = len(agent.log_lines) - lines_before
        assert flood_lines < 30, agent.log_lines[lines_before:]
        assert not agent.events("cannot save the health report")
    finally:
        for _, writer in idle:
            writer.close()
    # A connection made while every slot is still taken is refused (closed) by design: a station
    # connects again later. So wait until the agent has seen the idle ones go, then connect.
    deadline = time.monotonic() + 15
    while counters(config)["sl651.connections"] > 0:
        assert time.monotonic() < deadline, counters(config)
        await asyncio.sleep(0.2)
    confirm = await confirmed_report(port)  # the slots are free again: a station is served
    assert confirm.end in (Ctrl.EOT, Ctrl.ESC)
    assert await agent.stop() == 0
    assert tracebacks(agent) == 0


async def test_a_trickler_is_dropped_within_its_frame_timeout(
    tmp_path: Path, limited_agent: Start
) -> None:
    port = free_port()
    config = configure(tmp_path, port, frame_timeout="2s")
    agent = await limited_agent(config)
    await started(agent)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()
    closed_after = None
    try:
        for byte in bytes.fromhex("7E7E010012345678123432") * 20:  # a byte every 0.2 s
            writer.write(bytes([byte]))
            try:
                async with asyncio.timeout(0.2):
                    dropped = await reader.read(10) == b""
            except TimeoutError:
                dropped = False
            except ConnectionResetError:  # closed with our last byte unread: the kernel resets
                dropped = True
            if dropped:
                closed_after = time.monotonic() - began
                break
    finally:
        writer.close()
    assert closed_after is not None and closed_after < 6.0  # 2 s budget, a tick, a margin
    assert counters(config)["sl651.dropped_frame_timeout"] == 1
    assert await agent.stop() == 0


async def test_a_mib_of_4095_byte_claims_costs_little_cpu_and_another_station_is_confirmed(
    tmp_path: Path, limited_agent: Start
) -> None:
    port = free_port()
    config = configure(tmp_path, port, max_rate=1 << 30)  # the decoder, not the budget, paces
    agent = await limited_agent(config)
    await started(agent)
    await confirmed_report(port)  # warm: the first report's imports and tables are paid
    hostile = claims(1 << 20)
    _, flooder = await asyncio.open_connection("127.0.0.1", port)
    before = cpu_seconds(agent.process.pid)
    flooder.write(hostile)
    confirm = await confirmed_report(port)  # another station, while the flood is read
    # The flood's end: the same bytes, 4,112 zeros to end a frame under way, and a report.
    await confirmed_report(port, hostile + b"\x00" * 4112, timeout=30)
    spent = cpu_seconds(agent.process.pid) - before
    flooder.close()
    assert confirm.function == 0x32
    assert spent < 1.0  # 2 MiB of claims; 4 CPU-s per MiB before; about 0.1 measured
    assert counters(config)["sl651.rejected_frames"] >= 400
    assert await agent.stop() == 0


async def test_an_m3_transfer_of_4000_packets_without_packet_1_is_refused_and_holds_no_memory(
    tmp_path: Path, limited_agent: Start
) -> None:
    port = free_port()
    config = configure(tmp_path, port, max_rate=1 << 30)
    agent = await limited_agent(config)
    await started(agent)
    await confirmed_report(port)
    before = rss_mb(agent.process.pid)
    link = LinkAddress(1, STATION, "1234")
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    for seq in range(2, 4001):
        packet = build_frame(
            link, 0x36, os.urandom(4000), direction="up", end=Ctrl.ETB, packet=(4000, seq)
        )
        writer.write(packet)
        if seq % 100 == 0:
            await writer.drain()
    await writer.drain()
    confirm = await confirmed_report(port)  # after every packet on the other link was read
    assert confirm.function == 0x32
    await agent.wait_for(
        "the eviction counted", lambda: counters(config)["sl651.m3_evicted_packets"] >= 1, 15
    )
    grown = rss_mb(agent.process.pid) - before
    writer.close()
    assert grown < 8.0  # 16 MB of packets; 32 MB of RSS for them before
    assert agent.events("SL651 M3 transfers dropped: over their bounds")
    assert await agent.stop() == 0


if sys.platform != "linux":  # pragma: no cover - /proc and RLIMIT_NOFILE as Linux has them
    pytestmark = pytest.mark.skip(reason="Linux only")
