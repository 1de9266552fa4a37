"""`edge-agent sl651 listen`: what stations send, decoded live, with no agent configured — the
agent's simulated station over TCP and over a real pty pair. Without `--confirm` nothing is ever
written back; with it, each report gets the central station's confirmation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent import cli
from agent.protocols.sl651.body import decode_body
from agent.protocols.sl651.frame import Ctrl, parse_frame
from agent.sim.serial_line import VirtualSerialLine
from agent.sim.sl651_station import SimulatedStation, StationSchedule
from tests.conftest import PYTHON, ROOT

# Reports at once on connecting (timed 32H and hourly 34H), then nothing for a minute.
SCHEDULE = StationSchedule(keepalive=60, timed=60, hourly=60)


class Listening:
    """The command running, its JSON lines as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []

    async def next(self, kind: str, timeout: float = 10) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.process.stdout.readline()
                assert line, f"the command ended; events so far: {self.events}"
                event = json.loads(line)
                self.events.append(event)
                if event["type"] == kind:
                    return event

    async def interrupt(self) -> int:
        """Ctrl-C, as an engineer ends it."""
        self.process.send_signal(signal.SIGINT)
        return await asyncio.wait_for(self.process.wait(), 10)


@contextlib.asynccontextmanager
async def listen(*args: str) -> AsyncIterator[Listening]:
    process = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "agent", "sl651", "listen", "--json", *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield Listening(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def station_at(port: int) -> AsyncIterator[SimulatedStation]:
    station = SimulatedStation("0012345678", schedule=SCHEDULE)
    task = asyncio.create_task(station.run("127.0.0.1", port))
    try:
        yield station
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def tcp_port(listening: Listening) -> int:
    where = (await listening.next("listening"))["tcp"]
    return int(where[0].rsplit(":", 1)[1])


async def test_frames_appear_decoded_and_nothing_is_written_back() -> None:
    async with listen("--port", "0", "--host", "127.0.0.1") as listening:
        port = await tcp_port(listening)
        async with station_at(port) as station:
            first = await listening.next("frame")
            second = await listening.next("frame")
            await asyncio.sleep(0.5)  # time enough for an answer, were one sent
            assert station.received == []
        assert await listening.interrupt() == 0
    frames = {e["frame"]["function"]: e for e in (first, second)}
    assert set(frames) == {"0x32", "0x34"}
    timed = frames["0x32"]
    assert timed["schema"] == 1 and timed["peer"].startswith("127.0.0.1:")
    assert timed["answered"] == []
    assert timed["frame"]["station"] == "0012345678"
    names = {e["name"]: e["value"] for e in timed["frame"]["elements"]}
    assert names["PT"] == 123.4 and names["VT"] == 12.55
    hourly = {e["name"]: e for e in frames["0x34"]["frame"]["elements"]}
    assert len(hourly["DRZ1"]["value"]) == 12  # a block of 5-minute levels, as decode shows


async def test_with_confirm_the_station_gets_the_central_stations_confirmation() -> None:
    async with listen("--port", "0", "--host", "127.0.0.1", "--confirm") as listening:
        port = await tcp_port(listening)
        async with station_at(port) as station:
            heard = [await listening.next("frame"), await listening.next("frame")]
            async with asyncio.timeout(5):
                while len(station.received) < 2:
                    await asyncio.sleep(0.05)
        assert await listening.interrupt() == 0
    sent = {int(e["frame"]["function"], 16): e for e in heard}
    for confirm in station.received:
        assert confirm.direction == "down" and confirm.end == Ctrl.EOT
        report = sent[confirm.function]
        assert decode_body(confirm).serial == report["frame"]["serial"]  # its serial echoed
        assert report["answered"] == [confirm.raw.hex().upper()]
    assert sorted(sent) == sorted(c.function for c in station.received) == [0x32, 0x34]


async def test_bytes_that_are_no_frame_are_said_with_the_reason() -> None:
    station = SimulatedStation("0012345678")
    damaged = bytearray(station.timed_report())
    damaged[-1] ^= 0xFF  # the CRC no longer matches
    async with listen("--port", "0", "--host", "127.0.0.1") as listening:
        port = await tcp_port(listening)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(bytes(damaged) + station.keepalive())
        await writer.drain()
        rejected = await listening.next("rejected")
        frame = await listening.next("frame")  # the good frame after it is still found
        writer.close()
        assert await listening.interrupt() == 0
    assert rejected["reason"] == "bad_crc"
    assert frame["frame"]["function"] == "0x2F"


async def test_a_serial_port_is_read_and_confirmed_on_the_same_line(
    serial_line: VirtualSerialLine,
) -> None:
    station = SimulatedStation("0012345679")
    fd = os.open(serial_line.b_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        async with listen("--device", serial_line.a_path, "--confirm") as listening:
            await listening.next("listening")
            report = station.timed_report()
            os.write(fd, report)
            heard = await listening.next("frame")
            received = b""
            async with asyncio.timeout(5):
                while not received:
                    with contextlib.suppress(BlockingIOError):
                        received = os.read(fd, 4096)
                    await asyncio.sleep(0.02)
            assert await listening.interrupt() == 0
    finally:
        os.close(fd)
    assert heard["peer"] == serial_line.a_path
    assert heard["frame"]["station"] == "0012345679"
    confirm = parse_frame(received)
    assert (confirm.function, confirm.direction) == (0x32, "down")
    assert heard["answered"] == [received.hex().upper()]


async def test_the_screen_shows_each_frame_as_decode_does() -> None:
    process = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "agent", "sl651", "listen", "--port", "0", "--host", "127.0.0.1",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout = process.stdout
    assert stdout is not None
    seen: list[str] = []

    async def until(text: str) -> str:
        async with asyncio.timeout(10):
            while True:
                line = (await stdout.readline()).decode()
                assert line, seen
                seen.append(line)
                if text in line:
                    return line

    try:
        listening = await until("listening on 127.0.0.1:")
        assert "answering nothing" in listening
        port = int(listening.split("127.0.0.1:", 1)[1].split(",", 1)[0])
        async with station_at(port):
            await until("0x34 hourly report")
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 10) == 0
        screen = "".join(seen) + (await stdout.read()).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert "0x32 timed report · up · station 0012345678" in screen
    assert "DRZ1" in screen  # the hourly block of levels, as a row


def test_a_port_in_use_or_a_missing_device_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["sl651", "listen", "--host", "127.0.0.1", "--port", str(port)]) == 2
    assert capsys.readouterr().err == (
        f"edge-agent: sl651 listen: cannot listen on 127.0.0.1:{port}: address already in use\n"
    )
    missing = tmp_path / "ttyUSB9"
    assert cli.main(["sl651", "listen", "--device", str(missing)]) == 2
    assert capsys.readouterr().err == (
        f"edge-agent: sl651 listen: cannot open {missing}: no such file or directory\n"
    )
