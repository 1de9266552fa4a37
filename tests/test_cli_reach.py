"""The troubleshooting commands when they are needed most: with the config file on disk broken
(an engineer mid-edit), `status`, `check`, `outbox` and `report` still ask the running agent
(`--socket`) and only warn; with no agent either, they say why in one line. And `report` has the
agent write its buffered history first, so that it covers the period up to now."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import cli
from agent.checks.history import History, TerminalPlan
from agent.config import ConfigError, ControlConfig, load_config
from agent.control import ControlServer, request
from agent.model import Quality, Reading
from tests.agentproc import Agent, short_socket_path, write_config
from tests.conftest import tcp_terminal
from tests.test_status import Device, edge_agent, site_config

DEFAULT_SOCKET = ControlConfig().socket
BROKEN_YAML = "gateway: {id: gw-test\nterminals: [\n"  # saved halfway through an edit


def config_errors(path: Path) -> list[str]:
    """The file's errors as `edge-agent config validate` prints them."""
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.lines()


def warnings(path: Path, socket: str) -> list[str]:
    return [
        f"edge-agent: warning: {line} (using the running agent at {socket})"
        for line in config_errors(path)
    ]


def break_port(path: Path) -> None:
    """A schema error: the YAML parses, the first terminal's port does not validate."""
    data = yaml.safe_load(path.read_text())
    data["terminals"][0]["port"] = "not-a-port"
    path.write_text(yaml.safe_dump(data))


async def refused(agent: Agent, count: int = 1) -> None:
    """The agent saw the edit and kept its running config (it watches the file)."""
    await agent.wait_for(
        "the agent refusing the broken config",
        lambda: len(agent.events("new config refused; keeping the running one")) >= count,
    )


def missing_socket() -> str:
    return f"/tmp/ea-missing-{uuid.uuid4().hex[:12]}.sock"


def plc_row(report: str) -> tuple[float, int, int]:
    """The plc terminal's availability and polls answered / expected in a Markdown report."""
    row = re.search(r"^\| plc \| ([\d.]+)% \| (\d+) / (\d+) \|", report, re.MULTILINE)
    assert row is not None, report
    return float(row[1]), int(row[2]), int(row[3])


# -- which socket ------------------------------------------------------------------------------


def test_the_socket_is_the_option_then_the_configs_then_the_default(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    write_config(good, tmp_path / "state", [tcp_terminal(1502, [{"name": "a", "address": 0}])])
    target = cli.reach(good, None)
    assert target.config is not None and target.errors == []
    assert target.socket == Path(short_socket_path(good))
    assert cli.reach(good, Path("/tmp/elsewhere.sock")).socket == Path("/tmp/elsewhere.sock")

    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN_YAML)
    target = cli.reach(bad, None)
    assert target.config is None
    assert target.errors == config_errors(bad)
    assert target.socket == DEFAULT_SOCKET == Path("/run/edge-agent/control.sock")
    assert cli.reach(bad, Path("/tmp/elsewhere.sock")).socket == Path("/tmp/elsewhere.sock")

    unreadable = cli.reach(tmp_path, None)  # a folder where the file should be
    assert unreadable.config is None
    assert unreadable.errors == [f"{tmp_path}: is a folder, not a file"]


# -- a running agent, a broken config ----------------------------------------------------------


