"""The SL651 codec below the stream: CRC, BCD values (negatives, missing fills), the element and
status tables, body decoding of the awkward cases, M3 joining, and encode→decode round trips."""

from __future__ import annotations

import contextlib
import dataclasses
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.protocols.sl651 import (
    CATEGORIES,
    ELEMENTS,
    STATUS_BITS,
    BlockElement,
    BlockValues,
    BodyError,
    BytesElement,
    Ctrl,
    EncodeError,
    Frame,
    FrameError,
    Group,
    LinkAddress,
    ManualText,
    Message,
    NumberElement,
    RejectReason,
    SeriesElement,
    SeriesValues,
    StationAddress,
    StatusElement,
    StatusValue,
    TextElement,
    TimeStep,
    Value,
    build_frame,
    crc16,
    decode_body,
    decode_packets,
    encode,
    frame_serial,
    join_packets,
    parse_frame,
    status_flags,
    status_word,
)
from agent.protocols.sl651.bcd import Fill, decode_number, encode_number, encode_time, is_sentinel
from agent.protocols.sl651.elements import Kind, element_spec, parse_key
from agent.protocols.sl651.frame import Direction, Encoding
from agent.protocols.sl651.items import Item, RawElement
from agent.protocols.sl651.message import Continuation, RawBody

LINK = LinkAddress(1, "0012345678", "1234")
SENT = datetime(2024, 5, 6, 7, 8, 9)
OBS = datetime(2024, 5, 6, 7, 0)


def decode(raw: bytes) -> Message:
    return decode_body(parse_frame(raw))


def up(function: int, body: bytes) -> bytes:
    return build_frame(LINK, function, body, direction="up", end=Ctrl.ETX)


def report_frame(*items: Item, function: int = 0x32, obs: datetime = OBS) -> bytes:
    return encode.report(LINK, function, 1, SENT, category=0x48, groups=[Group(obs, list(items))])


# -- CRC -------------------------------------------------------------------------------------


def test_crc_is_modbus_with_the_standard_check_value() -> None:
    assert crc16(b"123456789") == 0x4B37


def test_crc_of_the_worked_frame_is_written_high_byte_first() -> None:
    """docs/sl651-notes.md §3.4: the blog/NOV/YU worked keep-alive frame ends 6B CA."""
    frame = bytes.fromhex("7E7E01001234567812342F0008020003591011155111036BCA")
    assert crc16(frame[:-2]) == 0x6BCA
    assert encode.keepalive(LINK, 3, datetime(2059, 10, 11, 15, 51, 11)) == frame


def test_control_characters_are_a_table_with_their_clause() -> None:
    from agent.protocols.sl651.frame import CONTROL_CHARACTERS, end_name

    assert {c.name for c in CONTROL_CHARACTERS.values()} == {m.name for m in Ctrl}
    assert all(c.clause.startswith("§6") for c in CONTROL_CHARACTERS.values())
    assert end_name(0x1B) == "ESC" and end_name(0x99) == "0x99"


# -- BCD values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "decimals", "value"),
    [
        ("000005", 1, 0.5),
        ("00010490", 3, 10.49),
        # SHI real frame: 76 2A, sign byte counted (docs/sl651-notes.md §8)
        ("FF00000172", 2, -1.72),
        ("FF00000021", 2, -0.21),
        ("FF0172", 2, -1.72),  # even digit count N(4,2): one FF byte
        ("FF000172", 2, -1.72),  # odd digit count N(5,2): "FF0" prefix
        ("002730", 2, 27.3),
        ("1320", 0, 1320),
    ],
)
def test_bcd_numbers_decode_by_the_data_definition(data: str, decimals: int, value: float) -> None:
    assert decode_number(bytes.fromhex(data), decimals).value == value


@pytest.mark.parametrize(
    ("data", "fill"), [("FFFFFFFF", "FF"), ("AAAAAAAA", "AA"), ("FFFF", "FF"), ("AA", "AA")]
)
def test_all_ff_and_all_aa_are_missing_and_say_which(data: str, fill: str) -> None:
    decoded = decode_number(bytes.fromhex(data), 3)
    assert decoded.value is None and decoded.missing == fill and decoded.error is None


@pytest.mark.parametrize("data", ["12AB", "FFFF12", "AAAA00", "0F"])
def test_other_non_bcd_data_is_invalid_not_missing(data: str) -> None:
    decoded = decode_number(bytes.fromhex(data), 1)
    assert decoded.value is None and decoded.missing is None and decoded.error


