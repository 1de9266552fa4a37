"""Config loading: typed frozen objects, and every error named by file, key path and problem."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pydantic
import pytest

from agent.cli import main
from agent.config import ConfigError, ModbusRtuTerminal, load_config, parse_config
from agent.config_access import file_problems
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
        (("period: 2m", "period: 0s"), "terminals[1].period: must be more than 0 (got '0s')"),
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
    assert errors == ["outbox.reserve_bytes: must be at least 262144 (got 1000)"]


def test_a_telemetry_message_holds_5000_readings_with_schema_2_and_500_with_schema_1() -> None:
    assert parse_config(GOOD, "config.yaml").telemetry_batch == 5000
    old_body = parse_config(GOOD + "telemetry: {schema: 1}\n", "config.yaml")
    assert old_body.telemetry_batch == 500
    given = parse_config(GOOD + "telemetry: {schema: 1}\noutbox: {batch: 800}\n", "config.yaml")
    assert given.telemetry_batch == 800
    assert errors_of(GOOD + "outbox: {batch: 20000}\n") == [
        "outbox.batch: must be at most 10000 (got 20000)"
    ]


def test_the_publish_timeout_and_ack_warn_are_durations_above_zero() -> None:
    text = GOOD + "uplink: {broker: 'mqtt://h:1883', publish_timeout: 0s}\n"
    text += "checks: {network: {ack_warn: soon}}\n"
    errors = errors_of(text)
    assert "uplink.publish_timeout: must be more than 0 (got '0s')" in errors
    assert any("checks.network.ack_warn: expected a duration" in e for e in errors)
    good = GOOD + "uplink: {broker: 'mqtt://h:1883', publish_timeout: 90s}\n"
    assert parse_config(good, "config.yaml").uplink.publish_timeout == 90.0


# -- what YAML hides: keys given twice, text read as numbers ------------------------------------


def test_a_key_given_twice_is_refused_with_both_lines() -> None:
    text = GOOD.replace("    period: 500ms\n", "    period: 500ms\n    host: 10.0.0.9\n")
    assert errors_of(text) == [
        "line 9: duplicate key 'host' (first given on line 7): give each key once; YAML would "
        "keep only the last"
    ]
    assert errors_of("gateway: {id: a}\nstate_dir: x\ngateway: {id: b}\n") == [
        "line 3: duplicate key 'gateway' (first given on line 1): give each key once; YAML "
        "would keep only the last"
    ]


def test_a_merge_key_may_be_overridden_without_being_a_duplicate() -> None:
    text = (
        GOOD.replace("  - name: pump-3\n", "  - &plc2\n    name: pump-3\n")
        + "  - {<<: *plc2, name: pump-4, unit: 4}\n"
    )
    config = parse_config(text)
    assert [t.name for t in config.terminals] == ["dam-plc", "pump-3", "pump-4"]


SL651 = """
gateway: {id: gw-001}
sl651: {listen: ["127.0.0.1:5001"]}
terminals:
  - name: river
    protocol: sl651
    station: STATION
    password: PASSWORD
