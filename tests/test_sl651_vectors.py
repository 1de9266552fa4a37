"""Known answers: every frame of tests/data/sl651_vectors.json, fed whole, byte by byte and with
junk around it, decodes to the frame and values the file states (`expected`).

Provenance: vectors.json (docs/sl651-notes.md §15) holds frames from public implementations' tests and
documents, each checked to appear verbatim in its source. Where our decode departs from
`expected`, the decision is recorded in DECISIONS below and asserted by a test of its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent.protocols.sl651 import (
    NEED_DATA,
    BlockElement,
    BodyError,
    BytesElement,
    Frame,
    Message,
    NumberElement,
    Rejected,
    RejectReason,
    SeriesElement,
    StationAddress,
    StatusElement,
    StreamDecoder,
    TextElement,
    crc16,
    decode_body,
    decode_hex_frame,
    parse_frame,
)
from agent.protocols.sl651.message import (
    ConfigParams,
    Continuation,
    DeviceId,
    EventCounts,
    FixedVolume,
    GateStates,
    IdentifierList,
    Param,
    PasswordChange,
    PeriodQuery,
    SwitchStates,
)
from agent.protocols.sl651.params import param_spec

ROOT = Path(__file__).resolve().parent.parent
VECTORS_PATH = Path(os.environ.get("SL651_VECTORS", ROOT / "tests" / "data" / "sl651_vectors.json"))
VECTORS: list[dict[str, Any]] = (
    json.loads(VECTORS_PATH.read_text()) if VECTORS_PATH.exists() else []
)
GOOD = [v for v in VECTORS if not v.get("negative_test")]
NEGATIVE = [v for v in VECTORS if v.get("negative_test")]

# Where our decode is shaped differently from `expected`, and why (checked against docs/sl651-notes.md and the standard):
DECISIONS = {
    "F128/F028": "F1 28 and F0 28 (real 'nanshui' devices, docs/sl651-notes.md §8/§14.5) are accepted exactly "
    "like F1F1/F0F0; the model keeps the station group and the time, not which "
    "data-definition byte carried them, so the comparison maps F128->F1F1, F028->F0F0.",
    "integers": "a value with 0 decimals decodes to an int (42H `20 08 01` -> 1, the file says "
    "1.0): equal as numbers, and JSON shows what the station meant.",
    "sentinel": "Z = 09999999 (vector 9) decodes literally to 9999.999 as the file says, and is "
    "flagged (NumberElement.sentinel) so readings mark it uncertain (docs/sl651-notes.md §8).",
}


def _vid(v: dict[str, Any]) -> str:
    return f"{VECTORS.index(v):02d}-{v['function']}-{v['direction']}"


def test_the_vector_file_is_present_and_complete() -> None:
    """The known-answer set is the shared file; its absence must fail, not skip."""
    assert VECTORS_PATH.exists(), f"vectors.json not found at {VECTORS_PATH} (set SL651_VECTORS)"
    assert len(VECTORS) == 73
    assert len(NEGATIVE) >= 1


def _events(decoder: StreamDecoder) -> list[Frame | Rejected]:
    out: list[Frame | Rejected] = []
    while (event := decoder.next_event()) is not NEED_DATA:
        assert isinstance(event, Frame | Rejected)
        out.append(event)
    return out


def _feed_whole(data: bytes) -> list[Frame | Rejected]:
    decoder = StreamDecoder()
    decoder.feed(data)
    events = _events(decoder)
    decoder.flush()
    return events + _events(decoder)


def _feed_bytewise(data: bytes) -> list[Frame | Rejected]:
    decoder = StreamDecoder()
    events: list[Frame | Rejected] = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        events += _events(decoder)
    decoder.flush()
    return events + _events(decoder)


@pytest.mark.parametrize("vector", GOOD, ids=_vid)
@pytest.mark.parametrize("feed", [_feed_whole, _feed_bytewise], ids=["whole", "bytewise"])
def test_stream_yields_exactly_the_frame(vector: dict[str, Any], feed: Any) -> None:
    raw = bytes.fromhex(vector["hex"])
    events = feed(raw)
    assert len(events) == 1 and isinstance(events[0], Frame)
    assert events[0].raw == raw
    _check_header(events[0], vector["expected"])


JUNK_BEFORE = b"AT+CSQ\r\n\x7e\x01\x00\x7e\x16\x02"
JUNK_AFTER = b"\x00\xff\xee+++"


@pytest.mark.parametrize("vector", GOOD, ids=_vid)
@pytest.mark.parametrize("feed", [_feed_whole, _feed_bytewise], ids=["whole", "bytewise"])
def test_junk_before_and_after_is_reported_and_the_frame_still_found(
    vector: dict[str, Any], feed: Any
) -> None:
    raw = bytes.fromhex(vector["hex"])
    events = feed(JUNK_BEFORE + raw + JUNK_AFTER)
    assert [type(e).__name__ for e in events] == ["Rejected", "Frame", "Rejected"]
    before, frame, after = events
    assert isinstance(before, Rejected) and before.reason is RejectReason.BAD_START
    assert before.data == JUNK_BEFORE
    assert isinstance(frame, Frame) and frame.raw == raw
    assert isinstance(after, Rejected) and after.reason is RejectReason.BAD_START
    assert after.data == JUNK_AFTER


def test_all_vectors_back_to_back_in_any_split_give_the_same_events() -> None:
    stream = b"".join(bytes.fromhex(v["hex"]) for v in VECTORS)
    whole = _feed_whole(stream)
    assert whole == _feed_bytewise(stream)
    frames = [e for e in whole if isinstance(e, Frame)]
    rejected = [e for e in whole if isinstance(e, Rejected)]
    assert len(frames) == len(GOOD)
    assert [r.reason for r in rejected] == [RejectReason.BAD_CRC] * len(NEGATIVE)


@pytest.mark.parametrize("vector", NEGATIVE, ids=_vid)
def test_negative_vectors_are_bad_crc_rejections(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    events = _feed_whole(raw)
    assert len(events) == 1 and isinstance(events[0], Rejected)
    assert events[0].reason is RejectReason.BAD_CRC
    computed = vector["expected"]["crc_calc"]
    assert computed in events[0].detail


@pytest.mark.parametrize("vector", NEGATIVE, ids=_vid)
def test_the_decode_tool_still_shows_what_a_bad_crc_frame_says(vector: dict[str, Any]) -> None:
    frame, message, error = decode_hex_frame(vector["hex"])
    assert frame is not None and not frame.crc_ok
    assert error is not None and error.startswith("bad_crc")
    assert message is not None
    _check_message(frame, message, vector["expected"])


@pytest.mark.parametrize("vector", GOOD, ids=_vid)
def test_body_decodes_to_the_expected_values(vector: dict[str, Any]) -> None:
    frame = parse_frame(bytes.fromhex(vector["hex"]))
    message = decode_body(frame)
    _check_message(frame, message, vector["expected"])


def test_f1_28_and_f0_28_variants_decode_like_f1f1_f0f0() -> None:
    """DECISIONS['F128/F028']: vector 10 is a real device sending F1 28 / F0 28."""
    vector = VECTORS[10]
    assert "F128" in vector["hex"] and "F028" in vector["hex"]
    message = decode_body(parse_frame(bytes.fromhex(vector["hex"])))
    assert message.station == StationAddress.from_raw("0000000444")
    assert (
        message.observed_at is not None and message.observed_at.isoformat() == "2020-06-02T13:00:00"
    )
    assert [e.key for e in message.elements] == ["26", "39", "38"]


def test_nines_sentinel_is_decoded_literally_and_flagged() -> None:
    """DECISIONS['sentinel']."""
    message = decode_body(parse_frame(bytes.fromhex(VECTORS[9]["hex"])))
    z = message.elements[0]
    assert isinstance(z, NumberElement) and z.value == 9999.999 and z.sentinel
    assert not any(isinstance(e, NumberElement) and e.sentinel for e in message.elements[1:])


# -- comparison with `expected` ---------------------------------------------------------------


def _check_header(frame: Frame, exp: dict[str, Any]) -> None:
    assert frame.direction == exp["direction"]
    assert frame.center == exp["center"]
    assert frame.station == exp["station"]["raw"]
    assert frame.password == exp["password"]
    assert f"0x{frame.function:02X}" == exp["function"]
    assert f"0x{frame.raw[13]:02X}" == exp["start"]
    assert len(frame.raw) - 17 == exp["length"]
    assert f"0x{frame.end:02X}" == exp["end"]
    assert f"{crc16(frame.raw[:-2]):04X}" == exp["crc_calc"]
    assert f"{frame.crc:04X}" == exp["crc_in_frame"]
    if "packet_total" in exp:
        assert frame.packet == (exp["packet_total"], exp["packet_seq"])
    else:
        assert frame.packet is None
    _check_station(StationAddress.from_raw(frame.station), exp["station"])


def _check_station(ours: StationAddress, exp: dict[str, Any]) -> None:
    assert ours.raw == exp["raw"]
    assert ours.kind == ("hydrology" if exp["kind"].startswith("hydrology") else "other")
    if "code" in exp:
        assert ours.code == exp["code"]
    if "admin_code" in exp:
        assert ours.admin_code == exp["admin_code"]
        assert ours.number == exp["custom_no"]
        assert ours.code == exp["decoded_12digit"]


def _time(text: str) -> str:
    """'2059-10-11 15:49' / '2013-03-24 10' in the file's format."""
    return text


