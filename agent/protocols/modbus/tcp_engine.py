"""Modbus TCP polling on a thread of its own: one epoll loop for every TCP terminal, no asyncio.

At a thousand terminals, asyncio's machinery costs more than the polls themselves: a task,
two futures and two timers per poll, and the selector's bookkeeping per event, all on the
event loop the rest of the agent runs on. The engine runs the pollers' schedules on a heap
and their connections on one `select.epoll`, in a thread, and drives each poll by hand: the
very `Poller.poll_once` coroutine the asyncio path runs awaits `EngineLink.read`, which
yields the read to the engine; the engine sends the request (framed by the sans-IO `adu`),
and resumes the coroutine with the values, or throws the `ModbusFailure` the asyncio
`TcpLink` would have raised, with the same reason (`links.connect_failure`,
`no_reply_failure`, `ended_failure`). So retries, split reads, bad readings and their
reasons are the poller's, as before.

A slot's bookkeeping (`Poller.slot_begins`, `slot_ends`: skipped slots, backpressure,
lateness, the poll's outcome, backoff) happens in the thread; the readings are handed to
the event loop in batches (`deliver`), at most every `HANDOFF_INTERVAL`, where the driver
gives them to the sink. The event loop talks to the engine through commands (a queue and
an eventfd): add and remove a poller, run a coroutine in the engine (a poll on request, a
read), halt, stop. Everything else is the thread's alone, but for the pollers' `stats`: written
here, read on the event loop (checks, status, metrics); counters and bounded windows whose every
change is one step under the GIL, so a reader sees each whole, if a poll counted in `polls` not
yet in `outcomes`. An error in the code that runs for one terminal (a bug) stops that poller,
logged, as a crashed asyncio task would; the engine polls the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import heapq
import itertools
import math
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar

import structlog

from agent.model import PollReadings
from agent.protocols.modbus.adu import (
    ReadRequest,
    RegisterReadFrames,
    ReplyError,
    encode_tcp,
    parse_tcp,
)
from agent.protocols.modbus.config import MAX_REGISTERS_PER_READ
from agent.protocols.modbus.links import (
    READ_CHUNK,
    ModbusFailure,
    Values,
    connect_failure,
    ended_failure,
    no_reply_failure,
    reply_values,
    wait_closed,
)
from agent.protocols.modbus.poller import Poller
from agent.protocols.schedule import FixedRateSchedule

log = structlog.get_logger(__name__)

# Finished polls reach the event loop in batches, this often at most. Each hand-over wakes the
# event loop and passes the interpreter's lock between two busy threads: every 10 ms cost about
# 10 % more CPU at a thousand terminals than every 50 ms (alternated runs of bench/poll_scale.py).
# Readings reach the sinks that much later; the outbox's linger is longer still.
HANDOFF_INTERVAL = 0.05
# A turn also starts the slots due within this much from now: one wake for several terminals'
# slots instead of one each (a thousand terminals' slots are a millisecond apart). A slot
# started early is on time (its lateness is 0) and the schedule does not drift.
SLOT_EARLY = 0.005
# An idle connection (no request under way) that receives more than this is out of step: it
# is dropped, and the next read connects afresh.
IDLE_BUFFER_LIMIT = 512
STOP_TIMEOUT = 1.0  # the thread ends within this of `stop()`, or is left (a daemon thread)

Delivery = list[tuple[Poller, PollReadings]]
T = TypeVar("T")
Settle = Callable[[Any, BaseException | None], None]


def removed_failure() -> ModbusFailure:
    """What a read of a removed terminal's link fails with (a poll on request under way when its
    terminal was removed or restarted): "connect", so that the poll reads no further. A new one
    each time: a raised exception keeps the frames it passed through."""
    return ModbusFailure("connect", "the terminal was removed or restarted while it was read")


class EngineStopped(Exception):
    """The engine has stopped (or halted): what it was asked to run will not run."""


class _Read:
    """A read a coroutine awaits: yielded to the engine, which resumes the coroutine."""

    __slots__ = ("address", "count", "link", "table", "timeout", "unit")

    def __init__(
        self, link: EngineLink, unit: int, table: str, address: int, count: int, timeout: float
    ) -> None:
        self.link, self.unit, self.table = link, unit, table
        self.address, self.count, self.timeout = address, count, timeout

    def __await__(self) -> Generator[_Read, Values, Values]:
        return (yield self)


class _Job:
    """A coroutine the engine drives, and what to call with its result or error."""

    __slots__ = ("coro", "link", "settle")

    def __init__(self, coro: Coroutine[Any, Any, Any], settle: Settle) -> None:
        self.coro = coro
        self.settle = settle
        self.link: EngineLink | None = None  # where its read (one at a time) waits or runs


class _Scheduled:
    """A poller on the engine's schedule."""

    __slots__ = ("job", "poller", "removed", "schedule", "settle", "started")

    def __init__(
        self, poller: Poller, polled: Callable[[_Scheduled, Any, BaseException | None], None]
    ) -> None:
        self.poller = poller
        self.settle: Settle = functools.partial(polled, self)  # what its polls end with
        self.schedule: FixedRateSchedule = poller.schedule()
        self.job: _Job | None = None
        self.started = 0.0
        self.removed = False


