"""The stream decoder: bytes in any split give the same frames, rejections and need-data; it
never raises, never stalls, resynchronises after damage and keeps its buffer bounded."""

from __future__ import annotations

import itertools
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.protocols.sl651 import (
    NEED_DATA,
    Frame,
    Group,
    LinkAddress,
    Rejected,
    RejectReason,
    StreamDecoder,
    Value,
    encode,
)
from agent.protocols.sl651.frame import MAX_FRAME, Encoding

LINK = LinkAddress(1, "0012345678", "1234")
AT = datetime(2024, 5, 6, 7, 8, 9)


def report(serial: int, level: float = 1.234, encoding: Encoding = "hex") -> bytes:
    group = Group(datetime(2024, 5, 6, 7, 8), [Value("Z", level), Value("VT", 12.5)])
    return encode.report(LINK, 0x32, serial, AT, category=0x48, groups=[group], encoding=encoding)


def drain(decoder: StreamDecoder) -> list[Frame | Rejected]:
    out: list[Frame | Rejected] = []
    for _ in range(100_000):  # a decoder that stalls would loop here forever
        event = decoder.next_event()
        if event is NEED_DATA:
            return out
        assert isinstance(event, Frame | Rejected)
        out.append(event)
    raise AssertionError("next_event never returned NEED_DATA")


def run(chunks: list[bytes], decoder: StreamDecoder | None = None) -> list[Frame | Rejected]:
    decoder = decoder or StreamDecoder()
    events: list[Frame | Rejected] = []
    for chunk in chunks:
        decoder.feed(chunk)
        events += drain(decoder)
        assert decoder.buffered < decoder.max_frame_bytes
    decoder.flush()
    events += drain(decoder)
    assert decoder.buffered == 0
    return events


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def frames(events: list[Frame | Rejected]) -> list[bytes]:
    return [e.raw for e in events if isinstance(e, Frame)]


def test_need_data_is_a_singleton_sentinel() -> None:
    decoder = StreamDecoder()
    assert decoder.next_event() is NEED_DATA
    assert repr(NEED_DATA) == "NEED_DATA"


def test_frames_glued_together_come_out_one_by_one() -> None:
    stream = report(1) + report(2) + report(3, encoding="ascii") + report(4)
    assert frames(run([stream])) == [report(1), report(2), report(3, encoding="ascii"), report(4)]


def test_a_frame_split_anywhere_waits_for_the_rest() -> None:
    raw = report(7)
    decoder = StreamDecoder()
    for cut in range(1, len(raw)):
        decoder.feed(raw[:cut])
        assert decoder.next_event() is NEED_DATA
        decoder.feed(raw[cut:])
        event = decoder.next_event()
        assert isinstance(event, Frame) and event.raw == raw
        assert decoder.next_event() is NEED_DATA


def test_picture_payload_with_start_markers_inside_is_framed_by_length() -> None:
    """JPEG bytes can hold 7E7E and whole fake headers; the length field decides."""
    fake = report(9)
    jpeg = b"\xff\xd8" + b"\x7e\x7e" * 50 + fake + b"\x01" * 30 + b"\xff\xd9"
    packets = encode.picture_report(
        LINK, 5, AT, category=0x48, observed_at=AT.replace(second=0), jpeg=jpeg, max_body=200
    )
    events = run([b"".join(packets)])
    assert frames(events) == packets
    assert not [e for e in events if isinstance(e, Rejected)]


def test_bad_crc_is_rejected_and_the_next_frame_still_decodes() -> None:
    damaged = bytearray(report(1))
    damaged[-1] ^= 0xFF
    events = run([bytes(damaged) + report(2)])
    assert [type(e) for e in events] == [Rejected, Frame]
    assert isinstance(events[0], Rejected) and events[0].reason is RejectReason.BAD_CRC
    assert events[0].data == bytes(damaged)
    assert frames(events) == [report(2)]


