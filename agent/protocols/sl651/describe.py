"""The field engineer's view of a frame: the stable JSON of `edge-agent sl651 decode --json`.

Pure: no printing, no rich. One frame → one dict:
    {"crc_ok", "direction", "center", "station", "password", "function": "0x32", "serial",
     "sent_at", "end": "ETX", "packet": null | {"total", "seq"},
     "elements": [{"id", "name", "value", "unit", "observed_at"} (+ "missing") …]}
`id` is the identifier key ("39", "F4", "FF11"), `name` the ASCII identifier, `value` a number,
a list (blocks and series), a string, or null with "missing": "FF"/"AA"/"M". Times are the
station's local time as sent (ISO 8601, no zone). Optional keys, present only when they say
something: "detail" (function-specific bodies: configuration, query lists, 38 queries, password,
version, pumps/valves/gates, event counters, M3 continuation bytes), "step" on series, "flags"
on the status word (names of the true states), "error" on a value that is not BCD.
A frame that does not decode: {"error": "...", "hex": "..."}.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from agent.protocols.sl651.body import decode_body
from agent.protocols.sl651.frame import FUNCTIONS, Frame, FrameError, end_name, parse_frame
from agent.protocols.sl651.message import (
    BlockElement,
    BodyError,
    BytesElement,
    Channel,
    ConfigParams,
    Continuation,
    DeviceId,
    Element,
    ElementRef,
    EventCounts,
    FixedVolume,
    GateStates,
    IdentifierList,
    Message,
    NumberElement,
    ParamValue,
    PasswordChange,
    PeriodQuery,
    RawBody,
    SeriesElement,
    SoftwareVersion,
    StationAddress,
    StatusElement,
    SwitchStates,
    TextElement,
    TimeStep,
)

_SPACE = re.compile(r"[\s:]+")


def decode_hex_frame(text: str) -> tuple[Frame | None, Message | None, str | None]:
    """One frame written as hex (spaces, colons and a 0x prefix allowed) → (frame, message,
    error). A damaged CRC still decodes (frame.crc_ok False, error "bad_crc: …"); a frame that
    cannot be cut gives (None, None, error); a body that does not decode (frame, None, error)."""
    cleaned = _SPACE.sub("", text.strip())
    if cleaned[:2].lower() == "0x":
        cleaned = cleaned[2:]
    try:
        raw = bytes.fromhex(cleaned)
    except ValueError:
        return None, None, "not hex"
    if not raw:
        return None, None, "empty"
    try:
        frame = parse_frame(raw, check_crc=False)
    except FrameError as exc:
        return None, None, str(exc)
    crc_error = None
    if not frame.crc_ok:
        crc_error = f"bad_crc: frame has {frame.crc:04X}"
    try:
        message = decode_body(frame)
    except BodyError as exc:
        return frame, None, f"{crc_error}; {exc}" if crc_error else str(exc)
    return frame, message, crc_error


def describe_hex(text: str) -> dict[str, Any]:
    """The JSON object for one line of `sl651 decode` input."""
    frame, message, error = decode_hex_frame(text)
    if frame is None:
        return error_json(error or "undecodable", _SPACE.sub("", text.strip()))
    return frame_json(frame, message if message is not None else error or "undecodable")


def describe_frame(frame: Frame) -> dict[str, Any]:
    """The JSON object of a frame cut from a stream (`sl651 listen`): as `describe_hex`."""
    try:
        return frame_json(frame, decode_body(frame))
    except BodyError as exc:
        return frame_json(frame, exc)


def error_json(error: str, raw: bytes | str) -> dict[str, Any]:
    """{"error", "hex"} for bytes that are not a frame or do not decode."""
    return {"error": error, "hex": raw.hex().upper() if isinstance(raw, bytes) else raw.upper()}


def frame_json(frame: Frame, decoded: Message | BodyError | str) -> dict[str, Any]:
    """The stable JSON of one frame and what its body says (or why it says nothing)."""
    if not isinstance(decoded, Message):
        return error_json(str(decoded), frame.raw)
    out: dict[str, Any] = {
        "crc_ok": frame.crc_ok,
        "direction": frame.direction,
        "center": frame.center,
        "station": frame.station,
        "password": frame.password,
        "function": f"0x{frame.function:02X}",
        "serial": decoded.serial,
        "sent_at": _time(decoded.sent_at),
        "end": end_name(frame.end),
        "packet": None
        if frame.packet is None
        else {"total": frame.packet[0], "seq": frame.packet[1]},
        "elements": [element_json(e) for e in decoded.elements],
    }
    if decoded.detail is not None:
        out["detail"] = detail_json(decoded.detail, decoded.station)
    return out


def function_name(code: int) -> str:
    """What a function code means (Appendix B), for tables."""
    if code in FUNCTIONS:
        return FUNCTIONS[code]
    return "user-defined" if code >= 0xE0 else "reserved"


def _time(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def element_json(e: Element) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": e.key,
        "name": e.spec.ascii_id,
        "value": None,
        "unit": e.spec.unit,
        "observed_at": _time(e.observed_at),
    }
    if isinstance(e, NumberElement):
        out["value"] = e.value
        if e.missing:
            out["missing"] = e.missing
        if e.error:
            out["error"] = e.error
    elif isinstance(e, BlockElement | SeriesElement):
        out["value"] = [s.value for s in e.samples]
        if e.samples:
            out["observed_at"] = _time(e.samples[0].observed_at)
        if isinstance(e, SeriesElement):
            out["step"] = _step(e.step)
    elif isinstance(e, StatusElement):
        out["value"] = e.word
        out["flags"] = [name for name, on in e.flags.items() if on]
    elif isinstance(e, TextElement):
        out["value"] = e.text
    elif isinstance(e, BytesElement):
        out["value"] = len(e.data)
        out["unit"] = "bytes"
    return out


def _step(step: TimeStep) -> dict[str, int]:
    return {"d": step.days, "h": step.hours, "m": step.minutes}


def _ref(ref: ElementRef) -> dict[str, Any]:
    return {"id": ref.key, "datadef": f"{ref.datadef:02X}", "name": ref.name}


def _param_value(value: ParamValue) -> Any:
    if isinstance(value, StationAddress):
        return value.code
    if isinstance(value, Channel):
        return f"{value.type_name} {value.address}".strip()
    if isinstance(value, DeviceId):
        return f"card {value.card_type} {value.number}"
    if isinstance(value, tuple):
        return list(value)
    return value


def detail_json(detail: object, station: StationAddress | None) -> dict[str, Any]:
    """Function-specific content (configuration, queries, control states, counters)."""
    out: dict[str, Any] = {}
    if station is not None:
        out["body_station"] = station.code
    if isinstance(detail, ConfigParams):
        out["params"] = [
            {"id": p.key, "name": p.spec.name, "value": _param_value(p.value), "unit": p.spec.unit}
            | ({"missing": p.missing} if p.missing else {})
            | ({"error": p.error} if p.error else {})
            for p in detail.params
        ]
    elif isinstance(detail, IdentifierList):
        out["identifiers"] = [_ref(r) for r in detail.items]
    elif isinstance(detail, PeriodQuery):
        out.update(
            start=_time(detail.start),
            end=_time(detail.end),
            step=_step(detail.step),
            element=_ref(detail.element),
        )
    elif isinstance(detail, PasswordChange):
        out.update(old_password=detail.old, new_password=detail.new)
    elif isinstance(detail, SoftwareVersion):
        out["version"] = detail.text
    elif isinstance(detail, SwitchStates):
        out[f"{detail.kind}s_on"] = [i + 1 for i, on in enumerate(detail.states) if on]
    elif isinstance(detail, GateStates):
        out["gates"] = [
            {"gate": i + 1, "open": opened, "opening_cm": cm}
            for i, (opened, cm) in enumerate(zip(detail.open, detail.openings_cm, strict=True))
        ]
    elif isinstance(detail, FixedVolume):
        out["fixed_volume_enabled"] = detail.enabled
    elif isinstance(detail, EventCounts):
        out["events"] = {name: n for name, n in detail.named().items() if n}
    elif isinstance(detail, RawBody | Continuation):
        out["bytes"] = detail.data.hex().upper()
    return out
