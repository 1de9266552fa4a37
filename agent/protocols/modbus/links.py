"""Modbus transports: the one module of the agent that imports pymodbus.

`TcpLink` is one connection to one Modbus TCP terminal. `SerialBus` is the single owner of one
serial device (an RS-485 bus shared by several unit ids): it serialises requests, serves the
unit ids round-robin so none starves, keeps the inter-frame silence, and measures how busy the
line is. Both expose `read(unit, table, address, count, timeout)` and translate every pymodbus
error into `ModbusFailure`, whose `reason` tells a field engineer what to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

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

# pymodbus logs every failed request itself; the agent reports failures once, at its own level.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def quiet_undecodable_replies(loop: asyncio.AbstractEventLoop) -> None:
    """Keep pymodbus's undecodable-reply errors out of the loop's error log.

    pymodbus raises inside `data_received` for a reply it cannot decode; asyncio then closes the
    connection and logs a traceback. The poller already reports that request as failed, with a
    reason, so the traceback is noise; every other loop error goes to the previous handler.
    """
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        if isinstance(context.get("exception"), ModbusException):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


class ModbusFailure(Exception):
    """A read that gave no values; `reason` is one line for people, `kind` for code."""

    def __init__(self, kind: FailureKind, reason: str, exception_code: int | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.exception_code = exception_code

    @property
    def retryable(self) -> bool:
        if self.kind == "exception":
            return self.exception_code in RETRYABLE_EXCEPTIONS
        return self.kind != "connect"


class Link(Protocol):
    """What a poller needs from a transport (TCP connection or shared serial bus)."""

    async def read(self, unit: int, table: str, address: int, count: int, timeout: float) -> Values:
        """The values, or ModbusFailure."""
        ...

    async def close(self) -> None: ...


def exception_failure(code: int) -> ModbusFailure:
    meaning = EXCEPTION_MEANINGS.get(code, "unknown exception code")
    return ModbusFailure("exception", f"exception {code:#04x}: {meaning}", code)


async def _call(
    client: ModbusBaseClient, unit: int, table: str, address: int, count: int
) -> Values:
    """One request through pymodbus; every foreign error becomes a ModbusFailure."""
    try:
        if table == "holding":
            pdu: ModbusPDU = await client.read_holding_registers(
                address, count=count, device_id=unit
            )
        elif table == "input":
            pdu = await client.read_input_registers(address, count=count, device_id=unit)
        elif table == "coil":
            pdu = await client.read_coils(address, count=count, device_id=unit)
        else:
            pdu = await client.read_discrete_inputs(address, count=count, device_id=unit)
    except ModbusException as exc:
        text = str(exc).removeprefix("Modbus Error: ")
        if "No response received" in text:
            raise ModbusFailure("timeout", "no valid reply (timeout or garbled frame)") from exc
        raise ModbusFailure("garbled", f"bad reply: {text}") from exc
    if isinstance(pdu, ExceptionResponse) or pdu.isError():
        raise exception_failure(int(getattr(pdu, "exception_code", 0)))
    if table in ("coil", "discrete"):
        bits = list(pdu.bits)
        if len(bits) < count:
            raise ModbusFailure("garbled", f"short reply: {len(bits)} of {count} bits")
        return bits[:count]
    registers = list(pdu.registers)
    if len(registers) != count:
        raise ModbusFailure("garbled", f"short reply: {len(registers)} of {count} registers")
    return registers


async def _tcp_connect_reason(host: str, port: int, timeout: float) -> str:
    """Why a TCP connection cannot be made, in words (pymodbus only says it failed)."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return "no answer to the connection attempt (device off, wrong address, or firewalled)"
    except ConnectionRefusedError:
        return "connection refused (is the Modbus TCP server on, and the port right?)"
    except OSError as exc:
        return exc.strerror or str(exc)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return "connection dropped by the device (too many clients connected?)"


class TcpLink:
    """One Modbus TCP connection, opened on first use and again after any failure."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._client: AsyncModbusTcpClient | None = None

    async def read(self, unit: int, table: str, address: int, count: int, timeout: float) -> Values:
        client = await self._connected(timeout)
        try:
            async with asyncio.timeout(timeout):
                return await _call(client, unit, table, address, count)
        except TimeoutError:
            dropped = not client.connected
            # A reply that arrives later would be taken for the next request's: start afresh.
            await self.close()
            if dropped:
                raise ModbusFailure(
                    "garbled", "connection lost: the device closed it or sent an undecodable reply"
                ) from None
            raise ModbusFailure("timeout", f"no reply within {timeout:g}s") from None
        except ModbusFailure as failure:
            if failure.kind != "exception":
                await self.close()
            raise

    async def _connected(self, timeout: float) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        await self.close()
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=timeout,
            retries=0,
            reconnect_delay=0,  # the poller owns retries and backoff
        )
        try:
            async with asyncio.timeout(timeout):
                ok = await client.connect()
        except TimeoutError:
            ok = False
        if not ok:
            client.close()
            reason = await _tcp_connect_reason(self.host, self.port, timeout)
            raise ModbusFailure("connect", f"cannot connect to {self.host}:{self.port}: {reason}")
        self._client = client
        return client

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


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
        self._client: AsyncModbusSerialClient | None = None
        self._worker: asyncio.Task[None] | None = None
        self._busy: deque[tuple[float, float]] = deque()  # (end, seconds busy)
        self._started = clock()
        self.requests = 0

    @property
    def device(self) -> str:
        return self.settings.device

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

    async def _transact(self, request: _Request) -> Values:
        client = await self._opened()
        try:
            async with asyncio.timeout(request.timeout):
                return await _call(
                    client, request.unit, request.table, request.address, request.count
                )
        except TimeoutError:
            await self._discard_late_reply(request.timeout)
            raise ModbusFailure("timeout", f"no reply within {request.timeout:g}s") from None

    async def _discard_late_reply(self, timeout: float) -> None:
        """After a timeout, let a late reply arrive and throw it away.

        RTU frames carry no transaction id and pymodbus matches a reply by unit id only: a late
        reply to this request would be taken for the next one's (wrong values on another
        point). So the port is closed, the line given up to LATE_REPLY_GUARD to finish, and the
        tty's input queue flushed before the bus goes on.
        """
        self._reset()
        await asyncio.sleep(min(timeout, LATE_REPLY_GUARD))
        with contextlib.suppress(OSError):
            fd = os.open(self.settings.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                termios.tcflush(fd, termios.TCIFLUSH)
            finally:
                os.close(fd)

    def _reset(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _opened(self) -> AsyncModbusSerialClient:
        if self._client is not None and self._client.connected:
            return self._client
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
        client = AsyncModbusSerialClient(
            s.device,
            baudrate=s.baudrate,
            parity=s.parity,
            stopbits=s.stopbits,
            bytesize=s.bytesize,
            timeout=60,  # each request carries its own timeout
            retries=0,
            reconnect_delay=0,
        )
        if not await client.connect():
            client.close()
            raise ModbusFailure("connect", f"cannot open serial device {s.device}")
        self._client = client
        return client

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