def test_a_length_too_long_swallows_nothing_the_frame_behind_is_found() -> None:
    """A corrupted length claims the next frame's bytes; on rejection the decoder resumes one
    byte after the bad start, so the frame inside the claimed span still decodes."""
    damaged = bytearray(report(1))
    damaged[12] += 40  # length + 40: the end char lands inside the next frame
    events = run([bytes(damaged) + report(2) + report(3) * 3])
    assert frames(events)[:1] == [report(2)]
    assert isinstance(events[0], Rejected)
    assert events[0].reason in (RejectReason.BAD_END, RejectReason.BAD_CRC)


def test_a_truncated_frame_is_reported_on_flush_and_what_follows_decodes() -> None:
    decoder = StreamDecoder()
    decoder.feed(report(1)[:20])
    assert drain(decoder) == []
    decoder.flush()
    events = drain(decoder)
    assert len(events) == 1 and isinstance(events[0], Rejected)
    assert events[0].reason is RejectReason.TRUNCATED
    decoder.feed(report(2))
    assert frames(drain(decoder)) == [report(2)]


def test_a_station_that_disconnects_mid_frame_then_reconnects() -> None:
    """A stub, then a whole frame: the stub's length claims the whole frame's bytes, so the stub
    fails its end-char or CRC check, and the whole frame inside its span is still found."""
    events = run([report(1)[:30] + report(2)])
    assert [type(e) for e in events] == [Rejected, Frame]
    assert isinstance(events[0], Rejected)
    assert events[0].reason in (RejectReason.BAD_END, RejectReason.BAD_CRC)
    assert frames(events) == [report(2)]


def test_oversize_length_is_rejected_without_waiting_for_the_bytes() -> None:
    decoder = StreamDecoder(max_frame_bytes=40)
    decoder.feed(report(1))
    events = drain(decoder)
    assert isinstance(events[0], Rejected) and events[0].reason is RejectReason.OVERSIZE
    assert len(events[0].data) == 14


def test_bad_direction_nibble_is_a_bad_length() -> None:
    raw = bytearray(report(1))
    raw[11] |= 0x40
    events = run([bytes(raw)])
    assert isinstance(events[0], Rejected) and events[0].reason is RejectReason.BAD_LENGTH


def test_m3_header_without_room_for_the_packet_field_is_a_bad_length() -> None:
    raw = bytes.fromhex("7E7E0100123456781234360002160000") + b"\x03\x00\x00"
    events = run([raw])
    assert isinstance(events[0], Rejected) and events[0].reason is RejectReason.BAD_LENGTH


def test_junk_is_counted_not_kept() -> None:
    decoder = StreamDecoder(max_frame_bytes=100, max_buffer_bytes=1000)
    junk = b"\x00\x11\x22" * 300 + b"\x33" * 50
    decoder.feed(junk)
    events = drain(decoder)
    assert decoder.buffered == 0
    assert all(isinstance(e, Rejected) and e.reason is RejectReason.BAD_START for e in events)
    assert len(events) == 9  # one report per max_frame_bytes junk bytes
    decoder.flush()
    last = drain(decoder)
    assert (
        len(last) == 1
        and isinstance(last[0], Rejected)
        and "bytes without a frame start" in last[0].detail
    )
    assert all(isinstance(e, Rejected) and len(e.data) <= 64 for e in events + last)


def test_only_a_possible_partial_marker_is_kept() -> None:
    decoder = StreamDecoder()
    decoder.feed(b"noise\x7e")
    assert decoder.next_event() is NEED_DATA
    assert decoder.buffered == 1
    decoder.feed(report(1)[1:])
    events = drain(decoder)
    assert frames(events) == [report(1)]


