"""HEX/BCD body decoding: a Frame's body → a typed Message (§6.6, Appendices C and D).

Pure. Dispatch is by direction and function code through two tables (`UPLINK`, `DOWNLINK`).
Contract: `decode_body` returns a Message or raises `BodyError` (where in the body, and why) for
any bytes — never another exception. A value that is not BCD does not fail the body: the
element keeps value None and an `error` (the layout is intact, the rest still decodes). Packet
1 of a multi-packet (M3) message decodes leniently: what a cut ends is kept as `Continuation`,
and `Message.complete` is False; packets 2..n are `Continuation` bytes only. Join the packets
with `decode_packets` to decode the whole message. NOTES §n: docs/sl651-notes.md, section n.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Final, NamedTuple

from agent.protocols.sl651.ascii import decode_ascii_body
from agent.protocols.sl651.bcd import (
    BcdError,
    Fill,
    decode_number,
    decode_time,
    decode_uint,
    digits_of,
)
from agent.protocols.sl651.elements import ELEMENTS, FIXED_DATADEF, ElementSpec, Kind, element_spec
from agent.protocols.sl651.frame import Direction, Frame
from agent.protocols.sl651.message import (
    BlockElement,
    BodyError,
    BytesElement,
    Channel,
    ConfigParams,
    Continuation,
    Detail,
    DeviceId,
    Element,
    ElementRef,
    EventCounts,
    FixedVolume,
    GateStates,
    IdentifierList,
    Message,
    NumberElement,
    Param,
    ParamValue,
    PasswordChange,
    PeriodQuery,
    RawBody,
    Sample,
    SeriesElement,
    SoftwareVersion,
    StationAddress,
    StatusElement,
    SwitchStates,
    TextElement,
    TimeStep,
    block_samples,
)
from agent.protocols.sl651.params import CHANNEL_TYPES, ParamKind, ParamSpec, param_spec

TEXT_ENCODING: Final = "gb18030"  # manual data: ASCII per SL 330, GB text on Chinese devices


class _Short(BodyError):
    """The body ends inside a field (lenient for M3 packet 1)."""


class _Cursor:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise _Short(self.pos, f"{what} needs {n} bytes, {len(self.data) - self.pos} left")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def u8(self, what: str) -> int:
        if self.pos >= len(self.data):
            raise _Short(self.pos, f"{what} missing: body ends")
        self.pos += 1
        return self.data[self.pos - 1]

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def time(self, size: int, what: str) -> datetime:
        at = self.pos
        try:
            return decode_time(self.take(size, what))
        except BcdError as exc:
            raise BodyError(at, f"{what}: {exc}") from exc

    def identifier(self) -> tuple[int, str]:
        """An identifier guide, with its FFxx extension: (guide, key)."""
        guide = self.u8("identifier")
        if guide == 0xFF:
            guide = 0xFF00 | self.u8("extension identifier")
            return guide, f"{guide:04X}"
        return guide, f"{guide:02X}"

    def station_group(self) -> StationAddress | None:
        """F1F1 (or F1 28) + address when it comes next, else None."""
        data = self.data
        if (
            self.remaining >= 2
            and data[self.pos] == 0xF1
            and data[self.pos + 1] in FIXED_DATADEF[0xF1]
        ):
            self.pos += 2
            return StationAddress.from_raw(self.take(5, "station address").hex())
        return None


class _Head(NamedTuple):
    function: int
    direction: Direction
    serial: int
    sent_at: datetime
    partial: bool  # packet 1 of a multi-packet message: a cut at the end is expected

    def message(
        self,
        *,
        station: StationAddress | None = None,
        category: int | None = None,
        observed_at: datetime | None = None,
        elements: tuple[Element, ...] = (),
        detail: Detail | None = None,
        complete: bool = True,
    ) -> Message:
        return Message(
            self.function, self.direction, "hex", self.serial, self.sent_at,
            station, category, observed_at, elements, detail, complete,
        )  # fmt: skip


Handler = Callable[[_Cursor, _Head], Message]


def decode_body(frame: Frame) -> Message:
    """The Message a frame's body carries. Raises BodyError and nothing else."""
    try:
        if frame.encoding == "ascii":
            return decode_ascii_body(frame)
        return _decode_hex(frame)
    except BodyError:
        raise
    except (ValueError, IndexError, KeyError, OverflowError) as exc:
        # The contract is BodyError for any bytes; this net turns a decoder gap into one.
        raise BodyError(0, f"undecodable ({type(exc).__name__}: {exc})") from exc


