"""The daemon loads what it runs, not the command line's faces: no terminal UI (rich and the
pygments it brings), no template engine (the report's Jinja2) nor the report itself, no
demo, man page or release tooling. Each of them costs memory on the gateway for as long as the agent runs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from agent.sim.modbus_device import SimulatedModbusDevice
from tests.agentproc import Agent, write_config
from tests.conftest import PYTHON, ROOT, tcp_terminal

# `edge-agent run` exactly as the service starts it (agent.cli.main), then the modules it had
# imported by the time it stopped: listed where `run` ends the process (`_end_now`).
RUN_THEN_LIST_MODULES = """
import json, sys
import agent.cli

end_now = agent.cli._end_now

def list_modules_then_end(code):
    print(json.dumps(sorted(sys.modules)))
    end_now(code)

agent.cli._end_now = list_modules_then_end
sys.exit(agent.cli.main(sys.argv[1:]))
"""
NEVER_IN_THE_DAEMON = (
    "rich",
    "pygments",
    "jinja2",
    "agent.demo",
    "agent.manpage",
    "agent.update.release",
    "agent.checks.report",
)


async def test_a_running_agent_never_imports_the_command_lines_faces(
    tmp_path: Path, device: tuple[SimulatedModbusDevice, int]
) -> None:
    _, port = device
    config = tmp_path / "config.yaml"
    write_config(config, tmp_path / "state", [tcp_terminal(port, [{"name": "a", "address": 0}])])
    process = await asyncio.create_subprocess_exec(
        PYTHON, "-c", RUN_THEN_LIST_MODULES, "run", "--config", str(config),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    agent = Agent(process, tmp_path / "state")
    assert process.stdout is not None
    listed = asyncio.create_task(process.stdout.read())
    try:
        await agent.wait_for("a poll", lambda: agent.readings(), timeout=30)
        # What the CLI asks of a running agent is served by the daemon: its status, a round of
        # checks (each answered in JSON, rendered by the CLI).
        for command in (["status", "--json"], ["check", "--json"]):
            asked = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "agent", *command, "--config", str(config),
                cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(asked.communicate(), 60)
            assert asked.returncode in (0, 1), command
            assert json.loads(out)["source"] == "agent", command  # the daemon answered
    finally:
        assert await agent.stop() == 0
    modules = json.loads(await listed)
    assert "agent.daemon" in modules and "structlog" in modules  # the list is the daemon's
    faces = [m for m in modules for n in NEVER_IN_THE_DAEMON if m == n or m.startswith(n + ".")]
    assert faces == []
