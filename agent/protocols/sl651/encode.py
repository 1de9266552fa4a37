"""Encoders: every downlink the centre sends and every uplink the simulator sends, as bytes.

Pure: values in, one frame (or a list of M3 packets) out; raises EncodeError (or ValueError
from `frame.build_frame`) when a value cannot be carried. Times are station-local wall clock:
naive datetimes, or aware ones written as their own wall-clock fields. Downlinks take the
station's `LinkAddress` (`Frame.link` of what it sent, or the configured one). Serial rules
[§6.6.2.4]: a confirm repeats the uplink serial, a centre-initiated query or command uses 0.
NOTES §n: docs/sl651-notes.md, section n.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from agent.protocols.sl651.ascii import ascii_head, ascii_manual_body, ascii_report_body
from agent.protocols.sl651.bcd import BcdError, Fill, encode_missing, encode_number, encode_time
from agent.protocols.sl651.elements import Kind, element_spec, parse_key
from agent.protocols.sl651.frame import Ctrl, Encoding, LinkAddress, build_frame
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
from agent.protocols.sl651.message import TimeStep
from agent.protocols.sl651.params import BASIC, RUNTIME, param_spec

DEFAULT_PACKET_BODY = 1024  # M3 body bytes per packet when splitting (NOTES §1: channel limits)


def _frame(
    link: LinkAddress,
    function: int,
    body: bytes,
    *,
    down: bool,
    end: int,
    packet: tuple[int, int] | None = None,
    encoding: Encoding = "hex",
) -> bytes:
    try:
        return build_frame(
            link, function, body, direction="down" if down else "up", end=end, packet=packet,
            encoding=encoding,
        )  # fmt: skip
    except ValueError as exc:
        raise EncodeError(str(exc)) from exc


def head(serial: int, sent_at: datetime) -> bytes:
    """Serial (2 bytes HEX) + send time (6 bytes BCD): the start of every HEX body."""
    if not 0 <= serial <= 0xFFFF:
        raise EncodeError(f"serial {serial} outside 0-65535")
    try:
        return serial.to_bytes(2, "big") + encode_time(sent_at)
    except BcdError as exc:
        raise EncodeError(str(exc)) from exc


def _head(serial: int, sent_at: datetime, encoding: Encoding) -> bytes:
    return head(serial, sent_at) if encoding == "hex" else ascii_head(serial, sent_at)


def identifier(ident: str | int, datadef: int) -> bytes:
    """Identifier guide (+ FFxx extension) and data-definition byte."""
    try:
        guide = parse_key(ident)
    except KeyError as exc:
        raise EncodeError(str(exc)) from exc
    if not 0 <= datadef <= 0xFF:
        raise EncodeError(f"data-definition byte {datadef} outside one byte")
    prefix = guide.to_bytes(2, "big") if guide > 0xFF else bytes([guide])
    return prefix + bytes([datadef])


def element(
    ident: str | int,
    value: float | int | Decimal | None,
    decimals: int | None = None,
    *,
    digits: int | None = None,
    width: int | None = None,
    fill: Fill = "FF",
) -> bytes:
    """Identifier + data-definition byte + BCD data for one value (None: missing, `fill`).

    Defaults come from Table C.1: decimals d and width ceil(D/2) (+1 sign byte if negative).
    """
    return _item_bytes(Value(ident, value, decimals, digits, width, fill))


def _value_bytes(item: Value) -> bytes:
    spec = spec_for(item.ident)
    decimals = spec.decimals if item.decimals is None else item.decimals
    digits = item.digits if item.digits is not None else spec.digits
    try:
        if item.value is None:
            width = item.width or ((digits + 1) // 2 if digits else 1)
            dd, data = encode_missing(width, decimals, item.fill)
        else:
            dd, data = encode_number(
                item.value, decimals, digits=None if item.width else digits, width=item.width
            )
    except BcdError as exc:
        raise EncodeError(f"{spec.ascii_id}: {exc}") from exc
    return identifier(item.ident, dd) + data


def _slot_bytes(slots: list[int | None], size: int) -> bytes:
    """HEX slots, all-F for an invalid one (F4: FF, F5-FC: FFFF)."""
    return b"".join(b"\xff" * size if s is None else s.to_bytes(size, "big") for s in slots)


def _block_bytes(item: BlockValues) -> bytes:
    size = 1 if spec_for(item.ident).kind is Kind.RAIN_BLOCK else 2
    data = _slot_bytes(block_slots(item), size)
    if len(data) > 31:
        raise EncodeError(f"{len(item.values)} slots do not fit one data-definition byte")
    return identifier(item.ident, len(data) << 3) + data


def _series_bytes(item: SeriesValues) -> bytes:
    """`04 18 dhm`, the identifier, the values back to back [§6.6.4.4]."""
    step = identifier(0x04, 0x18) + bytes.fromhex(
        f"{item.step.days:02d}{item.step.hours:02d}{item.step.minutes:02d}"
    )
    spec = spec_for(item.ident)
    if spec.kind is Kind.RAIN_BLOCK or spec.kind is Kind.LEVEL_BLOCK:
        values = [None if v is None else float(v) for v in item.values]
        size = 1 if spec.kind is Kind.RAIN_BLOCK else 2
        data = _slot_bytes(block_slots(BlockValues(item.ident, values)), size)
        return step + identifier(item.ident, (12 * size) << 3) + data
    if item.step.hourly_blocks:
        raise EncodeError("time step 000000 is only for F4/F5-FC blocks")
    decimals = spec.decimals if item.decimals is None else item.decimals
    width = item.width
    try:
        if width is None:  # one width for all values: the widest one needs
            digits = item.digits if item.digits is not None else spec.digits
            width = max(
                (
                    encode_number(v, decimals, digits=digits)[0] >> 3
                    for v in item.values
                    if v is not None
                ),
                default=((digits or 1) + 1) // 2,
            )
        parts = [
            encode_missing(width, decimals)[1]
            if v is None
            else encode_number(v, decimals, width=width)[1]
            for v in item.values
        ]
    except BcdError as exc:
        raise EncodeError(f"{spec.ascii_id} series: {exc}") from exc
    return step + identifier(item.ident, width << 3 | decimals) + b"".join(parts)


def _item_bytes(item: Item) -> bytes:
    if isinstance(item, Value):
        return _value_bytes(item)
    if isinstance(item, BlockValues):
        return _block_bytes(item)
    if isinstance(item, StatusValue):
        if not 0 <= item.word <= 0xFFFFFFFF:
            raise EncodeError(f"status word {item.word:#x} does not fit 4 bytes")
        return bytes([0x45, 0x20]) + item.word.to_bytes(4, "big")
    if isinstance(item, SeriesValues):
        return _series_bytes(item)
    if isinstance(item, ManualText):
        return b"\xf2\xf2" + item.text.encode("gb18030")
    return identifier(item.ident, item.datadef) + item.data


def report_body(
    serial: int,
    sent_at: datetime,
    station: str,
    category: int,
    groups: Sequence[Group],
) -> bytes:
    """HEX body of a data report: head, F1F1 + address + category, then F0F0 + time + items
    per group [Tables 28, 30, 32 …]."""
    out = bytearray(head(serial, sent_at))
    out += b"\xf1\xf1" + _station_bytes(station)
    if not 0 <= category <= 0xFF:
        raise EncodeError(f"category {category} outside one byte")
    out.append(category)
    for group in groups:
        try:
            out += b"\xf0\xf0" + encode_time(group.observed_at, 5)
        except BcdError as exc:
            raise EncodeError(str(exc)) from exc
        for item in group.items:
            out += _item_bytes(item)
    return bytes(out)


def _station_bytes(station: str) -> bytes:
    try:
        data = bytes.fromhex(station)
    except ValueError as exc:
        raise EncodeError(f"station {station!r} is not 10 hex digits") from exc
    if len(data) != 5:
        raise EncodeError(f"station {station!r} is not 10 hex digits")
    return data


# -- downlinks: the centre's frames -------------------------------------------------------


def confirm(
    link: LinkAddress,
    function: int,
    serial: int,
    sent_at: datetime,
    *,
    end: int = Ctrl.EOT,
    encoding: Encoding = "hex",
) -> bytes:
    """Confirm of a self report or the last frame of a response (M2/M4): the uplink serial,
    a send time (the centre clock, or the uplink's echoed), end EOT (station may go offline),
    ESC (stay online) or ACK (after an ETB frame, more follows) [§6.3, NOTES §6.2]."""
    if end not in (Ctrl.EOT, Ctrl.ESC, Ctrl.ACK):
        raise EncodeError(f"confirm end char 0x{end:02X}: EOT, ESC or ACK")
    return _frame(
        link, function, _head(serial, sent_at, encoding), down=True, end=end, encoding=encoding
    )


def confirm_packets(
    link: LinkAddress,
    function: int,
    serial: int,
    sent_at: datetime,
    total: int,
    *,
    end: int = Ctrl.EOT,
    encoding: Encoding = "hex",
) -> bytes:
    """The single confirm of an M3 message: SYN, packet field (total, total) [Table 23 note a]."""
    if end not in (Ctrl.EOT, Ctrl.ESC):
        raise EncodeError(f"M3 confirm end char 0x{end:02X}: EOT or ESC")
    return _frame(
        link, function, _head(serial, sent_at, encoding), down=True, end=end,
        packet=(total, total), encoding=encoding,
    )  # fmt: skip


def nak_packet(
    link: LinkAddress,
    function: int,
    serial: int,
    sent_at: datetime,
    total: int,
    seq: int,
    *,
    encoding: Encoding = "hex",
) -> bytes:
    """Ask for one M3 packet again: SYN, (total, the bad seq), end NAK [Table 23 note a]."""
    if not 1 <= seq <= total:
        raise EncodeError(f"packet {seq} of {total}")
    return _frame(
        link, function, _head(serial, sent_at, encoding), down=True, end=Ctrl.NAK,
        packet=(total, seq), encoding=encoding,
    )  # fmt: skip


def query(
    link: LinkAddress,
    function: int,
    sent_at: datetime,
    *,
    serial: int = 0,
    encoding: Encoding = "hex",
) -> bytes:
    """A query or command with serial + send time only, end ENQ: 36 (picture), 37 (real-time
    data), 39 (manual data), 44, 45 (version), 46 (status), 50 (events), 51 (clock)."""
    return _frame(
        link, function, _head(serial, sent_at, encoding), down=True, end=Ctrl.ENQ, encoding=encoding
    )


def query_realtime(
    link: LinkAddress, sent_at: datetime, *, serial: int = 0, encoding: Encoding = "hex"
) -> bytes:
    """37H: query real-time data [§6.6.4.10]."""
    return query(link, 0x37, sent_at, serial=serial, encoding=encoding)


def query_period(
    link: LinkAddress,
    sent_at: datetime,
    start: datetime,
    end: datetime,
    step: TimeStep,
    element_id: str | int,
    *,
    datadef: int | None = None,
    serial: int = 0,
) -> bytes:
    """38H: period data from `start` to `end` (hours, YYMMDDHH), every `step`, of one element
    (identifier with its data-definition byte, e.g. F4 60) [§6.6.4.11]."""
    spec = spec_for(element_id)
    dd = datadef if datadef is not None else _nominal_datadef(spec.guide)
    try:
        times = encode_time(start, 4) + encode_time(end, 4)
    except BcdError as exc:
        raise EncodeError(str(exc)) from exc
    step_bytes = identifier(0x04, 0x18) + bytes.fromhex(
        f"{step.days:02d}{step.hours:02d}{step.minutes:02d}"
    )
    body = head(serial, sent_at) + times + step_bytes + identifier(element_id, dd)
    return _frame(link, 0x38, body, down=True, end=Ctrl.ENQ)


def _nominal_datadef(guide: int) -> int:
    spec = element_spec(guide)
    if spec.kind is Kind.RAIN_BLOCK:
        return 0x60
    if spec.kind is Kind.LEVEL_BLOCK:
        return 0xC0
    if spec.kind is Kind.STATUS:
        return 0x20
    width = spec.nominal_width
    return ((width or 0) << 3) | spec.decimals


def query_elements(
    link: LinkAddress,
    sent_at: datetime,
    elements: Sequence[str | int | tuple[str | int, int]],
    *,
    serial: int = 0,
) -> bytes:
    """3AH: specified elements, as identifiers with their data-definition bytes and no data
    (the table's nominal byte unless given as (identifier, datadef)) [§6.6.4.13]."""
    body = bytearray(head(serial, sent_at))
    for item in elements:
        ident, dd = (
            item if isinstance(item, tuple) else (item, _nominal_datadef(spec_for(item).guide))
        )
        body += identifier(ident, dd)
    return _frame(link, 0x3A, bytes(body), down=True, end=Ctrl.ENQ)


def set_clock(link: LinkAddress, clock: datetime, *, serial: int = 0) -> bytes:
    """4AH: set the station clock; the send time is the time to set [§6.6.4.24]."""
    return _frame(link, 0x4A, head(serial, clock), down=True, end=Ctrl.ENQ)


def change_password(
    link: LinkAddress, new_password: str, sent_at: datetime, *, serial: int = 0
) -> bytes:
    """49H: `03 10` old (the link's password, also in the header) + `03 10` new [§6.6.4.23]."""
    try:
        old, new = bytes.fromhex(link.password), bytes.fromhex(new_password)
    except ValueError as exc:
        raise EncodeError("passwords are 4 hex digits") from exc
    if len(old) != 2 or len(new) != 2:
        raise EncodeError("passwords are 4 hex digits")
    body = head(serial, sent_at) + b"\x03\x10" + old + b"\x03\x10" + new
    return _frame(link, 0x49, body, down=True, end=Ctrl.ENQ)


def _read(table: str, params: Sequence[int]) -> bytes:
    out = bytearray()
    for ident in params:
        out += identifier(ident, param_spec(table, ident).nominal_datadef)
    return bytes(out)


def read_basic_config(
    link: LinkAddress, sent_at: datetime, params: Sequence[int] | None = None, *, serial: int = 0
) -> bytes:
    """41H: read basic configuration (D.1), identifiers with their data-definition bytes (00 for
    variable-length items); all of 01-0F by default [§6.6.4.15]."""
    idents = list(params) if params is not None else sorted(BASIC)
    return _frame(
        link, 0x41, head(serial, sent_at) + _read("basic", idents), down=True, end=Ctrl.ENQ
    )


def read_runtime_config(
    link: LinkAddress, sent_at: datetime, params: Sequence[int] | None = None, *, serial: int = 0
) -> bytes:
    """43H: read runtime parameters (D.4); 20-27 by default [§6.6.4.17]."""
    idents = list(params) if params is not None else [i for i in sorted(RUNTIME) if i <= 0x27]
    return _frame(
        link, 0x43, head(serial, sent_at) + _read("runtime", idents), down=True, end=Ctrl.ENQ
    )


def write_runtime_config(
    link: LinkAddress,
    sent_at: datetime,
    values: Sequence[tuple[int, float | int | Decimal]],
    *,
    serial: int = 0,
) -> bytes:
    """42H: set runtime parameters (D.4) to numeric values in the table's N(D,d) [§6.6.4.16]."""
    body = bytearray(head(serial, sent_at))
    for ident, value in values:
        spec = param_spec("runtime", ident)
        if spec.digits is None:
            raise EncodeError(f"parameter {spec.key} is not numeric")
        try:
            dd, data = encode_number(value, spec.decimals, digits=spec.digits)
        except BcdError as exc:
            raise EncodeError(f"{spec.name}: {exc}") from exc
        body += identifier(ident, dd) + data
    return _frame(link, 0x42, bytes(body), down=True, end=Ctrl.ENQ)


def command(
    link: LinkAddress, function: int, sent_at: datetime, data: bytes = b"", *, serial: int = 0
) -> bytes:
    """Any other centre command: serial, send time, `data` as given, end ENQ (47 `97 00`,
    48 `98 00`, 4B `45 20` + status, 4C/4D count + states, 4E gates, 4F FF/00)."""
    return _frame(link, function, head(serial, sent_at) + data, down=True, end=Ctrl.ENQ)


def switch_command(
    link: LinkAddress, function: int, sent_at: datetime, states: Sequence[bool], *, serial: int = 0
) -> bytes:
    """4CH pumps / 4DH valves: count byte, then bit D0 = unit 1 (True = on/open) [Tables 71, 74]."""
    count = (len(states) + 7) // 8
    data = bytearray(count)
    for i, on in enumerate(states):
        if on:
            data[i // 8] |= 1 << (i % 8)
    return command(link, function, sent_at, bytes([count]) + bytes(data), serial=serial)


# -- uplinks: the station's frames (simulator) ---------------------------------------------


def keepalive(
    link: LinkAddress, serial: int, sent_at: datetime, *, encoding: Encoding = "hex"
) -> bytes:
    """2FH link keep-alive: serial (of the last report) + send time; never confirmed [§6.6.4.2]."""
    return _frame(
        link, 0x2F, _head(serial, sent_at, encoding), down=False, end=Ctrl.ETX, encoding=encoding
    )


def report(
    link: LinkAddress,
    function: int,
    serial: int,
    sent_at: datetime,
    *,
    category: int,
    groups: Sequence[Group],
    station: str | None = None,
    end: int = Ctrl.ETX,
    encoding: Encoding = "hex",
) -> bytes:
    """A data report: 30 test, 31 even-interval (a SeriesValues item), 32 timed, 33 add, 34
    hourly (BlockValues), 37/3A/44 responses. `station` in the body defaults to the link's."""
    address = station or link.station
    if encoding == "hex":
        body = report_body(serial, sent_at, address, category, groups)
    else:
        body = ascii_report_body(serial, sent_at, address, category, list(groups))
    return _frame(link, function, body, down=False, end=end, encoding=encoding)


def manual_report(
    link: LinkAddress,
    serial: int,
    sent_at: datetime,
    text: str,
    *,
    function: int = 0x35,
    encoding: Encoding = "hex",
) -> bytes:
    """35H manual-set report (or the 39H answer): F2F2 + the text [§6.6.4.8]."""
    if encoding == "hex":
        body = head(serial, sent_at) + b"\xf2\xf2" + text.encode("gb18030")
    else:
        body = ascii_manual_body(serial, sent_at, text)
    return _frame(link, function, body, down=False, end=Ctrl.ETX, encoding=encoding)


def station_reply(
    link: LinkAddress,
    function: int,
    serial: int,
    sent_at: datetime,
    data: bytes = b"",
    *,
    end: int = Ctrl.ETX,
) -> bytes:
    """A reply to a configuration/control query: F1F1 + address, then `data` as given
    (47/48/4A/51: nothing; the 51 reply's send time is the station clock)."""
    body = head(serial, sent_at) + b"\xf1\xf1" + _station_bytes(link.station) + data
    return _frame(link, function, body, down=False, end=end)


def status_reply(link: LinkAddress, serial: int, sent_at: datetime, word: int) -> bytes:
    """46H reply: F1F1 + address + `45 20` + the 4-byte status word."""
    return station_reply(link, 0x46, serial, sent_at, _item_bytes(StatusValue(word)))


def version_reply(link: LinkAddress, serial: int, sent_at: datetime, version: str) -> bytes:
    """45H reply: F1F1 + address + length byte + ASCII version."""
    text = version.encode("ascii", errors="replace")
    if len(text) > 0xFF:
        raise EncodeError("version text over 255 characters")
    return station_reply(link, 0x45, serial, sent_at, bytes([len(text)]) + text)


def packets(
    link: LinkAddress,
    function: int,
    body: bytes,
    *,
    max_body: int = DEFAULT_PACKET_BODY,
    encoding: Encoding = "hex",
) -> list[bytes]:
    """Split a whole body into M3 packets: SYN, (total, seq), ETB … ETX [§6.3.1.2 c, Table 22].
    Only packet 1 carries serial and send time, because the cut is of the whole body."""
    if max_body < 1:
        raise EncodeError("max_body must be positive")
    chunks = [body[i : i + max_body] for i in range(0, len(body), max_body)] or [b""]
    total = len(chunks)
    if total > 0xFFF:
        raise EncodeError(f"{total} packets exceed 4095")
    frames = []
    for seq, chunk in enumerate(chunks, start=1):
        end = Ctrl.ETX if seq == total else Ctrl.ETB
        frames.append(
            _frame(
                link, function, chunk, down=False, end=end, packet=(total, seq), encoding=encoding
            )
        )
    return frames


def picture_report(
    link: LinkAddress,
    serial: int,
    sent_at: datetime,
    *,
    category: int,
    observed_at: datetime,
    jpeg: bytes,
    max_body: int = DEFAULT_PACKET_BODY,
) -> list[bytes]:
    """36H picture report as M3 packets: F1F1, category, F0F0, F3F3 + JPEG [§6.6.4.9]."""
    body = report_body(serial, sent_at, link.station, category, [Group(observed_at, [])])
    return packets(link, 0x36, body + b"\xf3\xf3" + jpeg, max_body=max_body)


__all__ = [
    "DEFAULT_PACKET_BODY",
    "BlockValues",
    "EncodeError",
    "Group",
    "ManualText",
    "RawElement",
    "SeriesValues",
    "StatusValue",
    "Value",
    "change_password",
    "command",
    "confirm",
    "confirm_packets",
    "element",
    "head",
    "identifier",
    "keepalive",
    "manual_report",
    "nak_packet",
    "packets",
    "picture_report",
    "query",
    "query_elements",
    "query_period",
    "query_realtime",
    "read_basic_config",
    "read_runtime_config",
    "report",
    "report_body",
    "set_clock",
    "station_reply",
    "status_reply",
    "switch_command",
    "version_reply",
    "write_runtime_config",
]
