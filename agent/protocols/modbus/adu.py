"""Modbus application data units: read requests out, replies in, and why a reply is rejected.

Sans-IO: bytes in, values (or a typed rejection) out; no sockets, no clock, no config. The links
own the IO and ask the parser after every chunk: `parse_tcp`/`parse_rtu` return None while a
reply is incomplete, the reply when it is whole, or raise `ReplyError` as soon as the bytes show
it is wrong. `ReplyFault` is the closed set of what can be wrong with a reply; its `reason` is
the line a field engineer reads on the reading, in `edge-agent poll` and in `status`.

Checks go from the frame to its content, so that each fault is named by the first thing that is
wrong: structure (MBAP protocol id and length; RTU CRC), then identity (transaction id, unit
id), then content (function code, byte count). Sources: Modbus Application Protocol V1.1b3
(function codes 1-4, exception replies: 6.1-6.4, 7), Modbus Messaging on TCP/IP V1.0b (MBAP
header: 3.1.3), Modbus over Serial Line V1.02 (RTU framing and CRC: 2.5.1).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from agent.protocols.crc16 import crc16

FUNCTION: Final = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
MBAP_HEADER: Final = 7  # transaction id, protocol id, length (2 bytes each), unit id
# The MBAP length counts the unit id and the PDU; a PDU is at most 253 bytes (MBAP 3.1.3).
MBAP_LENGTH_MAX: Final = 254
EXCEPTION_FLAG: Final = 0x80
RTU_EXCEPTION_SIZE: Final = 5  # unit, function | 0x80, exception code, CRC (2 bytes)
RTU_MIN_SIZE: Final = 4  # unit, function, CRC: nothing shorter can be a frame


class ReplyFault(enum.StrEnum):
    """What is wrong with a reply that came; a small closed set (a reply that never comes is a
    timeout, not a fault of the reply)."""

    WRONG_TRANSACTION = "wrong_transaction"  # TCP: not the reply to the request just sent
    WRONG_UNIT = "wrong_unit"  # another unit id answered
    WRONG_FUNCTION = "wrong_function"  # a function code other than the request's (or its exception)
    WRONG_BYTE_COUNT = "wrong_byte_count"  # the byte count does not match what was asked
    BAD_LENGTH = "bad_length"  # the MBAP length is absurd or disagrees with the reply, or cut short
    BAD_CRC = "bad_crc"  # RTU: the frame's CRC does not match its bytes
    UNPARSEABLE = "unparseable"  # bytes that are not a Modbus reply at all

    @property
    def meaning(self) -> str:
        return MEANINGS[self]


# What each fault tells a field engineer (the first words of the reason; README lists them).
MEANINGS: Final = {
    ReplyFault.WRONG_TRANSACTION: "wrong transaction id",
    ReplyFault.WRONG_UNIT: "wrong unit id",
    ReplyFault.WRONG_FUNCTION: "wrong function code",
    ReplyFault.WRONG_BYTE_COUNT: "wrong byte count",
    ReplyFault.BAD_LENGTH: "bad length",
    ReplyFault.BAD_CRC: "bad CRC",
    ReplyFault.UNPARSEABLE: "unparseable reply",
}


class ReplyError(ValueError):
    """A reply that is not the answer to the request; `reason` is one line for people."""

    def __init__(self, fault: ReplyFault, detail: str) -> None:
        super().__init__(f"{fault.meaning}: {detail}")
        self.fault = fault
        self.detail = detail

    @property
    def reason(self) -> str:
        return str(self)


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read: `count` registers or bits of a table, for `unit`; `transaction` for TCP."""

    unit: int
    table: str
    address: int
    count: int
    transaction: int = 0

    @property
    def function(self) -> int:
        return FUNCTION[self.table]

    @property
    def byte_count(self) -> int:
        """The byte count a correct reply carries."""
        if self.table in ("coil", "discrete"):
            return (self.count + 7) // 8
        return 2 * self.count

    @property
    def what(self) -> str:
        unit = "bit" if self.table in ("coil", "discrete") else "register"
        return f"{self.count} {unit}{'' if self.count == 1 else 's'}"


@dataclass(frozen=True, slots=True)
class Values:
    """A good reply: the registers or bits asked for, and the bytes it took."""

    values: tuple[int, ...] | tuple[bool, ...]
    size: int