async def test_status_check_and_outbox_ask_the_running_agent_and_warn_about_the_config(
    tmp_path: Path, device: Device, agent_factory: Any
) -> None:
    _sim, port = device
    config = site_config(tmp_path, port)  # "live" answers, "dead" does not
    socket = short_socket_path(config)
    agent: Agent = await agent_factory(config)
    await agent.wait_for("socket", Path(socket).exists)
    await agent.wait_for("readings", lambda: len(agent.readings()) >= 5)
    await asyncio.sleep(1.0)  # a round of checks has seen the dead terminal
    # With a valid config, --socket wins over the config's socket: nothing answers there.
    code, out, _ = await edge_agent(
        "status", "--json", "--config", str(config), "--socket", missing_socket()
    )
    assert code == 3 and json.loads(out)["running"] is False

    config.write_text(BROKEN_YAML)
    await refused(agent)
    expected_warnings = warnings(config, socket)
    assert len(expected_warnings) == 1 and "not valid YAML" in expected_warnings[0]

    code, out, err = await edge_agent(
        "status", "--json", "--config", str(config), "--socket", socket
    )
    assert code == 1, err  # failing (the dead terminal), as with a valid config
    status = json.loads(out)
    assert status["running"] is True
    assert status["agent"]["pid"] == agent.process.pid
    assert {t["name"]: t["state"] for t in status["terminals"]} == {"live": "ok", "dead": "failing"}
    assert err.splitlines() == expected_warnings

    code, out, err = await edge_agent("status", "--config", str(config), "--socket", socket)
    assert code == 1, err
    assert "gateway gw-test · FAILING" in out.splitlines()[0]
    assert err.splitlines() == expected_warnings

    code, out, err = await edge_agent(
        "check", "--json", "--config", str(config), "--socket", socket
    )
    assert code == 1, err  # the dead terminal fails its checks
    failing = [r["id"] for r in json.loads(out)["checks"] if r["status"] == "fail"]
    assert any(check.endswith(":dead") for check in failing), failing
    assert not any(check.endswith(":live") for check in failing), failing
    assert err.splitlines() == expected_warnings

    code, out, err = await edge_agent(
        "outbox", "peek", "--limit", "2", "--json", "--config", str(config), "--socket", socket
    )
    assert code == 0, err
    answer = json.loads(out)
    assert answer["stats"]["messages"]["telemetry"] > 0
    assert [m["gw"] for m in answer["messages"]] == ["gw-test", "gw-test"]
    assert err.splitlines() == expected_warnings

    assert agent.process.returncode is None  # the broken file did not stop it
    assert await agent.stop() == 0


async def test_a_report_right_after_start_covers_the_running_terminal(
    tmp_path: Path, device: Device, agent_factory: Any
) -> None:
    _sim, port = device
    config = tmp_path / "config.yaml"
    # The history's flush_interval stays at its default (5 min): the report comes long before.
    write_config(
        config,
        tmp_path / "state",
        [tcp_terminal(port, [{"name": "level", "address": 0}], period="200ms")],
    )
    socket = short_socket_path(config)
    agent: Agent = await agent_factory(config)
    await agent.wait_for("socket", Path(socket).exists)
    await agent.wait_for("readings", lambda: len(agent.readings()) >= 5)
    code, out, err = await edge_agent(
        "report", "--since", "1h", "--format", "md", "--config", str(config)
    )
    assert code == 0, err
    assert err == ""
    availability, answered, expected = plc_row(out)
    assert 5 <= answered <= expected
    assert availability > 50
    assert "**plc.level**" in out  # its trend

    # With the config broken, the same through --socket, and its error as a warning.
    break_port(config)
    await refused(agent)
    await agent.wait_for("more readings", lambda: len(agent.readings()) >= answered + 2)
    code, out, err = await edge_agent(
        "report", "--since", "1h", "--format", "md", "--config", str(config), "--socket", socket
    )
    assert code == 0, err
    assert err.splitlines() == warnings(config, socket)
    assert "terminals[0].port" in err
    availability, answered_later, _ = plc_row(out)
    assert answered_later > answered  # flushed again: up to now
    assert availability > 50

    # The control command itself: where the history is, as an absolute path.
    assert await request(Path(socket), "history-flush") == {
        "path": str(tmp_path / "state" / "history.db")
    }
    assert await agent.stop() == 0


# -- no agent, a broken config -----------------------------------------------------------------


