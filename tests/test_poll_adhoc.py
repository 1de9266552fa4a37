"""`edge-agent poll` as a commissioning tool: the raw register words with every point decoded in
each word order, and a first look at a device that is not in the config (`--tcp`, `--rtu`),
against the agent's own simulated devices over TCP and a real pty pair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import cli
from agent.sim.modbus_device import RegisterMap, SimulatedModbusDevice
from agent.sim.serial_line import VirtualSerialLine
from tests.broker import free_port
from tests.test_cli import config_file, edge_agent, tcp_terminal

Device = tuple[SimulatedModbusDevice, int]


async def test_raw_shows_the_words_and_every_word_order_of_an_adhoc_read(device: Device) -> None:
    """A float32 the device keeps with its words swapped reads as nonsense in ABCD and as the
    true value under CDAB: the engineer sees which order is the device's."""
    sim, port = device
    sim.units[1].set_number("holding", 10, 12.5, "float32", "CDAB")
    sim.units[1].set_number("holding", 12, 1234567890123, "uint64", "DCBA")
    code, out, err = await edge_agent(
        "poll", "--tcp", f"127.0.0.1:{port}", "--address", "10", "--type", "float32", "--raw",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    answer = json.loads(out)
    assert (answer["schema"], answer["terminal"], answer["where"]) == (
        1,
        "adhoc",
        f"127.0.0.1:{port}#1",
    )
    assert answer["reads"] == [
        {"table": "holding", "address": 10, "count": 2, "raw": ["0x0000", "0x4148"], "error": None}
    ]
    [point] = answer["points"]
    assert point["point"] == "holding:10"
    assert point["raw"] == ["0x0000", "0x4148"]
    assert point["word_order"] == "ABCD" and point["value"] == point["orders"]["ABCD"]
    assert set(point["orders"]) == {"ABCD", "CDAB", "BADC", "DCBA"}
    assert point["orders"]["CDAB"] == 12.5
    assert point["orders"]["ABCD"] != 12.5

    code, out, err = await edge_agent(
        "poll", "--tcp", f"127.0.0.1:{port}", "--address", "12", "--type", "uint64", "--raw",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    [wide] = json.loads(out)["points"]
    assert len(wide["raw"]) == 4
    assert wide["orders"]["DCBA"] == 1234567890123  # 64-bit: the same four orders
    assert wide["orders"]["ABCD"] != 1234567890123

    code, out, err = await edge_agent(
        "poll", "--tcp", f"127.0.0.1:{port}", "--address", "10", "--type", "float32", "--raw"
    )
    assert code == 0, err
    assert "0000 4148" in out and "12.5" in out
    assert "read holding 10..11: 0000 4148" in out


async def test_raw_of_a_configured_terminal_marks_its_configured_order(
    tmp_path: Path, device: Device
) -> None:
    sim, port = device
    sim.units[1].set_number("holding", 0, -3.75, "float32", "CDAB")
    sim.units[1].set_registers("holding", 2, [0x1234])
    sim.units[1].coil[0] = True
    config = config_file(
        tmp_path,
        [
            tcp_terminal(
                port,
                [
                    {"name": "level", "address": 0, "type": "float32", "word_order": "CDAB"},
                    {"name": "raw", "address": 2},
                    {"name": "pump", "table": "coil", "address": 0, "type": "bool"},
                ],
            )
        ],
    )
    code, out, err = await edge_agent("poll", "plc", "--config", config, "--raw", "--json")
    assert code == 0, err
    points = {p["point"]: p for p in json.loads(out)["points"]}
    level = points["level"]
    assert (level["word_order"], level["value"], level["orders"]["CDAB"]) == ("CDAB", -3.75, -3.75)
    one_word = points["raw"]
    assert one_word["orders"] == {"ABCD": 0x1234, "BADC": 0x3412}  # one word: a byte swap only
    assert (points["pump"]["raw"], points["pump"]["value"], points["pump"]["orders"]) == (
        [True],
        True,
        None,
    )


async def test_an_adhoc_read_over_rtu_on_a_real_pty(serial_line: VirtualSerialLine) -> None:
    sim = SimulatedModbusDevice({3: RegisterMap()})
    sim.units[3].set_registers("input", 5, [7, 8, 9])
    await sim.serve_serial(serial_line.b_path, 19200)
    try:
        code, out, err = await edge_agent(
            "poll", "--rtu", serial_line.a_path, "--baudrate", "19200", "--unit", "3",
            "--table", "input", "--address", "5", "--count", "3", "--json",
        )  # fmt: skip
    finally:
        await sim.stop()
    assert code == 0, err
    answer = json.loads(out)
    assert answer["where"] == f"{serial_line.a_path}#3"
    assert [(r["point"], r["value"], r["quality"]) for r in answer["readings"]] == [
        ("input:5", 7, "good"),
        ("input:6", 8, "good"),
        ("input:7", 9, "good"),
    ]
    assert [(r.unit, r.table, r.address, r.count) for r in sim.requests] == [(3, "input", 5, 3)]


async def test_an_adhoc_device_that_does_not_answer_is_a_finding_with_its_reason() -> None:
    port = free_port()
    code, out, _ = await edge_agent("poll", "--tcp", f"127.0.0.1:{port}", "--raw")
    assert code == 1
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in out


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["poll"], "give a terminal of the config, or a device with --tcp HOST or --rtu DEVICE"),
        (["poll", "plc", "--tcp", "h"], "give a terminal of the config (plc) or --tcp/--rtu"),
        (["poll", "plc", "--unit", "3"], "--unit describes a device not in the config"),
        (["poll", "--tcp", "h", "--baudrate", "19200"], "--baudrate is a serial line setting"),
        (["poll", "--tcp", "h", "--table", "coil", "--type", "float32"], "--type must be bool"),
        (["poll", "--tcp", "h:99999"], "the port must be a number from 1 to 65535"),
        (["poll", "--tcp", "h", "--address", "65535", "--type", "uint32"], "runs past the last"),
    ],
)
def test_bad_poll_usage_is_refused_with_one_line(
    argv: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-agent: ") and reason in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["poll", "--tcp", "h", "--unit", "300"], "must be from 0 to 247, got '300'"),
        (["poll", "--tcp", "h", "--count", "0"], "must be from 1 to 2000, got '0'"),
        (["poll", "--tcp", "h", "--timeout", "soon"], "expected a duration"),
        (["poll", "--tcp", "h", "--timeout", "0s"], "must be longer than zero, got '0s'"),
        (["poll", "--tcp", "h", "--table", "register"], "invalid choice: 'register'"),
    ],
)
def test_bad_option_values_are_refused_with_exit_2(
    argv: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert reason in capsys.readouterr().err


def test_raw_of_a_terminal_that_reports_by_itself_says_why_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gauge = {"name": "gauge", "protocol": "sl651", "station": "0012345678"}
    config = config_file(tmp_path, [gauge], sl651={"listen": ["127.0.0.1:0"]})
    assert cli.main(["poll", "gauge", "--config", config, "--raw"]) == 2
    err = capsys.readouterr().err
    assert "--raw shows Modbus register words: gauge is sl651" in err
