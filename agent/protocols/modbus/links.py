"""Modbus transports: the IO around the sans-IO `adu` framing, one class per transport.

`TcpLink` is one connection to one Modbus TCP terminal. `SerialBus` is the single owner of one
serial device (an RS-485 bus shared by several unit ids): it serialises requests, serves the
unit ids round-robin so none starves, keeps the inter-frame silence, and measures how busy the
line is. Both expose `read(unit, table, address, count, timeout)`, frame the request and parse
the reply with `agent.protocols.modbus.adu`, and raise `ModbusFailure`, whose `reason` tells a
field engineer what to check: a reply that never came, or what is wrong with the one that did
(`ReplyFault`). After anything but a good reply or an exception reply the link starts afresh
(TCP: a new connection; serial: the line drained until quiet and the tty's input flushed), so
that a hostile or garbled reply costs at most that request, never the next ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import serial

from agent.protocols.modbus.adu import (
    ExceptionReply,
    ReadRequest,
    Reply,
    ReplyError,
    ReplyFault,
    encode_rtu,
    encode_tcp,
    parse_rtu,
    parse_tcp,
    rtu_at_silence,
    rtu_frame_size,
    tcp_cut_short,
)

Values = Sequence[int] | Sequence[bool]
FailureKind = Literal["connect", "timeout", "exception", "garbled"]

# Modbus Application Protocol V1.1b3, section 7: exception codes and what they mean on site.
EXCEPTION_MEANINGS = {
    1: "illegal function (the device does not support this table)",
    2: "illegal data address (register not mapped on the device: check address and table)",
    3: "illegal data value (the device refuses this count or range)",
    4: "server device failure (the device hit an error while reading)",
    5: "acknowledge (the device is busy with a long operation)",
    6: "server device busy (retry later)",
    8: "memory parity error",
    10: "gateway path unavailable (the Modbus gateway has no route to this unit id)",
    11: "gateway target failed to respond (the device behind the gateway did not answer)",
}
RETRYABLE_EXCEPTIONS = frozenset({5, 6, 11})
LATE_REPLY_GUARD = 0.5  # seconds a serial line is given for a late reply after a timeout
# A serial frame whose header gives no size (garbage, a foreign function code) ends when the line
# has been quiet this long; at least this much, because USB adapters deliver bytes in bursts.
QUIET_FLOOR = 0.1
READ_CHUNK = 4096


class ModbusFailure(Exception):
    """A read that gave no values; `reason` is one line for people, `kind` for code, and
    `fault` what was wrong with a reply that came (None when none came or it was refused)."""

    def __init__(
        self,
        kind: FailureKind,
        reason: str,
        exception_code: int | None = None,
        fault: ReplyFault | None = None,
    ) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.exception_code = exception_code
        self.fault = fault

    @classmethod
    def rejected(cls, error: ReplyError, suffix: str = "") -> ModbusFailure:
        return cls("garbled", error.reason + suffix, fault=error.fault)

    @property
    def retryable(self) -> bool:
        if self.kind == "exception":
            return self.exception_code in RETRYABLE_EXCEPTIONS
        return self.kind != "connect"


class Link(Protocol):
    """What a poller needs from a transport (TCP connection or shared serial bus)."""

    def read(
        self, unit: int, table: str, address: int, count: int, timeout: float
    ) -> Awaitable[Values]:
        """The values, or ModbusFailure (a coroutine, or what the link's poll awaits)."""
        ...

    async def close(self) -> None: ...

    def close_soon(self) -> asyncio.Future[None] | None:
        """Start closing without waiting; what is done once the link is closed (None: nothing
        to wait for). Thousands of links are closed together this way, without a task each."""
        ...


CLOSE_WAIT = 1.0  # a link's `close` waits this long at most for the connection to be gone


async def wait_closed(gone: Awaitable[None] | None, timeout: float = CLOSE_WAIT) -> None:
    """Wait, at most `timeout`, for what a link's `close_soon` returned; a link still closing
    then is left to close by itself."""
    if gone is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(gone)


def exception_failure(code: int) -> ModbusFailure:
    meaning = EXCEPTION_MEANINGS.get(code, "unknown exception code")
    return ModbusFailure("exception", f"exception {code:#04x}: {meaning}", code)


def reply_values(reply: Reply) -> Values:
    if isinstance(reply, ExceptionReply):
        raise exception_failure(reply.code)
    return list(reply.values)


class _Connection(asyncio.Protocol):
    """The bytes of one TCP connection as they arrive, and who waits for them.

    Leaner than asyncio's streams for one small request and reply at a time: no reader and
    writer objects, no drain; `data_received` appends to `buffer` and wakes the one waiter."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.error: Exception | None = None
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()
        if not self.gone.done():
            self.gone.set_result(None)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def _connect(host: str, port: int, timeout: float) -> _Connection:
    """A TCP connection, or ModbusFailure saying in words why none can be made."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            _, connection = await loop.create_connection(_Connection, host, port)
            return connection
    except TimeoutError:
        raise connect_failure(host, port, None) from None
    except OSError as exc:
        raise connect_failure(host, port, exc) from None


def connect_failure(host: str, port: int, error: OSError | None) -> ModbusFailure:
    """Why no connection was made: `error`, or None for no answer within the timeout."""
    if error is None:
        reason = "no answer to the connection attempt (device off, wrong address, or firewalled)"
    elif isinstance(error, ConnectionRefusedError):
        reason = "connection refused (is the Modbus TCP server on, and the port right?)"
    else:  # by its errno: asyncio words a failure found after the attempt "Connect call failed"
        code = error.errno  # (an address error's is negative: its own words then)
        reason = os.strerror(code) if code and code > 0 else (error.strerror or str(error))
    return ModbusFailure("connect", f"cannot connect to {host}:{port}: {reason}")


def no_reply_failure(buffer: bytes, request: ReadRequest, timeout: float) -> ModbusFailure:
    """No whole reply within the timeout: none at all, or one that began and stopped."""
    if buffer:
        return ModbusFailure.rejected(tcp_cut_short(buffer, request), f" within {timeout:g}s")
    return ModbusFailure("timeout", f"no reply within {timeout:g}s")


def ended_failure(
    buffer: bytes, request: ReadRequest, error: BaseException | None
) -> ModbusFailure:
    """The connection ended before a whole reply: reset (`error`), or closed after `buffer`."""
    if isinstance(error, OSError):
        return ModbusFailure(
            "garbled", f"connection lost: {error.strerror or error} (the device reset it)"
        )
    if buffer:
        return ModbusFailure.rejected(
            tcp_cut_short(buffer, request), " before the device closed the connection"
        )
    return ModbusFailure(
        "garbled", "connection closed by the device without a reply (too many clients connected?)"
    )


class TcpLink:
    """One Modbus TCP connection, opened on first use and again after any failure other than
    an exception reply (a connection that carried a wrong reply is out of step: never reused).

    One request at a time (many devices answer no other way): a read made while another is
    under way (a poll and an engineer's `read-point`, say) waits its turn, and its timeout
    runs from when its own request goes on the wire. The connection is an asyncio protocol
    (`_Connection`), its timeout one timer per wait: a poll costs few event loop turns."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._connection: _Connection | None = None
        self._transaction = 0
        self._turn = asyncio.Lock()

    async def read(self, unit: int, table: str, address: int, count: int, timeout: float) -> Values:
        async with self._turn:
            return await self._read(unit, table, address, count, timeout)

    async def _read(
        self, unit: int, table: str, address: int, count: int, timeout: float
    ) -> Values:
        connection = await self._connected(timeout)
        assert connection.transport is not None
        self._transaction = self._transaction % 0xFFFF + 1
        request = ReadRequest(unit, table, address, count, self._transaction)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            connection.transport.write(encode_tcp(request))
            while (reply := parse_tcp(bytes(connection.buffer), request)) is None:
                if connection.closed:
                    break
                connection.waiter = waiter = loop.create_future()
                timer = loop.call_at(deadline, _expire, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    connection.waiter = None
        except TimeoutError:
            await self.close()
            raise no_reply_failure(bytes(connection.buffer), request, timeout) from None
        except ReplyError as error:
            await self.close()
            raise ModbusFailure.rejected(error) from None
        if reply is None:  # the connection ended
            await self.close()
            raise ended_failure(
                bytes(connection.buffer), request, connection.error
            ) from connection.error
        del connection.buffer[: reply.size]
        if connection.buffer:  # bytes after the reply: the stream is out of step
            await self.close()
        return reply_values(reply)  # an exception reply is a proper answer: the connection stays

    async def _connected(self, timeout: float) -> _Connection:
        connection = self._connection
        if connection is not None:
            transport = connection.transport
            if not connection.closed and transport is not None and not transport.is_closing():
                return connection
            await self.close()  # the device closed it while idle
        self._connection = await _connect(self.host, self.port, timeout)
        return self._connection

    async def close(self) -> None:
        await wait_closed(self.close_soon())

    def close_soon(self) -> asyncio.Future[None] | None:
        connection, self._connection = self._connection, None
        if connection is None or connection.transport is None:
            return None
        connection.transport.close()
        return connection.gone


@dataclass
class _Request:
    unit: int
    table: str
    address: int
    count: int
    timeout: float
    future: asyncio.Future[Values] = field(repr=False)


@dataclass(frozen=True)
class SerialSettings:
    device: str
    baudrate: int
    parity: str
    stopbits: int
    bytesize: int
    frame_gap: float


class _SerialPort:
    """One open serial device, its input gathered by the event loop into `received`."""

    def __init__(self, handle: serial.Serial, fd: int) -> None:
        self._handle = handle
        self._fd = fd
        self.received = bytearray()
        self.last_byte_at = 0.0
        self.broken: str | None = None
        self._arrived = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._readable)

    @classmethod
    def open(cls, s: SerialSettings) -> _SerialPort:
        try:
            handle = serial.Serial(
                s.device,
                baudrate=s.baudrate,
                parity=s.parity,
                stopbits=s.stopbits,
                bytesize=s.bytesize,
                timeout=0,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ModbusFailure("connect", f"cannot open serial device {s.device}: {exc}") from exc
        return cls(handle, handle.fileno())

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self.broken = exc.strerror or str(exc)
            self._loop.remove_reader(self._fd)
            data = b""
        if data:
            # Bounded: a reply is parsed (and rejected) long before this; more is line noise.
            if len(self.received) < 4 * READ_CHUNK:
                self.received += data
            self.last_byte_at = self._loop.time()
        self._arrived.set()

    async def arrival(self, until: float) -> bool:
        """Wait for more bytes until the loop time `until`; False if none came."""
        self._arrived.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(until):
                await self._arrived.wait()
            return True
        return False

    def write(self, frame: bytes) -> None:
        self._handle.write(frame)

    def discard(self) -> None:
        """Forget every byte received so far, here and in the tty's input queue."""
        with contextlib.suppress(OSError):
            termios.tcflush(self._fd, termios.TCIFLUSH)
        self.received.clear()

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._fd)
        with contextlib.suppress(OSError, serial.SerialException):
            self._handle.close()