def test_encoding_negatives_adds_a_counted_sign_byte() -> None:
    assert encode_number(-1.72, 2, digits=5) == (0x22, bytes.fromhex("FF000172"))
    assert encode_number(-1.72, 2, digits=4) == (0x1A, bytes.fromhex("FF0172"))
    assert encode_number(-1.72, 2, width=5) == (0x2A, bytes.fromhex("FF00000172"))
    assert encode_number(Decimal("10.49"), 3, digits=7) == (0x23, bytes.fromhex("00010490"))


def test_encoding_rounds_the_decimal_value_not_the_float() -> None:
    assert encode_number(0.285, 3, digits=7)[1] == bytes.fromhex("00000285")
    assert encode_number(2.675, 2, digits=4)[1] == bytes.fromhex("0268")  # half-even on 267.5


def test_values_that_do_not_fit_are_refused() -> None:
    with pytest.raises(EncodeError, match="does not fit"):
        encode.element("Z", 123456.789)  # N(7,3)
    with pytest.raises(EncodeError):
        encode.element("Z", float("nan"))
    with pytest.raises(EncodeError):
        encode.element("NOPE", 1)


def test_nines_are_a_sentinel() -> None:
    assert is_sentinel(bytes.fromhex("09999999"))
    assert not is_sentinel(bytes.fromhex("00000999"))


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(-(10**12), 10**12),
    decimals=st.integers(0, 7),
    spare=st.integers(0, 2),
)
def test_any_number_survives_encode_then_decode(n: int, decimals: int, spare: int) -> None:
    value = Decimal(n).scaleb(-decimals)
    digits = len(str(abs(n)))
    dd, data = encode_number(value, decimals, digits=digits + spare)
    assert dd & 7 == decimals and dd >> 3 == len(data)
    decoded = decode_number(data, decimals)
    assert decoded.value == (n / 10**decimals if decimals else n)


# -- tables ----------------------------------------------------------------------------------


def test_appendix_c_is_complete() -> None:
    expected = {*range(0x01, 0x76), *range(0xF0, 0xFE)}
    assert set(ELEMENTS) == expected
    ids = [e.ascii_id for e in ELEMENTS.values()]
    assert len(ids) == len(set(ids))
    assert (
        ELEMENTS[0x39].ascii_id == "Z" and ELEMENTS[0x39].unit == "m" and ELEMENTS[0x39].digits == 7
    )
    assert ELEMENTS[0xF4].kind is Kind.RAIN_BLOCK and ELEMENTS[0xFC].ascii_id == "DRZ8"


def test_unlisted_identifiers_keep_their_hex() -> None:
    assert element_spec(0x76).ascii_id == "76"
    assert element_spec(0xFF11).ascii_id == "FF11" and element_spec(0xFF11).key == "FF11"
    assert parse_key("DRP") == 0xF4 and parse_key("ff11") == 0xFF11 and parse_key(0x39) == 0x39
    with pytest.raises(KeyError):
        parse_key("1234")


def test_category_codes_are_the_ascii_letters() -> None:
    assert all(ord(c.letter) == code for code, c in CATEGORIES.items())


def test_status_bits_7_and_10_are_inverted() -> None:
    """Table 58: bit 7 = 0 means the door is open, bit 10 = 0 means the pump is running."""
    quiet = status_flags(0)
    assert quiet["door_open"] is True and quiet["pump_running"] is True
    assert sum(quiet.values()) == 2
    assert status_flags(1 << 7)["door_open"] is False
    assert status_flags(1 << 10)["pump_running"] is False
    assert status_flags(0x400) == {
        **dict.fromkeys(quiet, False),
        "door_open": True,
    }  # docs/sl651-notes.md §12 example


@pytest.mark.parametrize("bit", STATUS_BITS, ids=lambda b: b.name)
def test_each_status_bit_round_trips_by_name(bit: object) -> None:
    assert isinstance(bit, type(STATUS_BITS[0]))
    for state in (True, False):
        word = status_word(**{bit.name: state})
        assert status_flags(word)[bit.name] is state
    with pytest.raises(KeyError):
        status_word(no_such_bit=True)


def test_station_addresses_raw_and_interpreted() -> None:
    hydro = StationAddress.from_raw("0012345678")
    assert (hydro.kind, hydro.code, hydro.role) == ("hydrology", "0012345678", "station")
    other = StationAddress.from_raw("40590235c2")
    assert (other.raw, other.admin_code, other.number, other.code) == (
        "40590235C2",
        "405902",
        13762,
        "405902013762",
    )
    assert StationAddress.from_raw("112233FFFF").role == "broadcast"
    assert StationAddress.from_raw("112233EA61").role == "relay"  # 60001
    assert StationAddress.from_raw("1122330000").role == "invalid"


