"""Modbus ADU framing (sans-IO): requests out, replies in, each malformed reply named for what
is wrong with it. Replies come from the hostile simulator, which builds them by hand."""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.protocols.crc16 import crc16
from agent.protocols.modbus.adu import (
    ExceptionReply,
    ReadRequest,
    RegisterReadFrames,
    ReplyError,
    ReplyFault,
    Values,
    encode_rtu,
    encode_tcp,
    parse_rtu,
    parse_tcp,
    rtu_at_silence,
    tcp_cut_short,
)
from agent.sim.hostile_modbus import Answer, rtu_reply, tcp_reply

HOLDING = ReadRequest(unit=3, table="holding", address=100, count=2, transaction=7)


def test_requests_are_framed_as_the_specification_shows() -> None:
    # Modbus over Serial Line V1.02, and the classic vector "01 03 00 00 00 0A C5 CD".
    assert encode_rtu(ReadRequest(1, "holding", 0, 10)) == bytes.fromhex("01030000000AC5CD")
    assert encode_tcp(ReadRequest(0x11, "input", 8, 1, transaction=0x0102)) == bytes.fromhex(
        "010200000006110400080001"
    )
    assert crc16(b"123456789") == 0x4B37  # CRC-16/MODBUS check value


@pytest.mark.parametrize(("parse", "reply"), [(parse_tcp, tcp_reply), (parse_rtu, rtu_reply)])
def test_an_honest_reply_is_whole_only_with_its_last_byte(parse: Any, reply: Any) -> None:
    raw = reply(Answer.HONEST, (encode_tcp if parse is parse_tcp else encode_rtu)(HOLDING))
    for end in range(len(raw)):
        assert parse(raw[:end], HOLDING) is None
    assert parse(raw, HOLDING) == Values((100, 101), len(raw))
    # trailing bytes are left to the link (it drops them and starts afresh)
    assert parse(raw + b"junk", HOLDING) == Values((100, 101), len(raw))


def test_bits_are_read_least_significant_first() -> None:
    request = ReadRequest(1, "coil", 0, 10, transaction=1)
    raw = bytes.fromhex("0001000000050101020502")  # 0x05 0x02: bits 0, 2 and 9
    reply = parse_tcp(raw, request)
    assert isinstance(reply, Values)
    assert [i for i, bit in enumerate(reply.values) if bit] == [0, 2, 9]


def test_an_exception_reply_is_a_proper_answer() -> None:
    raw = bytes.fromhex("0007000000030383") + b"\x02"
    assert parse_tcp(raw, HOLDING) == ExceptionReply(2, 9)
    frame = bytes.fromhex("038302")
    frame += crc16(frame).to_bytes(2, "little")
    assert parse_rtu(frame, HOLDING) == ExceptionReply(2, 5)


TCP_FAULTS = {
    Answer.GARBAGE: (ReplyFault.UNPARSEABLE, "unparseable reply: not a Modbus TCP header"),
    Answer.WRONG_TRANSACTION: (
        ReplyFault.WRONG_TRANSACTION,
        "wrong transaction id: the reply carries 1007, the request 7",
    ),
    Answer.HUGE_LENGTH: (ReplyFault.BAD_LENGTH, "bad length: MBAP length 65535"),
    Answer.WRONG_UNIT: (ReplyFault.WRONG_UNIT, "wrong unit id: unit 4 answered"),
    Answer.WRONG_FUNCTION: (ReplyFault.WRONG_FUNCTION, "wrong function code: 0x10 in reply"),
    Answer.WRONG_BYTE_COUNT: (
        ReplyFault.WRONG_BYTE_COUNT,
        "wrong byte count: 6 bytes of data for 2 registers (expected 4)",
    ),
}


@pytest.mark.parametrize("answer", list(TCP_FAULTS))
def test_each_malformed_tcp_reply_is_named_for_what_is_wrong(answer: Answer) -> None:
    fault, reason = TCP_FAULTS[answer]
    raw = tcp_reply(answer, encode_tcp(HOLDING))
    for end in range(len(raw)):  # byte by byte, as a slow link would give it
        try:
            assert parse_tcp(raw[:end], HOLDING) is None
        except ReplyError:
            break  # named before the whole reply came (the header tells)
    with pytest.raises(ReplyError) as caught:
        parse_tcp(raw, HOLDING)
    assert caught.value.fault is fault
    assert caught.value.reason.startswith(reason)


def test_a_byte_count_that_disagrees_with_the_mbap_length_is_a_bad_length() -> None:
    raw = bytes.fromhex("000700000006030304") + bytes(3)  # MBAP 6: one byte short of bc 4
    with pytest.raises(ReplyError) as caught:
        parse_tcp(raw, HOLDING)
    assert caught.value.fault is ReplyFault.BAD_LENGTH
    assert caught.value.reason == "bad length: the byte count says 4 bytes, 3 came"


def test_a_tcp_reply_cut_short_says_how_much_came() -> None:
    raw = tcp_reply(Answer.HONEST, encode_tcp(HOLDING))
    assert tcp_cut_short(raw[:9], HOLDING).reason == (
        "bad length: the MBAP length announces 13 bytes, 9 came"
    )
    assert tcp_cut_short(b"\x00\x07\x00", HOLDING).fault is ReplyFault.UNPARSEABLE