class SerialBus:
    """The single owner of one serial device: every request on that line goes through here.

    Requests wait in one queue per unit id; the worker serves unit ids in turn (round-robin),
    one request each, so a terminal with many reads cannot starve the others. Between frames it
    keeps `frame_gap` of silence. `utilisation()` is the share of recent time the line was busy.
    """

    def __init__(self, settings: SerialSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self._clock = clock
        self._queues: dict[int, deque[_Request]] = {}
        self._turns: deque[int] = deque()
        self._wakeup = asyncio.Event()
        self._port: _SerialPort | None = None
        self._worker: asyncio.Task[None] | None = None
        self._busy: deque[tuple[float, float]] = deque()  # (end, seconds busy)
        self._started = clock()
        self.requests = 0

    @property
    def device(self) -> str:
        return self.settings.device

    @property
    def quiet(self) -> float:
        """Silence that ends a frame whose header does not give its size."""
        return max(QUIET_FLOOR, 4 * self.settings.frame_gap)

    async def read(self, unit: int, table: str, address: int, count: int, timeout: float) -> Values:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._serve(), name=f"bus {self.device}")
        future: asyncio.Future[Values] = asyncio.get_running_loop().create_future()
        queue = self._queues.setdefault(unit, deque())
        if not queue:
            self._turns.append(unit)
        queue.append(_Request(unit, table, address, count, timeout, future))
        self._wakeup.set()
        return await future

    def utilisation(self, window: float = 60.0) -> float:
        """Share of the last `window` seconds the line carried a transaction (0..1)."""
        now = self._clock()
        while self._busy and self._busy[0][0] < now - window:
            self._busy.popleft()
        span = min(window, now - self._started)
        if span <= 0:
            return 0.0
        return min(1.0, sum(busy for _, busy in self._busy) / span)

    async def _serve(self) -> None:
        while True:
            request = self._next_request()
            if request is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if request.future.done():  # the caller gave up (cancelled) while it waited
                continue
            began = self._clock()
            try:
                values = await self._transact(request)
            except ModbusFailure as failure:
                if not request.future.done():
                    request.future.set_exception(failure)
            else:
                if not request.future.done():
                    request.future.set_result(values)
            await asyncio.sleep(self.settings.frame_gap)
            self._busy.append((self._clock(), self._clock() - began))
            self.requests += 1

    def _next_request(self) -> _Request | None:
        while self._turns:
            unit = self._turns.popleft()
            queue = self._queues[unit]
            request = queue.popleft()
            if queue:
                self._turns.append(unit)
            return request
        return None

    async def _transact(self, r: _Request) -> Values:
        port = self._opened()
        request = ReadRequest(r.unit, r.table, r.address, r.count)
        port.discard()
        try:
            port.write(encode_rtu(request))
        except (serial.SerialException, OSError) as exc:
            self._reset()
            raise ModbusFailure("connect", f"cannot write to {self.device}: {exc}") from exc
        deadline = asyncio.get_running_loop().time() + r.timeout
        try:
            reply = await self._receive(port, request, deadline)
        except ReplyError as error:
            await self._drain(port)
            raise ModbusFailure.rejected(error) from None
        if port.broken is not None:
            self._reset()
            raise ModbusFailure("connect", f"serial device {self.device} failed: {port.broken}")
        if reply is None:
            await self._discard_late_reply(port, r.timeout)
            raise ModbusFailure("timeout", f"no reply within {r.timeout:g}s")
        if len(port.received) > reply.size:  # junk after the reply: let it end, then drop it
            await self._drain(port)
        return reply_values(reply)

    async def _receive(
        self, port: _SerialPort, request: ReadRequest, deadline: float
    ) -> Reply | None:
        """The reply, None if nothing came before `deadline`; raises ReplyError.

        A frame whose header gives its size is awaited until the deadline; bytes whose header
        gives none (garbage, a foreign function code) are judged once the line is quiet.
        """
        while port.broken is None:
            buffer = bytes(port.received)
            reply = parse_rtu(buffer, request)
            if reply is not None:
                return reply
            until = deadline
            if buffer and rtu_frame_size(buffer, request) is None:
                until = min(deadline, port.last_byte_at + self.quiet)
            if not await port.arrival(until):
                if buffer:
                    raise rtu_at_silence(buffer, request)
                return None
        return None

    async def _drain(self, port: _SerialPort) -> None:
        """Let the rest of a bad reply arrive (until the line is quiet), then drop it all."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + LATE_REPLY_GUARD
        while await port.arrival(min(give_up, loop.time() + self.quiet)):
            if loop.time() >= give_up:
                break
        port.discard()

    async def _discard_late_reply(self, port: _SerialPort, timeout: float) -> None:
        """After a timeout, let a late reply arrive and throw it away.

        RTU frames carry no transaction id: a late reply to this request would be taken for the
        next one's (wrong values on another point). So the line is given up to LATE_REPLY_GUARD
        to finish, and everything received is dropped before the bus goes on.
        """
        await asyncio.sleep(min(timeout, LATE_REPLY_GUARD))
        port.discard()

    def _reset(self) -> None:
        if self._port is not None:
            self._port.close()
            self._port = None

    def _opened(self) -> _SerialPort:
        if self._port is not None and self._port.broken is None:
            return self._port
        self._reset()
        s = self.settings
        if not Path(s.device).exists():
            raise ModbusFailure(
                "connect", f"serial device {s.device} does not exist (adapter unplugged?)"
            )
        if not os.access(s.device, os.R_OK | os.W_OK):
            raise ModbusFailure(
                "connect",
                f"no permission to open {s.device} (add the service user to its group, "
                "usually dialout)",
            )
        self._port = _SerialPort.open(s)
        return self._port

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.wait({self._worker})  # its end; a cancellation of ours still comes
            self._worker = None
        for queue in self._queues.values():
            for request in queue:
                if not request.future.done():
                    request.future.set_exception(
                        ModbusFailure("connect", f"bus {self.device} closed")
                    )
            queue.clear()
        self._turns.clear()
        self._reset()


class BusLink:
    """A terminal's view of a shared SerialBus (closing it leaves the bus to its owner)."""

    def __init__(self, bus: SerialBus) -> None:
        self.bus = bus

    async def read(self, unit: int, table: str, address: int, count: int, timeout: float) -> Values:
        return await self.bus.read(unit, table, address, count, timeout)

    async def close(self) -> None:
        return None

    def close_soon(self) -> asyncio.Future[None] | None:
        return None  # the bus is its owner's to close