# -- bodies ----------------------------------------------------------------------------------


def test_blocks_give_each_slot_its_own_time() -> None:
    message = decode(
        report_frame(
            BlockValues("F4", [0.5, 0, 2.0, None] + [0] * 8),
            BlockValues("F6", [27.3] + [None] * 11),
        )
    )
    rain, level = message.elements
    assert isinstance(rain, BlockElement) and isinstance(level, BlockElement)
    assert [s.value for s in rain.samples[:4]] == [0.5, 0.0, 2.0, None]
    assert rain.samples[3].missing == "FF"
    assert [s.observed_at for s in rain.samples] == [
        OBS + timedelta(minutes=5 * i) for i in range(12)
    ]
    assert level.key == "F6" and level.spec.ascii_id == "DRZ2" and level.samples[0].value == 27.3


def test_a_series_gives_each_step_its_own_time() -> None:
    values = [1.5, None, -0.25, 3]
    message = decode(report_frame(SeriesValues("Z", TimeStep(hours=1), values), function=0x31))
    (series,) = message.elements
    assert isinstance(series, SeriesElement) and series.step == TimeStep(hours=1)
    assert [s.value for s in series.samples] == [1.5, None, -0.25, 3.0]
    assert [s.observed_at for s in series.samples] == [OBS + timedelta(hours=i) for i in range(4)]
    assert series.datadef == 0x2B  # one width for all values: the negative one's (sign byte)


def test_hourly_block_series_runs_on_in_five_minute_slots() -> None:
    message = decode(report_frame(SeriesValues("F4", TimeStep(), [0.1] * 24), function=0x38))
    (series,) = message.elements
    assert isinstance(series, SeriesElement) and len(series.samples) == 24
    assert series.samples[-1].observed_at == OBS + timedelta(minutes=5 * 23)


def test_time_step_000000_before_a_plain_element_is_refused() -> None:
    body = encode.head(1, SENT) + bytes.fromhex(
        "F1F1001234567848F0F02405060700041800000039230000012300000124"
    )
    with pytest.raises(BodyError, match="000000"):
        decode(up(0x31, body))


def test_status_word_element_and_text_and_extension() -> None:
    message = decode(
        report_frame(
            StatusValue(0x402),
            RawElement("FF11", 0x23, bytes.fromhex("00000008")),
            ManualText("Q 1.234"),
        )
    )
    status, ext, text = message.elements
    assert (
        isinstance(status, StatusElement)
        and status.flags["battery_low"]
        and status.flags["door_open"]
    )
    assert isinstance(ext, NumberElement) and ext.key == "FF11" and ext.value == 0.008
    assert isinstance(text, TextElement) and text.text == "Q 1.234"


def test_f0_before_f1_is_accepted() -> None:
    """DOOM's picture devices put the observation time before the station group (docs/sl651-notes.md §3.3)."""
    body = (
        encode.head(5, SENT)
        + bytes.fromhex("F0F02405060700F1F1001234567848")
        + b"\xf3\xf3\xff\xd8\xff\xd9"
    )
    message = decode(up(0x36, body))
    assert message.station == StationAddress.from_raw("0012345678") and message.category == 0x48
    assert message.observed_at == OBS
    (picture,) = message.elements
    assert isinstance(picture, BytesElement) and picture.data == b"\xff\xd8\xff\xd9"


def test_duration_written_as_characters_is_read() -> None:
    """NOV writes DT as five ASCII characters (docs/sl651-notes.md §8)."""
    message = decode(report_frame(RawElement("DT", 0x28, b"11.01")))
    (dt,) = message.elements
    assert isinstance(dt, NumberElement) and dt.value == 11.01


def test_invalid_bcd_keeps_the_rest_of_the_body() -> None:
    message = decode(
        report_frame(RawElement("Z", 0x23, bytes.fromhex("0012AB34")), Value("VT", 12.5))
    )
    z, vt = message.elements
    assert isinstance(z, NumberElement) and z.value is None and z.error == "not BCD: 0012AB34"
    assert isinstance(vt, NumberElement) and vt.value == 12.5


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("0001", "send time"),
        ("0001 240506070809 F1F1 0012", "station address"),
        ("0001 240506070809 F1F1 0012345678 48 F0F0 2413060700", "observation time"),
        ("0001 240506070809 F1F1 0012345678 48 F0F0 2405060700 3923 0001", "39 data"),
        (
            "0001 240506070809 F1F1 0012345678 48 F4 60 000000000000000000000000",
            "before any observation",
        ),
        ("0001 240506070809 F1 33 0012345678 48", "F1 with data-definition byte 33"),
    ],
)
def test_bodies_that_do_not_decode_say_where_and_why(body: str, match: str) -> None:
    with pytest.raises(BodyError, match=match) as info:
        decode(up(0x32, bytes.fromhex(body.replace(" ", ""))))
    assert info.value.offset >= 0