RTU_FAULTS = {
    Answer.BAD_CRC: (
        ReplyFault.BAD_CRC,
        "bad CRC: frame 03 03 04 00 64 00 65 a7 07 carries CRC 0x07a7",
    ),
    Answer.WRONG_UNIT: (ReplyFault.WRONG_UNIT, "wrong unit id: unit 4 answered"),
    Answer.WRONG_BYTE_COUNT: (
        ReplyFault.WRONG_BYTE_COUNT,
        "wrong byte count: 6 bytes of data for 2 registers",
    ),
}


@pytest.mark.parametrize("answer", list(RTU_FAULTS))
def test_each_malformed_rtu_frame_is_named_as_soon_as_its_size_is_there(answer: Answer) -> None:
    fault, reason = RTU_FAULTS[answer]
    raw = rtu_reply(answer, encode_rtu(HOLDING))
    for end in range(len(raw)):  # byte by byte, as a slow link would give it
        try:
            assert parse_rtu(raw[:end], HOLDING) is None
        except ReplyError:
            break  # named before the whole reply came (the header tells)
    with pytest.raises(ReplyError) as caught:
        parse_rtu(raw, HOLDING)
    assert caught.value.fault is fault
    assert caught.value.reason.startswith(reason)


@pytest.mark.parametrize(
    ("answer", "fault", "reason"),
    [
        (Answer.GARBAGE, ReplyFault.UNPARSEABLE, "unparseable reply: 64 bytes that are not"),
        (Answer.WRONG_FUNCTION, ReplyFault.WRONG_FUNCTION, "wrong function code: 0x10"),
    ],
)
def test_rtu_bytes_without_a_size_are_judged_when_the_line_goes_quiet(
    answer: Answer, fault: ReplyFault, reason: str
) -> None:
    raw = rtu_reply(answer, encode_rtu(HOLDING))
    assert parse_rtu(raw, HOLDING) is None  # nothing in its header says where it ends
    error = rtu_at_silence(raw, HOLDING)
    assert error.fault is fault and error.reason.startswith(reason)


def test_an_rtu_frame_cut_short_is_a_bad_length() -> None:
    raw = rtu_reply(Answer.HONEST, encode_rtu(HOLDING))
    error = rtu_at_silence(raw[:6], HOLDING)
    assert error.fault is ReplyFault.BAD_LENGTH
    assert error.reason == "bad length: the frame announces 9 bytes, 6 came"


@given(st.binary(max_size=300), st.sampled_from(["holding", "coil"]), st.integers(1, 125))
def test_any_bytes_give_a_reply_need_more_or_a_reply_error(
    raw: bytes, table: str, count: int
) -> None:
    """Nothing a device sends makes the parsers raise anything but ReplyError."""
    request = ReadRequest(1, table, 0, count, transaction=raw[:2].rjust(2, b"\0")[0])
    for parse, judge in ((parse_tcp, tcp_cut_short), (parse_rtu, rtu_at_silence)):
        with contextlib.suppress(ReplyError):
            parse(raw, request)
        if raw:
            assert isinstance(judge(raw, request), ReplyError)


@given(
    unit=st.integers(0, 255),
    table=st.sampled_from(["holding", "input"]),
    address=st.integers(0, 0xFFFF),
    count=st.integers(1, 125),
    transaction=st.integers(1, 0xFFFF),
    values=st.lists(st.integers(0, 0xFFFF), min_size=125, max_size=125),
    cut=st.integers(0, 300),
    flip=st.integers(0, 300),
)
def test_a_register_read_framed_once_tells_its_good_reply_as_parse_tcp_does(
    unit: int,
    table: str,
    address: int,
    count: int,
    transaction: int,
    values: list[int],
    cut: int,
    flip: int,
) -> None:
    """`RegisterReadFrames` frames the request as `encode_tcp` does, and takes a reply as good
    only when `parse_tcp` takes the whole of it as that good reply, with the same values."""
    request = ReadRequest(unit, table, address, count, transaction)
    frames = RegisterReadFrames(unit, table, address, count)
    assert frames.request(transaction) == encode_tcp(request)
    good = struct.pack(
        ">HHHBBB", transaction, 0, 3 + 2 * count, unit, 3 if table == "holding" else 4, 2 * count
    )
    good += struct.pack(f">{count}H", *values[:count])
    assert frames.good_values(bytearray(good), transaction) == tuple(values[:count])
    # Cut short, with a byte changed, or with more after it: for parse_tcp to judge.
    changed = bytearray(good)
    changed[flip % len(good)] ^= 0x5A
    for raw in (good[: cut % len(good)], bytes(changed), good + b"\x00"):
        seen = frames.good_values(bytearray(raw), transaction)
        if seen is not None:
            reply = parse_tcp(bytes(raw), request)
            assert isinstance(reply, Values) and reply.size == len(raw) and reply.values == seen
    assert frames.good_values(bytearray(good), transaction % 0xFFFF + 1) is None
    with pytest.raises(ValueError, match="holds bits"):
        RegisterReadFrames(unit, "coil", address, count)