def frame_serial(frame: Frame) -> int | None:
    """The serial number of a frame (for the confirm) even when its body does not decode."""
    if frame.packet is not None and frame.packet[1] > 1 and frame.direction == "up":
        return None
    if frame.encoding == "ascii":
        text = frame.body[:4].decode("latin-1")
        return (
            int(text, 16)
            if len(text) == 4 and all(c in "0123456789ABCDEFabcdef" for c in text)
            else None
        )
    return int.from_bytes(frame.body[:2], "big") if len(frame.body) >= 2 else None


def join_packets(frames: Sequence[Frame]) -> bytes:
    """The bodies of one M3 message's packets joined in sequence order [Table 22 note a].

    Raises BodyError unless the frames are exactly packets 1..total of one message.
    """
    if not frames:
        raise BodyError(0, "no packets")
    totals = {f.packet[0] for f in frames if f.packet is not None}
    if len(totals) != 1 or any(f.packet is None for f in frames):
        raise BodyError(0, "frames are not packets of one multi-packet message")
    total = totals.pop()
    by_seq = {f.packet[1]: f for f in frames if f.packet is not None}
    missing = sorted(set(range(1, total + 1)) - set(by_seq))
    if missing or len(by_seq) != len(frames) or len(by_seq) != total:
        raise BodyError(0, f"packets of {total}: missing {missing or 'none'}, got {len(frames)}")
    return b"".join(by_seq[seq].body for seq in range(1, total + 1))


def decode_packets(frames: Sequence[Frame]) -> Message:
    """Decode the joined bodies of one M3 message as a single message (header of packet 1)."""
    body = join_packets(frames)
    first = min(frames, key=lambda f: f.packet[1] if f.packet else 0)
    return decode_body(dataclasses.replace(first, body=body, packet=None))


def _decode_hex(frame: Frame) -> Message:
    up = frame.direction == "up"
    packet = frame.packet
    if up and packet is not None and packet[1] > 1:
        return Message(
            frame.function, "up", "hex", None, None, detail=Continuation(frame.body), complete=False
        )
    cur = _Cursor(frame.body)
    serial = int.from_bytes(cur.take(2, "serial number"), "big")
    sent_at = cur.time(6, "send time")
    head = _Head(
        frame.function, frame.direction, serial, sent_at, packet is not None and packet[0] > 1
    )
    if not cur.remaining:
        return head.message()
    handler = (UPLINK if up else DOWNLINK).get(frame.function, _raw)
    return handler(cur, head)


# -- reports and other element lists ------------------------------------------------------


def _report(cur: _Cursor, head: _Head) -> Message:
    return _elements(cur, head, with_category=True)


def _station_elements(cur: _Cursor, head: _Head) -> Message:
    return _elements(cur, head, with_category=False)


def _elements(cur: _Cursor, head: _Head, *, with_category: bool) -> Message:
    """F1F1 station groups, F0F0 observation times and elements, in any order (§6.6.2.7-11).

    The hot path of every report: bytes are indexed in place, not through the cursor."""
    station: StationAddress | None = None
    first_station: StationAddress | None = None
    category: int | None = None
    obs: datetime | None = None
    first_obs: datetime | None = None
    elements: list[Element] = []
    append = elements.append
    tail: bytes | None = None
    body, n = cur.data, len(cur.data)
    pos = start = cur.pos
    try:
        while pos < n:
            start = pos
            guide = body[pos]
            if guide == 0xFF:
                if pos + 2 >= n:
                    raise _Short(pos, "extension identifier: body ends")
                guide = 0xFF00 | body[pos + 1]
                dd = body[pos + 2]
                pos += 3
            else:
                if pos + 1 >= n:
                    raise _Short(pos, f"data-definition byte of {guide:02X}: body ends")
                dd = body[pos + 1]
                pos += 2
            spec = ELEMENTS.get(guide) or element_spec(guide)
            kind = spec.kind
            size = dd >> 3
            if kind is Kind.NUMBER:
                end = pos + size
                if end > n:
                    raise _Short(pos, f"{spec.key} data needs {size} bytes, {n - pos} left")
                data = body[pos:end]
                pos = end
                value, missing, error, sentinel = decode_number(data, dd & 7)
                append(
                    NumberElement(
                        spec.key, spec, dd, obs, station, data, value, missing, error, sentinel
                    )
                )
                continue
            if kind is Kind.STATION or kind is Kind.OBS_TIME:
                if dd not in FIXED_DATADEF[guide]:
                    raise BodyError(
                        start,
                        f"{spec.key} with data-definition byte {dd:02X} ({spec.key} or 28 expected)",
                    )
                end = pos + 5
                if end > n:
                    raise _Short(pos, f"{spec.name} needs 5 bytes, {n - pos} left")
                if kind is Kind.STATION:
                    station = StationAddress.from_raw(body[pos:end].hex())
                    first_station = first_station or station
                    if with_category:
                        if end >= n:
                            raise _Short(end, "station category: body ends")
                        category = body[end] if category is None else category
                        end += 1
                else:
                    try:
                        obs = decode_time(body[pos:end])
                    except BcdError as exc:
                        raise BodyError(pos, f"observation time: {exc}") from exc
                    first_obs = first_obs or obs
                pos = end
                continue
            cur.pos = pos
            if kind is Kind.TEXT:
                data = cur.rest()
                text = data.decode(TEXT_ENCODING, errors="replace")
                append(TextElement(spec.key, spec, dd, obs, station, data, text))
                break
            if kind is Kind.PICTURE or kind is Kind.BULK:
                data = cur.rest()
                append(BytesElement(spec.key, spec, dd, obs, station, data, data))
                break
            if kind is Kind.TIME_STEP:
                series, tail = _series(cur, start, dd, obs, station, head.partial)
                append(series)
                break
            data = cur.take(size, f"{spec.key} data")
            pos = cur.pos
            append(_element(spec, spec.key, dd, data, obs, station, start))
    except _Short:
        if not head.partial:
            raise
        tail = cur.data[start:]
    return head.message(
        station=first_station,
        category=category,
        observed_at=first_obs,
        elements=tuple(elements),
        detail=Continuation(tail) if tail else None,
        complete=not head.partial,
    )