def test_unknown_functions_keep_their_bytes() -> None:
    message = decode(up(0xE1, encode.head(1, SENT) + b"\x01\x02"))
    assert message.detail == RawBody(b"\x01\x02")


def test_frame_serial_reads_the_serial_even_when_the_body_fails() -> None:
    frame = parse_frame(up(0x32, encode.head(77, SENT) + b"\xf1"))
    with pytest.raises(BodyError):
        decode_body(frame)
    assert frame_serial(frame) == 77


# -- M3 --------------------------------------------------------------------------------------


def picture(jpeg: bytes, max_body: int = 100) -> list[Frame]:
    raws = encode.picture_report(
        LINK, 9, SENT, category=0x48, observed_at=OBS, jpeg=jpeg, max_body=max_body
    )
    return [parse_frame(r) for r in raws]


def test_picture_packets_join_back_into_the_jpeg() -> None:
    jpeg = bytes(range(256)) * 3
    frames = picture(jpeg)
    assert [f.packet for f in frames] == [(len(frames), i) for i in range(1, len(frames) + 1)]
    assert [f.end for f in frames] == [Ctrl.ETB] * (len(frames) - 1) + [Ctrl.ETX]
    first = decode_body(frames[0])
    assert first.serial == 9 and not first.complete
    later = decode_body(frames[1])
    assert later.serial is None and isinstance(later.detail, Continuation)
    whole = decode_packets(list(reversed(frames)))
    assert whole.complete and whole.serial == 9
    (pic,) = whole.elements
    assert isinstance(pic, BytesElement) and pic.data == jpeg


def test_packet_1_cut_inside_an_element_keeps_the_tail() -> None:
    body = encode.report_body(
        3, SENT, LINK.station, 0x48, [Group(OBS, [Value("Z", 1.0), Value("VT", 12.0)])]
    )
    raws = encode.packets(LINK, 0x32, body, max_body=len(body) - 2)
    first = decode_body(parse_frame(raws[0]))
    assert [e.key for e in first.elements] == ["39"]
    assert (
        isinstance(first.detail, Continuation) and first.detail.data == body[-4:-2]
    )  # VT: 38 12 | 12 00
    assert [e.key for e in decode_packets([parse_frame(r) for r in raws]).elements] == ["39", "38"]


def test_a_missing_packet_is_named() -> None:
    frames = picture(bytes(500))
    with pytest.raises(BodyError, match=r"missing \[3\]"):
        join_packets(frames[:2] + frames[3:])
    with pytest.raises(BodyError):
        join_packets([])


def test_m3_confirm_and_nak_carry_the_packet_field() -> None:
    confirm = parse_frame(encode.confirm_packets(LINK, 0x36, 9, SENT, 13))
    assert confirm.packet == (13, 13) and confirm.end == Ctrl.EOT and confirm.direction == "down"
    nak = parse_frame(encode.nak_packet(LINK, 0x36, 9, SENT, 13, 4))
    assert nak.packet == (13, 4) and nak.end == Ctrl.NAK
    assert decode_body(nak).serial == 9
    with pytest.raises(EncodeError):
        encode.nak_packet(LINK, 0x36, 9, SENT, 13, 14)


# -- whole frames ----------------------------------------------------------------------------


def test_parse_frame_names_what_is_wrong() -> None:
    good = report_frame(Value("Z", 1.0))
    cases = {
        RejectReason.BAD_START: b"\x00" + good[1:],
        RejectReason.TRUNCATED: good[:-1],
        RejectReason.BAD_LENGTH: good + b"\x00",
        RejectReason.BAD_CRC: good[:-1] + bytes([good[-1] ^ 1]),
        RejectReason.BAD_END: good[:-3] + b"\x09" + good[-2:],
    }
    for reason, raw in cases.items():
        with pytest.raises(FrameError) as info:
            parse_frame(raw)
        assert info.value.reason is reason
    assert not parse_frame(cases[RejectReason.BAD_CRC], check_crc=False).crc_ok


