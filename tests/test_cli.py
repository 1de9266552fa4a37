"""The command line as a field engineer uses it: `poll`, `demo`, `--version`, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from argparse import SUPPRESS
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from agent import __version__
from agent.checks.framework import CheckResult, Status
from agent.cli import build_parser, main
from agent.cli_parser import FINDINGS
from agent.render import checks_table
from agent.sim.modbus_device import SimulatedModbusDevice
from tests.conftest import PYTHON, ROOT, tcp_terminal

Device = tuple[SimulatedModbusDevice, int]


async def edge_agent(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "agent",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def config_file(tmp_path: Path, terminals: list[dict[str, Any]], **sections: Any) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "gateway": {"id": "gw-test"},
                "state_dir": str(tmp_path / "state"),
                "terminals": terminals,
                **sections,
            }
        )
    )
    return str(path)


async def test_poll_json_has_the_documented_shape(tmp_path: Path, device: Device) -> None:
    sim, port = device
    sim.units[1].set_number("holding", 0, 3.25, "float32")
    sim.units[1].coil[1] = True
    config = config_file(
        tmp_path,
        [
            tcp_terminal(
                port,
                [
                    {"name": "level", "address": 0, "type": "float32", "unit": "m"},
                    {"name": "pump", "table": "coil", "address": 1, "type": "bool"},
                ],
            )
        ],
    )
    code, out, _ = await edge_agent("poll", "plc", "--config", config, "--json")
    assert code == 0
    assert json.loads(out) == {
        "schema": 1,
        "terminal": "plc",
        "where": f"127.0.0.1:{port}#1",
        "readings": [
            {
                "point": "pump",
                "value": True,
                "unit": "",
                "quality": "good",
                "table": "coil",
                "address": 1,
                "error": None,
            },
            {
                "point": "level",
                "value": 3.25,
                "unit": "m",
                "quality": "good",
                "table": "holding",
                "address": 0,
                "error": None,
            },
        ],
    }


async def test_poll_exits_1_and_says_what_to_check_when_points_are_bad(
    tmp_path: Path, device: Device
) -> None:
    sim, port = device
    sim.units[1].holes.add(7)
    config = config_file(
        tmp_path,
        [
            tcp_terminal(
                port,
                [
                    {"name": "ok", "address": 0},
                    {"name": "unmapped", "address": 7},
                ],
                max_gap=0,
            )
        ],
    )
    code, out, _ = await edge_agent("poll", "plc", "--config", config)
    assert code == 1
    assert "ok" in out and "holding:7" in out
    assert (
        "unmapped: exception 0x02: illegal data address (register not mapped on the device" in out
    )


async def test_poll_of_an_unknown_terminal_is_bad_usage(tmp_path: Path, device: Device) -> None:
    _, port = device
    config = config_file(tmp_path, [tcp_terminal(port, [{"name": "a", "address": 0}])])
    code, out, err = await edge_agent("poll", "nope", "--config", config)
    assert code == 2
    assert err.strip() == "edge-agent: no terminal named 'nope' (known: plc)"
    assert out == ""


async def test_version() -> None:
    code, out, _ = await edge_agent("--version")
    assert code == 0
    assert out.strip() == f"edge-agent {__version__}"


async def test_demo_runs_simulated_terminals_and_the_agent_without_a_broker() -> None:
    code, out, err = await edge_agent("demo", "--duration", "4", timeout=60)
    assert code == 0, err
    assert "edge-agent demo: 6 simulated terminals" in out
    assert "readings from" in out  # the progress line printed when not on a TTY
    for terminal in ("dam-plc", "spillway-plc", "rain-rtu", "pump-3", "river-gauge-1"):
        assert terminal in out
    assert " bad " not in out  # every point of the simulated site reads good
    assert " good " in out


async def test_keys_init_show_and_refusal_to_overwrite(tmp_path: Path) -> None:
    config = config_file(tmp_path, [])
    code, out, _ = await edge_agent("keys", "init", "--config", config)
    assert code == 0
    assert out.startswith("created device key ")
    code, out, _ = await edge_agent("keys", "show", "--json", "--config", config)
    assert code == 0
    info = json.loads(out)
    assert set(info) == {"schema", "kid", "public_key_pem", "jwk"}
    assert info["schema"] == 1
    assert info["jwk"]["kid"] == info["kid"]
    code, out, _ = await edge_agent("keys", "show", "--config", config)
    assert code == 0
    assert out.splitlines()[0] == f"key id:     {info['kid']}"
    assert f"public key: {info['jwk']['x']} (JWK x, base64url)" in out
    assert info["public_key_pem"] in out and "{" not in out  # for people: no JSON
    code, _, err = await edge_agent("keys", "init", "--config", config)
    assert code == 2
    assert "a device key already exists; use --force to replace it" in err
    code, _, _ = await edge_agent("keys", "init", "--force", "--config", config)
    assert code == 0
    _, out, _ = await edge_agent("keys", "show", "--json", "--config", config)
    assert json.loads(out)["kid"] != info["kid"]


async def test_keys_show_without_a_key_says_what_to_run(tmp_path: Path) -> None:
    code, out, err = await edge_agent("keys", "show", "--config", config_file(tmp_path, []))
    assert code == 2
    assert out == ""
    assert "no device key: run `edge-agent keys init`" in err


def _vector(function: str) -> str:
    vectors = json.loads((ROOT / "tests" / "data" / "sl651_vectors.json").read_text())
    return next(v["hex"] for v in vectors if v["function"] == function and v["crc_ok"])


async def test_sl651_decode_json_has_the_documented_shape() -> None:
    code, out, _ = await edge_agent("sl651", "decode", "--json", _vector("0x34"))
    assert code == 0
    document = json.loads(out)
    assert document["schema"] == 1
    [frame] = document["frames"]  # one frame or many: always a list
    assert set(frame) >= {
        "crc_ok",
        "direction",
        "center",
        "station",
        "password",
        "function",
        "serial",
        "sent_at",
        "end",
        "packet",
        "elements",
    }
    assert frame["function"] == "0x34"
    assert frame["end"] == "ETX"
    drp = next(e for e in frame["elements"] if e["id"] == "F4")
    assert drp["name"] == "DRP"
    assert drp["unit"] == "mm"
    assert drp["value"][:5] == [0.5, 0.0, 0.0, 0.0, 2.0]
    assert drp["value"][5] is None


async def test_sl651_decode_reads_stdin_and_exits_1_on_a_bad_frame() -> None:
    good = _vector("0x2F")
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "agent",
        "sl651",
        "decode",
        "--json",
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate(
        f"{good}\n{' '.join(bad[i : i + 2] for i in range(0, len(bad), 2))}\nzz\n".encode()
    )
    assert process.returncode == 1
    first, second, third = json.loads(out)["frames"]
    assert first["crc_ok"] is True
    assert second["crc_ok"] is False
    assert third == {"error": "not hex", "hex": "ZZ"}


async def test_sl651_decode_table_is_readable() -> None:
    code, out, _ = await edge_agent("sl651", "decode", _vector("0x34"))
    assert code == 0
    assert "0x34 hourly report" in out
    assert "DRZ1" in out
    assert "· marks a missing slot" in out


def test_the_check_table_says_values_in_words() -> None:
    """Flags as yes/no, one of a count in the singular, a minute or more as an age in words:
    never Python's True/False, "1 problems" or "3700 s"."""
    at = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)

    def result(check_id: str, value: Any, unit: str = "", threshold: Any = None) -> CheckResult:
        return CheckResult(check_id, "x", Status.WARN, value, unit, threshold, "", at, at)

    rows = [
        result("security.root", True),
        result("system.clock_sync", False),
        result("security.files", 1, "problems", 0),
        result("network.backlog", 2, "messages"),
        result("terminals.freshness:plc", 3700.0, "s", 300.0),
        result("system.clock", -3601.0, "s", 600.0),
        result("terminals.latency:plc", 0.0123, "s", 0.5),
    ]
    console = Console(width=200, color_system=None, record=True, file=io.StringIO())
    console.print(checks_table(rows))
    cells = {
        line.split("│")[2].strip(): (line.split("│")[3].strip(), line.split("│")[4].strip())
        for line in console.export_text().splitlines()
        if line.count("│") > 4
    }
    assert cells["security.root"] == ("yes", "-")
    assert cells["system.clock_sync"] == ("no", "-")
    assert cells["security.files"] == ("1 problem", "0 problems")
    assert cells["network.backlog"] == ("2 messages", "-")
    assert cells["terminals.freshness:plc"] == ("1h01m", "5m00s")
    assert cells["system.clock"] == ("-1h00m", "10m00s")
    assert cells["terminals.latency:plc"] == ("0.0123 s", "0.5 s")