def _element(
    spec: ElementSpec,
    key: str,
    dd: int,
    data: bytes,
    obs: datetime | None,
    station: StationAddress | None,
    at: int,
) -> Element:
    kind = spec.kind
    if kind is Kind.NUMBER or kind is Kind.DURATION:
        value, missing, error, sentinel = decode_number(data, dd & 7)
        if error is not None and kind is Kind.DURATION:
            text = data.decode("latin-1")
            if text.replace(".", "", 1).isdigit():  # "11.01" as characters (NOV)
                return NumberElement(key, spec, dd, obs, station, data, float(text))
        return NumberElement(key, spec, dd, obs, station, data, value, missing, error, sentinel)
    if kind is Kind.STATUS:
        return StatusElement(key, spec, dd, obs, station, data, int.from_bytes(data, "big"))
    if kind is Kind.RAIN_BLOCK or kind is Kind.LEVEL_BLOCK:
        if obs is None:
            raise BodyError(at, f"{key} block before any observation time (F0F0)")
        return BlockElement(
            key, spec, dd, obs, station, data, block_samples(kind, data, obs, at, key)
        )
    raise BodyError(at, f"{key} ({spec.ascii_id}) cannot stand here")


def _time_step(data: bytes, at: int) -> TimeStep:
    if len(data) != 3:
        raise BodyError(at, f"time-step code of {len(data)} bytes (04 18 + d h m expected)")
    try:
        return TimeStep(decode_uint(data[0:1]), decode_uint(data[1:2]), decode_uint(data[2:3]))
    except BcdError as exc:
        raise BodyError(at, f"time-step code: {exc}") from exc


def _series(
    cur: _Cursor,
    at: int,
    dd: int,
    obs: datetime | None,
    station: StationAddress | None,
    partial: bool,
) -> tuple[SeriesElement, bytes | None]:
    """`04 18 dhm`, one identifier, then its values back to back to the end (§6.6.4.4)."""
    step = _time_step(cur.take(dd >> 3, "time-step code"), at)
    if obs is None:
        raise BodyError(at, "time-step series before any observation time (F0F0)")
    id_at = cur.pos
    guide, key = cur.identifier()
    vdd = cur.u8(f"data-definition byte of {key}")
    spec = element_spec(guide)
    data = cur.rest()
    kind = spec.kind
    if kind is Kind.RAIN_BLOCK or kind is Kind.LEVEL_BLOCK:
        unit = 1 if kind is Kind.RAIN_BLOCK else 2
    elif kind is Kind.NUMBER or kind is Kind.DURATION:
        if step.hourly_blocks:
            raise BodyError(at, f"time step 000000 is only for F4/F5-FC blocks, not {key}")
        unit = vdd >> 3
        if unit == 0:
            raise BodyError(id_at, f"series of {key} with zero-width values")
    else:
        raise BodyError(id_at, f"{key} ({spec.ascii_id}) cannot form a time-step series")
    cut = len(data) - len(data) % unit
    tail = data[cut:] or None
    if tail and not partial:
        raise BodyError(
            id_at + 2 + cut, f"{len(data)} bytes of {key} values is not a multiple of {unit}"
        )
    data = data[:cut]
    if kind is Kind.RAIN_BLOCK or kind is Kind.LEVEL_BLOCK:
        samples = block_samples(
            kind, data, obs, id_at, key
        )  # slots run on at 5 minutes, hour after hour
    else:
        decimals, delta = vdd & 7, step.delta
        values = []
        for k, i in enumerate(range(0, len(data), unit)):
            decoded = decode_number(data[i : i + unit], decimals)
            values.append(Sample(obs + delta * k, decoded.value, decoded.missing, decoded.error))
        samples = tuple(values)
    return SeriesElement(key, spec, vdd, obs, station, data, step, samples), tail