@dataclass(frozen=True, slots=True)
class ExceptionReply:
    """The device refused the request with an exception code (7)."""

    code: int
    size: int


Reply = Values | ExceptionReply


def _pdu(request: ReadRequest) -> bytes:
    return struct.pack(">BHH", request.function, request.address, request.count)


def encode_tcp(request: ReadRequest) -> bytes:
    """The request as a Modbus TCP ADU (MBAP header + PDU)."""
    pdu = _pdu(request)
    return struct.pack(">HHHB", request.transaction, 0, len(pdu) + 1, request.unit) + pdu


class RegisterReadFrames:
    """A register read over TCP framed once, for a link that makes it again and again (a
    poller, every period): its request for any transaction id, and its good reply told at a
    glance — exactly the expected header and byte count, then the values. Whatever else a
    reply is, `parse_tcp` judges it (and names what is wrong)."""

    __slots__ = ("_reply_tail", "_request_tail", "_values", "size")

    def __init__(self, unit: int, table: str, address: int, count: int) -> None:
        if table not in ("holding", "input"):
            raise ValueError(f"{table} holds bits, not registers")
        request = ReadRequest(unit, table, address, count)
        pdu = _pdu(request)
        self._request_tail = struct.pack(">HHB", 0, len(pdu) + 1, unit) + pdu
        data = request.byte_count
        self._reply_tail = struct.pack(">HHBBB", 0, 3 + data, unit, request.function, data)
        self.size = MBAP_HEADER + 2 + data
        self._values = struct.Struct(f">{count}H").unpack_from

    def request(self, transaction: int) -> bytes:
        """The request ADU with this transaction id (what `encode_tcp` gives)."""
        return transaction.to_bytes(2, "big") + self._request_tail

    def good_values(self, buffer: bytes | bytearray, transaction: int) -> tuple[int, ...] | None:
        """The registers when `buffer` is exactly the good reply to `transaction`; else None."""
        if (
            len(buffer) != self.size
            or buffer[2:9] != self._reply_tail
            or (buffer[0] << 8 | buffer[1]) != transaction
        ):
            return None
        return self._values(buffer, 9)


def encode_rtu(request: ReadRequest) -> bytes:
    """The request as a Modbus RTU frame (unit + PDU + CRC)."""
    frame = bytes([request.unit]) + _pdu(request)
    return frame + crc16(frame).to_bytes(2, "little")


