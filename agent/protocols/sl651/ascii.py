"""ASCII-encoding bodies (§6.4, §6.6.2): decode and encode the report functions 30-35 and 37.

Pure. A body is serial (4 hex characters) and send time (12 digits) with no separator, then
groups "identifier␠value␠" with the ASCII identifiers of Appendix C, ending with a space
[§6.6.2.1]. We write no space between the send time and the first group (the standard's
wording); decoding accepts either. Station category is its letter; HEX data (status word,
5-minute blocks) is written as hex characters; a missing value is "M" [§6.6.4.4 d]; a series
is "DRxnn" + its identifiers + the values, time by time [Tables 30, C.2]. Manual data
("RGZS") runs to the end of the body, less the final space.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Final

from agent.protocols.sl651.bcd import BcdError, Number, decode_time, encode_time, scaled
from agent.protocols.sl651.elements import BY_ASCII, CATEGORIES, ElementSpec, Kind, element_spec
from agent.protocols.sl651.frame import Frame
from agent.protocols.sl651.items import (
    BlockValues,
    EncodeError,
    Group,
    Item,
    ManualText,
    RawElement,
    SeriesValues,
    StatusValue,
    Value,
    block_slots,
    spec_for,
)
from agent.protocols.sl651.message import (
    BlockElement,
    BodyError,
    Continuation,
    Element,
    Message,
    NumberElement,
    RawBody,
    Sample,
    SeriesElement,
    StationAddress,
    StatusElement,
    TextElement,
    TimeStep,
    block_samples,
)

REPORT_FUNCTIONS: Final = frozenset({0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x37})
_STEP = re.compile(r"DR([DHN])(\d\d)\Z")
_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?\Z")
_HEX = frozenset("0123456789ABCDEFabcdef")


def _tokens(text: str, start: int) -> list[tuple[int, str]]:
    return [(m.start(), m.group()) for m in re.finditer(r"[^ ]+", text[start:])]


def decode_ascii_body(frame: Frame) -> Message:
    """The Message of an ASCII frame. Raises BodyError. M3 packets 2..n are Continuation bytes;
    join the packets (`body.decode_packets`) before decoding a cut report."""
    if frame.direction == "up" and frame.packet is not None and frame.packet[1] > 1:
        return Message(
            frame.function,
            "up",
            "ascii",
            None,
            None,
            detail=Continuation(frame.body),
            complete=False,
        )
    text = frame.body.decode("latin-1")
    if len(text) < 16 or not all(c in _HEX for c in text[:4]):
        raise BodyError(0, "ASCII body must start with a 4-hex-digit serial and 12-digit send time")
    serial = int(text[:4], 16)
    sent_at = _time(text[4:16], 12, 4, "send time")
    rest = text[16:]
    if not rest.strip():
        return Message(frame.function, frame.direction, "ascii", serial, sent_at)
    if frame.direction == "down" or frame.function not in REPORT_FUNCTIONS:
        return Message(
            frame.function,
            frame.direction,
            "ascii",
            serial,
            sent_at,
            detail=RawBody(frame.body[16:]),
        )
    return _report(frame, serial, sent_at, text)


def _report(frame: Frame, serial: int, sent_at: datetime, text: str) -> Message:
    tokens = [(pos + 16, tok) for pos, tok in _tokens(text, 16)]
    station: StationAddress | None = None
    first_station: StationAddress | None = None
    category: int | None = None
    obs: datetime | None = None
    first_obs: datetime | None = None
    elements: list[Element] = []
    i = 0
    while i < len(tokens):
        at, tok = tokens[i]
        name = tok.upper()
        if name == "ST":
            raw = _value(tokens, i, "ST")
            if len(raw) != 10 or not all(c in _HEX for c in raw):
                raise BodyError(at, f"station address {raw!r} is not 10 hex digits")
            station = StationAddress.from_raw(raw)
            first_station = first_station or station
            i += 2
            if i < len(tokens) and len(tokens[i][1]) == 1 and tokens[i][1].isalpha():
                category = ord(tokens[i][1].upper()) if category is None else category
                i += 1
            continue
        if name == "TT":
            obs = _time(_value(tokens, i, "TT"), 10, at, "observation time")
            first_obs = first_obs or obs
            i += 2
            continue
        if name == "RGZS":
            content = text[at + len(tok) + 1 :]
            content = content[:-1] if content.endswith(" ") else content
            spec = element_spec(0xF2)
            elements.append(
                TextElement("F2", spec, 0xF2, obs, station, content.encode("latin-1"), content)
            )
            break
        step = _STEP.match(name)
        if step is not None:
            if obs is None:
                raise BodyError(at, "time-step series before any observation time (TT)")
            elements += _series(tokens, i + 1, _time_step(step), obs, station)
            break
        spec = _spec(name, at)
        value = _value(tokens, i, tok)
        elements.append(_element(spec, value, obs, station, at))
        i += 2
    return Message(
        frame.function, frame.direction, "ascii", serial, sent_at,
        first_station, category, first_obs, tuple(elements),
    )  # fmt: skip


def _time(digits: str, size: int, at: int, what: str) -> datetime:
    if len(digits) != size or not digits.isdigit():
        raise BodyError(at, f"{what} {digits!r} is not {size} digits")
    try:
        return decode_time(bytes.fromhex(digits))
    except BcdError as exc:
        raise BodyError(at, f"{what}: {exc}") from exc


def _value(tokens: list[tuple[int, str]], i: int, name: str) -> str:
    if i + 1 >= len(tokens):
        raise BodyError(tokens[i][0], f"{name} has no value")
    return tokens[i + 1][1]


def _spec(name: str, at: int) -> ElementSpec:
    spec = BY_ASCII.get(name)
    if spec is not None:
        return spec
    if (
        len(name) in (2, 4)
        and all(c in _HEX for c in name)
        and (len(name) == 2 or name[:2] == "FF")
    ):
        return element_spec(int(name, 16))
    raise BodyError(at, f"{name!r} is not an element identifier")


def _time_step(match: re.Match[str]) -> TimeStep:
    unit, n = match.group(1), int(match.group(2))
    return (
        TimeStep(days=n)
        if unit == "D"
        else TimeStep(hours=n)
        if unit == "H"
        else TimeStep(minutes=n)
    )


def _number(text: str, at: int) -> tuple[Number | None, int, str | None]:
    """(value, data-definition byte as HEX would carry it, missing marker)."""
    if text.upper() == "M":
        return None, 0, "M"
    if not _NUMBER.match(text):
        raise BodyError(at, f"{text!r} is not a number")
    exact = Decimal(text)
    decimals = len(text.partition(".")[2])
    if decimals > 7:
        raise BodyError(at, f"{text!r}: more than 7 decimals")
    digits = text.lstrip("+-").replace(".", "").lstrip("0") or "0"
    width = (len(digits) + 1) // 2 + (1 if exact < 0 else 0)
    value: Number = float(exact) if decimals else int(exact)
    return value, min(width, 31) << 3 | decimals, None


def _element(
    spec: ElementSpec, value: str, obs: datetime | None, station: StationAddress | None, at: int
) -> Element:
    key, raw = spec.key, value.encode("latin-1")
    if spec.kind is Kind.STATUS:
        if not value or not all(c in _HEX for c in value):
            raise BodyError(at, f"ZT {value!r} is not hex")
        return StatusElement(key, spec, 0x20, obs, station, raw, int(value, 16))
    if spec.kind is Kind.RAIN_BLOCK or spec.kind is Kind.LEVEL_BLOCK:
        if obs is None:
            raise BodyError(at, f"{spec.ascii_id} block before any observation time (TT)")
        data = _hex_bytes(value, at)
        return BlockElement(
            key,
            spec,
            len(data) << 3,
            obs,
            station,
            raw,
            block_samples(spec.kind, data, obs, at, spec.ascii_id),
        )
    if spec.kind is not Kind.NUMBER and spec.kind is not Kind.DURATION:
        raise BodyError(at, f"{spec.ascii_id} cannot stand in an ASCII report")
    number, dd, missing = _number(value, at)
    return NumberElement(key, spec, dd, obs, station, raw, number, "M" if missing else None)


def _hex_bytes(value: str, at: int) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise BodyError(at, f"{value!r} is not hex data") from exc


def _series(
    tokens: list[tuple[int, str]],
    i: int,
    step: TimeStep,
    obs: datetime,
    station: StationAddress | None,
) -> list[Element]:
    """Identifiers, then their values time by time (Table 30: data n.1, n.2 … per time)."""
    specs: list[tuple[int, ElementSpec]] = []
    while i < len(tokens) and tokens[i][1].upper() in BY_ASCII:
        specs.append((tokens[i][0], BY_ASCII[tokens[i][1].upper()]))
        i += 1
    values = tokens[i:]
    if not specs:
        raise BodyError(tokens[i - 1][0], "time step without element identifiers")
    if len(values) % len(specs):
        raise BodyError(tokens[i - 1][0], f"{len(values)} values for {len(specs)} elements")
    out: list[Element] = []
    for j, (at, spec) in enumerate(specs):
        own = [values[k] for k in range(j, len(values), len(specs))]
        samples: list[Sample] = []
        if spec.kind is Kind.RAIN_BLOCK or spec.kind is Kind.LEVEL_BLOCK:
            data = b"".join(_hex_bytes(v, vat) for vat, v in own)
            samples += block_samples(spec.kind, data, obs, at, spec.ascii_id)
        elif spec.kind is Kind.NUMBER or spec.kind is Kind.DURATION:
            if step.hourly_blocks:
                raise BodyError(at, f"DRH00 is only for DRP/DRZ blocks, not {spec.ascii_id}")
            for k, (vat, v) in enumerate(own):
                number, _, missing = _number(v, vat)
                samples.append(Sample(obs + step.delta * k, number, "M" if missing else None))
        else:
            raise BodyError(at, f"{spec.ascii_id} cannot form a series")
        raw = " ".join(v for _, v in own).encode("latin-1")
        out.append(SeriesElement(spec.key, spec, 0, obs, station, raw, step, tuple(samples)))
    return out


# -- encoding ------------------------------------------------------------------------------


def ascii_head(serial: int, sent_at: datetime) -> bytes:
    """Serial + send time: the whole body of a confirm, a plain query or a keep-alive."""
    if not 0 <= serial <= 0xFFFF:
        raise EncodeError(f"serial {serial} outside 0-65535")
    try:
        return f"{serial:04X}{encode_time(sent_at).hex()}".encode("ascii")
    except BcdError as exc:
        raise EncodeError(str(exc)) from exc


def format_number(value: Number | Decimal, decimals: int) -> str:
    """A decimal number with exactly `decimals` places, as the ASCII encoding writes it."""
    try:
        n = scaled(value, decimals)
    except BcdError as exc:
        raise EncodeError(str(exc)) from exc
    digits = str(abs(n)).rjust(decimals + 1, "0")
    text = f"{digits[:-decimals]}.{digits[-decimals:]}" if decimals else digits
    return f"-{text}" if n < 0 else text


def ascii_report_body(
    serial: int, sent_at: datetime, station: str, category: int, groups: list[Group]
) -> bytes:
    """Body of an ASCII report (30-34, 37): head, ST + category, then per group TT + items."""
    if category not in CATEGORIES and not chr(category).isalpha():
        raise EncodeError(f"category 0x{category:02X} has no letter")
    parts = [f"ST {station.upper()} {chr(category)} "]
    for group in groups:
        try:
            parts.append(f"TT {encode_time(group.observed_at, 5).hex()} ")
        except BcdError as exc:
            raise EncodeError(str(exc)) from exc
        series = [item for item in group.items if isinstance(item, SeriesValues)]
        for item in group.items:
            if not isinstance(item, SeriesValues):
                parts.append(_item_text(item))
        if series:
            parts.append(_series_text(series))
    return ascii_head(serial, sent_at) + "".join(parts).encode("latin-1")


def ascii_manual_body(serial: int, sent_at: datetime, text: str) -> bytes:
    """Body of an ASCII manual-set report (35): RGZS and the text."""
    try:
        return ascii_head(serial, sent_at) + f"RGZS {text} ".encode("latin-1")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"manual text {text!r} has characters ASCII frames cannot carry") from exc


def _item_text(item: Item) -> str:
    if isinstance(item, Value):
        spec = spec_for(item.ident)
        decimals = spec.decimals if item.decimals is None else item.decimals
        value = "M" if item.value is None else format_number(item.value, decimals)
        return f"{spec.ascii_id} {value} "
    if isinstance(item, BlockValues):
        spec = spec_for(item.ident)
        size = 2 if spec.kind is Kind.RAIN_BLOCK else 4
        slots = block_slots(item)
        return (
            f"{spec.ascii_id} "
            + "".join("F" * size if s is None else f"{s:0{size}X}" for s in slots)
            + " "
        )
    if isinstance(item, StatusValue):
        return f"ZT {item.word:08X} "
    if isinstance(item, ManualText):
        return f"RGZS {item.text} "
    if isinstance(item, RawElement):
        return f"{spec_for(item.ident).ascii_id} {item.data.decode('latin-1')} "
    raise EncodeError(f"{item!r} cannot be written here")


def _series_text(series: list[SeriesValues]) -> str:
    step = series[0].step
    specs = [spec_for(s.ident) for s in series]
    blocks = [spec.kind in (Kind.RAIN_BLOCK, Kind.LEVEL_BLOCK) for spec in specs]
    if any(blocks):
        if len(series) != 1:
            raise EncodeError("an ASCII block series (DRP/DRZ) stands alone in its group")
        s, spec = series[0], specs[0]
        size = 2 if spec.kind is Kind.RAIN_BLOCK else 4
        slots = block_slots(
            BlockValues(s.ident, [None if v is None else float(v) for v in s.values])
        )
        text = ["F" * size if v is None else f"{v:0{size}X}" for v in slots]
        hours = ["".join(text[k : k + 12]) for k in range(0, len(text), 12)]
        return f"{step.ascii_code()} {spec.ascii_id} " + "".join(f"{h} " for h in hours)
    count = len(series[0].values)
    if any(s.step != step or len(s.values) != count for s in series):
        raise EncodeError("ASCII series in one group must share time step and length")
    columns = []
    for s, spec in zip(series, specs, strict=True):
        decimals = spec.decimals if s.decimals is None else s.decimals
        columns.append(["M" if v is None else format_number(v, decimals) for v in s.values])
    rows = [" ".join(col[k] for col in columns) for k in range(count)]
    ids = " ".join(spec.ascii_id for spec in specs)
    return f"{step.ascii_code()} {ids} " + "".join(f"{r} " for r in rows)
