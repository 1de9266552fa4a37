"""sd_notify: READY=1 once the agent runs, STOPPING=1 on the way out, over a real datagram socket."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import pytest
import yaml

from agent.sdnotify import notify
from tests.conftest import PYTHON, ROOT


def test_notify_is_a_no_op_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


async def test_the_daemon_tells_systemd_when_it_is_ready_and_when_it_stops(tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"gateway": {"id": "gw"}, "state_dir": str(tmp_path)}))
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "agent",
        "run",
        "--config",
        str(config),
        cwd=ROOT,
        env={**os.environ, "NOTIFY_SOCKET": address},
        stderr=asyncio.subprocess.DEVNULL,
    )
    loop = asyncio.get_running_loop()
    try:
        before: list[str] = []
        while not before or not before[-1].startswith("READY=1"):
            before.append((await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)).decode())
        # Until READY only status lines (the watchdog keeps STATUS= current from the start).
        assert all(m.startswith("STATUS=") for m in before[:-1]), before
        process.send_signal(signal.SIGTERM)
        later: list[str] = []
        while "STOPPING=1" not in later:
            later.append((await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)).decode())
        # Between READY and STOPPING only status lines (the watchdog keeps STATUS= current).
        assert all(m.startswith("STATUS=") for m in later[:-1]), later
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        sock.close()