class EngineLink:
    """One Modbus TCP connection run by the engine (a `Link`).

    Opened on first use and again after any failure other than an exception reply, one
    request at a time, as `TcpLink`. Read from the engine's thread (a poll the engine runs),
    a read is yielded to the engine; read from the event loop, it is run in the engine and
    awaited there."""

    def __init__(self, engine: TcpEngine, host: str, port: int) -> None:
        self.engine = engine
        self.host = host
        self.port = port
        # The engine thread's alone:
        self.sock: socket.socket | None = None
        self.connecting = False
        self.buffer = bytearray()
        self.transaction = 0
        self.current: _Read | None = None  # the read under way
        self.job: _Job | None = None  # whose read it is
        self.request: ReadRequest | None = None
        self.deadline = 0.0
        self.waiting: deque[tuple[_Read, _Job]] = deque()
        self.removed = False  # its terminal is no longer polled: reads fail at once
        # Each register read it makes, framed once (None: a bit read, framed each time).
        self.frames: dict[tuple[int, str, int, int], RegisterReadFrames | None] = {}
        self.expect: RegisterReadFrames | None = None  # the read on the wire, if framed once

    def read(
        self, unit: int, table: str, address: int, count: int, timeout: float
    ) -> Awaitable[Values]:
        if self.engine.in_thread():  # awaited by a poll the engine drives: yielded to it
            return _Read(self, unit, table, address, count, timeout)
        return self.engine.call(lambda: self._read(unit, table, address, count, timeout))

    async def _read(
        self, unit: int, table: str, address: int, count: int, timeout: float
    ) -> Values:
        return await _Read(self, unit, table, address, count, timeout)

    async def close(self) -> None:
        with contextlib.suppress(EngineStopped):  # (it stopped meanwhile: closed with it)
            await wait_closed(self.close_soon())

    def close_soon(self) -> asyncio.Future[None] | None:
        if not self.engine.running:
            return None
        return self.engine.command(lambda: self.engine.close_link(self))


