"""The central station's IO: a TCP listener for many stations at once, and serial ports.

Each link (a TCP connection or a serial port) has its own StreamDecoder; every frame goes to the
shared `Centre`, and what it returns is carried out here: frames written back on the same link,
readings and alarm events committed through the intake. A confirm is a promise: the frames of
an outcome that carries readings or events are written only once the intake has made them
durable (a station deletes a report once it is confirmed), and in order on each link. If they
cannot be stored, nothing is confirmed and the station sends the report again. A one-second
tick lets the centre send what its timers ask for (M3 NAKs, periodic queries). A bad frame is counted and logged,
never fatal; a link silent for `idle_timeout` is closed; links beyond `max_connections` are
refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import serial
import structlog

from agent.model import Intake
from agent.protocols.sl651.config import Sl651Config
from agent.protocols.sl651.frame import Frame
from agent.protocols.sl651.session import Centre, Outcome
from agent.protocols.sl651.stream import Rejected, StreamDecoder

log = structlog.get_logger(__name__)

TICK = 1.0
SERIAL_RETRY = 10.0  # an absent serial port is tried again this often
READ_SIZE = 4096
REJECT_LOG_INTERVAL = 60.0
STOP_GRACE = 2.0  # on stop, confirms waiting for their commit get this long to go out


def utc_now() -> datetime:
    return datetime.now(UTC)


class _Link:
    """One way to a station: how to write to it, and its counters."""

    def __init__(
        self,
        name: str,
        write: Callable[[bytes], None],
        close: Callable[[], None] | None = None,
        serial: bool = False,
    ) -> None:
        self.name = name
        self.serial = serial
        self.write = write
        self.close = close or (lambda: None)
        self.frames = 0
        self.rejected = 0
        self.opened_at = time.time()
        # Frames waiting for their commit, in order: later frames on this link go after them.
        self.waiting: deque[tuple[asyncio.Future[None] | None, list[bytes]]] = deque()
        # Set when the link is gone: nothing is written any more (a serial port's descriptor
        # number may already belong to another file).
        self.closed = False

    def __repr__(self) -> str:
        return f"<link {self.name}>"


class CentralStation:
    """Owns the listeners and links; `start()` does the IO, `stop()` closes everything."""

    def __init__(
        self,
        config: Sl651Config,
        centre: Centre,
        intake: Intake,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.config = config
        self.centre = centre
        self.intake = intake
        self._now = now
        self.links: set[_Link] = set()
        self.addresses: list[tuple[str, int]] = []  # where it listens (ports resolved)
        self.refused_connections = 0
        self.rejected = 0
        self.unconfirmed = 0  # reports not confirmed because they could not be stored
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()  # one per TCP connection
        self._commits: set[asyncio.Future[None]] = set()  # commits whose frames wait
        self._rejects_logged_at = 0.0

    async def start(self) -> None:
        try:
            for host, port in self.config.listen_addresses:
                try:
                    server = await asyncio.start_server(self._serve_tcp, host, port)
                except OSError as exc:
                    raise OSError(
                        f"SL651 cannot listen on {host}:{port}: {exc.strerror or exc}"
                    ) from exc
                self._servers.append(server)
                for sock in server.sockets:
                    address = sock.getsockname()
                    self.addresses.append((str(address[0]), int(address[1])))
        except BaseException:
            await self.stop()  # the listeners opened so far
            raise
        for line in self.config.serial:
            self._spawn(self._serve_serial(line.device, line.baudrate), f"sl651 {line.device}")
        self._spawn(self._tick(), "sl651 timers")
        if self.addresses or self.config.serial:
            log.info(
                "SL651 central station listening",
                tcp=[f"{h}:{p}" for h, p in self.addresses],
                serial=[p.device for p in self.config.serial],
                stations=len(self.centre.terminals),
            )

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        try:
            # Confirms whose commit is under way still go out; none for what is not stored.
            if self._commits:
                await asyncio.wait(set(self._commits), timeout=STOP_GRACE)
            # Close the connections and let their handlers finish (cancelling a stream handler
            # makes asyncio log a traceback for it).
            for link in list(self.links):
                link.close()
            if self._handlers:
                await asyncio.wait(set(self._handlers), timeout=2.0)
        finally:
            # Also when the stop itself is cancelled (its deadline): no reader, timer or
            # serial task outlives it.
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(set(self._tasks))  # their end; a cancellation of ours comes
            for server in self._servers:
                with contextlib.suppress(OSError):
                    await server.wait_closed()
            self._servers.clear()

    # -- links -------------------------------------------------------------------------------

    def is_serial(self, link: object) -> bool:
        return isinstance(link, _Link) and link.serial

    def close_link(self, link: object) -> None:
        """Close one link (a TCP connection: its handler ends and the station reconnects)."""
        if isinstance(link, _Link) and link in self.links and not link.closed:
            link.close()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if len(self.links) >= self.config.max_connections:
            self.refused_connections += 1
            log.warning("SL651 connection refused: too many", peer=name)
            writer.close()
            return
        link = _Link(name, writer.write, writer.close)
        self.links.add(link)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        decoder = StreamDecoder(max_frame_bytes=self.config.max_frame_bytes)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.config.idle_timeout):
                        data = await reader.read(READ_SIZE)
                except TimeoutError:
                    log.info("SL651 link idle: closed", link=name)
                    break
                if not data:
                    break
                decoder.feed(data)
                self._drain(link, decoder)
        except (ConnectionError, OSError):
            pass  # the station went away mid-frame: what was whole has been handled
        finally:
            decoder.flush()
            self._drain(link, decoder)
            link.closed = True
            self.centre.link_closed(link)
            self.links.discard(link)
            if task is not None:
                self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve_serial(self, device: str, baudrate: int) -> None:
        """Keep a serial port open (retrying while it is absent) and read it."""
        while True:
            try:
                port = serial.Serial(device, baudrate, timeout=0)
            except (serial.SerialException, OSError) as exc:
                log.warning(
                    "SL651 serial port unavailable; retrying", device=device, error=str(exc)
                )
            else:
                try:
                    error = await self._read_serial(device, port.fileno())
                    log.warning(
                        "SL651 serial port lost; reopening", device=device, error=str(error)
                    )
                finally:
                    port.close()
            await asyncio.sleep(SERIAL_RETRY)

    async def _read_serial(self, device: str, fd: int) -> OSError:
        """Read an open serial port until it fails; returns the error."""
        loop = asyncio.get_running_loop()
        link = _Link(device, partial(_write_all, fd), serial=True)
        decoder = StreamDecoder(max_frame_bytes=self.config.max_frame_bytes)
        lost: asyncio.Future[OSError] = loop.create_future()

        def readable() -> None:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if not lost.done():
                    lost.set_result(exc)
                return
            if not data:  # a hang-up: the adapter was unplugged
                if not lost.done():
                    lost.set_result(OSError(errno.EIO, "serial device disconnected"))
                return
            decoder.feed(data)
            self._drain(link, decoder)

        self.links.add(link)
        loop.add_reader(fd, readable)
        try:
            return await lost
        finally:
            loop.remove_reader(fd)
            link.closed = True  # before the port closes and its descriptor number is reused
            self.centre.link_closed(link)
            self.links.discard(link)

    # -- frames ------------------------------------------------------------------------------

    def _drain(self, link: _Link, decoder: StreamDecoder) -> None:
        for event in decoder.events():
            if isinstance(event, Frame):
                link.frames += 1
                self._apply(link, self.centre.receive(link, event, self._now()))
            else:
                self._rejected(link, event)

    def _rejected(self, link: _Link, rejected: Rejected) -> None:
        link.rejected += 1
        self.rejected += 1
        now = time.monotonic()
        if now - self._rejects_logged_at >= REJECT_LOG_INTERVAL:
            self._rejects_logged_at = now
            log.warning(
                "SL651 bytes rejected",
                link=link.name,
                reason=rejected.reason.value,
                detail=rejected.detail,
                total=self.rejected,
            )

    def _apply(self, link: _Link, outcome: Outcome) -> None:
        for event in outcome.events:
            log.warning("station alarm", **{k: event[k] for k in ("terminal", "flag", "action")})
        durable = bool(outcome.readings or outcome.events)
        if not durable and (not link.waiting or not outcome.send):
            self._send(link, outcome.send)  # nothing to wait for (or nothing to send)
            return
        # The frames wait for this outcome's commit and for every earlier one on the link.
        commit = self.intake.commit(outcome.readings, outcome.events) if durable else None
        link.waiting.append((commit, outcome.send))
        if commit is not None:
            self._commits.add(commit)
            commit.add_done_callback(partial(self._committed, link))
        self._release(link)

    def _committed(self, link: _Link, commit: asyncio.Future[None]) -> None:
        self._commits.discard(commit)
        self._release(link)

    def _release(self, link: _Link) -> None:
        """Send the waiting frames, in order, as far as their commits are done."""
        while link.waiting:
            commit, frames = link.waiting[0]
            if commit is not None and not commit.done():
                return
            link.waiting.popleft()
            if commit is not None:
                failed = "cancelled" if commit.cancelled() else commit.exception()
                if failed is not None:
                    self.unconfirmed += 1
                    log.error(
                        "SL651 report not stored: not confirmed, the station will send it again",
                        link=link.name,
                        error=str(failed),
                        unconfirmed=self.unconfirmed,
                    )
                    continue
            self._send(link, frames)

    @staticmethod
    def _send(link: _Link, frames: Sequence[bytes]) -> None:
        if link.closed:
            return
        for frame in frames:
            try:
                link.write(frame)
            except (ConnectionError, OSError):
                break

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = self._now()
            for link in list(self.links):
                self._apply(link, self.centre.tick(link, now))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
