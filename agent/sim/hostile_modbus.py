"""A hostile Modbus terminal: answers each read with the malformed reply it is told to send.

For the tests and fault injection of the links' reply checks. `HostileTcpDevice` listens on TCP,
`HostileRtuDevice` answers on one end of a serial line (a pty). Each request takes the next
`Answer` of the script (honest once the script is spent); an honest reply holds `address + i`
in register i. Replies are built here by hand, independently of the agent's own framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import struct
from collections import deque
from collections.abc import Iterable


class Answer(enum.StrEnum):
    HONEST = "honest"
    SILENT = "silent"  # no reply at all
    GARBAGE = "garbage"  # bytes that are no Modbus frame
    WRONG_TRANSACTION = "wrong_transaction"  # TCP: another transaction id
    WRONG_UNIT = "wrong_unit"
    WRONG_FUNCTION = "wrong_function"  # a well-formed reply to another function
    WRONG_BYTE_COUNT = "wrong_byte_count"  # one register more than asked
    HUGE_LENGTH = "huge_length"  # TCP: MBAP length 65535 and a few bytes
    BAD_CRC = "bad_crc"  # RTU: an honest frame with one CRC byte flipped


GARBAGE = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 8  # a web server's answer


def _crc16(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _registers(address: int, count: int) -> bytes:
    return b"".join(struct.pack(">H", (address + i) & 0xFFFF) for i in range(count))


def _pdu(answer: Answer, function: int, address: int, count: int) -> bytes:
    """The reply PDU (function code onwards) for a read of registers or bits."""
    if function in (1, 2):
        data = bytes((address + i) & 0xFF for i in range((count + 7) // 8))
    else:
        data = _registers(address, count)
    if answer is Answer.WRONG_BYTE_COUNT:
        data += _registers(address + count, 1)
    if answer is Answer.WRONG_FUNCTION:
        function = 0x10 if function != 0x10 else 0x06
    return bytes([function, len(data)]) + data


class _Script:
    def __init__(self, script: Iterable[Answer]) -> None:
        self.answers: deque[Answer] = deque(script)
        self.requests = 0

    def next(self) -> Answer:
        self.requests += 1
        return self.answers.popleft() if self.answers else Answer.HONEST


def tcp_reply(answer: Answer, request: bytes) -> bytes:
    """What the hostile device sends for one Modbus TCP request (12 bytes)."""
    transaction, _, _, unit, function, address, count = struct.unpack(">HHHBBHH", request[:12])
    if answer is Answer.SILENT:
        return b""
    if answer is Answer.GARBAGE:
        return GARBAGE
    if answer is Answer.HUGE_LENGTH:
        return struct.pack(">HHHB", transaction, 0, 0xFFFF, unit) + bytes([function, 2, 0, 1])
    if answer is Answer.WRONG_TRANSACTION:
        transaction = (transaction + 1000) & 0xFFFF
    if answer is Answer.WRONG_UNIT:
        unit = (unit + 1) & 0xFF
    pdu = _pdu(answer, function, address, count)
    return struct.pack(">HHHB", transaction, 0, len(pdu) + 1, unit) + pdu


def rtu_reply(answer: Answer, request: bytes) -> bytes:
    """What the hostile device sends for one Modbus RTU request (8 bytes)."""
    unit, function, address, count = struct.unpack(">BBHH", request[:6])
    if answer is Answer.SILENT:
        return b""
    if answer is Answer.GARBAGE:
        return GARBAGE[:64]
    if answer is Answer.WRONG_UNIT:
        unit = (unit + 1) & 0xFF
    frame = bytes([unit]) + _pdu(answer, function, address, count)
    crc = _crc16(frame)
    if answer is Answer.BAD_CRC:
        crc ^= 0x00FF
    return frame + struct.pack("<H", crc)


class HostileTcpDevice:
    """A Modbus TCP server that answers by its script; `requests` counts what it was asked."""

    def __init__(self, script: Iterable[Answer] = ()) -> None:
        self._script = _Script(script)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    @property
    def requests(self) -> int:
        return self._script.requests

    def then(self, *answers: Answer) -> None:
        self._script.answers.extend(answers)

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve_client, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._writers.add(writer)
        self.connections += 1
        try:
            while True:
                request = await reader.readexactly(12)
                writer.write(tcp_reply(self._script.next(), request))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None


class HostileRtuDevice:
    """A Modbus RTU device on a serial line's far end that answers by its script."""

    def __init__(self, device: str, script: Iterable[Answer] = ()) -> None:
        self.device = device
        self._script = _Script(script)
        self._fd: int | None = None
        self._pending = bytearray()

    @property
    def requests(self) -> int:
        return self._script.requests

    def then(self, *answers: Answer) -> None:
        self._script.answers.extend(answers)

    def start(self) -> None:
        self._fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        asyncio.get_running_loop().add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        assert self._fd is not None
        with contextlib.suppress(BlockingIOError):
            self._pending += os.read(self._fd, 256)
        while len(self._pending) >= 8:
            request = bytes(self._pending[:8])
            del self._pending[:8]
            with contextlib.suppress(OSError):
                os.write(self._fd, rtu_reply(self._script.next(), request))

    def stop(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
