"""The encoders rebuild the vectors' frames byte for byte: every downlink the centre sends and
the uplinks the simulator sends (known answers from tests/data/sl651_vectors.json, docs/sl651-notes.md §15)."""

from __future__ import annotations

import json
import os
from datetime import datetime as D
from pathlib import Path

import pytest

from agent.protocols.sl651 import (
    BlockValues,
    Ctrl,
    EncodeError,
    Group,
    LinkAddress,
    SeriesValues,
    TimeStep,
    Value,
    decode_body,
    encode,
    parse_frame,
    status_word,
)
from agent.protocols.sl651.message import PasswordChange

ROOT = Path(__file__).resolve().parent.parent
VECTORS_PATH = Path(os.environ.get("SL651_VECTORS", ROOT / "tests" / "data" / "sl651_vectors.json"))
VECTORS = [v["hex"] for v in json.loads(VECTORS_PATH.read_text())] if VECTORS_PATH.exists() else []
pytestmark = pytest.mark.skipif(
    not VECTORS, reason="vectors.json missing: test_sl651_vectors fails for it"
)


def vec(i: int) -> bytes:
    return bytes.fromhex(VECTORS[i])


def link(i: int) -> LinkAddress:
    return parse_frame(vec(i)).link


# -- downlinks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("i", "function", "serial", "sent", "end"),
    [
        (2, 0x30, 3, D(2059, 10, 11, 15, 49, 47), Ctrl.ESC),  # echoed uplink time, stay online
        (4, 0x31, 49, D(2017, 7, 18, 11, 0, 5), Ctrl.ESC),
        (6, 0x32, 52, D(2017, 7, 18, 11, 0, 16), Ctrl.ESC),
        (7, 0x32, 12, D(2020, 7, 24, 17, 23, 49), Ctrl.ACK),
        (14, 0x32, 1, D(2019, 3, 5, 14, 16, 6), Ctrl.EOT),  # centre clock, may go offline
        (23, 0x34, 1, D(2014, 6, 13, 14, 38, 53), Ctrl.EOT),
        (27, 0x35, 4, D(2059, 10, 11, 15, 51, 45), Ctrl.ESC),
    ],
)
def test_confirms(i: int, function: int, serial: int, sent: D, end: int) -> None:
    assert encode.confirm(link(i), function, serial, sent, end=end) == vec(i)


def test_confirm_refuses_a_query_end_char() -> None:
    with pytest.raises(EncodeError):
        encode.confirm(link(2), 0x30, 3, D(2059, 10, 11), end=Ctrl.ENQ)


@pytest.mark.parametrize(
    ("i", "function", "sent"),
    [
        (29, 0x36, D(2017, 7, 18, 9, 52, 55)),
        (32, 0x37, D(2017, 7, 18, 9, 54, 4)),
        (39, 0x39, D(2017, 7, 18, 10, 7, 20)),
        (51, 0x44, D(2017, 7, 18, 10, 20, 48)),
        (53, 0x45, D(2017, 7, 18, 10, 20, 55)),
        (54, 0x46, D(2017, 7, 18, 10, 21, 8)),
        (68, 0x50, D(2017, 7, 18, 10, 23, 44)),
        (70, 0x51, D(2017, 7, 18, 10, 57, 10)),
    ],
)
def test_plain_queries(i: int, function: int, sent: D) -> None:
    assert encode.query(link(i), function, sent) == vec(i)


def test_query_realtime() -> None:
    assert encode.query_realtime(link(32), D(2017, 7, 18, 9, 54, 4)) == vec(32)


def test_query_period_hourly_blocks_and_five_minutes() -> None:
    assert encode.query_period(
        link(35),
        D(2013, 3, 25, 11, 5, 33),
        D(2013, 3, 24, 10),
        D(2013, 3, 25, 10),
        TimeStep(),
        "F4",
    ) == vec(35)
    # DOCX devices use a non-zero serial for queries; accepted and reproducible.
    assert encode.query_period(
        link(37),
        D(2024, 1, 9, 17, 15, 1),
        D(2024, 1, 9, 16),
        D(2024, 1, 9, 17),
        TimeStep(minutes=5),
        "DRP",
        serial=3,
    ) == vec(37)