class TcpEngine:
    """The thread, its epoll, the schedules of its pollers and their connections."""

    def __init__(self, deliver: Callable[[Delivery], None]) -> None:
        self.deliver = deliver  # called on the event loop with a batch of finished polls
        self.running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ident: int | None = None
        self._commands: deque[Callable[[], None]] = deque()
        self._lock = threading.Lock()
        self._accepting = False  # commands: from start() until the thread ends
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll = select.epoll()
        self._epoll.register(self._wake, select.EPOLLIN)
        self._links: dict[int, EngineLink] = {}  # the open ones, by socket descriptor
        self._known: set[EngineLink] = set()  # every link a read was queued on
        self._scheduled: dict[Poller, _Scheduled] = {}
        self._slots: list[tuple[float, int, _Scheduled]] = []  # (due, order, poller) heap
        self._deadlines: list[tuple[float, int, EngineLink]] = []  # heap
        self._order = itertools.count()
        self._out: Delivery = []
        self._handed_at = 0.0
        # When each batch handed to the event loop and not yet taken in there was handed over
        # (appended in the thread, taken off on the loop: deque ends are thread-safe).
        self._untaken: deque[float] = deque()
        self._halted = False
        self._stopping = False
        self._ended: asyncio.Future[None] | None = None

    # -- the event loop's side ------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ended = self._loop.create_future()
        self.running = self._accepting = True
        self._thread = threading.Thread(target=self._run, name="modbus-tcp", daemon=True)
        self._thread.start()

    def in_thread(self) -> bool:
        return threading.get_ident() == self._ident

    def command(self, action: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run `action` in the engine's thread; the future has its result or error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def run() -> None:
            try:
                result = action()
            except BaseException as exc:  # noqa: BLE001 -- handed to the caller
                _settle_from_thread(loop, future, None, exc)
            else:
                _settle_from_thread(loop, future, result, None)

        with self._lock:  # the thread, ending, runs what was queued before it ended
            if not self._accepting:
                future.set_exception(EngineStopped("the Modbus TCP engine has stopped"))
                return future
            self._commands.append(run)
            os.eventfd_write(self._wake, 1)
        return future

    def _fire(self, action: Callable[[], Any]) -> None:
        """`command` without waiting: an error is logged (refused once stopped: nothing)."""
        self.command(action).add_done_callback(_log_failure)

    def add(self, poller: Poller) -> None:
        """Poll `poller` on its schedule, from now on."""
        self._fire(lambda: self._add(poller))

    async def remove(self, poller: Poller) -> None:
        """Stop polling `poller` (a poll under way hands nothing over) and close its link."""
        with contextlib.suppress(EngineStopped):
            await self.command(lambda: self._remove(poller))

    def call(self, factory: Callable[[], Coroutine[Any, Any, T]]) -> asyncio.Future[T]:
        """Run the coroutine `factory()` makes in the engine (a poll on request, a read)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        jobs: list[_Job] = []  # the job, once begun (in the thread)

        def begin() -> None:
            if self._halted:
                raise EngineStopped("the agent is stopping: no terminal is read")
            settle: Settle = lambda result, error: _settle_from_thread(loop, future, result, error)  # noqa: E731
            jobs.append(_Job(factory(), settle))
            self._step(jobs[0])

        def cancelled() -> None:
            if jobs:
                self._drop(jobs[0])  # its read, if still under way or waiting, goes

        started = self.command(begin)
        started.add_done_callback(lambda f: _pass_error(f, future))
        future.add_done_callback(lambda f: self._fire(cancelled) if f.cancelled() else None)
        return future

    def halt(self) -> None:
        """No poll starts from now on, and the polls under way hand nothing over."""
        self._halted = True  # at once: the thread starts no poll from its next slot on
        if self.running:
            self._fire(self._halt)

    async def stop(self) -> None:
        """Halt, close every connection and end the thread (within STOP_TIMEOUT)."""
        if not self.running:
            return
        self._fire(self._stop)
        self.running = False
        assert self._ended is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT):
                await asyncio.shield(self._ended)
            return
        log.error("the Modbus TCP thread did not end in time; left to end with the process")

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        self._ident = threading.get_ident()
        try:
            while not self._stopping:
                self._turn()
        except BaseException as exc:  # noqa: BLE001 -- logged: the watchdog then sees no readings
            log.critical("the Modbus TCP thread stopped by an error", error=repr(exc))
        finally:
            self._halted = self._stopping = True
            with self._lock:
                self._accepting = False  # what comes from now on is refused at once
                left = list(self._commands)
            self.running = False
            try:
                self._close_all()
                for run in left:  # settled: a call is refused, a removal is done
                    run()
            except Exception as exc:  # noqa: BLE001 -- logged; the end is said all the same
                log.error("the Modbus TCP thread did not end cleanly", error=repr(exc))
            finally:
                self._epoll.close()
                os.close(self._wake)  # no command writes to it any more
                loop, ended = self._loop, self._ended
                if loop is not None and ended is not None:
                    with contextlib.suppress(RuntimeError):  # the loop closed already
                        loop.call_soon_threadsafe(_set_done, ended)

    def _turn(self) -> None:
        """Wait for the next event, deadline, slot or hand-over; handle what is due."""
        slots, deadlines = self._slots, self._deadlines
        until = slots[0][0] if slots else math.inf
        if deadlines and deadlines[0][0] < until:
            until = deadlines[0][0]
        if self._out and self._handed_at + HANDOFF_INTERVAL < until:
            until = self._handed_at + HANDOFF_INTERVAL
        timeout = -1.0 if until == math.inf else max(0.0, until - time.monotonic())
        events = self._epoll.poll(timeout)
        if len(events) == 1 and (link := self._links.get(events[0][0])) is not None:
            self._ready(link)  # the usual turn: one reply
        elif events:
            # Each event's link and socket as they were when it came: handling one event may
            # close a socket and open another that gets the same descriptor.
            ready = [(link, link.sock) for fd, _ in events if (link := self._links.get(fd))]
            for link, sock in ready:
                if link.sock is sock:
                    self._ready(link)
            if any(fd == self._wake for fd, _ in events):
                os.eventfd_read(self._wake)
                while self._commands:
                    self._commands.popleft()()
        now = time.monotonic()
        while deadlines and deadlines[0][0] <= now:
            deadline, _, link = heapq.heappop(deadlines)
            if link.current is not None and link.deadline == deadline:
                self._guarded(self._expired, link)
        early = now + SLOT_EARLY
        while slots and slots[0][0] <= early:
            entry = heapq.heappop(slots)[2]
            try:
                self._slot(entry, now)
            except Exception as exc:  # noqa: BLE001 -- that poller stops, not the engine
                self._crashed(entry, exc)
        if self._out and now - self._handed_at >= HANDOFF_INTERVAL:
            self._hand_over(now)

    def _ready(self, link: EngineLink) -> None:
        self._guarded(self._connected if link.connecting else self._readable, link)

    def _guarded(self, handle: Callable[[EngineLink], None], link: EngineLink) -> None:
        """`handle(link)`; an error (a bug) ends the reads of that link, not the engine."""
        try:
            handle(link)
        except Exception as exc:  # noqa: BLE001 -- the one link's reads fail with it
            log.error(
                "a Modbus TCP connection failed in the engine",
                address=f"{link.host}:{link.port}",
                error=repr(exc),
            )
            self._fail_reads(link, exc)  # a poller's poll: that poller stops (a crashed task)

    def _crashed(self, entry: _Scheduled, error: Exception) -> None:
        """A slot of `entry` raised (a bug): that poller stops, logged; the others go on."""
        entry.removed = True
        job, entry.job = entry.job, None
        log.error(
            "a poller stopped by an error", terminal=entry.poller.terminal.name, error=repr(error)
        )
        if job is None:
            return
        link = job.link
        try:
            self._drop(job)  # (and the link's next read, a poll on request, starts)
        except Exception as exc:  # noqa: BLE001 -- logged: the engine goes on
            log.error("a poller's poll could not be ended cleanly", error=repr(exc))
        if link is not None and link.current is None:
            self._guarded(self._next, link)  # a read left waiting starts, or fails

    # polls on the schedule

    def _add(self, poller: Poller) -> None:
        if self._halted or poller in self._scheduled:
            return
        entry = self._scheduled[poller] = _Scheduled(poller, self._polled)
        self._queue_slot(entry)

    def _queue_slot(self, entry: _Scheduled) -> None:
        heapq.heappush(self._slots, (entry.schedule.due, next(self._order), entry))

    def _slot(self, entry: _Scheduled, now: float) -> None:
        if entry.removed or self._halted:
            return
        poller, schedule = entry.poller, entry.schedule
        lateness = schedule.start()
        if lateness is None:  # too late: skipped, counted at the next slot that begins
            self._queue_slot(entry)
        elif self._lag(now) > schedule.max_late:  # the event loop is behind taking polls in
            poller.slot_skipped(schedule)
            self._queue_slot(entry)
        elif not poller.slot_begins(schedule, lateness):  # held by the outbox
            self._queue_slot(entry)
        else:
            entry.started = now
            entry.job = _Job(poller.poll_once(), entry.settle)
            self._step(entry.job)

    def _polled(
        self, entry: _Scheduled, readings: PollReadings | None, error: BaseException | None
    ) -> None:
        entry.job = None
        if entry.removed:
            return
        if error is None and readings is not None:
            try:
                entry.poller.slot_ends(entry.schedule, readings, time.monotonic() - entry.started)
            except Exception as exc:  # noqa: BLE001 -- that poller stops, as below
                error = exc
        if error is not None or readings is None:
            entry.removed = True
            log.error(
                "a poller stopped by an error",
                terminal=entry.poller.terminal.name,
                error=repr(error),
            )
            return
        self._out.append((entry.poller, readings))
        self._queue_slot(entry)

    def _hand_over(self, now: float) -> None:
        batch, self._out = self._out, []
        self._handed_at = now
        self._untaken.append(now)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._take, batch)

    def _take(self, batch: Delivery) -> None:
        """On the event loop: a batch of finished polls to the driver."""
        self._untaken.popleft()
        self.deliver(batch)

    def _lag(self, now: float) -> float:
        """How long the oldest batch handed over has waited for the event loop (0: none)."""
        try:
            return now - self._untaken[0]
        except IndexError:  # none waits (or the loop took the last one just now)
            return 0.0

    def _remove(self, poller: Poller) -> None:
        link = poller.link if isinstance(poller.link, EngineLink) else None
        if link is not None:
            link.removed = True  # first: no read of it starts from now on
        entry = self._scheduled.pop(poller, None)
        if entry is not None:
            entry.removed = True
            if entry.job is not None:
                self._drop(entry.job)
                entry.job = None
        if link is not None:
            self.close_link(link)  # a poll on request under way ends (reads no further)
            self._known.discard(link)

    def _halt(self) -> None:
        self._halted = True
        for entry in self._scheduled.values():
            entry.removed = True
            if entry.job is not None:
                self._drop(entry.job)
                entry.job = None
        self._slots.clear()
        self._out.clear()

    def _stop(self) -> None:
        self._halt()
        self._stopping = True

    def _drop(self, job: _Job) -> None:
        """End a poll's coroutine where it waits; its read is taken off its link."""
        link = job.link
        if link is not None:
            link.waiting = deque((r, j) for r, j in link.waiting if j is not job)
            if link.job is job:
                link.current = link.job = link.request = None
                self._disconnect(link)  # its reply would come out of step
                self._next(link)
        job.coro.close()

    # coroutines

    def _step(self, job: _Job, value: Any = None, error: BaseException | None = None) -> None:
        """Run `job` until it awaits a read (queued on its link) or ends (settled)."""
        try:
            read = job.coro.send(value) if error is None else job.coro.throw(error)
        except StopIteration as done:
            _settle_job(job, done.value, None)
            return
        except BaseException as exc:  # noqa: BLE001 -- settled with it
            _settle_job(job, None, exc)
            return
        if not isinstance(read, _Read):
            job.coro.close()
            _settle_job(job, None, RuntimeError(f"a Modbus TCP poll awaited {read!r}, not a read"))
            return
        self._known.add(read.link)
        job.link = read.link
        read.link.waiting.append((read, job))
        self._next(read.link)

    def _next(self, link: EngineLink) -> None:
        """Start the link's next read, if none is under way (none, once it is removed)."""
        if link.removed:
            while link.waiting:  # each fails at once: its poll ends without connecting
                _, job = link.waiting.popleft()
                self._step(job, error=removed_failure())
            return
        if link.current is not None or not link.waiting:
            return
        link.current, link.job = link.waiting.popleft()
        self._set_deadline(link, link.current.timeout)
        if link.sock is None:
            self._connect(link)
        else:
            self._send(link)

    def _set_deadline(self, link: EngineLink, timeout: float) -> None:
        link.deadline = time.monotonic() + timeout
        heapq.heappush(self._deadlines, (link.deadline, next(self._order), link))

    def _finish(
        self, link: EngineLink, value: Any = None, error: BaseException | None = None
    ) -> None:
        """The link's read is over: its coroutine goes on; then the link's next read."""
        job = link.job
        link.current = link.job = link.request = None
        if job is not None:
            self._step(job, value, error)
        self._next(link)

    # connections

    def _connect(self, link: EngineLink) -> None:
        family = socket.AF_INET6 if ":" in link.host else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:  # no descriptor left, say
            self._finish(link, error=connect_failure(link.host, link.port, exc))
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        failed: OSError | None = None
        try:
            code = sock.connect_ex((link.host, link.port))
        except OSError as exc:  # an address it cannot even try (a scope naming no interface)
            failed = exc
        else:
            if code not in (0, errno.EINPROGRESS):
                failed = _os_error(code)
        if failed is not None:
            sock.close()
            self._finish(link, error=connect_failure(link.host, link.port, failed))
            return
        link.sock, link.connecting = sock, True
        link.buffer.clear()
        self._links[sock.fileno()] = link
        self._epoll.register(sock.fileno(), select.EPOLLOUT)

    def _connected(self, link: EngineLink) -> None:
        assert link.sock is not None
        code = link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._disconnect(link)
            self._finish(link, error=connect_failure(link.host, link.port, _os_error(code)))
            return
        link.connecting = False
        self._epoll.modify(link.sock.fileno(), select.EPOLLIN)
        if link.current is not None:
            self._set_deadline(link, link.current.timeout)  # the reply's own timeout from now
            self._send(link)

    def _send(self, link: EngineLink) -> None:
        read, sock = link.current, link.sock
        assert read is not None
        assert sock is not None
        link.transaction = transaction = link.transaction % 0xFFFF + 1
        request = ReadRequest(read.unit, read.table, read.address, read.count, transaction)
        link.request = request
        key = (read.unit, read.table, read.address, read.count)
        if key not in link.frames:
            registers = read.table in ("holding", "input") and read.count <= MAX_REGISTERS_PER_READ
            link.frames[key] = RegisterReadFrames(*key) if registers else None
        link.expect = frames = link.frames[key]
        frame = encode_tcp(request) if frames is None else frames.request(transaction)
        try:
            sent = sock.send(frame)
        except OSError as exc:
            self._disconnect(link)
            self._finish(link, error=ended_failure(b"", request, exc))
            return
        if sent < len(frame):  # not even a 12-byte request fits: the device reads nothing
            self._disconnect(link)
            self._finish(link, error=ModbusFailure("timeout", "the device takes no requests"))

    def _readable(self, link: EngineLink) -> None:
        sock = link.sock
        assert sock is not None
        lost: OSError | None = None
        try:
            data = sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            data, lost = b"", exc
        request = link.request
        if not data:  # the device closed the connection (or reset it)
            buffer = bytes(link.buffer)
            self._disconnect(link)
            if request is not None:
                self._finish(link, error=ended_failure(buffer, request, lost))
            return
        link.buffer += data
        if request is None:  # nothing asked: out of step if it goes on
            if len(link.buffer) > IDLE_BUFFER_LIMIT:
                self._disconnect(link)
            return
        expect = link.expect
        if expect is not None:  # the usual reply, told at a glance
            registers = expect.good_values(link.buffer, request.transaction)
            if registers is not None:
                link.buffer.clear()
                self._finish(link, list(registers))
                return
        try:
            reply = parse_tcp(bytes(link.buffer), request)
        except ReplyError as error:
            self._disconnect(link)
            self._finish(link, error=ModbusFailure.rejected(error))
            return
        if reply is None:
            return
        del link.buffer[: reply.size]
        if link.buffer:  # bytes after the reply: the stream is out of step
            self._disconnect(link)
        try:
            values = reply_values(reply)
        except ModbusFailure as failure:  # an exception reply: the connection stays
            self._finish(link, error=failure)
        else:
            self._finish(link, values)

    def _expired(self, link: EngineLink) -> None:
        read, request = link.current, link.request
        assert read is not None
        if request is None:  # still connecting
            failure = connect_failure(link.host, link.port, None)
        else:
            failure = no_reply_failure(bytes(link.buffer), request, read.timeout)
        self._disconnect(link)
        self._finish(link, error=failure)

    def close_link(self, link: EngineLink) -> None:
        """Close the link's connection; a read under way fails as if the device had closed it."""
        request, buffer = link.request, bytes(link.buffer)
        self._disconnect(link)
        if link.current is not None:
            if request is None:
                failure = connect_failure(link.host, link.port, None)
            else:
                failure = ended_failure(buffer, request, None)
            self._finish(link, error=failure)

    def _disconnect(self, link: EngineLink) -> None:
        sock, link.sock = link.sock, None
        link.connecting = False
        link.buffer.clear()
        if sock is None:
            return
        self._links.pop(sock.fileno(), None)
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(sock.fileno())
        sock.close()

    def _close_all(self) -> None:
        """The thread ends: every connection closed, every read under way or waiting refused."""
        stopped = EngineStopped("the Modbus TCP engine has stopped")
        for link in list(self._known) + list(self._links.values()):
            self._fail_reads(link, stopped)

    def _fail_reads(self, link: EngineLink, error: BaseException) -> None:
        """Close the link and end every poll reading on it (under way or waiting) with `error`,
        without resuming them."""
        jobs = [job for _, job in link.waiting]
        if link.job is not None:
            jobs.insert(0, link.job)
        link.waiting.clear()
        link.current = link.job = link.request = link.expect = None
        with contextlib.suppress(OSError):
            self._disconnect(link)
        for job in jobs:
            job.coro.close()
            _settle_job(job, None, error)


def _os_error(code: int) -> OSError:
    """The OSError of an errno (ECONNREFUSED gives a ConnectionRefusedError)."""
    return OSError(code, os.strerror(code))


def _settle_job(job: _Job, result: Any, error: BaseException | None) -> None:
    """Hand a job's end to whoever waits for it; an error there (a bug) is logged, not raised
    into the read that ended it."""
    try:
        job.settle(result, error)
    except Exception as exc:  # noqa: BLE001 -- logged: the engine goes on
        log.error("the end of a Modbus TCP poll could not be handed over", error=repr(exc))


def _settle_from_thread(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    error: BaseException | None,
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed already: nobody waits
        loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled by its caller
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _pass_error(started: asyncio.Future[Any], future: asyncio.Future[Any]) -> None:
    """A call that could not begin fails with the reason."""
    if not started.cancelled() and started.exception() is not None and not future.done():
        future.set_exception(started.exception())  # type: ignore[arg-type]


def _log_failure(future: asyncio.Future[Any]) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None and not isinstance(error, EngineStopped):
        log.error("a Modbus TCP engine command failed", error=repr(error))


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