# -- configuration and control bodies -----------------------------------------------------


def _config(table: str) -> Handler:
    def handler(cur: _Cursor, head: _Head) -> Message:
        station = cur.station_group()
        params = _params(cur, table)
        return head.message(station=station, detail=ConfigParams(table, params))

    return handler


def _params(cur: _Cursor, table: str) -> tuple[Param, ...]:
    params = []
    while cur.remaining:
        ident, key = cur.identifier()
        dd = cur.u8(f"data-definition byte of {key}")
        spec = param_spec(table, ident)
        size = dd if spec.kind is ParamKind.RELAY else dd >> 3
        params.append(_param(spec, key, dd, cur.take(size, f"parameter {key} data")))
    return tuple(params)


def _param(spec: ParamSpec, key: str, dd: int, data: bytes) -> Param:
    try:
        value, missing, error = _param_value(spec, dd, data)
    except (BcdError, ValueError) as exc:
        value, missing, error = None, None, str(exc)
    return Param(key, spec, dd, value, data, missing, error)


def _param_value(
    spec: ParamSpec, dd: int, data: bytes
) -> tuple[ParamValue, Fill | None, str | None]:
    kind = spec.kind
    if kind is ParamKind.NUMBER or kind is ParamKind.BCD_INT:
        decoded = decode_number(data, dd & 7)
        return decoded.value, decoded.missing, decoded.error
    if kind is ParamKind.CENTRES:
        return tuple(data), None, None
    if kind is ParamKind.STATION:
        if len(data) != 5:
            raise ValueError(f"station address of {len(data)} bytes")
        return StationAddress.from_raw(data.hex()), None, None
    if kind is ParamKind.PASSWORD or kind is ParamKind.BITMAP or kind is ParamKind.RAW:
        return data.hex().upper(), None, None
    if kind is ParamKind.CHANNEL:
        return (_channel(data) if data else None), None, None
    if kind is ParamKind.DEVICE_ID:
        text = data.decode("latin-1")
        return DeviceId(text[:1], text[1:]), None, None
    if kind is ParamKind.RELAY:
        if len(data) % 6:
            raise ValueError(f"relay ranges of {len(data)} bytes (6 per range)")
        ranges = tuple(
            (data[i : i + 5].hex().upper(), decode_uint(data[i + 5 : i + 6]))
            for i in range(0, len(data), 6)
        )
        return ranges, None, None
    return None, None, None  # FLAG: identifier only


def _channel(data: bytes) -> Channel:
    kind = decode_uint(data[:1])
    address = data[1:]
    if kind == 2 and len(address) == 9:  # IPv4: 6-byte BCD address + 3-byte BCD port
        digits = digits_of(address)
        ip = ".".join(str(int(digits[i : i + 3])) for i in range(0, 12, 3))
        text = f"{ip}:{int(digits[12:])}"
    else:
        text = digits_of(address)
    return Channel(kind, CHANNEL_TYPES.get(kind, f"type {kind}"), text)


def _ids(table: str) -> Handler:
    def handler(cur: _Cursor, head: _Head) -> Message:
        items = []
        while cur.remaining:
            ident, key = cur.identifier()
            dd = cur.u8(f"data-definition byte of {key}")
            name = (
                element_spec(ident).ascii_id
                if table == "elements"
                else param_spec(table, ident).name
            )
            items.append(ElementRef(key, dd, name))
        return head.message(detail=IdentifierList(table, tuple(items)))

    return handler


