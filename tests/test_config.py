"""Config loading: typed frozen objects, and every error named by file, key path and problem."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from agent.cli import main
from agent.config import ConfigError, ModbusRtuTerminal, load_config, parse_config
from tests.conftest import ROOT

GOOD = """
gateway: {id: gw-001}
state_dir: state
terminals:
  - name: dam-plc
    protocol: modbus-tcp
    host: 127.0.0.1
    period: 500ms
    points:
      - {name: level, table: holding, address: 0, type: float32, unit: m}
  - name: pump-3
    protocol: modbus-rtu
    device: /dev/ttyUSB0
    unit: 3
    period: 2m
    points:
      - {name: running, table: coil, address: 0, type: bool}
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.yaml")
    return info.value.errors


def test_good_config_loads_with_defaults_and_durations(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(GOOD)
    config = load_config(path)
    tcp, rtu = config.terminals
    assert tcp.period == 0.5
    assert tcp.port == 502 and tcp.timeout == 1.0 and tcp.retries == 2
    assert isinstance(rtu, ModbusRtuTerminal)
    assert rtu.period == 120 and rtu.baudrate == 9600
    assert rtu.effective_frame_gap == pytest.approx(3.5 * 10 / 9600)
    assert config.state_dir == tmp_path / "state"  # relative to the file's folder
    assert config.jsonl_path == tmp_path / "state" / "readings.jsonl"


def test_config_objects_are_frozen() -> None:
    config = parse_config(GOOD)
    with pytest.raises(pydantic.ValidationError):
        config.terminals[0].period = 3  # type: ignore[misc]


def test_unknown_type_names_the_key_path_and_the_choices() -> None:
    text = GOOD.replace("type: float32", "type: floot")
    assert errors_of(text) == [
        "terminals[0].points[0].type: unknown type 'floot' (expected one of: uint16, int16, "
        "uint32, int32, uint64, int64, float32, float64, string, bool)"
    ]


def test_error_lines_start_with_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(GOOD.replace("type: float32", "type: floot"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith("config.yaml: terminals[0].points[0].type: unknown type")


def test_every_error_of_a_file_is_reported_at_once() -> None:
    text = (
        GOOD.replace("period: 500ms", "period: 5q")
        .replace("protocol: modbus-rtu", "protocol: modbus-rtx")
        .replace("unit: m}", "unit: m, colour: red}")
    )
    errors = errors_of(text)
    assert "terminals[0].period: expected a duration like 500ms, 5s, 2m, 1h; got '5q'" in errors
    assert (
        "terminals[1].protocol: unknown protocol 'modbus-rtx' (expected one of: modbus-tcp, "
        "modbus-rtu, sl651)" in errors
    )
    assert any(e.startswith("terminals[0].points[0].colour: unknown key") for e in errors)
    assert len(errors) == 3


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("table: coil, address: 0, type: bool", "table: coil, address: 0, type: uint16"),
            "terminals[1].points[0]: a coil is a single bit: type must be bool, not uint16",
        ),
        (
            ("type: float32, unit: m", "type: string, unit: m"),
            "terminals[0].points[0]: type string needs length (in registers, 2 characters each)",
        ),
        (
            ("type: float32, unit: m", "type: float32, bit: 3"),
            "terminals[0].points[0]: bit applies only to type bool read from a holding or input register",
        ),
        (
            ("address: 0, type: float32", "address: 65535, type: float32"),
            "terminals[0].points[0]: address 65535 + 2 runs past the last address",
        ),
        (("    host: 127.0.0.1\n", ""), "terminals[0].host: required key is missing"),
        (("name: pump-3", "name: dam-plc"), "terminal names must be unique; repeated: dam-plc"),
        (("period: 2m", "period: 0s"), "terminals[1].period: Input should be greater than 0"),
    ],
)
def test_each_problem_gets_a_clear_message(change: tuple[str, str], expected: str) -> None:
    errors = errors_of(GOOD.replace(*change))
    assert any(expected in e for e in errors), errors