def test_downlink_header_swaps_station_and_centre() -> None:
    raw = encode.confirm(LINK, 0x32, 5, SENT)
    assert raw[2:7] == bytes.fromhex("0012345678") and raw[7] == 1
    frame = parse_frame(raw)
    assert (frame.direction, frame.center, frame.station) == ("down", 1, "0012345678")


def test_build_frame_refuses_fields_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="10 hex digits"):
        build_frame(LinkAddress(1, "12345", "1234"), 0x32, b"", direction="up", end=Ctrl.ETX)
    with pytest.raises(ValueError, match="4 hex digits"):
        build_frame(LinkAddress(1, "0012345678", "12"), 0x32, b"", direction="up", end=Ctrl.ETX)
    with pytest.raises(ValueError, match="12-bit"):
        build_frame(LINK, 0x32, bytes(5000), direction="up", end=Ctrl.ETX)


amounts = st.decimals(
    min_value=-9999, max_value=99999, places=3, allow_nan=False, allow_infinity=False
)
idents = st.sampled_from(["Z", "PJ", "PT", "VT", "Q", "AI", "76", "FF11", "ZU", "H"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(
        st.tuples(
            idents, st.one_of(st.none(), amounts), st.integers(0, 3), st.sampled_from(["FF", "AA"])
        ),
        max_size=8,
    ),
    serial=st.integers(0, 65535),
    center=st.integers(0, 255),
    station=st.binary(min_size=5, max_size=5).map(lambda b: b.hex().upper()),
    password=st.binary(min_size=2, max_size=2).map(lambda b: b.hex().upper()),
    minute=st.integers(0, 60 * 24 * 365 * 50),
    encoding=st.sampled_from(["hex", "ascii"]),
)
def test_reports_round_trip_through_frame_and_body(
    values: list[tuple[str, Decimal | None, int, Fill]],
    serial: int,
    center: int,
    station: str,
    password: str,
    minute: int,
    encoding: Encoding,
) -> None:
    link = LinkAddress(center, station, password)
    when = datetime(2001, 1, 1) + timedelta(minutes=minute)
    items: list[Item] = [Value(i, v, d, width=8, fill=f) for i, v, d, f in values]
    raw = encode.report(
        link, 0x33, serial, when, category=0x4B, groups=[Group(when, items)], encoding=encoding
    )
    frame = parse_frame(raw)
    assert (frame.center, frame.station, frame.password, frame.function) == (
        center,
        station,
        password,
        0x33,
    )
    message = decode_body(frame)
    assert (message.serial, message.sent_at, message.category) == (serial, when, 0x4B)
    assert message.station is not None and message.station.raw == station
    got = [(e.key, e.value, e.missing) for e in message.elements if isinstance(e, NumberElement)]
    want: list[tuple[str, object, object]] = []
    for ident, value, decimals, fill in values:
        key = element_spec(parse_key(ident)).key
        if value is None:
            want.append((key, None, fill if encoding == "hex" else "M"))
        else:
            n = int(value.scaleb(decimals).to_integral_value(rounding="ROUND_HALF_EVEN"))
            want.append((key, n / 10**decimals if decimals else n, None))
    assert got == want


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=200),
    function=st.sampled_from([0x2F, *range(0x30, 0x3B), *range(0x40, 0x52), 0xE0]),
    direction=st.sampled_from(["up", "down"]),
    packet=st.sampled_from([None, (2, 1), (3, 2)]),
    prefix=st.sampled_from(
        [
            b"",
            encode.head(1, SENT),
            encode.head(1, SENT) + bytes.fromhex("F1F1001234567848F0F02405060700"),
        ]
    ),
)
def test_any_body_decodes_or_raises_body_error_only(
    body: bytes, function: int, direction: Direction, packet: tuple[int, int] | None, prefix: bytes
) -> None:
    frame = Frame(
        "hex", direction, 1, "0012345678", "1234", function, packet, prefix + body, Ctrl.ETX, b""
    )
    try:
        message = decode_body(frame)
    except BodyError:
        return
    assert isinstance(message, Message)
    ascii_frame = dataclasses.replace(
        frame, encoding="ascii", body=prefix.hex().upper().encode() + body
    )
    with contextlib.suppress(BodyError):
        decode_body(ascii_frame)


def test_times_outside_the_century_are_refused() -> None:
    with pytest.raises(EncodeError):
        encode.keepalive(LINK, 1, datetime(1999, 12, 31))
    assert encode_time(datetime(2099, 12, 31, 23, 59, 59)) == bytes.fromhex("991231235959")
