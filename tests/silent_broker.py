"""A broker that never acknowledges: a minimal MQTT 3.1.1/5 peer for the fault tests.

It answers CONNECT with CONNACK, SUBSCRIBE with SUBACK, UNSUBSCRIBE with UNSUBACK and PINGREQ
with PINGRESP, and records every PUBLISH it receives (connection number, topic, DUP, QoS, retain,
packet id, payload) — but never sends a PUBACK. Only what the tests need of MQTT is parsed; a
packet it does not know is recorded by type and otherwise ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

CONNECT, PUBLISH, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT = 1, 3, 8, 10, 12, 14


@dataclass(frozen=True)
class Publish:
    connection: int  # 1 for the first connection the broker accepted, 2 for the next …
    topic: str
    dup: bool
    qos: int
    retain: bool
    packet_id: int | None
    payload: bytes
    at: float  # time.monotonic()


@dataclass
class SilentBroker:
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port, known once started
    publishes: list[Publish] = field(default_factory=list)
    connections: int = 0
    others: list[int] = field(default_factory=list)  # packet types it does not answer
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    def on(self, suffix: str) -> list[Publish]:
        return [p for p in self.publishes if p.topic.endswith(suffix)]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        version = 4
        connection = 0
        try:
            while True:
                kind, flags, body = await _read_packet(reader)
                if kind == CONNECT:
                    version = body[
                        2 + int.from_bytes(body[0:2], "big")
                    ]  # the level, after the name
                    self.connections += 1
                    connection = self.connections
                    writer.write(b"\x20\x03\x00\x00\x00" if version == 5 else b"\x20\x02\x00\x00")
                elif kind == PUBLISH:
                    self.publishes.append(_publish(connection, flags, body, version))
                elif kind in (SUBSCRIBE, UNSUBSCRIBE):
                    packet_id, filters = _filters(body, version, options=kind == SUBSCRIBE)
                    codes = bytes([1 if kind == SUBSCRIBE else 0] * filters)
                    props = b"\x00" if version == 5 else b""
                    answer = 0x90 if kind == SUBSCRIBE else 0xB0
                    rest = packet_id.to_bytes(2, "big") + props + codes
                    if version != 5 and kind == UNSUBSCRIBE:
                        rest = packet_id.to_bytes(2, "big")
                    writer.write(bytes([answer]) + _varint(len(rest)) + rest)
                elif kind == PINGREQ:
                    writer.write(b"\xd0\x00")
                elif kind == DISCONNECT:
                    break
                else:
                    self.others.append(kind)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first >> 4, first & 0x0F, await reader.readexactly(length)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _publish(connection: int, flags: int, body: bytes, version: int) -> Publish:
    qos = (flags >> 1) & 0x03
    size = int.from_bytes(body[0:2], "big")
    topic = body[2 : 2 + size].decode()
    at = 2 + size
    packet_id = None
    if qos:
        packet_id = int.from_bytes(body[at : at + 2], "big")
        at += 2
    if version == 5:
        props, at = _read_varint(body, at)
        at += props
    return Publish(
        connection,
        topic,
        dup=bool(flags & 0x08),
        qos=qos,
        retain=bool(flags & 0x01),
        packet_id=packet_id,
        payload=body[at:],
        at=time.monotonic(),
    )


def _filters(body: bytes, version: int, options: bool) -> tuple[int, int]:
    """The packet id of a (UN)SUBSCRIBE and how many topic filters it carries."""
    packet_id = int.from_bytes(body[0:2], "big")
    at = 2
    if version == 5:
        props, at = _read_varint(body, at)
        at += props
    count = 0
    while at < len(body):
        at += 2 + int.from_bytes(body[at : at + 2], "big") + (1 if options else 0)
        count += 1
    return packet_id, count
