"""`edge-agent run` as a real process: readings into the JSON-lines sink, reload, stop."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

from agent.sim.modbus_device import SimulatedModbusDevice
from tests.agentproc import write_config
from tests.conftest import PYTHON, ROOT, tcp_terminal

Device = tuple[SimulatedModbusDevice, int]


async def test_readings_reach_the_jsonl_sink_and_sigterm_stops_within_5s(
    tmp_path: Path, device: Device, agent_factory: Any
) -> None:
    sim, port = device
    sim.units[1].set_number("holding", 0, 12.5, "float32")
    config = tmp_path / "config.yaml"
    write_config(
        config,
        tmp_path / "state",
        [
            tcp_terminal(
                port,
                [{"name": "level", "address": 0, "type": "float32", "unit": "m"}],
                period="200ms",
            ),
        ],
    )
    agent = await agent_factory(config)
    await agent.wait_for("readings", lambda: len(agent.readings()) >= 3)
    first = agent.readings()[0]
    assert first["terminal"] == "plc" and first["point"] == "level"
    assert first["value"] == 12.5 and first["unit"] == "m" and first["quality"] == "good"
    assert first["source"] == "holding:0" and first["observed_at"].endswith("Z")
    started = time.monotonic()
    assert await agent.stop() == 0
    assert time.monotonic() - started < 5
    assert agent.events("agent stopped")


async def test_sigterm_stops_promptly_even_while_a_terminal_hangs(
    tmp_path: Path, device: Device, agent_factory: Any
) -> None:
    sim, port = device
    sim.delay = 30.0  # every request hangs far beyond the stop deadline
    config = tmp_path / "config.yaml"
    write_config(
        config,
        tmp_path / "state",
        [
            tcp_terminal(port, [{"name": "a", "address": 0}], period="100ms", timeout="20s"),
        ],
    )
    agent = await agent_factory(config)
    await agent.wait_for("start", lambda: agent.events("agent started"))
    await asyncio.sleep(0.5)  # a request is now in flight
    started = time.monotonic()
    assert await agent.stop() == 0
    assert time.monotonic() - started < 5


async def test_sighup_reloads_terminals_and_refuses_a_broken_config(
    tmp_path: Path, device: Device, agent_factory: Any
) -> None:
    _sim, port = device
    config = tmp_path / "config.yaml"
    one = tcp_terminal(port, [{"name": "a", "address": 0}], name="first", period="200ms")
    write_config(config, tmp_path / "state", [one])
    agent = await agent_factory(config)
    await agent.wait_for("first readings", lambda: agent.readings())

    two = tcp_terminal(port, [{"name": "b", "address": 1}], name="second", period="200ms")
    write_config(config, tmp_path / "state", [one, two])
    agent.process.send_signal(signal.SIGHUP)
    await agent.wait_for(
        "second terminal", lambda: any(r["terminal"] == "second" for r in agent.readings())
    )
    assert agent.process.returncode is None

    broken = dict(two, points=[{"name": "b", "address": 1, "type": "floot"}])
    write_config(config, tmp_path / "state", [one, broken])
    agent.process.send_signal(signal.SIGHUP)
    await agent.wait_for(
        "refusal", lambda: agent.events("new config refused; keeping the running one")
    )
    [refused] = agent.events("new config refused; keeping the running one")
    assert any("terminals[1].points[0].type: unknown type 'floot'" in e for e in refused["errors"])
    # The running config is kept: both terminals keep producing readings.
    count = len(agent.readings())
    await agent.wait_for("more readings", lambda: len(agent.readings()) >= count + 4)
    recent = {r["terminal"] for r in agent.readings()[count:]}
    assert recent == {"first", "second"}
    assert await agent.stop() == 0


async def test_a_changed_config_file_is_reloaded_without_a_signal(
    tmp_path: Path, device: Device, agent_factory: Any
) -> None:
    _sim, port = device
    config = tmp_path / "config.yaml"
    write_config(
        config,
        tmp_path / "state",
        [
            tcp_terminal(port, [{"name": "a", "address": 0}], name="old", period="200ms"),
        ],
    )
    agent = await agent_factory(config)
    await agent.wait_for("first readings", lambda: agent.readings())
    write_config(
        config,
        tmp_path / "state",
        [
            tcp_terminal(port, [{"name": "a", "address": 0}], name="new", period="200ms"),
        ],
    )
    await agent.wait_for("reload", lambda: agent.events("config reloaded"))
    count = len(agent.readings())
    await agent.wait_for("new readings", lambda: len(agent.readings()) >= count + 3)
    assert {r["terminal"] for r in agent.readings()[count + 1 :]} == {"new"}
    assert await agent.stop() == 0


async def test_run_with_a_broken_config_exits_2_with_the_errors(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("gateway: {id: gw}\nterminals: [{name: x, protocol: modbus-tcp}]\n")
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "agent",
        "run",
        "--config",
        str(config),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 2
    lines = err.decode().splitlines()
    assert f"{config}: terminals[0].host: required key is missing" in lines
    assert f"{config}: terminals[0].points: required key is missing" in lines


async def test_reading_the_config_file_does_not_start_a_reload(
    tmp_path: Path, device: Device, agent_factory: Any
) -> None:
    """The config check reads the file; a reload must follow only a change, never a read."""
    _sim, port = device
    config = tmp_path / "config.yaml"
    write_config(
        config,
        tmp_path / "state",
        [
            tcp_terminal(port, [{"name": "a", "address": 0}], period="200ms"),
        ],
        log={"level": "debug", "format": "json"},
    )
    agent = await agent_factory(config)
    await agent.wait_for("readings", lambda: agent.readings())
    for _ in range(5):
        config.read_text()
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    assert agent.events("config reload requested") == []
    config.write_text(config.read_text() + "\n# a comment\n")  # a write is a change
    await agent.wait_for("reload", lambda: agent.events("config reload requested"))
    assert await agent.stop() == 0


async def test_an_agent_that_cannot_start_says_why_in_one_line(tmp_path: Path) -> None:
    import socket as sockets

    with sockets.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.yaml"
        write_config(config, tmp_path / "state", [], sl651={"listen": [f"127.0.0.1:{port}"]})
        process = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "agent", "run", "--config", str(config),
            cwd=ROOT, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith(f"edge-agent: cannot start: SL651 cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in err.decode()