# -- one consistent command line: --help, --config, bad values ----------------------------------


def _commands(
    parser: argparse.ArgumentParser, path: str = ""
) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(command path, one-line help, parser) of every command that runs something."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                command = f"{path} {name}".strip()
                below = _commands(sub, command)
                found += below or [(command, str(helps[name]), sub)]
    return found


def test_every_command_help_has_a_description_its_defaults_and_the_exit_codes() -> None:
    commands = _commands(build_parser())
    assert {"status", "outbox", "config validate", "update apply", "diag grant", "fleet"} <= {
        c for c, _, _ in commands
    }
    for command, one_line, parser in commands:
        text = parser.format_help()
        assert parser.description and parser.description != one_line, command
        assert "exit codes:\n  0  ok\n" in text, command
        # 1 only where the command can return it, with what it means there.
        assert ("\n  1  " in text) == (command in FINDINGS), command
        assert "\n  2  bad usage or bad input" in text, command
        assert "rejected" not in text.split("exit codes:")[1] or command.startswith("update")
        # A flag's default is the other side of its help, never "(default: True)".
        assert "(default: True)" not in text and "(default: False)" not in text, command
        for action in parser._actions:
            shown = action.default not in (None, False, [], SUPPRESS) and action.help != SUPPRESS
            if action.option_strings and action.nargs != 0 and shown:
                assert "default" in (action.help or "") or "(default: " in text, (command, action)
    by_name = {c: p for c, _, p in commands}
    status = by_name["status"].format_help()
    assert "3  the agent is not running" in status
    outbox = by_name["outbox"].format_help()
    assert "--limit LIMIT    messages to show with peek (default: 10)" in outbox
    run = by_name["run"].format_help()
    assert "4  a release on trial did not pass its gate" in run

    def said(command: str) -> str:
        return " ".join(by_name[command].format_help().split())

    assert '{"schema": 1, "current", "available"}' in said("update check")
    for diag in ("diag grant", "diag revoke", "diag status", "diag audit"):
        assert "socket (default: the config's control.socket)" in said(diag), diag
    assert "the last N lines only, 1 or more (default: the whole log)" in said("diag audit")
    decode = by_name["sl651 decode"].format_help()
    assert "\n  1  a frame did not decode, or its CRC is wrong\n" in decode
    assert "\n  1  " not in by_name["config validate"].format_help()
    assert "--no-files" in by_name["config validate"].format_help()
    # A group points at its actions.
    [top] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    update = top.choices["update"].format_help()
    assert update.rstrip().endswith("exit codes: those of each ACTION, in its --help")