async def test_with_no_agent_and_a_broken_config_each_command_says_why(tmp_path: Path) -> None:
    if DEFAULT_SOCKET.exists():
        pytest.skip(f"an agent may be running on this machine ({DEFAULT_SOCKET})")
    config = tmp_path / "config.yaml"
    config.write_text(BROKEN_YAML)
    errors = config_errors(config)
    for socket in (None, missing_socket()):
        where = socket or str(DEFAULT_SOCKET)
        option = ["--socket", socket] if socket else []
        for command in (["check"], ["outbox", "peek"], ["report", "--since", "1h"]):
            code, out, err = await edge_agent(*command, "--config", str(config), *option)
            assert code == 2, (command, err)
            assert out == ""
            assert err.splitlines() == [
                *errors,
                f"edge-agent: no agent answers on {where}, and {config} is invalid (above): "
                "fix it, or give the running agent's socket with --socket",
            ]
        code, out, err = await edge_agent("status", "--config", str(config), *option)
        assert code == 3, err
        assert out.splitlines()[0] == "edge-agent is not running."
        assert f"config {config} is invalid (1 error)" in " ".join(out.split())
        assert err.splitlines() == [
            *errors,
            f"edge-agent: not running (nothing answers on {where}), and {config} is invalid "
            "(above)",
        ]
    code, out, _ = await edge_agent("status", "--json", "--config", str(config))
    assert code == 3
    status = json.loads(out)
    assert (status["running"], status["config_errors"]) == (False, errors)


async def test_a_socket_path_no_unix_socket_can_have_is_bad_input(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(BROKEN_YAML)
    code, _, err = await edge_agent(
        "check", "--config", str(config), "--socket", "/tmp/" + "x" * 120
    )
    assert code == 2
    assert err.splitlines()[-1].startswith("edge-agent: cannot use /tmp/xxx")
    assert "Traceback" not in err


# -- an agent without history-flush ------------------------------------------------------------


@pytest.fixture
def older_agent(tmp_path: Path) -> Iterator[Path]:
    """A control socket that answers `status` but knows no `history-flush` (an agent of an
    older version, still running after the package was upgraded)."""
    socket = Path(missing_socket())
    ready = threading.Event()
    stop: list[asyncio.Event] = []

    async def serve() -> None:
        async def status(args: Any) -> dict[str, Any]:
            return {"running": True}

        server = ControlServer(socket, {"status": status})
        await server.start()
        stop.append(asyncio.Event())
        ready.set()
        await stop[0].wait()
        await server.stop()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    assert ready.wait(5)
    yield socket
    loop.call_soon_threadsafe(stop[0].set)
    thread.join(5)
    loop.close()


def test_report_reads_the_file_when_the_agent_cannot_flush(
    tmp_path: Path, older_agent: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, tmp_path / "state", [tcp_terminal(1502, [{"name": "a", "address": 0}])])
    now = datetime.now(UTC)
    with History(tmp_path / "state" / "history.db") as history:
        history.set_terminals({"plc": TerminalPlan(60, 1)}, now - timedelta(minutes=30))
        for minute in range(30):
            at = now - timedelta(minutes=30 - minute)
            history.observe([Reading("plc", "a", 1.0, "m", Quality.GOOD, at, "holding:0")])
        history.flush()
    argv = ["report", "--since", "1h", "--format", "md", "--config", str(config)]
    assert cli.main([*argv, "--socket", str(older_agent)]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith(
        "edge-agent: warning: the running agent did not write its history now (unknown command "
        "'history-flush'"
    )
    assert plc_row(captured.out)[1] >= 29
    # With the config broken too, there is nothing to read: bad input, and why.
    config.write_text(BROKEN_YAML)
    assert cli.main([*argv, "--socket", str(older_agent)]) == 2
    reason = capsys.readouterr().err.splitlines()[-1]
    assert reason.startswith("edge-agent: unknown command 'history-flush'")
    assert reason.endswith(
        f"and {config} is invalid (above): fix it, or give the running agent's socket with --socket"
    )