def _check_pdu(pdu: bytes, request: ReadRequest, size: int) -> Reply:
    """The content of a delimited reply: function code, then byte count, then the values."""
    function = pdu[0]
    if function == request.function | EXCEPTION_FLAG:
        if len(pdu) != 2:
            raise ReplyError(
                ReplyFault.BAD_LENGTH, f"an exception reply of {len(pdu)} PDU bytes, not 2"
            )
        return ExceptionReply(pdu[1], size)
    if function != request.function:
        raise ReplyError(
            ReplyFault.WRONG_FUNCTION,
            f"{function:#04x} in reply to a request with {request.function:#04x}",
        )
    if len(pdu) < 2:
        raise ReplyError(ReplyFault.BAD_LENGTH, "the reply ends before its byte count")
    count = pdu[1]
    if count != request.byte_count:
        raise ReplyError(
            ReplyFault.WRONG_BYTE_COUNT,
            f"{count} bytes of data for {request.what} (expected {request.byte_count})",
        )
    data = pdu[2:]
    if len(data) != count:
        raise ReplyError(
            ReplyFault.BAD_LENGTH, f"the byte count says {count} bytes, {len(data)} came"
        )
    if request.table in ("coil", "discrete"):
        bits = tuple(bool(data[i // 8] >> (i % 8) & 1) for i in range(request.count))
        return Values(bits, size)
    registers = struct.unpack(f">{request.count}H", data)
    return Values(tuple(registers), size)


def parse_tcp(buffer: bytes, request: ReadRequest) -> Reply | None:
    """The reply at the start of `buffer`, None while it is incomplete; raises ReplyError."""
    if len(buffer) < MBAP_HEADER:
        return None
    transaction, protocol, length, unit = struct.unpack(">HHHB", buffer[:MBAP_HEADER])
    if protocol != 0:
        raise ReplyError(
            ReplyFault.UNPARSEABLE,
            f"not a Modbus TCP header (protocol id {protocol:#06x}, not 0): "
            f"{buffer[:16].hex(' ')} (is this port a Modbus TCP server?)",
        )
    if not 3 <= length <= MBAP_LENGTH_MAX:
        raise ReplyError(
            ReplyFault.BAD_LENGTH, f"MBAP length {length}, a reply has 3 to {MBAP_LENGTH_MAX}"
        )
    size = 6 + length
    if len(buffer) < size:
        return None
    if transaction != request.transaction:
        raise ReplyError(
            ReplyFault.WRONG_TRANSACTION,
            f"the reply carries {transaction}, the request {request.transaction} "
            "(a late reply, or a gateway mixing up its clients)",
        )
    if unit != request.unit:
        raise ReplyError(
            ReplyFault.WRONG_UNIT,
            f"unit {unit} answered a request to unit {request.unit} (check the unit id)",
        )
    return _check_pdu(buffer[MBAP_HEADER:size], request, size)


def rtu_frame_size(buffer: bytes, request: ReadRequest) -> int | None:
    """The frame's size as its header announces it, None when the header is not yet there or
    names no size (a function code that is not the request's: only silence ends that frame)."""
    if len(buffer) < 2:
        return None
    if buffer[1] == request.function | EXCEPTION_FLAG:
        return RTU_EXCEPTION_SIZE
    if buffer[1] == request.function and len(buffer) >= 3:
        return 3 + buffer[2] + 2
    return None


def _check_rtu_frame(frame: bytes, request: ReadRequest) -> Reply:
    body, sent = frame[:-2], int.from_bytes(frame[-2:], "little")
    if crc16(body) != sent:
        raise ReplyError(
            ReplyFault.BAD_CRC,
            f"frame {frame[:12].hex(' ')}{' …' if len(frame) > 12 else ''} carries CRC "
            f"{sent:#06x}, its bytes give {crc16(body):#06x} "
            "(noise on the line: check wiring, termination, earthing, baud rate)",
        )
    if frame[0] != request.unit:
        raise ReplyError(
            ReplyFault.WRONG_UNIT,
            f"unit {frame[0]} answered a request to unit {request.unit} "
            "(two devices with one address on the bus?)",
        )
    return _check_pdu(frame[1:-2], request, len(frame))


def parse_rtu(buffer: bytes, request: ReadRequest) -> Reply | None:
    """The RTU reply at the start of `buffer` once its header's size has come, else None.

    A frame whose function code names no size ends only with silence on the line: the link
    then calls `rtu_at_silence`.
    """
    size = rtu_frame_size(buffer, request)
    if size is None or len(buffer) < size:
        return None
    return _check_rtu_frame(buffer[:size], request)


def rtu_at_silence(buffer: bytes, request: ReadRequest) -> ReplyError:
    """Why the bytes that came before the line went quiet are not a reply (non-empty buffer)."""
    if len(buffer) >= RTU_MIN_SIZE and crc16(buffer[:-2]) == int.from_bytes(buffer[-2:], "little"):
        # A whole frame by its CRC, but its header does not delimit it as the reply asked for.
        try:
            _check_rtu_frame(buffer, request)
        except ReplyError as error:
            return error
    size = rtu_frame_size(buffer, request)
    if size is not None and buffer[0] == request.unit:
        return ReplyError(
            ReplyFault.BAD_LENGTH, f"the frame announces {size} bytes, {len(buffer)} came"
        )
    return ReplyError(ReplyFault.UNPARSEABLE, _garbage(buffer, "a Modbus RTU frame"))


def tcp_cut_short(buffer: bytes, request: ReadRequest) -> ReplyError:
    """Why a reply that stopped coming (timeout or closed connection) is not whole."""
    if len(buffer) >= MBAP_HEADER:
        length = int.from_bytes(buffer[4:6], "big")
        return ReplyError(
            ReplyFault.BAD_LENGTH,
            f"the MBAP length announces {6 + length} bytes, {len(buffer)} came",
        )
    return ReplyError(ReplyFault.UNPARSEABLE, _garbage(buffer, "a Modbus TCP reply"))


def _garbage(buffer: bytes, what: str) -> str:
    shown = buffer[:16].hex(" ") + (" …" if len(buffer) > 16 else "")
    return (
        f"{len(buffer)} bytes that are not {what}: {shown} (wrong device, protocol or line "
        "settings?)"
    )