def _fmt(at: Any, fmt: str) -> str:
    return str(at.strftime(fmt))


def _check_message(frame: Frame, message: Message, exp: dict[str, Any]) -> None:
    if "serial" in exp:
        assert message.serial == exp["serial"]
        assert _fmt(message.sent_at, "%Y-%m-%d %H:%M:%S") == exp["send_time"]
    if "continuation_bytes" in exp:
        assert message.serial is None and isinstance(message.detail, Continuation)
        assert len(message.detail.data) == exp["continuation_bytes"]
    if "body_station" in exp:
        assert message.station is not None
        _check_station(message.station, exp["body_station"])
    detail = message.detail
    if "start_time" in exp:
        assert isinstance(detail, PeriodQuery)
        assert _fmt(detail.start, "%Y-%m-%d %H") == exp["start_time"]
        assert _fmt(detail.end, "%Y-%m-%d %H") == exp["end_time"]
        step = detail.step
        assert {"d": step.days, "h": step.hours, "m": step.minutes} == exp["time_step"]
        assert [f"{detail.element.key}{detail.element.datadef:02X}"] == exp["element_ids"]
    elif "element_ids" in exp:
        assert isinstance(detail, IdentifierList)
        assert [f"{r.key}{r.datadef:02X}" for r in detail.items] == exp["element_ids"]
    if "old_password" in exp:
        assert detail == PasswordChange(exp["old_password"], exp["new_password"])
    if "ctrl" in exp:
        assert isinstance(detail, SwitchStates)
        assert len(detail.states) // 8 == exp["ctrl"]["count_bytes"]
        assert _bits_hex(detail.states) == exp["ctrl"]["status"]
    if "gates" in exp:
        assert isinstance(detail, GateStates)
        assert len(detail.open) == exp["gates"]["count"]
        assert _bits_hex(detail.open) == exp["gates"]["status"]
        assert list(detail.openings_cm) == exp["gates"]["opening_cm"]
    if "fixed_value_control" in exp:
        assert isinstance(detail, FixedVolume)
        assert f"0x{detail.raw:02X}" == exp["fixed_value_control"] and detail.enabled
    if "erc_counts" in exp:
        assert isinstance(detail, EventCounts) and len(detail.counts) == 32
        assert {k: n for k, n in detail.named().items() if n} == exp["erc_counts"]
    if "elements" in exp:
        ours = _project(message)
        theirs = [_normalise(e) for e in exp["elements"]]
        assert [e["id"] for e in ours] == [e["id"] for e in theirs]
        for mine, expected in zip(ours, theirs, strict=True):
            _compare_element(mine, expected)
    if detail is None or isinstance(detail, Continuation):
        assert "elements" in exp or not message.elements