"""


@pytest.mark.parametrize(
    ("station", "password", "expected"),
    [
        (
            "0012345670",
            '"1234"',
            "terminals[0].station: YAML reads 0012345670 on line 7 as the number 2739128 (a "
            'leading 0 makes it octal); quote it: station: "0012345670"',
        ),
        (
            "1234567890",
            '"1234"',
            "terminals[0].station: YAML reads 1234567890 on line 7 as the number 1234567890; "
            'quote it: station: "1234567890"',
        ),
        (
            '"0012345678"',
            "0000",
            "terminals[0].password: YAML reads 0000 on line 8 as the number 0 (a leading 0 "
            'makes it octal); quote it: password: "0000"',
        ),
    ],
)
def test_a_station_or_password_written_as_a_number_is_refused_with_quote_it(
    station: str, password: str, expected: str
) -> None:
    text = SL651.replace("STATION", station).replace("PASSWORD", password)
    assert errors_of(text) == [expected]
    quoted = SL651.replace("STATION", '"0012345670"').replace("PASSWORD", '"0000"')
    [river] = parse_config(quoted).terminals
    assert (river.station, river.password) == ("0012345670", "0000")  # type: ignore[attr-defined]


def test_any_text_key_given_a_number_or_a_boolean_says_to_quote_it() -> None:
    errors = errors_of("gateway: {id: 007}\nuplink: {username: yes}\nchecks: {disabled: [12]}\n")
    assert sorted(errors) == [
        'checks.disabled[0]: YAML reads 12 on line 3 as the number 12; quote it: "12"',
        "gateway.id: YAML reads 007 on line 1 as the number 7 (a leading 0 makes it octal); "
        'quote it: id: "007"',
        'uplink.username: YAML reads yes on line 2 as the boolean true; quote it: username: "yes"',
    ]


# -- in the config's words: unknown keys, sections, no class names -------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("    host: 127.0.0.1\n", "    hots: 127.0.0.1\n"), "terminals[0].hots: unknown key (did you mean 'host'?)"),
        (("state_dir: state", "statedir: state"), "statedir: unknown key (did you mean 'state_dir'?)"),
        (("address: 0, type: float32", "address: 0, typ: float32"), "terminals[0].points[0].typ: unknown key (did you mean 'type'?)"),
        (("gateway: {id: gw-001}", "gateway: {id: gw-001}\ntelemetry: {shema: 1}"), "telemetry.shema: unknown key (did you mean 'schema'?)"),
        (("gateway: {id: gw-001}", "gateway: {id: gw-001}\nchecks: {system: {dsik: {}}}"), "checks.system.dsik: unknown key (did you mean 'disk'?)"),
        (("    unit: 3\n", "    unit: 3\n    colour: red\n"), "terminals[1].colour: unknown key (see config/example.yaml for every option)"),
    ],
)  # fmt: skip
def test_an_unknown_key_gets_the_nearest_known_one(change: tuple[str, str], expected: str) -> None:
    errors = errors_of(GOOD.replace(*change))
    assert expected in errors
    assert set(errors) - {expected} <= {"terminals[0].host: required key is missing"}


def test_a_section_given_one_value_lists_its_keys_and_the_one_that_fits() -> None:
    assert errors_of(GOOD + "log: warning\n") == [
        "log: expected a section with the keys level, format, got 'warning'; did you mean "
        "log: {level: warning}?"
    ]
    assert errors_of(GOOD + "metrics: 9108\n") == [
        "metrics: expected a section with the keys listen, got 9108"
    ]


def _model_classes(model: type[pydantic.BaseModel], seen: set[str]) -> set[str]:
    """The names of `model` and of every model under it (the words users must never see)."""
    from typing import get_args

    seen.add(model.__name__)
    for field in model.model_fields.values():
        stack = [field.annotation]
        while stack:
            kind = stack.pop()
            if isinstance(kind, type) and issubclass(kind, pydantic.BaseModel):
                if kind.__name__ not in seen:
                    _model_classes(kind, seen)
            else:
                stack.extend(get_args(kind))
    return seen


def test_no_error_names_a_class_of_the_code() -> None:
    """Every section and every kind of value given the wrong kind of value: the errors speak
    of keys and values, never of the models behind them."""
    from agent.config import Config

    names = _model_classes(Config, set()) | {"Path", "dict", "Literal", "instance"}
    wrong = ["x", 3, [1], {"a": 1}, True]
    sections = [name for name in Config.model_fields if name != "gateway"]
    texts = [
        f"gateway: {{id: gw}}\n{section}: {value!r}\n" for section in sections for value in wrong
    ]
    texts += [
        GOOD.replace("    unit: 3\n", f"    {key}: {value!r}\n")
        for key in ("unit", "parity", "points", "timeout", "device")
        for value in wrong
    ]
    texts += [f"gateway: {value!r}\n" for value in wrong] + ["gateway: {id: gw}\nterminals: [x]\n"]
    seen = 0
    for text in texts:
        try:
            parse_config(text)
        except ConfigError as exc:
            for error in exc.errors:
                seen += 1
                used = [n for n in names if re.search(rf"\b{n}\b", error)]
                assert not used, (text, error)
                # Neither pydantic's wording nor Python's values: YAML's (null, true, [a, b]).
                python = re.search(r"\b(should|None|True|False)\b|\{'|\['", error)
                assert python is None, (text, error)
    assert seen > 50


def test_limits_and_lengths_are_said_in_the_configs_words() -> None:
    text = (
        "gateway: {id: gw-001}\n"
        f"site: {{name: {'x' * 201}, location: ''}}\n"
        "terminals:\n"
        "  - {name: dam-plc, protocol: modbus-tcp, host: 127.0.0.1, unit: 999,\n"
        "     points: [{name: level, table: holding, address: 0}]}\n"
        "  - {name: pump-3, protocol: modbus-tcp, host: 127.0.0.1, points: []}\n"
    )
    assert sorted(errors_of(text)) == [
        "site.location: must not be empty",
        "site.name: too long: at most 200 characters (got 201)",
        "terminals[0].unit: must be at most 247 (got 999)",
        "terminals[1].points: needs at least 1 point (got none)",
    ]


def test_values_are_shown_as_yaml_writes_them() -> None:
    assert errors_of(GOOD + "control: {socket: null}\n") == [
        "control.socket: expected a file path, got nothing (an empty value or null)"
    ]
    assert errors_of(GOOD + "checks: {data: [{point: dam-plc.nope}]}\n") == [
        "checks.data: expected a mapping (`key: value` lines, or `{key: value}`), got "
        "[{point: dam-plc.nope}]"
    ]


def test_quote_it_is_said_only_where_the_quoted_text_would_be_valid() -> None:
    """`listen: 5` quoted is still no address: say what an address is instead."""
    assert errors_of(GOOD + "metrics: {listen: 5}\n") == [
        "metrics.listen: '5' is not host:port, e.g. 127.0.0.1:9108"
    ]
    text = SL651.replace("STATION", "12").replace("PASSWORD", "1234")
    assert errors_of(text) == [
        "terminals[0].station: '12' is not a station address: 10 hex digits (5 bytes), e.g. "
        "0012345678",
        "terminals[0].password: YAML reads 1234 on line 8 as the number 1234; quote it: "
        'password: "1234"',
    ]


def test_a_folder_given_as_the_config_is_said_in_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "validate", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"{tmp_path}: is a folder, not a file\n"


# -- what refers to what ------------------------------------------------------------------------


def test_data_checks_must_name_configured_points() -> None:
    text = GOOD + (
        "checks:\n  data:\n"
        "    dam-plc.level: {range: [0, 10]}\n"
        "    dam-plc.levle: {range: [0, 10]}\n"
        "    dam.level: {range: [0, 10]}\n"
        "    pump-3.running: {stuck_samples: 5}\n"
    )
    assert errors_of(text) == [
        "checks.data.dam-plc.levle: terminal 'dam-plc' has no point 'levle' (did you mean "
        "'dam-plc.level'?)",
        "checks.data.dam.level: names no terminal: keys are <terminal>.<point> (terminals: "
        "dam-plc, pump-3) (did you mean 'dam-plc.level'?)",
    ]


def test_a_data_check_of_an_sl651_station_may_name_any_element() -> None:
    text = SL651.replace("STATION", '"0012345678"').replace("PASSWORD", '"1234"')
    config = parse_config(text + "checks: {data: {river.PJ: {counter: true}}}\n")
    assert list(config.checks.data) == ["river.PJ"]


def test_sl651_stations_need_a_listener_or_a_serial_port() -> None:
    text = SL651.replace("STATION", '"0012345678"').replace("PASSWORD", '"1234"')
    assert errors_of(text.replace('sl651: {listen: ["127.0.0.1:5001"]}\n', "")) == [
        "sl651: nothing listens for the SL651 station river: set sl651.listen (e.g. "
        '["0.0.0.0:5001"]) or sl651.serial (e.g. [{device: /dev/ttyS1}])'
    ]
    serial = text.replace('listen: ["127.0.0.1:5001"]', "serial: [{device: /dev/ttyS1}]")
    assert parse_config(serial).sl651.serial[0].device == "/dev/ttyS1"
    assert parse_config(GOOD).sl651.listen == []  # no station, no listener needed


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("localhost:99999", "metrics.listen: 'localhost:99999': the port must be a number from 0 to 65535"),
        ("9108", "metrics.listen: '9108' is not host:port, e.g. 127.0.0.1:9108"),
        ("::1:9108", "metrics.listen: '::1:9108': write an IPv6 address in brackets, e.g. [::1]:9108"),
        ("[fe80::zz]:9108", "metrics.listen: '[fe80::zz]:9108': 'fe80::zz' in brackets is not an IPv6 address"),
        ("bad host:9108", "metrics.listen: 'bad host:9108': 'bad host' is not a host name or IP address"),
        ("127.0.0.1:http", "metrics.listen: '127.0.0.1:http': the port must be a number from 0 to 65535"),
    ],
)  # fmt: skip
def test_a_metrics_address_that_does_not_parse_is_refused(listen: str, expected: str) -> None:
    assert errors_of(GOOD + f"metrics: {{listen: '{listen}'}}\n") == [expected]


def test_listen_addresses_parse_to_host_and_port() -> None:
    config = parse_config(
        GOOD + "metrics: {listen: '[::1]:9108'}\nsl651: {listen: ['0.0.0.0:5001', 'gw.local:0']}\n"
    )
    assert config.metrics.address == ("::1", 9108)
    assert config.sl651.listen_addresses == [("0.0.0.0", 5001), ("gw.local", 0)]
    assert errors_of(GOOD + "sl651: {listen: ['5001']}\n") == [
        "sl651.listen[0]: '5001' is not host:port, e.g. 127.0.0.1:9108"
    ]


# -- the files the config names, on this machine (`config validate`) ---------------------------


def _tls_config(folder: Path, **files: Path) -> Path:
    path = folder / "config.yaml"
    tls = ", ".join(f"{name}: {file}" for name, file in files.items())
    path.write_text(GOOD + f"uplink: {{broker: 'mqtts://broker:8883', tls: {{{tls}}}}}\n")
    return path


def test_config_validate_refuses_tls_files_that_do_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "client.pem").write_text("a certificate")
    (tmp_path / "client.key").write_text("a key")
    path = _tls_config(tmp_path, ca=Path("ca.pem"), cert=Path("client.pem"), key=Path("client.key"))
    assert load_config(path).uplink.tls.ca == tmp_path / "ca.pem"  # loading does not look
    assert main(["config", "validate", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{path}: uplink.tls.ca: {tmp_path / 'ca.pem'} does not exist"]
    (tmp_path / "ca.pem").mkdir()
    assert main(["config", "validate", str(path)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{tmp_path / 'ca.pem'} is not a file")
    # The installer's self-test: the config file alone (the machine's files are not its concern).
    assert main(["config", "validate", "--no-files", str(path)]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_a_tls_file_we_cannot_read_is_named(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("a key")
    key.chmod(0o000)
    [problem] = file_problems(load_config(_tls_config(tmp_path, cert=key, key=key)))
    assert problem.startswith(f"uplink.tls.cert: {key} is not readable (by uid ")


@pytest.mark.skipif(os.geteuid() != 0, reason="judging for the service user needs root")
def test_as_root_a_tls_file_the_service_user_cannot_read_is_named() -> None:
    """Here `nobody` plays the service user: a file only root may read, or in a folder closed
    to it, is refused; one it may read passes."""
    with tempfile.TemporaryDirectory(dir="/tmp") as name:
        folder = Path(name)
        folder.chmod(0o700)
        ca = folder / "ca.pem"
        ca.write_text("a CA")
        ca.chmod(0o644)
        config = load_config(_tls_config(folder, ca=ca))
        assert file_problems(config, service_user="nobody") == [
            f"uplink.tls.ca: the service user nobody cannot reach {ca}: {folder} is closed to it "
            "(chmod o+x, or a group it is in)"
        ]
        folder.chmod(0o755)
        assert file_problems(config, service_user="nobody") == []
        ca.chmod(0o600)
        assert file_problems(config, service_user="nobody") == [
            f"uplink.tls.ca: {ca} is not readable by the service user nobody: e.g. chgrp nobody "
            f"{ca} && chmod g+r {ca}"
        ]
        assert file_problems(config, service_user="no-such-user-here") == []  # root's view
