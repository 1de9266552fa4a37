"""ASCII encoding (§6.4, §6.6.2): frames with hex-character headers and space-separated bodies,
decoded and encoded for the report functions 30-35 and 37."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.protocols.sl651 import (
    BlockElement,
    BlockValues,
    BodyError,
    Ctrl,
    Frame,
    Group,
    LinkAddress,
    NumberElement,
    SeriesElement,
    SeriesValues,
    StatusElement,
    StatusValue,
    StreamDecoder,
    TextElement,
    TimeStep,
    Value,
    build_frame,
    crc16,
    decode_body,
    decode_packets,
    encode,
    parse_frame,
)
from agent.protocols.sl651.items import Item
from agent.protocols.sl651.message import Continuation, RawBody

LINK = LinkAddress(1, "0010100001", "A000")
SENT = datetime(2024, 1, 9, 16, 1, 28)
OBS = datetime(2024, 1, 9, 16, 1)


def by_hand(head: str, body: str, end: int = Ctrl.ETX) -> bytes:
    """A frame written out from Table 16 by hand: SOH, header characters, STX, body, end, CRC."""
    frame = (
        b"\x01"
        + head.encode()
        + f"{len(body):03X}".encode()
        + b"\x02"
        + body.encode()
        + bytes([end])
    )
    return frame + f"{crc16(frame):04X}".encode()


def test_report_frame_is_the_layout_of_table_16() -> None:
    body = "1234" + "240109160128" + "ST 0010100001 H TT 2401091601 PJ 3.5 Z 12.340 VT 12.10 "
    expected = by_hand("01" + "0010100001" + "A000" + "32" + "0", body)
    group = Group(OBS, [Value("PJ", 3.5), Value("Z", 12.34), Value("VT", 12.1)])
    raw = encode.report(LINK, 0x32, 0x1234, SENT, category=0x48, groups=[group], encoding="ascii")
    assert raw == expected
    frame = parse_frame(raw)
    assert (frame.encoding, frame.direction, frame.center, frame.station, frame.password) == (
        "ascii",
        "up",
        1,
        "0010100001",
        "A000",
    )
    message = decode_body(frame)
    assert (message.serial, message.sent_at, message.category, message.observed_at) == (
        0x1234,
        SENT,
        0x48,
        OBS,
    )
    assert [(e.key, e.value) for e in message.elements if isinstance(e, NumberElement)] == [
        ("20", 3.5),
        ("39", 12.34),
        ("38", 12.1),
    ]


def test_downlink_query_and_confirm_swap_the_address_fields() -> None:
    query = encode.query_realtime(LINK, SENT, encoding="ascii")
    assert query == by_hand("0010100001" + "01" + "A000" + "37" + "8", "0000240109160128", Ctrl.ENQ)
    confirm = encode.confirm(LINK, 0x32, 0x1234, SENT, end=Ctrl.ESC, encoding="ascii")
    frame = parse_frame(confirm)
    assert (frame.direction, frame.center, frame.station, frame.end) == (
        "down",
        1,
        "0010100001",
        Ctrl.ESC,
    )
    assert decode_body(frame).serial == 0x1234


def test_space_after_the_send_time_is_accepted() -> None:
    """STD §6.6.2.1 says no space after serial and send time; PY64 writes one. Read both."""
    raw = by_hand(
        "01" + "0010100001" + "A000" + "32" + "0",
        "0001240109160128 ST 0010100001 H TT 2401091601 PJ 1.0 ",
    )
    message = decode_body(parse_frame(raw))
    assert [e.key for e in message.elements] == ["20"] and message.category == 0x48


def test_missing_negative_status_and_blocks() -> None:
    items: list[Item] = [
        Value("Z", None),
        Value("AI", -3.5),
        StatusValue(0x402),
        BlockValues("DRP", [0.5] * 6 + [None] * 6),
        BlockValues("DRZ1", [27.3] * 12),
    ]
    raw = encode.report(
        LINK, 0x34, 7, SENT, category=0x50, groups=[Group(OBS, items)], encoding="ascii"
    )
    assert (
        b" Z M " in raw
        and b" AI -3.5 " in raw
        and b" ZT 00000402 " in raw
        and b" DRP 050505050505FFFFFFFFFFFF " in raw
    )
    z, ai, zt, drp, drz = decode_body(parse_frame(raw)).elements
    assert isinstance(z, NumberElement) and z.value is None and z.missing == "M"
    assert isinstance(ai, NumberElement) and ai.value == -3.5
    assert isinstance(zt, StatusElement) and zt.flags["battery_low"]
    assert isinstance(drp, BlockElement) and [s.value for s in drp.samples][5:7] == [0.5, None]
    assert isinstance(drz, BlockElement) and drz.samples[11].observed_at == OBS + timedelta(
        minutes=55
    )


def test_even_interval_series_of_several_elements_time_by_time() -> None:
    """Table 30: identifiers first, then the data of every element at time 1, time 2 …"""
    series = [
        SeriesValues("Z", TimeStep(minutes=5), [1.0, None, 1.2]),
        SeriesValues("PJ", TimeStep(minutes=5), [0, 0.5, 1]),
    ]
    raw = encode.report(
        LINK, 0x31, 2, SENT, category=0x48, groups=[Group(OBS, series)], encoding="ascii"
    )
    assert b"DRN05 Z PJ 1.000 0.0 M 0.5 1.200 1.0 " in raw
    z, pj = decode_body(parse_frame(raw)).elements
    assert isinstance(z, SeriesElement) and isinstance(pj, SeriesElement)
    assert [s.value for s in z.samples] == [1.0, None, 1.2] and z.samples[1].missing == "M"
    assert [s.observed_at for s in pj.samples] == [
        OBS,
        OBS + timedelta(minutes=5),
        OBS + timedelta(minutes=10),
    ]


def test_hourly_block_series_drh00() -> None:
    series = SeriesValues("DRP", TimeStep(), [0.1] * 24)
    raw = encode.report(
        LINK, 0x31, 2, SENT, category=0x50, groups=[Group(OBS, [series])], encoding="ascii"
    )
    assert b"DRH00 DRP " in raw
    (drp,) = decode_body(parse_frame(raw)).elements
    assert isinstance(drp, SeriesElement) and len(drp.samples) == 24


def test_manual_data_runs_to_the_end_of_the_body() -> None:
    raw = encode.manual_report(LINK, 3, SENT, " PJ 02 ", encoding="ascii")
    (text,) = decode_body(parse_frame(raw)).elements
    assert isinstance(text, TextElement) and text.text == " PJ 02 "


def test_non_report_ascii_bodies_keep_their_bytes() -> None:
    raw = build_frame(
        LINK, 0x41, b"0000240109160128 01 03 ", direction="down", end=Ctrl.ENQ, encoding="ascii"
    )
    assert decode_body(parse_frame(raw)).detail == RawBody(b" 01 03 ")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("00", "serial"),
        ("0001240199160128", "send time"),
        ("0001240109160128ST 12 H", "10 hex digits"),
        ("0001240109160128ST 0010100001 H TT 24 ", "observation time"),
        ("0001240109160128ST 0010100001 H TT 2401091601 XYZ 1 ", "not an element identifier"),
        ("0001240109160128ST 0010100001 H TT 2401091601 Z one ", "not a number"),
        ("0001240109160128ST 0010100001 H TT 2401091601 Z ", "no value"),
        ("0001240109160128ST 0010100001 H DRN05 Z 1 ", "before any observation"),
    ],
)
def test_ascii_bodies_that_do_not_decode_say_why(body: str, match: str) -> None:
    raw = build_frame(LINK, 0x32, body.encode(), direction="up", end=Ctrl.ETX, encoding="ascii")
    with pytest.raises(BodyError, match=match):
        decode_body(parse_frame(raw))


def test_ascii_m3_packets_and_stream_mixed_with_hex() -> None:
    body = b"0001240109160128RGZS " + b"x" * 300 + b" "
    packets = encode.packets(LINK, 0x35, body, max_body=128, encoding="ascii")
    hex_frame = encode.keepalive(LINK, 1, SENT)
    decoder = StreamDecoder()
    decoder.feed(packets[0] + hex_frame + b"".join(packets[1:]))
    events = decoder.events()
    assert all(isinstance(e, Frame) for e in events)
    assert [e.packet for e in events if isinstance(e, Frame)] == [(3, 1), None, (3, 2), (3, 3)]
    ascii_packets = [e for e in events if isinstance(e, Frame) and e.packet is not None]
    assert decode_body(ascii_packets[1]).detail == Continuation(ascii_packets[1].body)
    (text,) = decode_packets(ascii_packets).elements
    assert isinstance(text, TextElement) and text.text == "x" * 300


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(
        st.tuples(
            st.sampled_from(["Z", "PJ", "VT", "Q", "AI", "H"]),
            st.one_of(
                st.none(),
                st.decimals(
                    min_value=-999, max_value=9999, places=2, allow_nan=False, allow_infinity=False
                ),
            ),
        ),
        max_size=8,
    ),
    serial=st.integers(0, 0xFFFF),
    category=st.sampled_from([0x48, 0x50, 0x4B, 0x5A]),
)
def test_ascii_reports_round_trip(
    values: list[tuple[str, Decimal | None]], serial: int, category: int
) -> None:
    items = [Value(i, v, 2) for i, v in values]
    raw = encode.report(
        LINK, 0x30, serial, SENT, category=category, groups=[Group(OBS, items)], encoding="ascii"
    )
    message = decode_body(parse_frame(raw))
    assert (message.serial, message.category) == (serial, category)
    got = [e.value for e in message.elements if isinstance(e, NumberElement)]
    assert got == [None if v is None else float(v.quantize(Decimal("0.01"))) for _, v in values]