def _bits_hex(states: tuple[bool, ...]) -> str:
    data = bytearray((len(states) + 7) // 8)
    for i, on in enumerate(states):
        if on:
            data[i // 8] |= 1 << (i % 8)
    return data.hex().upper()


def _normalise(e: dict[str, Any]) -> dict[str, Any]:
    renamed = {"F128": "F1F1", "F028": "F0F0"}  # DECISIONS['F128/F028']
    return {**e, "id": renamed.get(e["id"], e["id"])}


def _station_dict(st: StationAddress) -> dict[str, Any]:
    return {
        "raw": st.raw,
        "code": st.code,
        "admin_code": st.admin_code,
        "custom_no": st.number,
        "decoded_12digit": st.code,
    }


def _project(message: Message) -> list[dict[str, Any]]:
    """Our decode in the shape of `expected["elements"]`."""
    detail = message.detail
    if isinstance(detail, ConfigParams):
        return [_param(p) for p in detail.params]
    if isinstance(detail, IdentifierList):
        return [
            {
                "id": r.key,
                "datadef": f"{r.datadef:02X}",
                "unit": param_spec(detail.table, int(r.key, 16)).unit,
            }
            for r in detail.items
        ]
    out: list[dict[str, Any]] = []
    if message.category is not None and message.station is not None:
        out += [
            {"id": "F1F1", "value": _station_dict(message.station)},
            {"id": "category", "value": f"0x{message.category:02X}"},
        ]
    last = None
    for e in message.elements:
        if e.observed_at is not None and e.observed_at != last:
            out.append({"id": "F0F0", "value": _fmt(e.observed_at, "%Y-%m-%d %H:%M")})
            last = e.observed_at
        base = {
            "id": e.key,
            "datadef": f"{e.datadef:02X}",
            "ascii_id": e.spec.ascii_id,
            "unit": e.spec.unit,
        }
        if isinstance(e, NumberElement):
            out.append(
                base
                | {
                    "value": e.value,
                    "raw": e.raw.hex().upper(),
                    "bytes": len(e.raw),
                    "decimals": e.decimals,
                }
            )
        elif isinstance(e, SeriesElement):
            step = {"d": e.step.days, "h": e.step.hours, "m": e.step.minutes}
            raw = f"{e.step.days:02d}{e.step.hours:02d}{e.step.minutes:02d}"
            out.append(
                {
                    "id": "04",
                    "datadef": "18",
                    "value": step,
                    "bytes": 3,
                    "decimals": 0,
                    "raw": raw,
                    "ascii_id": "DRxnn",
                }
            )
            out.append(base | {"values": [s.value for s in e.samples]})
        elif isinstance(e, BlockElement):
            out.append(
                base
                | {
                    "values": [s.value for s in e.samples],
                    "raw": e.raw.hex().upper(),
                    "bytes": len(e.raw),
                    "decimals": 0,
                }
            )
        elif isinstance(e, StatusElement):
            bits = [b for b in range(32) if e.word >> b & 1]
            out.append(
                base
                | {
                    "value": f"0x{e.word:08X}",
                    "bits_set": bits,
                    "raw": e.raw.hex().upper(),
                    "bytes": 4,
                    "decimals": 0,
                }
            )
        elif isinstance(e, TextElement):
            out.append({"id": "F2F2", "value": e.text, "len": len(e.raw)})
        elif isinstance(e, BytesElement):
            out.append({"id": "F3F3", "len": len(e.data), "head": e.data[:4].hex().upper()})
    return out


def _param(p: Param) -> dict[str, Any]:
    value: Any = p.value
    if isinstance(value, StationAddress):
        value = _station_dict(value)
    elif isinstance(value, DeviceId):
        value = {"card_type": value.card_type, "id": value.number}
    elif isinstance(value, tuple):
        value = list(value)
    elif value is not None and hasattr(value, "address"):
        value = value.address
    out = {
        "id": p.key,
        "datadef": f"{p.datadef:02X}",
        "raw": p.raw.hex().upper(),
        "value": value,
        "unit": p.spec.unit,
    }
    if p.spec.kind.value == "channel":
        out |= {"channel_type": int(p.raw[:1].hex()), "channel_addr_raw": p.raw[1:].hex().upper()}
    return out


# Keys of `expected` elements that describe rather than state a decoded value.
_DESCRIPTIVE = {"name", "note", "kind"}


def _compare_element(mine: dict[str, Any], exp: dict[str, Any]) -> None:
    for key, want in exp.items():
        if key in _DESCRIPTIVE:
            continue
        if exp["id"] == "F3F3" and key == "value":
            assert want.startswith("JPEG bytes (first ") and want[18:26] == "FFD8FFE0"
            assert mine["head"] == "FFD8FFE0"
            continue
        if isinstance(want, dict) and "kind" in want:  # a station address: compare what it states
            for k, v in want.items():
                if k != "kind":
                    assert mine["value"][k] == v, (exp["id"], k)
            continue
        assert key in mine, (exp["id"], key)
        assert mine[key] == want, (exp["id"], key, mine[key], want)


def test_a_body_that_does_not_decode_raises_body_error_only() -> None:
    frame = parse_frame(bytes.fromhex(VECTORS[1]["hex"]))
    cut = Frame(
        **{**{f: getattr(frame, f) for f in frame.__dataclass_fields__}, "body": frame.body[:-3]}
    )
    with pytest.raises(BodyError, match="body offset"):
        decode_body(cut)