def test_query_elements_with_nominal_data_definitions() -> None:
    assert encode.query_elements(link(41), D(2017, 7, 18, 11, 2, 30), ["F4"]) == vec(41)
    assert encode.query_elements(
        link(44), D(2017, 7, 18, 11, 2, 58), ["PD", "PJ", "PT", "VT", "Z"]
    ) == vec(44)
    assert encode.query_elements(
        link(44), D(2017, 7, 18, 11, 2, 58), [("1F", 0x19), 0x20, "26", "VT", "39"]
    ) == vec(44)


def test_set_clock_sends_the_time_to_set() -> None:
    clock = D(2017, 7, 18, 10, 21, 49)
    raw = encode.set_clock(link(60), clock)
    assert raw == vec(60)
    assert decode_body(parse_frame(raw)).sent_at == clock


def test_change_password_sends_old_and_new() -> None:
    raw = encode.change_password(link(59), "03E8", D(2017, 7, 18, 10, 21, 23))
    assert raw == vec(59)
    assert decode_body(parse_frame(raw)).detail == PasswordChange("1234", "03E8")
    with pytest.raises(EncodeError):
        encode.change_password(link(59), "12345", D(2017, 7, 18))


def test_configuration_reads_list_identifiers() -> None:
    assert encode.read_basic_config(
        link(46), D(2017, 7, 18, 10, 19, 12), [1, 2, 3, 4, 5, 0x0C, 0x0D, 0x0F]
    ) == vec(46)
    runtime = [0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x30, 0x38, 0x40, 0x41]
    assert encode.read_runtime_config(link(49), D(2017, 7, 18, 10, 20, 34), runtime) == vec(49)
    default = parse_frame(encode.read_basic_config(link(46), D(2017, 7, 18)))
    assert len(default.body) == 8 + 2 * 15


def test_runtime_parameters_write() -> None:
    values = [
        (0x20, 1),
        (0x21, 5),
        (0x22, 8),
        (0x23, 300),
        (0x24, 5),
        (0x25, 1.0),
        (0x26, 1.0),
        (0x27, 2),
    ]
    values += [(0x28, 10.0), (0x30, 0.2), (0x38, 5.0), (0x40, 0.03), (0x41, 0.2)]
    assert encode.write_runtime_config(link(48), D(2017, 7, 18, 10, 20, 12), values) == vec(48)


def test_commands() -> None:
    assert encode.command(link(56), 0x47, D(2017, 7, 18, 11, 3, 51), b"\x97\x00") == vec(56)
    assert encode.command(link(57), 0x48, D(2017, 7, 18, 11, 4, 37), b"\x98\x00") == vec(57)
    ic_on = status_word(ic_card_valid=True, door_open=True, pump_running=True)
    assert encode.command(
        link(62), 0x4B, D(2017, 7, 18, 10, 22, 37), b"\x45\x20" + ic_on.to_bytes(4, "big")
    ) == vec(62)
    assert encode.switch_command(link(63), 0x4C, D(2017, 7, 18, 10, 22, 47), [True]) == vec(63)
    assert encode.switch_command(link(64), 0x4D, D(2017, 7, 18, 10, 22, 58), [True]) == vec(64)
    assert encode.command(link(67), 0x4F, D(2017, 7, 18, 10, 23, 21), b"\xff") == vec(67)


# -- uplinks (simulator) -----------------------------------------------------------------------


def test_keepalive() -> None:
    assert encode.keepalive(link(0), 3, D(2059, 10, 11, 15, 51, 11)) == vec(0)


def test_test_report_with_table_widths() -> None:
    group = Group(
        D(2059, 10, 11, 15, 49),
        [Value("PJ", 0.5), Value("PT", 0.5), Value("Z", 0.127), Value("VT", 11.15)],
    )
    assert encode.report(
        link(1), 0x30, 3, D(2059, 10, 11, 15, 49, 47), category=0x48, groups=[group]
    ) == vec(1)