def _period_query(cur: _Cursor, head: _Head) -> Message:
    start = cur.time(4, "period start")
    end = cur.time(4, "period end")
    at = cur.pos
    guide, key = cur.identifier()
    dd = cur.u8("time-step data-definition byte")
    if guide != 0x04:
        raise BodyError(at, f"{key} where the time-step code 04 should be")
    step = _time_step(cur.take(dd >> 3, "time-step code"), at)
    ident, key = cur.identifier()
    vdd = cur.u8(f"data-definition byte of {key}")
    ref = ElementRef(key, vdd, element_spec(ident).ascii_id)
    return head.message(detail=PeriodQuery(start, end, step, ref))


def _password(cur: _Cursor, head: _Head) -> Message:
    """49H: `03 10` old + `03 10` new downlink, `03 10` new in the reply (§6.6.4.23)."""
    station = cur.station_group()
    passwords = [p.value for p in _params(cur, "basic") if p.spec.kind is ParamKind.PASSWORD]
    texts = [p for p in passwords if isinstance(p, str)]
    if not 1 <= len(texts) <= 2:
        raise BodyError(0, f"49H carries {len(texts)} passwords (03 10 old, 03 10 new expected)")
    old = texts[0] if len(texts) == 2 else None
    return head.message(station=station, detail=PasswordChange(old, texts[-1]))


def _version(cur: _Cursor, head: _Head) -> Message:
    station = cur.station_group()
    data = cur.rest()
    if data and data[0] == len(data) - 1:  # length byte + ASCII [Table 57]
        data = data[1:]
    return head.message(station=station, detail=SoftwareVersion(data.decode("latin-1")))


def _switches(kind: str) -> Handler:
    def handler(cur: _Cursor, head: _Head) -> Message:
        station = cur.station_group()
        count = cur.u8("state byte count")
        data = cur.take(count, "states")
        states = tuple(bool(byte >> bit & 1) for byte in data for bit in range(8))
        _no_more(cur)
        return head.message(station=station, detail=SwitchStates(kind, states))

    return handler


def _gates(cur: _Cursor, head: _Head) -> Message:
    station = cur.station_group()
    count = cur.u8("gate count")
    bits = cur.take((count + 7) // 8, "gate states")
    opened = tuple(bool(bits[i // 8] >> (i % 8) & 1) for i in range(count))
    openings: list[int | None] = []
    for _ in range(count):
        raw = cur.take(2, "gate opening")
        openings.append(int(raw.hex()) if raw.hex().isdigit() else None)
    _no_more(cur)
    return head.message(station=station, detail=GateStates(opened, tuple(openings)))


def _fixed_volume(cur: _Cursor, head: _Head) -> Message:
    station = cur.station_group()
    flag = cur.u8("fixed-volume flag")
    _no_more(cur)
    return head.message(station=station, detail=FixedVolume(flag == 0xFF, flag))


def _events(cur: _Cursor, head: _Head) -> Message:
    station = cur.station_group()
    data = cur.rest()
    if len(data) % 2:
        raise BodyError(cur.pos, f"event counters of {len(data)} bytes (2 bytes each)")
    counts = tuple(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    return head.message(station=station, detail=EventCounts(counts))


def _raw(cur: _Cursor, head: _Head) -> Message:
    return head.message(detail=RawBody(cur.rest()))


def _no_more(cur: _Cursor) -> None:
    if cur.remaining:
        raise BodyError(cur.pos, f"{cur.remaining} unexpected bytes after the data")


_REPORTS = (0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x44)

# Uplink bodies after serial + send time [§6.6.4, NOTES §10-11].
UPLINK: Final[Mapping[int, Handler]] = {
    **dict.fromkeys(_REPORTS, _report),
    0x40: _config("basic"),
    0x41: _config("basic"),
    0x42: _config("runtime"),
    0x43: _config("runtime"),
    0x45: _version,
    **dict.fromkeys((0x46, 0x47, 0x48, 0x4A, 0x4B, 0x51), _station_elements),
    0x49: _password,
    0x4C: _switches("pump"),
    0x4D: _switches("valve"),
    0x4E: _gates,
    0x4F: _fixed_volume,
    0x50: _events,
}

# Downlink bodies after serial + send time; a bare serial + time (confirm, plain query) never
# reaches these.
DOWNLINK: Final[Mapping[int, Handler]] = {
    0x38: _period_query,
    0x3A: _ids("elements"),
    0x40: _config("basic"),
    0x41: _ids("basic"),
    0x42: _config("runtime"),
    0x43: _ids("runtime"),
    0x47: _ids("runtime"),
    0x48: _ids("runtime"),
    0x49: _password,
    0x4B: _station_elements,
    0x4C: _switches("pump"),
    0x4D: _switches("valve"),
    0x4E: _gates,
    0x4F: _fixed_volume,
}
