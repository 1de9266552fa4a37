"""The systemd watchdog: pings over a real datagram socket only while every loop progresses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agent.watchdog import BeatSink, Progress, run_watchdog, status_line, watchdog_interval


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A real AF_UNIX datagram socket standing in for systemd's, named in $NOTIFY_SOCKET."""
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 100 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def drain(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages += sock.recv(4096).decode().splitlines()
        except BlockingIOError:
            return messages


@pytest.fixture
async def loops() -> AsyncIterator[tuple[Progress, dict[str, asyncio.Event]]]:
    """Two loops beating every 30 ms while their event is set."""
    progress = Progress()
    running = {name: asyncio.Event() for name in ("polling", "outbox")}

    async def loop(name: str) -> None:
        while True:
            await running[name].wait()
            progress.beat(name)
            await asyncio.sleep(0.03)

    for name, event in running.items():
        progress.register(name, allowance=0.3)
        event.set()
    tasks = [asyncio.create_task(loop(name)) for name in running]
    yield progress, running
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_pings_stop_while_a_loop_is_stalled_and_resume_when_it_moves(
    notify_socket: socket.socket, loops: tuple[Progress, dict[str, asyncio.Event]]
) -> None:
    progress, running = loops
    lines = iter(["terminals 2/2 ok · backlog 0 · uplink connected"] * 3)
    watchdog = asyncio.create_task(
        run_watchdog(
            progress, status=lambda: next(lines, "terminals 1/2 ok · backlog 9 · uplink down")
        )
    )
    try:
        await asyncio.sleep(0.55)
        first = drain(notify_socket)
        assert first.count("WATCHDOG=1") >= 3
        assert first[1] == "STATUS=terminals 2/2 ok · backlog 0 · uplink connected"
        assert "STATUS=terminals 1/2 ok · backlog 9 · uplink down" in first  # sent when it changed
        assert sum(line.startswith("STATUS=") for line in first) == 2  # not repeated unchanged

        running["outbox"].clear()  # the outbox loop gets stuck
        await asyncio.sleep(0.4)  # past its 0.3 s allowance
        assert not progress.healthy()
        assert progress.stalled() == ["outbox"]
        drain(notify_socket)
        await asyncio.sleep(0.5)
        assert "WATCHDOG=1" not in drain(notify_socket)

        running["outbox"].set()  # it moves again
        await asyncio.sleep(0.3)
        assert progress.healthy()
        assert "WATCHDOG=1" in drain(notify_socket)
    finally:
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog


async def test_the_watchdog_is_a_no_op_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    sent: list[tuple[str, ...]] = []

    def notify(*lines: str) -> bool:
        sent.append(lines)
        return True

    await asyncio.wait_for(run_watchdog(Progress(), notify, status=lambda: "x"), 1)
    assert sent == []
    assert watchdog_interval() is None


async def test_without_watchdog_usec_only_the_status_is_kept(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC")
    await asyncio.wait_for(run_watchdog(Progress()), 1)  # nothing to do: returns
    task = asyncio.create_task(run_watchdog(Progress(), interval=0.05, status=lambda: "ok"))
    await asyncio.sleep(0.2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert drain(notify_socket) == ["STATUS=ok"]


def test_the_interval_is_half_of_watchdog_usec_and_only_for_our_pid() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert watchdog_interval(env) == 15.0
    assert watchdog_interval({**env, "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({**env, "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({**env, "WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) is None


def test_a_loop_is_healthy_only_within_its_allowance() -> None:
    clock = Clock()
    progress = Progress(clock)
    progress.register("uplink", allowance=130)
    progress.register("polling", allowance=10)
    sink = BeatSink(progress, "polling")
    clock.now += 9
    sink.submit([])
    assert progress.healthy()
    clock.now += 11
    assert progress.stalled() == ["polling"]
    sink.submit([])
    assert progress.healthy()
    clock.now += 125
    assert progress.stalled() == ["polling", "uplink"]
    progress.unregister("uplink")
    progress.beat("polling")
    assert progress.healthy()
    with pytest.raises(ValueError, match="positive"):
        progress.register("x", 0)


def test_the_status_line_is_one_short_line() -> None:
    assert (
        status_line(3, 4, 120, True, 3700)
        == "terminals 3/4 ok · backlog 120 (oldest 1h01m) · uplink connected"
    )
    assert status_line(0, 0, None, None) == "terminals 0/0 ok · outbox closed · no uplink"
    assert status_line(1, 1, 0, False, 10) == "terminals 1/1 ok · backlog 0 · uplink down"
