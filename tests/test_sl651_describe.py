"""The JSON of `edge-agent sl651 decode --json`: the shape documented in issue 4, for every
kind of frame, and {"error", "hex"} for what does not decode."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from agent.protocols.sl651 import (
    BlockValues,
    Ctrl,
    Group,
    LinkAddress,
    Value,
    build_frame,
    decode_hex_frame,
    describe_hex,
    encode,
    frame_json,
    parse_frame,
)
from agent.protocols.sl651.message import BodyError

LINK = LinkAddress(1, "0012345678", "1234")
TIMED_32 = "7E7E05001122334403E832002B020034170718110016F1F1001122334448F0F01707181100201900004026190000403923000104903812109903A421"
KEYS = [
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
]


def test_the_issue_example_shape() -> None:
    out = describe_hex(TIMED_32)
    assert list(out) == KEYS
    assert out | {"elements": None} == {
        "crc_ok": True,
        "direction": "up",
        "center": 5,
        "station": "0011223344",
        "password": "03E8",
        "function": "0x32",
        "serial": 52,
        "sent_at": "2017-07-18T11:00:16",
        "end": "ETX",
        "packet": None,
        "elements": None,
    }
    assert out["elements"][2] == {
        "id": "39",
        "name": "Z",
        "value": 10.49,
        "unit": "m",
        "observed_at": "2017-07-18T11:00:00",
    }
    assert [e["name"] for e in out["elements"]] == ["PJ", "PT", "Z", "VT"]
    json.dumps(out)


def test_hex_with_spaces_and_lower_case_is_accepted() -> None:
    spaced = " ".join(TIMED_32[i : i + 2] for i in range(0, len(TIMED_32), 2)).lower()
    assert describe_hex(f"  0x{spaced}\n") == describe_hex(TIMED_32)


def test_blocks_are_lists_and_missing_says_which_fill() -> None:
    groups = [
        Group(
            datetime(2017, 7, 18, 10, 5),
            [BlockValues("F4", [0.5, 0.0, None] + [0.0] * 9), Value("Z", None, fill="AA")],
        )
    ]
    raw = encode.report(LINK, 0x34, 1, datetime(2017, 7, 18, 11), category=0x48, groups=groups)
    f4, z = describe_hex(raw.hex())["elements"]
    assert f4 == {
        "id": "F4",
        "name": "DRP",
        "value": [0.5, 0.0, None] + [0.0] * 9,
        "unit": "mm",
        "observed_at": "2017-07-18T10:05:00",
    }
    assert z == {
        "id": "39",
        "name": "Z",
        "value": None,
        "unit": "m",
        "observed_at": "2017-07-18T10:05:00",
        "missing": "AA",
    }


def test_multi_packet_frames_show_total_and_seq() -> None:
    packets = encode.picture_report(
        LINK,
        5,
        datetime(2024, 1, 1),
        category=0x48,
        observed_at=datetime(2024, 1, 1),
        jpeg=bytes(300),
        max_body=100,
    )
    first, second = describe_hex(packets[0].hex()), describe_hex(packets[1].hex())
    assert first["packet"] == {"total": 4, "seq": 1} and first["end"] == "ETB"
    assert first["elements"][0]["name"] == "PIC"
    assert second["serial"] is None and second["elements"] == [] and "bytes" in second["detail"]


def test_status_word_shows_its_flags() -> None:
    raw = encode.status_reply(LINK, 35, datetime(2017, 7, 18), 0x402)
    (zt,) = describe_hex(raw.hex())["elements"]
    assert zt["value"] == 0x402 and zt["flags"] == ["battery_low", "door_open"]


def test_function_specific_bodies_go_in_detail() -> None:
    raw = encode.change_password(LINK, "03E8", datetime(2017, 7, 18))
    assert describe_hex(raw.hex())["detail"] == {"old_password": "1234", "new_password": "03E8"}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("zz", "not hex"),
        ("", "empty"),
        ("7E7E01", "truncated"),
        ("00112233", "bad_start"),
        (TIMED_32 + "00", "bad_length"),
    ],
)
def test_what_does_not_decode_gives_error_and_hex(text: str, error: str) -> None:
    out = describe_hex(text)
    assert list(out) == ["error", "hex"] and out["error"].startswith(error)
    assert out["hex"] == text.upper()


def test_a_body_that_does_not_decode_gives_error_and_hex() -> None:
    body = encode.head(1, datetime(2024, 1, 1)) + bytes.fromhex("F1F100123456")
    raw = build_frame(LINK, 0x32, body, direction="up", end=Ctrl.ETX)
    out = describe_hex(raw.hex())
    assert out == {
        "error": "body offset 10: station address needs 5 bytes, 4 left",
        "hex": raw.hex().upper(),
    }
    assert frame_json(parse_frame(raw), BodyError(10, "why")) == {
        "error": "body offset 10: why",
        "hex": raw.hex().upper(),
    }


def test_bad_crc_is_shown_decoded_with_crc_ok_false() -> None:
    damaged = TIMED_32[:-4] + "0000"
    frame, message, error = decode_hex_frame(damaged)
    assert frame is not None and message is not None and error == "bad_crc: frame has 0000"
    out = describe_hex(damaged)
    assert out["crc_ok"] is False and out["serial"] == 52