def test_terminals_sharing_a_serial_device_must_agree_on_line_settings() -> None:
    text = (
        GOOD
        + """
  - name: pump-4
    protocol: modbus-rtu
    device: /dev/ttyUSB0
    baudrate: 19200
    unit: 4
    points: [{name: running, table: coil, address: 0, type: bool}]
"""
    )
    [error] = errors_of(text)
    assert "share /dev/ttyUSB0 but not its line settings" in error


def test_two_terminals_cannot_use_one_unit_id_on_one_bus() -> None:
    text = (
        GOOD
        + """
  - name: pump-4
    protocol: modbus-rtu
    device: /dev/ttyUSB0
    unit: 3
    points: [{name: running, table: coil, address: 0, type: bool}]
"""
    )
    [error] = errors_of(text)
    assert "both use unit 3 on /dev/ttyUSB0" in error


def test_yaml_syntax_error_names_line_and_column() -> None:
    [error] = errors_of("gateway: {id: gw\nterminals: [")
    assert error.startswith("line ")
    assert "not valid YAML" in error


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_example_and_demo_configs_are_valid() -> None:
    example = load_config(ROOT / "config" / "example.yaml")
    assert {t.protocol for t in example.terminals} == {"modbus-tcp", "modbus-rtu", "sl651"}
    load_config(ROOT / "config" / "demo.yaml")


def test_config_validate_exits_2_and_prints_every_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(GOOD.replace("type: float32", "type: floot").replace("500ms", "5q"))
    assert main(["config", "validate", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert all(line.startswith(f"{path}: terminals[0].") for line in err)


def test_config_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(GOOD)
    assert main(["config", "validate", str(path)]) == 0
    assert "ok (2 terminals, 2 points)" in capsys.readouterr().out


def test_each_format_error_says_which_format_is_expected() -> None:
    errors = errors_of(
        'gateway: {id: "gw 1"}\n'
        'uplink: {broker: "tcp://x"}\n'
        'sl651: {utc_offset: "+8"}\n'
        'terminals: [{name: g, protocol: sl651, station: "12345678", password: "12"}]\n'
    )
    assert sorted(errors) == [
        "gateway.id: 'gw 1' is not a name of letters, digits, '.', '_' or '-' (at most 64, "
        "starting with a letter or digit)",
        "sl651.utc_offset: '+8' is not a UTC offset: +HH:MM or -HH:MM, e.g. +08:00",
        "terminals[0].password: '12' is not an SL651 password: 4 hex digits, e.g. 1234",
        "terminals[0].station: '12345678' is not a station address: 10 hex digits (5 bytes), "
        "e.g. 0012345678",
        "uplink.broker: 'tcp://x' is not a broker URL: mqtt://host:1883 or mqtts://host:8883",
    ]


def test_the_outbox_reserve_is_bounded_and_defaults_to_4_mib() -> None:
    assert parse_config(GOOD, "config.yaml").outbox.reserve_bytes == 4 * 1024 * 1024
    errors = errors_of(GOOD + "outbox: {reserve_bytes: 1000}\n")
    assert errors == [
        "outbox.reserve_bytes: Input should be greater than or equal to 262144 (got 1000)"
    ]


def test_the_publish_timeout_and_ack_warn_are_durations_above_zero() -> None:
    text = GOOD + "uplink: {broker: 'mqtt://h:1883', publish_timeout: 0s}\n"
    text += "checks: {network: {ack_warn: soon}}\n"
    errors = errors_of(text)
    assert any("uplink.publish_timeout: Input should be greater than 0" in e for e in errors)
    assert any("checks.network.ack_warn: expected a duration" in e for e in errors)
    good = GOOD + "uplink: {broker: 'mqtt://h:1883', publish_timeout: 90s}\n"
    assert parse_config(good, "config.yaml").uplink.publish_timeout == 90.0
