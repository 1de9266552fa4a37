"""SL651-2014 framing: control characters, CRC, the frame header, whole-frame parse and build.

Sans-IO and pure: bytes in, a `Frame` out (and the reverse). Both encodings share one layout
[STD §6.2.3 Tables 11/12]; HEX/BCD writes the header as binary (`7E 7E` start, §6.5), ASCII as
hex characters (`SOH` start, §6.4). Downlink frames swap the station and centre fields. The body
length counts every byte after STX/SYN and before the end character, the M3 packet field
included (docs/sl651-notes.md §3.2). The CRC is CRC-16/MODBUS written high byte first
(docs/sl651-notes.md §3.4; NOTES §n below means its section n).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from agent.protocols.crc16 import crc16

Encoding = Literal["hex", "ascii"]
Direction = Literal["up", "down"]


class Ctrl(enum.IntEnum):
    """Control characters [STD §6.2.2 Table 10]."""

    SOH = 0x01
    STX = 0x02
    ETX = 0x03
    EOT = 0x04
    ENQ = 0x05
    ACK = 0x06
    NAK = 0x15
    SYN = 0x16
    ETB = 0x17
    ESC = 0x1B


@dataclass(frozen=True, slots=True)
class ControlChar:
    """One row of Table 10: what the character means and where the standard says so."""

    code: int
    name: str
    meaning: str
    used_in: str
    clause: str


CONTROL_CHARACTERS: Final[Mapping[int, ControlChar]] = {
    c.code: c
    for c in (
        ControlChar(0x01, "SOH", "frame start", "ASCII frames", "§6.2.2 Table 10, §6.4 Table 16"),
        ControlChar(0x02, "STX", "start of body", "single-frame up and down", "§6.2.2 Table 10"),
        ControlChar(
            0x16,
            "SYN",
            "start of body, multi-packet",
            "M3 up and down",
            "§6.2.2 Table 10, §6.5.3 Tables 22/23",
        ),
        ControlChar(
            0x03,
            "ETX",
            "end of message, nothing follows",
            "uplink end",
            "§6.2.2 Table 10, §6.3.2.5",
        ),
        ControlChar(
            0x17,
            "ETB",
            "end of block, more follows",
            "uplink end (multi-frame / M3)",
            "§6.2.2 Table 10, §6.3.2.5",
        ),
        ControlChar(
            0x05,
            "ENQ",
            "enquiry",
            "end of downlink queries and commands",
            "§6.2.2 Table 10, §6.3.1.2 d",
        ),
        ControlChar(
            0x04,
            "EOT",
            "transmission finished, station may go offline",
            "end of downlink confirm",
            "§6.2.2 Table 10, §6.3.2.4",
        ),
        ControlChar(
            0x06,
            "ACK",
            "positive acknowledgement, continue",
            "downlink confirm of an ETB frame",
            "§6.2.2 Table 10, Figure 1(b)",
        ),
        ControlChar(
            0x15,
            "NAK",
            "negative acknowledgement, resend the packet",
            "M3 downlink",
            "§6.2.2 Table 10, §6.3.1.2 c",
        ),
        ControlChar(
            0x1B,
            "ESC",
            "transmission finished, terminal stays online",
            "end of downlink confirm",
            "§6.2.2 Table 10, §6.3.2.4, H.4.4.1",
        ),
    )
}

HEX_START: Final = b"\x7e\x7e"
START_CHARS: Final = frozenset({Ctrl.STX, Ctrl.SYN})
UP_END_CHARS: Final = frozenset({Ctrl.ETX, Ctrl.ETB})  # STD Tables 20, 22
DOWN_END_CHARS: Final = frozenset(
    {Ctrl.ENQ, Ctrl.ACK, Ctrl.NAK, Ctrl.EOT, Ctrl.ESC}
)  # Tables 21, 23
END_CHARS: Final = UP_END_CHARS | DOWN_END_CHARS

# Function codes [STD Appendix B Table B.1]; 00-2E and 52-DF reserved, E0-FF user-defined.
FUNCTIONS: Final[Mapping[int, str]] = {
    0x2F: "link keep-alive",
    0x30: "test report",
    0x31: "even-interval report",
    0x32: "timed report",
    0x33: "add report",
    0x34: "hourly report",
    0x35: "manual-set report",
    0x36: "picture report / picture query",
    0x37: "query real-time data",
    0x38: "query period data",
    0x39: "query manual data",
    0x3A: "query specified elements",
    0x40: "modify basic configuration",
    0x41: "read basic configuration",
    0x42: "modify runtime parameters",
    0x43: "read runtime parameters",
    0x44: "query pump-motor real-time data",
    0x45: "query software version",
    0x46: "query status and alarms",
    0x47: "initialize storage",
    0x48: "restore factory settings",
    0x49: "change password",
    0x4A: "set station clock",
    0x4B: "set IC-card state",
    0x4C: "pump control / pump state",
    0x4D: "valve control / valve state",
    0x4E: "gate control / gate state",
    0x4F: "fixed water-volume control",
    0x50: "query event records",
    0x51: "query station clock",
}

HEX_HEADER: Final = 14  # 7E7E .. direction+length word, then the start char at offset 13
ASCII_HEADER: Final = 24  # SOH .. direction+length characters, then the start char at offset 23
HEX_TRAILER: Final = 3  # end char + CRC (2 bytes)
ASCII_TRAILER: Final = 5  # end char + CRC (4 characters)
MAX_LENGTH: Final = 0xFFF  # 12-bit body length (NOTES §3.2)
MAX_HEX_FRAME: Final = HEX_HEADER + MAX_LENGTH + HEX_TRAILER
MAX_ASCII_FRAME: Final = ASCII_HEADER + MAX_LENGTH + ASCII_TRAILER
MAX_FRAME: Final = max(MAX_HEX_FRAME, MAX_ASCII_FRAME)


class RejectReason(enum.StrEnum):
    """Why bytes on the line were not a frame; a small closed set for counting and alarms."""

    BAD_START = "bad_start"  # bytes that start no frame (junk before a start marker)
    BAD_LENGTH = "bad_length"  # direction+length word (or M3 packet field) impossible
    OVERSIZE = "oversize"  # the length announces a frame above max_frame_bytes, or buffer full
    BAD_END = "bad_end"  # no end character where the length says the body ends
    BAD_CRC = "bad_crc"  # CRC mismatch
    TRUNCATED = "truncated"  # the stream was flushed (link closed or quiet) mid-frame


class FrameError(ValueError):
    """Bytes that are not one well-formed frame; `reason` says which check failed."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class LinkAddress:
    """Who a frame is between: centre address, station address (10 hex digits), password."""

    center: int
    station: str
    password: str


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame as it came off the line, header decoded, body left as bytes.

    `station` is the 10-hex-digit address as sent (see `message.StationAddress` for its
    interpretation), `password` 4 hex digits, `packet` the M3 (total, seq) or None, `body` the
    bytes after the start character and the packet field, `end` the end character.
    """

    encoding: Encoding
    direction: Direction
    center: int
    station: str
    password: str
    function: int
    packet: tuple[int, int] | None
    body: bytes
    end: int
    raw: bytes
    crc_ok: bool = True

    @property
    def link(self) -> LinkAddress:
        return LinkAddress(self.center, self.station, self.password)

    @property
    def crc(self) -> int:
        """The CRC as written in the frame."""
        if self.encoding == "hex":
            return int.from_bytes(self.raw[-2:], "big")
        return int(self.raw[-4:].decode("latin-1"), 16)


def end_name(end: int) -> str:
    """`ETX`, `EOT` … for a control character, `0x..` for anything else."""
    known = CONTROL_CHARACTERS.get(end)
    return known.name if known else f"0x{end:02X}"


_HEX_DIGITS: Final = frozenset(b"0123456789ABCDEFabcdef")


def is_hex_text(data: bytes | bytearray) -> bool:
    return all(c in _HEX_DIGITS for c in data)


def hex_frame_from(buf: bytes | bytearray, start: int, total: int, crc_ok: bool) -> Frame:
    """The Frame at buf[start:start+total] (HEX encoding), header already validated."""
    raw = bytes(buf[start : start + total])
    if raw[11] & 0x80:
        direction: Direction = "down"
        station, center = raw[2:7].hex().upper(), raw[7]
    else:
        direction = "up"
        center, station = raw[2], raw[3:8].hex().upper()
    if raw[13] == Ctrl.SYN:
        word = int.from_bytes(raw[14:17], "big")
        packet: tuple[int, int] | None = (word >> 12, word & 0xFFF)
        body = raw[17 : total - 3]
    else:
        packet = None
        body = raw[14 : total - 3]
    return Frame(
        "hex", direction, center, station, raw[8:10].hex().upper(), raw[10], packet, body,
        raw[total - 3], raw, crc_ok,
    )  # fmt: skip


def ascii_frame_from(buf: bytes | bytearray, start: int, total: int, crc_ok: bool) -> Frame:
    """The Frame at buf[start:start+total] (ASCII encoding), header already validated."""
    raw = bytes(buf[start : start + total])
    head = raw[1:23].decode("latin-1").upper()
    if head[18] == "8":
        direction: Direction = "down"
        station, center = head[0:10], int(head[10:12], 16)
    else:
        direction = "up"
        center, station = int(head[0:2], 16), head[2:12]
    if raw[23] == Ctrl.SYN:
        field = raw[24:30].decode("latin-1")
        packet: tuple[int, int] | None = (int(field[:3], 16), int(field[3:], 16))
        body = raw[30 : total - 5]
    else:
        packet = None
        body = raw[24 : total - 5]
    return Frame(
        "ascii", direction, center, station, head[12:16], int(head[16:18], 16), packet, body,
        raw[total - 5], raw, crc_ok,
    )  # fmt: skip


def parse_frame(raw: bytes, *, check_crc: bool = True) -> Frame:
    """Exactly one whole frame (HEX or ASCII) → Frame; raises FrameError on anything else.

    With check_crc=False a CRC mismatch gives a Frame with crc_ok=False instead of an error
    (for the field engineer's decode tool, which shows what a damaged frame says).
    """
    if raw[:2] == HEX_START:
        if len(raw) < HEX_HEADER + HEX_TRAILER:
            raise FrameError(RejectReason.TRUNCATED, f"{len(raw)} bytes is shorter than a header")
        if raw[13] not in START_CHARS:
            raise FrameError(RejectReason.BAD_START, f"byte 13 is 0x{raw[13]:02X}, not STX/SYN")
        word = (raw[11] << 8) | raw[12]
        length = word & MAX_LENGTH
        _check_direction_length(word >> 12, length, raw[13] == Ctrl.SYN, 3)
        total = HEX_HEADER + length + HEX_TRAILER
        _check_total(len(raw), total)
        end = raw[total - 3]
        if end not in END_CHARS:
            raise FrameError(RejectReason.BAD_END, f"0x{end:02X} where the end char should be")
        computed, sent = crc16(raw[: total - 2]), int.from_bytes(raw[total - 2 :], "big")
        _check_crc(computed, sent, check_crc)
        return hex_frame_from(raw, 0, total, computed == sent)
    if raw[:1] == b"\x01":
        if len(raw) < ASCII_HEADER + ASCII_TRAILER:
            raise FrameError(RejectReason.TRUNCATED, f"{len(raw)} bytes is shorter than a header")
        if not is_hex_text(raw[1:23]) or raw[23] not in START_CHARS:
            raise FrameError(RejectReason.BAD_START, "SOH not followed by an ASCII header")
        direction = int(raw[19:20], 16)
        length = int(raw[20:23], 16)
        syn = raw[23] == Ctrl.SYN
        _check_direction_length(direction, length, syn, 6)
        if syn and not is_hex_text(raw[24:30]):
            raise FrameError(RejectReason.BAD_LENGTH, "M3 packet field is not 6 hex characters")
        total = ASCII_HEADER + length + ASCII_TRAILER
        _check_total(len(raw), total)
        end = raw[total - 5]
        if end not in END_CHARS:
            raise FrameError(RejectReason.BAD_END, f"0x{end:02X} where the end char should be")
        if not is_hex_text(raw[total - 4 :]):
            raise FrameError(RejectReason.BAD_CRC, "CRC field is not 4 hex characters")
        computed, sent = crc16(raw[: total - 4]), int(raw[total - 4 :], 16)
        _check_crc(computed, sent, check_crc)
        return ascii_frame_from(raw, 0, total, computed == sent)
    raise FrameError(RejectReason.BAD_START, "neither 7E7E (HEX) nor SOH (ASCII) at the start")


def _check_direction_length(direction: int, length: int, syn: bool, packet_field: int) -> None:
    if direction not in (0, 8):
        raise FrameError(RejectReason.BAD_LENGTH, f"direction nibble {direction:X} (0 up, 8 down)")
    if syn and length < packet_field:
        raise FrameError(RejectReason.BAD_LENGTH, f"M3 length {length} leaves no packet field")


def _check_total(have: int, total: int) -> None:
    if have < total:
        raise FrameError(RejectReason.TRUNCATED, f"length says {total} bytes, have {have}")
    if have > total:
        raise FrameError(RejectReason.BAD_LENGTH, f"{have - total} bytes after the frame end")


def _check_crc(computed: int, sent: int, check: bool) -> None:
    if check and computed != sent:
        raise FrameError(RejectReason.BAD_CRC, f"computed {computed:04X}, frame has {sent:04X}")


def build_frame(
    link: LinkAddress,
    function: int,
    body: bytes,
    *,
    direction: Direction,
    end: int,
    packet: tuple[int, int] | None = None,
    encoding: Encoding = "hex",
) -> bytes:
    """A whole frame around `body`, CRC appended; the inverse of parse_frame.

    Raises ValueError for a header field that does not fit (address, password, length).
    """
    station = _station_digits(link.station)
    password = _password_digits(link.password)
    if not 0 <= link.center <= 0xFF or not 0 <= function <= 0xFF:
        raise ValueError(f"centre {link.center} or function {function} outside one byte")
    if packet is not None and not all(0 <= p <= 0xFFF for p in packet):
        raise ValueError(f"packet {packet}: total and seq must fit 12 bits")
    down = direction == "down"
    if encoding == "hex":
        extra = 3 if packet is not None else 0
        length = len(body) + extra
        if length > MAX_LENGTH:
            raise ValueError(f"body of {length} bytes exceeds the 12-bit length field")
        addr = bytes.fromhex(station)
        head = addr + bytes([link.center]) if down else bytes([link.center]) + addr
        out = bytearray(HEX_START + head + bytes.fromhex(password) + bytes([function]))
        out += ((0x8000 if down else 0) | length).to_bytes(2, "big")
        if packet is None:
            out.append(Ctrl.STX)
        else:
            out.append(Ctrl.SYN)
            out += ((packet[0] << 12) | packet[1]).to_bytes(3, "big")
        out += body
        out.append(end)
        out += crc16(out).to_bytes(2, "big")
        return bytes(out)
    extra = 6 if packet is not None else 0
    length = len(body) + extra
    if length > MAX_LENGTH:
        raise ValueError(f"body of {length} bytes exceeds the 12-bit length field")
    center = f"{link.center:02X}"
    head_text = station + center if down else center + station
    text = f"{head_text}{password}{function:02X}{'8' if down else '0'}{length:03X}"
    out = bytearray(b"\x01" + text.encode("ascii"))
    if packet is None:
        out.append(Ctrl.STX)
    else:
        out.append(Ctrl.SYN)
        out += f"{packet[0]:03X}{packet[1]:03X}".encode("ascii")
    out += body
    out.append(end)
    out += f"{crc16(out):04X}".encode("ascii")
    return bytes(out)


def _station_digits(station: str) -> str:
    text = station.upper()
    if len(text) != 10 or not is_hex_text(text.encode("latin-1", "replace")):
        raise ValueError(f"station address {station!r} is not 10 hex digits")
    return text


def _password_digits(password: str) -> str:
    text = password.upper()
    if len(text) != 4 or not is_hex_text(text.encode("latin-1", "replace")):
        raise ValueError(f"password {password!r} is not 4 hex digits")
    return text