def test_feeding_without_draining_drops_the_excess_and_says_so() -> None:
    decoder = StreamDecoder(max_frame_bytes=200, max_buffer_bytes=300)
    for _ in range(10):
        decoder.feed(report(1))
        assert decoder.buffered <= 300
    events = drain(decoder)
    assert frames(events) == [report(1)] * (300 // len(report(1)))
    assert any(
        isinstance(e, Rejected) and e.reason is RejectReason.OVERSIZE and "buffer full" in e.detail
        for e in events
    )


def test_construction_checks_its_bounds() -> None:
    with pytest.raises(ValueError, match="smallest frame"):
        StreamDecoder(max_frame_bytes=10)
    with pytest.raises(ValueError, match="at least"):
        StreamDecoder(max_frame_bytes=500, max_buffer_bytes=100)


def test_reset_forgets_a_half_frame() -> None:
    decoder = StreamDecoder()
    decoder.feed(report(1)[:25])
    decoder.reset()
    decoder.feed(report(2))
    assert frames(drain(decoder)) == [report(2)]


def test_ascii_can_be_switched_off() -> None:
    decoder = StreamDecoder(accept_ascii=False)
    decoder.feed(report(1, encoding="ascii") + report(2))
    assert frames(drain(decoder)) == [report(2)]


def test_ascii_lookalike_junk_never_blocks_a_hex_frame() -> None:
    junk = b"\x01" + b"0" * 18 + b"8"  # a plausible ASCII header prefix
    assert frames(run([junk + report(1)])) == [report(1)]


# -- properties --------------------------------------------------------------------------------

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_arbitrary_bytes_only_ever_give_events_and_the_same_in_any_split(
    data: bytes, cuts: list[int]
) -> None:
    whole = run([data])
    assert run(split(data, cuts)) == whole
    assert run([data[i : i + 1] for i in range(len(data))]) == whole


marker_heavy = st.lists(
    st.sampled_from(
        [
            b"\x7e",
            b"\x7e\x7e",
            b"\x01",
            b"\x02",
            b"\x16",
            b"\x03",
            b"0",
            b"8",
            b"F",
            b"\x00",
            b"\xff",
        ]
    ),
    max_size=120,
).map(b"".join)


@SETTINGS
@given(
    pieces=st.lists(
        st.tuples(marker_heavy, st.integers(1, 60000), st.floats(-99, 999, allow_nan=False)),
        max_size=6,
    ),
    trailer=marker_heavy,
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_every_frame_hidden_in_marker_junk_is_found_in_any_split(
    pieces: list[tuple[bytes, int, float]], trailer: bytes, cuts: list[int]
) -> None:
    good = [report(serial, round(level, 3)) for _, serial, level in pieces]
    stream = (
        b"".join(junk + frame for (junk, _, _), frame in zip(pieces, good, strict=True)) + trailer
    )
    events = run(split(stream, cuts))
    assert frames(events) == good
    assert run([stream]) == events


@SETTINGS
@given(
    serials=st.lists(st.integers(1, 65535), min_size=2, max_size=6),
    victim=st.integers(min_value=0),
    position=st.integers(min_value=0),
    flip=st.integers(1, 255),
)
def test_one_damaged_frame_costs_only_itself(
    serials: list[int], victim: int, position: int, flip: int
) -> None:
    good = [report(s) for s in serials]
    victim %= len(good)
    damaged = bytearray(good[victim])
    damaged[position % len(damaged)] ^= flip
    stream = b"".join(bytes(damaged) if i == victim else f for i, f in enumerate(good))
    found = frames(run([stream]))
    expected = [f for i, f in enumerate(good) if i != victim]
    assert [f for f in found if f != bytes(damaged)] == expected


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(
        st.one_of(st.binary(max_size=64), marker_heavy, st.just(report(3))), max_size=20
    ).map(b"".join)
)
def test_fuzz_long_streams_stay_bounded_and_total(data: bytes) -> None:
    decoder = StreamDecoder(max_frame_bytes=MAX_FRAME, max_buffer_bytes=8192)
    events = run([data[i : i + 7] for i in range(0, len(data), 7)], decoder)
    assert all(isinstance(e, Frame | Rejected) for e in events)