def test_hourly_report_with_blocks_and_several_observation_times() -> None:
    first, hour = D(2017, 7, 18, 10, 5), D(2017, 7, 18, 11)
    groups = [
        Group(first, [BlockValues("F4", [0.5, 0, 0, 0, 2.0, None, None, None, None, None, 0, 0])]),
        Group(hour, [Value("PT", 4.0)]),
        Group(
            first,
            [
                BlockValues(
                    "DRZ1", [0.12, 0.12, 0.28, 0.49, 0.49, None, None, None, None, None, 0.49, 0.49]
                )
            ],
        ),
        Group(hour, [Value("Z", 10.49), Value("PJ", 4.0), Value("VT", 10.99)]),
    ]
    assert encode.report(
        link(20), 0x34, 51, D(2017, 7, 18, 11, 0, 14), category=0x48, groups=groups
    ) == vec(20)


def test_even_interval_series_with_missing_samples() -> None:
    values = [0.122, 0.122, 0.285, 10.49, 10.49, None, None, None, None, None, 10.49, 10.49]
    group = Group(D(2017, 7, 18, 10, 5), [SeriesValues("Z", TimeStep(minutes=5), values)])
    assert encode.report(
        link(3), 0x31, 49, D(2017, 7, 18, 11, 0, 5), category=0x48, groups=[group]
    ) == vec(3)


def test_period_response_of_hourly_blocks_ending_etb() -> None:
    group = Group(D(2013, 3, 24, 10), [SeriesValues("F4", TimeStep(), [0.0] * 192)])
    raw = encode.report(
        link(36), 0x38, 49, D(2013, 3, 25, 11, 5, 33), category=0x48, groups=[group], end=Ctrl.ETB
    )
    assert raw == vec(36)


def test_negative_values_and_vendor_identifiers() -> None:
    items = [
        Value("76", -1.72, 2, width=5),
        Value("77", -0.21, 2, width=5),
        Value("78", 1.52, 2, width=4),
    ]
    raw = encode.report(
        link(8),
        0x32,
        2,
        D(2024, 11, 11, 10, 29, 42),
        category=0x5A,
        groups=[Group(D(2024, 11, 11, 10, 29), items)],
    )
    assert raw == vec(8)


def test_aa_missing_and_extension_identifier() -> None:
    items = [
        Value("PN05", 0.0),
        Value("PJ", 3.5),
        Value("Z", None, fill="AA"),
        Value("FF11", 0.008, 3, width=4),
        Value("VT", 12.44),
    ]
    raw = encode.report(
        link(11),
        0x32,
        3,
        D(2024, 1, 9, 15, 30),
        category=0x48,
        groups=[Group(D(2024, 1, 9, 15, 30), items)],
    )
    assert raw == vec(11)


def test_manual_report() -> None:
    assert encode.manual_report(link(26), 4, D(2059, 10, 11, 15, 51, 45), "Q 1.234") == vec(26)
    assert encode.manual_report(
        link(40), 20, D(2017, 7, 18, 10, 6, 30), "Q 1.234", function=0x39
    ) == vec(40)


def test_replies_to_configuration_and_control_queries() -> None:
    assert encode.status_reply(link(55), 35, D(2017, 7, 18, 10, 20, 8), 0x400) == vec(55)
    assert encode.station_reply(link(61), 0x4A, 37, D(2017, 7, 18, 10, 21, 49)) == vec(61)
    assert encode.station_reply(link(71), 0x51, 48, D(2017, 7, 18, 10, 57, 6)) == vec(71)
    assert encode.station_reply(link(58), 0x48, 59, D(2017, 7, 18, 11, 4, 32)) == vec(58)
    version = parse_frame(encode.version_reply(link(61), 1, D(2017, 7, 18), "RTU-2.1"))
    assert decode_body(version).detail is not None


def test_picture_split_into_m3_packets_matches_the_real_first_and_last_packet() -> None:
    """Packets 1 and 13 of the 13-packet picture: rebuilt from their own JPEG bytes, 281 body
    bytes per packet, packets 2-12 filled with zeros (their bytes are not in the file)."""
    first, last = parse_frame(vec(30)), parse_frame(vec(31))
    jpeg = first.body[25:] + bytes(281 * 11) + last.body
    packets = encode.picture_report(
        first.link,
        5,
        D(2059, 10, 11, 16, 11, 18),
        category=0x48,
        observed_at=D(2059, 10, 11, 16, 11),
        jpeg=jpeg,
        max_body=281,
    )
    assert len(packets) == 13
    assert packets[0] == vec(30) and packets[12] == vec(31)
