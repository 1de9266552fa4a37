"""Hostile Modbus terminals: every malformed reply is named for what is wrong with it, costs at
most its own request, and the next honest reply is read fine (issue 13).

The agent runs as a real process (`edge-agent poll`, `edge-agent run`) against hostile devices
served from this test: a TCP server and a device on a pty pair that answer each request as
their script says (agent/sim/hostile_modbus.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import yaml

from agent.sim.hostile_modbus import Answer, HostileRtuDevice, HostileTcpDevice
from agent.sim.serial_line import VirtualSerialLine
from tests.agentproc import Agent, short_socket_path, write_config
from tests.conftest import PYTHON, ROOT

TIMEOUT = 4.0  # per request: a hostile reply that waited it out would show in the run time

TCP_REASONS = {
    Answer.GARBAGE: "unparseable reply: not a Modbus TCP header",
    Answer.WRONG_TRANSACTION: "wrong transaction id: the reply carries",
    Answer.HUGE_LENGTH: "bad length: MBAP length 65535",
    Answer.WRONG_BYTE_COUNT: "wrong byte count: 4 bytes of data for 1 register (expected 2)",
    Answer.WRONG_UNIT: "wrong unit id: unit 2 answered a request to unit 1",
    Answer.WRONG_FUNCTION: "wrong function code: 0x10 in reply to a request with 0x03",
}
RTU_REASONS = {
    Answer.BAD_CRC: "bad CRC: frame 01 03 02 00 00",
    Answer.GARBAGE: "unparseable reply: 64 bytes that are not a Modbus RTU frame",
    Answer.WRONG_UNIT: "wrong unit id: unit 2 answered a request to unit 1",
    Answer.WRONG_BYTE_COUNT: "wrong byte count: 4 bytes of data for 1 register (expected 2)",
}


def interleaved(answers: list[Answer]) -> list[Answer]:
    """Each hostile answer followed by an honest one."""
    return [a for answer in answers for a in (answer, Answer.HONEST)]


def points(count: int) -> list[dict[str, Any]]:
    # 10 registers apart with max_gap 0: one request per point, in this order
    return [{"name": f"p{i}", "address": 10 * i} for i in range(count)]


async def edge_agent_poll(config: Path, terminal: str, *extra: str) -> tuple[int, str, float]:
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "agent",
        "poll",
        terminal,
        "--config",
        str(config),
        *extra,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None, err
    return process.returncode, out.decode(), time.monotonic() - started


def write_poll_config(tmp_path: Path, terminal: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "gateway": {"id": "gw-test"},
                "state_dir": str(tmp_path / "state"),
                "terminals": [terminal],
            }
        )
    )
    return path


def check_poll(out: str, script: list[Answer], reasons: dict[Answer, str]) -> None:
    readings = json.loads(out)["readings"]
    assert [r["point"] for r in readings] == [f"p{i}" for i in range(len(script))]
    for r, answer in zip(readings, script, strict=True):
        if answer is Answer.HONEST:
            assert r["quality"] == "good" and r["error"] is None, r
            assert r["value"] == r["address"]  # the honest device holds its address
        else:
            assert r["quality"] == "bad" and r["value"] is None, r
            assert r["error"].startswith(reasons[answer]), (answer, r["error"])


async def test_edge_agent_poll_names_each_hostile_tcp_reply_and_reads_the_next_honest_one(
    tmp_path: Path,
) -> None:
    script = interleaved(list(TCP_REASONS))
    hostile = HostileTcpDevice(script)
    port = await hostile.serve()
    terminal = {
        "name": "hostile",
        "protocol": "modbus-tcp",
        "host": "127.0.0.1",
        "port": port,
        "unit": 1,
        "timeout": f"{TIMEOUT:g}s",
        "retries": 0,
        "max_gap": 0,
        "points": points(len(script)),
    }
    config = write_poll_config(tmp_path, terminal)
    try:
        code, out, elapsed = await edge_agent_poll(config, "hostile", "--json")
        hostile.then(Answer.HUGE_LENGTH)
        text_code, text, _ = await edge_agent_poll(config, "hostile")
    finally:
        await hostile.stop()
    assert code == 1  # a finding: some points unreadable
    check_poll(out, script, TCP_REASONS)
    # Six hostile replies, each named as it came: together less than one request's timeout
    # (waiting each out, as before, took 6 x 4 s), process start included.
    assert elapsed < TIMEOUT
    # The connection that carried a hostile reply is dropped, the honest ones kept: 1 + 6.
    assert hostile.connections == 1 + len(TCP_REASONS) + 2
    assert text_code == 1
    assert "error p0: bad length: MBAP length 65535, a reply has 3 to 254" in text


async def test_edge_agent_poll_names_each_hostile_rtu_frame_and_reads_the_next_honest_one(
    tmp_path: Path,
) -> None:
    line = VirtualSerialLine(baudrate=9600).open()  # bytes take their time, as on a real line
    script = interleaved(list(RTU_REASONS))
    hostile = HostileRtuDevice(line.b_path, script)
    hostile.start()
    terminal = {
        "name": "hostile",
        "protocol": "modbus-rtu",
        "device": line.a_path,
        "baudrate": 9600,
        "unit": 1,
        "timeout": f"{TIMEOUT:g}s",
        "retries": 0,
        "max_gap": 0,
        "points": points(len(script)),
    }
    config = write_poll_config(tmp_path, terminal)
    try:
        code, out, elapsed = await edge_agent_poll(config, "hostile", "--json")
    finally:
        hostile.stop()
        line.close()
    assert code == 1
    check_poll(out, script, RTU_REASONS)
    assert elapsed < TIMEOUT  # 4 hostile frames: none waited out its timeout
    assert hostile.requests == len(script)


async def test_a_running_agent_reports_the_hostile_reply_in_readings_and_status_then_recovers(
    tmp_path: Path, agent_factory: Any
) -> None:
    hostile = HostileTcpDevice([Answer.WRONG_TRANSACTION] * 10)
    port = await hostile.serve()
    config = agent_config(tmp_path, port, period="100ms", backoff_max="200ms")
    agent: Agent = await agent_factory(config)
    try:
        await agent.wait_for(
            "an honest reply after the hostile ones",
            lambda: any(r.get("quality") == "good" for r in agent.readings()),
            timeout=15,
        )
        bad = [r for r in agent.readings() if r.get("quality") == "bad"]
        good = [r for r in agent.readings() if r.get("quality") == "good"]
        status = await _status(config)
    finally:
        await hostile.stop()
        await agent.stop()
    assert len(bad) == 10  # one reading per hostile reply, none lost or doubled
    assert all(r["error"].startswith("wrong transaction id: the reply carries") for r in bad)
    assert good[0]["value"] == 5
    [plc] = status["terminals"]
    assert plc["state"] == "ok"
    # The flood of hostile replies is logged once, when it began, and once when it ended.
    assert len(agent.events("terminal not answering")) == 1
    assert agent.events("terminal not answering")[0]["reason"].startswith("wrong transaction id")
    assert len(agent.events("terminal answering again")) == 1


async def test_status_shows_the_hostile_reply_as_the_terminals_last_error(
    tmp_path: Path, agent_factory: Any
) -> None:
    hostile = HostileTcpDevice([Answer.HUGE_LENGTH] * 1000)
    port = await hostile.serve()
    config = agent_config(tmp_path, port, period="200ms")
    agent: Agent = await agent_factory(config)
    try:
        await agent.wait_for("a hostile reply", lambda: len(agent.readings()) >= 1, timeout=10)
        status = await _status(config)
    finally:
        await hostile.stop()
        await agent.stop()
    [plc] = status["terminals"]
    assert plc["last_error"] == "bad length: MBAP length 65535, a reply has 3 to 254"


def agent_config(tmp_path: Path, port: int, **terminal: str) -> Path:
    """A running agent's config: one Modbus TCP terminal `plc` on the hostile device's port."""
    config = tmp_path / "config.yaml"
    plc = {
        "name": "plc", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": port, "unit": 1,
        "timeout": "2s", "retries": 0, "points": [{"name": "level", "address": 5}], **terminal,
    }  # fmt: skip
    write_config(config, tmp_path / "state", [plc])
    return config


async def _status(config: Path) -> dict[str, Any]:
    socket = short_socket_path(config)
    deadline = time.monotonic() + 10
    while not Path(socket).exists():
        assert time.monotonic() < deadline, "no control socket"
        await asyncio.sleep(0.05)
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "agent",
        "status",
        "--json",
        "--config",
        str(config),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert out, err
    status: dict[str, Any] = json.loads(out)
    return status
