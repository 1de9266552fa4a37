"""Shared fixtures: real peers (a pymodbus server on loopback, a real pty pair), no mocks."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from agent import logs, sdnotify
from agent.config import Config, parse_config
from agent.model import Reading
from agent.sim.modbus_device import RegisterMap, SimulatedModbusDevice
from agent.sim.serial_line import VirtualSerialLine
from tests import releases
from tests.agentproc import Agent
from tests.broker import Mosquitto

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


class ListSink:
    """Collects every batch a poller submits."""

    def __init__(self) -> None:
        self.batches: list[list[Reading]] = []

    def submit(self, readings: Sequence[Reading]) -> None:
        self.batches.append(list(readings))

    @property
    def readings(self) -> list[Reading]:
        return [r for b in self.batches for r in b]


def make_config(terminals: list[dict[str, Any]], **extra: Any) -> Config:
    data = {"gateway": {"id": "gw-test"}, "state_dir": "/tmp/unused", "terminals": terminals}
    data.update(extra)
    return parse_config(yaml.safe_dump(data), "test.yaml")


def tcp_terminal(port: int, points: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    terminal = {
        "name": "plc",
        "protocol": "modbus-tcp",
        "host": "127.0.0.1",
        "port": port,
        "unit": 1,
        "period": "1s",
        "timeout": "500ms",
        "retries": 0,
        "points": points,
    }
    terminal.update(extra)
    return terminal


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """A test that runs a command in-process (`cli.main`) configures logging as the command
    does: its level (`poll` logs errors only) and the stderr of that moment (pytest's capture,
    closed when the test ends). Both are put back after each test, so that the next one sees
    every event it logs and writes to a stream that is open."""
    config = structlog.get_config()
    level = (logs._LEVEL.value, logs._LEVEL.configured)
    yield
    structlog.configure(**config)
    logs._LEVEL.value, logs._LEVEL.configured = level


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This project's wheel and every runtime dependency's: what the .deb ships."""
    return releases.wheelhouse(tmp_path_factory.mktemp("wheelhouse"))


@pytest.fixture(scope="session")
def make_wheelhouse(
    wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Path]:
    """`make(version, entry=...)`: the session's wheelhouse with the agent wheel of another
    version (or a broken entry point), each built once per session."""
    made: dict[tuple[str, str], Path] = {}

    def make(version: str, entry: str = releases.ENTRY) -> Path:
        if (version, entry) not in made:
            work = tmp_path_factory.mktemp(f"agent-{version}")
            made[version, entry] = releases.agent_wheelhouse(wheelhouse, work, version, entry)
        return made[version, entry]

    return make


@pytest.fixture(autouse=True)
def _unclaimed_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon run in-process claims $NOTIFY_SOCKET for the process; each test starts fresh."""
    monkeypatch.setattr(sdnotify, "_claimed", None)


@pytest.fixture
async def device() -> AsyncIterator[tuple[SimulatedModbusDevice, int]]:
    """A simulated Modbus TCP device with unit 1 on a free loopback port."""
    sim = SimulatedModbusDevice({1: RegisterMap()})
    port = await sim.serve_tcp("127.0.0.1", 0)
    yield sim, port
    await sim.stop()


@pytest.fixture
async def serial_line() -> AsyncIterator[VirtualSerialLine]:
    """Two real pseudo-terminals joined back to back (agent on a_path, device on b_path)."""
    line = VirtualSerialLine().open()
    yield line
    line.close()


@pytest.fixture
async def agent_factory(tmp_path: Path) -> AsyncIterator[Any]:
    """Starts `edge-agent run --config PATH` processes; kills any left at the end."""
    agents: list[Agent] = []

    async def start(config: Path, preexec_fn: Callable[[], None] | None = None) -> Agent:
        process = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "agent",
            "run",
            "--config",
            str(config),
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=preexec_fn,  # e.g. resource limits of the child
        )
        agent = Agent(process, tmp_path / "state")
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        if agent.process.returncode is None:
            agent.process.kill()
            await agent.process.wait()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The figures the container tests measured (exposure, .deb size, install and start times)."""
    container_tests = sys.modules.get("tests.container")
    figures = getattr(container_tests, "FIGURES", [])
    if figures:
        terminalreporter.section("the .deb under systemd (tests/test_container*.py)")
        for line in figures:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def container_image() -> Path:
    """The cached Debian 12 root file system for the container tests (tests/container.py)."""
    from tests import container

    return container.image()


@pytest.fixture(scope="session")
def container_deb() -> Path:
    """The .deb the container tests install (tests/container.py), built once per session."""
    from tests import container

    return container.deb()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto of the test's own on a free loopback port (a module may define its own)."""
    mosquitto = Mosquitto(tmp_path / "broker").start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
async def silent_terminal() -> AsyncIterator[int]:
    """A TCP port that accepts and never answers: a poll of it takes its whole timeout."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