def test_config_validate_takes_the_file_as_path_or_as_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path(config_file(tmp_path, []))
    assert main(["config", "validate", "--config", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok (0 terminals, 0 points)\n"
    assert main(["config", "validate", str(path), "--config", str(path)]) == 0
    # The same file by two names (relative here, absolute there; a link) is one file.
    monkeypatch.chdir(tmp_path)
    assert main(["config", "validate", path.name, "--config", str(path)]) == 0
    (tmp_path / "link.yaml").symlink_to(path)
    assert main(["config", "validate", "link.yaml", "--config", str(path)]) == 0
    capsys.readouterr()
    other = tmp_path / "other.yaml"
    assert main(["config", "validate", str(path), "--config", str(other)]) == 2
    assert capsys.readouterr().err == (
        f"edge-agent: two config files given: {path} and --config {other}; give one\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["outbox", "peek", "--limit", "-5"], "argument --limit: must be 1 or more, got '-5'"),
        (["outbox", "peek", "--limit", "0"], "argument --limit: must be 1 or more, got '0'"),
        (["outbox", "--limit", "ten"], "argument --limit: expected a whole number, got 'ten'"),
        (["support-bundle", "--since", "yesterday"], "argument --since: expected a duration like 500ms, 5s, 2m, 1h; got 'yesterday'"),
        (["support-bundle", "--since", "0s"], "argument --since: must be longer than zero, got '0s'"),
        (["support-bundle", "--since=-2h"], "argument --since: a duration cannot be negative; got '-2h'"),
        (["support-bundle", "--since", "-3d"], "argument --since: a duration cannot be negative; got '-3d'"),
        (["demo", "--duration", "-1"], "argument --duration: must be 0 or more seconds, got '-1'"),
        (["demo", "--duration", "soon"], "argument --duration: expected a number of seconds, got 'soon'"),
        (["diag", "audit", "--tail", "0"], "argument --tail: must be 1 or more, got '0'"),
        (["fleet", "--broker", "mqtt://h", "--wait", "0"], "argument --wait: must be a number of seconds above zero, got '0'"),
        (["remote", "gw", "status", "--timeout", "soon"], "argument --timeout: expected a number of seconds, got 'soon'"),
    ],
)  # fmt: skip
def test_a_bad_option_value_is_refused_with_exit_2_and_names_the_option(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].endswith(f"error: {message}")
    assert "Traceback" not in err


def test_a_negative_report_period_is_refused_with_the_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--since -3d` is the option's value, said negative (not "expected one argument")."""
    for argv in (["report", "--since", "-3d"], ["report", "--since=-3d"]):
        assert main(argv) == 2
        assert capsys.readouterr().err == (
            "edge-agent: --since: a duration cannot be negative; got '-3d'\n"
        )
