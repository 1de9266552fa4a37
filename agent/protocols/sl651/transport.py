"""The central station's IO: a TCP listener for many stations at once, and serial ports.

Each link (a TCP connection or a serial port) has its own StreamDecoder; every frame goes to the
shared `Centre`, and what it returns is carried out here: frames written back on the same link,
readings and alarm events committed through the intake. A confirm is a promise: the frames of
an outcome that carries readings or events are written only once the intake has made them
durable (a station deletes a report once it is confirmed), and in order on each link. If they
cannot be stored, nothing is confirmed and the station sends the report again. A one-second
tick lets the centre send what its timers ask for (M3 NAKs, periodic queries). A bad frame is counted and logged,
never fatal; a link that brings no good frame for `idle_timeout` is closed.

Limits that hold under a flood: the listening sockets are ours, and while `connection_cap`
connections are open (max_connections, capped below the descriptor limit) they are not read at
all: no accept, no descriptor, no traceback. Once a second, while still full, what waits in
the backlog is accepted and closed at once (refused, counted: the station retries later); a
slot that frees resumes accepting. Each connection has budgets (config): `frame_timeout` and
`min_rate` for a frame begun and not finished (a trickler is dropped), `max_rate` bytes/s
(reading pauses beyond it, so one peer cannot take the CPU), a small read buffer. Refusals,
drops and the centre's evicted M3 transfers are counted (`counters()`) and logged at most once
a minute each.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import serial
import structlog

from agent.limits import descriptor_budget
from agent.model import Intake
from agent.protocols.sl651.config import Sl651Config
from agent.protocols.sl651.frame import Frame
from agent.protocols.sl651.session import Centre, Outcome
from agent.protocols.sl651.stream import Rejected, StreamDecoder

log = structlog.get_logger(__name__)

TICK = 1.0
SERIAL_RETRY = 10.0  # an absent serial port is tried again this often
READ_SIZE = 4096  # also each connection's read buffer: the kernel holds the rest
REJECT_LOG_INTERVAL = 60.0
LOG_INTERVAL = 60.0  # refusals, drops, evictions: one line a minute each, with the counts
STOP_GRACE = 2.0  # on stop, confirms waiting for their commit get this long to go out
BACKLOG = 128
ACCEPT_RETRY = 1.0  # after the system ran out of descriptors or memory for an accept
RATE_GRACE = 5.0  # min_rate is measured from this long after the first byte
BURST_SECONDS = 2.0  # max_rate allows bursts of this many seconds' worth
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def utc_now() -> datetime:
    return datetime.now(UTC)


def connection_cap(config: Sl651Config) -> int:
    """The connections the listener takes at most: max_connections, or fewer when the
    descriptor limit (less the agent's reserve, agent/limits.py) allows fewer."""
    return min(config.max_connections, descriptor_budget())


class _Throttled:
    """A log line at most once per `interval`, carrying what was counted in between."""

    def __init__(self, message: str, interval: float = LOG_INTERVAL) -> None:
        self.message = message
        self.interval = interval
        self._at = -interval
        self._since = 0

    def __call__(self, **fields: Any) -> None:
        self._since += 1
        now = time.monotonic()
        if now - self._at >= self.interval:
            log.warning(self.message, since_last=self._since, **fields)
            self._at, self._since = now, 0


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
        # Budgets: bytes the decoder holds undecided (a frame begun), since the first of them;
        # bytes it threw away (a modem's heartbeat, noise) start no span. `idle_timeout` runs
        # from the last good frame, so no byte that is not one keeps the link open.
        self.span_start: float | None = None
        self.span_bytes = 0
        self.last_frame_at = time.monotonic()
        self.tokens = 0.0  # max_rate's bucket
        self.tokens_at = time.monotonic()
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
        self.cap = config.max_connections  # set from the descriptor limit at start
        self.refused_connections = 0  # accepted while full and closed at once
        self.accept_failures = 0  # accepts the system refused (descriptors, memory)
        self.dropped: Counter[str] = Counter()  # connections closed by a budget, by budget
        self.throttled = 0  # reads held back by max_rate
        self.rejected = 0
        self.unconfirmed = 0  # reports not confirmed because they could not be stored
        self._listeners: list[socket.socket] = []
        self._accepting = False
        self._connections = 0  # TCP connections held (accepted, not yet closed)
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()  # one per TCP connection
        self._commits: set[asyncio.Future[None]] = set()  # commits whose frames wait
        self._rejects_logged_at = 0.0
        self._evictions_logged = 0
        self._log_refused = _Throttled("SL651 connections refused: listener full")
        self._log_accept = _Throttled("SL651 cannot accept connections: system out of resources")
        self._log_dropped = _Throttled("SL651 connections dropped by their budget")
        self._log_throttled = _Throttled("SL651 connections read slower: over max_rate")
        self._log_evicted = _Throttled("SL651 M3 transfers dropped: over their bounds")
        self._log_unknown = _Throttled("SL651 frames refused: too many unknown stations on a link")
        self._unknown_logged = 0

    async def start(self) -> None:
        self.cap = connection_cap(self.config)
        if self.cap < self.config.max_connections and self.config.listen:
            log.warning(
                "SL651 max_connections capped by the descriptor limit",
                max_connections=self.config.max_connections,
                cap=self.cap,
            )
        try:
            for host, port in self.config.listen_addresses:
                try:
                    await self._listen(host, port)
                except OSError as exc:
                    raise OSError(
                        f"SL651 cannot listen on {host}:{port}: {exc.strerror or exc}"
                    ) from exc
        except BaseException:
            await self.stop()  # the listeners opened so far
            raise
        self._resume()
        for line in self.config.serial:
            self._spawn(self._serve_serial(line.device, line.baudrate), f"sl651 {line.device}")
        self._spawn(self._tick(), "sl651 timers")
        if self.addresses or self.config.serial:
            log.info(
                "SL651 central station listening",
                tcp=[f"{h}:{p}" for h, p in self.addresses],
                serial=[p.device for p in self.config.serial],
                stations=len(self.centre.terminals),
                max_connections=self.cap,
            )

    async def _listen(self, host: str, port: int) -> None:
        """Listening sockets for every address `host` resolves to (as asyncio's servers do)."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        seen = set()
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(BACKLOG)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            self._listeners.append(sock)
            bound = sock.getsockname()
            self.addresses.append((str(bound[0]), int(bound[1])))

    # -- accepting ---------------------------------------------------------------------------

    def _resume(self) -> None:
        """Read the listening sockets again (a slot is free)."""
        if self._accepting or not self._listeners or self._connections >= self.cap:
            return
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            loop.add_reader(sock.fileno(), self._accept, sock)
        self._accepting = True

    def _pause(self) -> None:
        """Stop reading the listening sockets: waiting connections stay in the backlog."""
        if not self._accepting:
            return
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            loop.remove_reader(sock.fileno())
        self._accepting = False

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(BACKLOG):
            if self._connections >= self.cap:
                self._pause()  # checked before accept(): nothing is taken while full
                return
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._out_of_resources(exc)
                    return
                continue  # ECONNABORTED and the like: that peer is gone
            self._connections += 1
            conn.setblocking(False)
            name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
            task = asyncio.create_task(self._serve_tcp(conn, name), name=f"sl651 {name}")
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    def _out_of_resources(self, exc: OSError) -> None:
        self.accept_failures += 1
        self._log_accept(error=exc.strerror or str(exc), failures=self.accept_failures)
        self._pause()
        asyncio.get_running_loop().call_later(ACCEPT_RETRY, self._resume)

    def _refuse_waiting(self) -> None:
        """While full: accept what waits in the backlog and close it at once (counted)."""
        if self._accepting:
            return
        for sock in self._listeners:
            for _ in range(BACKLOG):
                try:
                    conn, _peer = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno in _OUT_OF_RESOURCES:
                        self.accept_failures += 1
                        self._log_accept(error=exc.strerror or str(exc))
                        break
                    continue
                conn.close()
                self.refused_connections += 1
                self._log_refused(refused=self.refused_connections, open=self._connections)

    def counters(self) -> dict[str, int]:
        """What the listener and the centre refused, dropped or evicted, for status/metrics."""
        out = {
            "connections": self._connections,
            "max_connections": self.cap,
            "refused_connections": self.refused_connections,
            "accept_failures": self.accept_failures,
            "throttled_reads": self.throttled,
            "rejected_frames": self.rejected,
            "unconfirmed_reports": self.unconfirmed,
            "unknown_refused": self.centre.unknown_refused,
            "m3_bytes": self.centre.m3_bytes,
        }
        for reason in ("idle", "slow", "frame_timeout"):
            out[f"dropped_{reason}"] = self.dropped[reason]
        for bound in ("packets", "bytes", "total_bytes", "age"):
            out[f"m3_evicted_{bound}"] = self.centre.evicted[bound]
        return out

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        self._pause()
        for sock in self._listeners:
            sock.close()
        self._listeners.clear()
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

    # -- links -------------------------------------------------------------------------------

    def is_serial(self, link: object) -> bool:
        return isinstance(link, _Link) and link.serial

    def close_link(self, link: object) -> None:
        """Close one link (a TCP connection: its handler ends and the station reconnects)."""
        if isinstance(link, _Link) and link in self.links and not link.closed:
            link.close()

    async def _serve_tcp(self, conn: socket.socket, name: str) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=READ_SIZE)
        except OSError:
            conn.close()
            self._released()
            return
        link = _Link(name, writer.write, writer.close)
        self.links.add(link)
        decoder = StreamDecoder(max_frame_bytes=self.config.max_frame_bytes)
        try:
            await self._read_tcp(link, reader, decoder)
        except (ConnectionError, OSError):
            pass  # the station went away mid-frame: what was whole has been handled
        finally:
            decoder.flush()
            self._drain(link, decoder)
            link.closed = True
            self.centre.link_closed(link)
            self.links.discard(link)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            self._released()

    def _released(self) -> None:
        self._connections -= 1
        self._resume()

    async def _read_tcp(
        self, link: _Link, reader: asyncio.StreamReader, decoder: StreamDecoder
    ) -> None:
        """Read one connection until it ends or a budget closes it."""
        config = self.config
        link.tokens = config.max_rate * BURST_SECONDS
        while True:
            now = time.monotonic()
            budget, deadline = self._deadline(link, now)
            try:
                async with asyncio.timeout(max(0.0, deadline - now)):
                    data = await reader.read(READ_SIZE)
            except TimeoutError:
                self._drop(link, budget)
                return
            if not data:
                return
            now = time.monotonic()
            if link.span_start is None:
                link.span_start, link.span_bytes = now, 0
            link.span_bytes += len(data)
            decoder.feed(data)
            if self._drain(link, decoder):
                link.last_frame_at = now
                # A good frame: what is left buffered is the start of the next one.
                link.span_start = now if decoder.buffered else None
                link.span_bytes = decoder.buffered
            elif not decoder.buffered:
                link.span_start = None  # all thrown away: nothing is on its way
            # max_rate: a bucket of tokens; in deficit, wait before reading more (the kernel's
            # buffers fill and TCP slows the peer down).
            link.tokens = min(
                config.max_rate * BURST_SECONDS,
                link.tokens + (now - link.tokens_at) * config.max_rate,
            )
            link.tokens_at = now
            link.tokens -= len(data)
            if link.tokens < 0:
                self.throttled += 1
                self._log_throttled(link=link.name, throttled=self.throttled)
                await asyncio.sleep(-link.tokens / config.max_rate)
            else:
                await asyncio.sleep(0)  # one read at a time: other links' turn before the next

    def _deadline(self, link: _Link, now: float) -> tuple[str, float]:
        """The budget that runs out first for this link, and when (if no byte comes)."""
        config = self.config
        deadlines = [("idle", link.last_frame_at + config.idle_timeout)]
        if link.span_start is not None:
            deadlines.append(("frame_timeout", link.span_start + config.frame_timeout))
            deadlines.append(
                (
                    "slow",
                    link.span_start + max(RATE_GRACE, link.span_bytes / config.min_rate),
                )
            )
        return min(deadlines, key=lambda d: d[1])

    def _drop(self, link: _Link, budget: str) -> None:
        self.dropped[budget] += 1
        if budget == "idle":
            log.info("SL651 link idle: closed", link=link.name)
            return
        self._log_dropped(
            link=link.name,
            budget=budget,
            bytes=link.span_bytes,
            **{f"dropped_{k}": v for k, v in sorted(self.dropped.items())},
        )

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
        link = _Link(device, partial(_write_all, fd), serial=True)
        decoder = StreamDecoder(max_frame_bytes=self.config.max_frame_bytes)

        def received(data: bytes) -> None:
            decoder.feed(data)
            self._drain(link, decoder)

        self.links.add(link)
        try:
            return await read_serial(fd, received)
        finally:
            link.closed = True  # before the port closes and its descriptor number is reused
            self.centre.link_closed(link)
            self.links.discard(link)

    # -- frames ------------------------------------------------------------------------------

    def _drain(self, link: _Link, decoder: StreamDecoder) -> bool:
        """Handle what the decoder has decided; whether a good frame was among it."""
        good = False
        for event in decoder.events():
            if isinstance(event, Frame):
                good = True
                link.frames += 1
                self._apply(link, self.centre.receive(link, event, self._now()))
            else:
                self._rejected(link, event)
        if good:
            self._centre_refusals(link)
        return good

    def _centre_refusals(self, link: _Link) -> None:
        """Log what the centre dropped or refused since the last line (at most once a minute)."""
        centre = self.centre
        evicted = sum(centre.evicted.values())
        if evicted != self._evictions_logged:
            self._evictions_logged = evicted
            self._log_evicted(
                link=link.name, **{f"evicted_{k}": v for k, v in centre.evicted.items()}
            )
        if centre.unknown_refused != self._unknown_logged:
            self._unknown_logged = centre.unknown_refused
            self._log_unknown(link=link.name, refused=centre.unknown_refused)

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
                self._centre_refusals(link)
            self._refuse_waiting()


async def read_serial(fd: int, received: Callable[[bytes], None]) -> OSError:
    """Read an open serial port's descriptor as bytes arrive, each chunk to `received`, until
    it fails or hangs up (the adapter was unplugged); returns the error."""
    loop = asyncio.get_running_loop()
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
        received(data)

    loop.add_reader(fd, readable)
    try:
        return await lost
    finally:
        loop.remove_reader(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
