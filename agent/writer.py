"""The one way into the outbox: every kind of message, one error policy, awaitable commits.

Telemetry, events, health reports and (later) diagnosis answers all enter the outbox here.
`put` queues one message and returns a future that completes once it is committed (with its
seq); `submit` gathers polled readings into telemetry messages of up to `batch` readings, cut
when that many wait or `linger` seconds after the first (so a polled reading is durable at
most `linger` late — documented) and encoded once, per poll, in the configured schema
(agent/telemetry.py; `set_meta` gives the point lists schema 2 refers to); `commit_readings`
is for a report that must be durable before it is confirmed: its readings join the gathered
ones, which are cut at the writer's next turn, and the future completes once they are
committed.

One writer task stores everything waiting in one transaction (group commit: while one batch is
being made durable, the next gathers). Reports that arrive while a transaction runs share one
telemetry message in the next: one signature and one row for many reports, not one each. The error policy, for every kind alike:
- the outbox cannot take them now (a full or failing disk): the messages stay queued, in order,
  and are tried again every `retry` seconds; nothing is lost and nothing is acknowledged;
- a message that can never be stored (its content: too large, not JSON): that message alone
  fails with `NotStored`, counted and logged; the others are stored;
- backpressure, not overflow: while more than `max_backlog` bytes or `max_waiting` messages
  wait, `congested` is true and the pollers skip their slots (counted per terminal) instead of
  polling — so what was polled is never given up to make room, and the queue stays bounded
  (by those limits plus the polls under way when it filled). Past `max_waiting` messages, the
  oldest message that holds no polled reading is given up (telemetry of a report, which its
  station sends again, then the oldest event or health report), counted by kind, logged, its
  future failed; polled telemetry waits;
- the disk is full (`OutboxFull`): telemetry is given up at once (it never waits for room nor
  takes the outbox's reserve), everything else stored with the reserve.
Every reading given up — disk full, overflow, not storable, the writer stopped — is counted per
terminal with the span of its `observed_at` and handed to the outbox (`note_lost`), which keeps
the count and reports it upstream as a loss event (agent/losses.py). Readings of a report that
waits for its confirm are not counted: not confirmed, the station sends them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import structlog

from agent.logs import log_task_crash
from agent.losses import DISK_FULL, NOT_STORABLE, OVERFLOW, STOPPED, LossLedger
from agent.model import NotStored, Reading, format_timestamp
from agent.outbox import LOSS_SAVE_INTERVAL, AsyncOutbox, OutboxError, OutboxFull, Priority
from agent.signing import EncodedJSON
from agent.telemetry import ENCODERS, Meta, Piece

log = structlog.get_logger(__name__)

LOG_INTERVAL = 60.0  # a persisting failure is logged at most this often


class _Join:
    """Completes `future` once all of `remaining` messages are stored; fails as one fails."""

    def __init__(self, future: asyncio.Future[None], remaining: int) -> None:
        self.future = future
        self.remaining = remaining

    def stored(self) -> None:
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(None)

    def failed(self, exc: NotStored) -> None:
        if not self.future.done():
            self.future.set_exception(exc)
            self.future.exception()  # retrieved: fire-and-forget callers must not log it


@dataclass(eq=False)
class _Waiting:
    kind: str
    body: Any
    priority: Priority
    future: asyncio.Future[int]
    # Settled with this message, in the same step (no extra turn of the loop per waiter).
    joins: list[_Join] = field(default_factory=list)
    # Telemetry: its readings (encoded pieces) counted as lost if it is given up.
    readings: list[Piece] = field(default_factory=list)

    def settle(self, seq: int) -> None:
        _settle(self.future, seq)
        for join in self.joins:
            join.stored()

    def fail(self, exc: NotStored) -> None:
        _fail(self.future, exc)
        for join in self.joins:
            join.failed(exc)


@dataclass
class WriterStats:
    """What the writer has done; `lost` counts messages given up, by kind."""

    stored: int = 0
    failures: int = 0  # batches the outbox could not take (tried again)
    lost: dict[str, int] = field(default_factory=dict)
    lost_readings: int = 0  # readings given up (per terminal: the outbox's loss record)

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())


class OutboxWriter:
    """Queues messages for the outbox and stores them in group commits; an async context."""

    def __init__(
        self,
        outbox: AsyncOutbox,
        *,
        batch: int = 500,
        linger: float = 0.2,
        retry: float = 5.0,
        max_waiting: int = 10_000,
        max_backlog: int = 32 * 1024 * 1024,
        max_batch: int = 512,
        gather_window: float = 0.005,
        stop_timeout: float = 3.0,
        schema: int = 2,
    ) -> None:
        self.outbox = outbox
        # How readings become telemetry bodies (agent/telemetry.py); `set_meta` gives the
        # point list schema 2 refers to (until then every reading is carried whole).
        self.encoder = ENCODERS[schema](None)
        self.batch = batch
        self.linger = linger
        self.retry = retry
        self.max_waiting = max_waiting
        self.max_backlog = max_backlog
        self._backlog = 0  # bytes of the queued messages' bodies (telemetry: all but a few)
        self.max_batch = max_batch
        self.gather_window = gather_window
        self.stop_timeout = stop_timeout
        self._closed = False
        self.stats = WriterStats()
        self._queue: list[_Waiting] = []
        self._in_flight = 0  # the head of the queue being stored now
        # Gathered readings, encoded once per poll or report: (the piece, whether its readings
        # count as lost if given up — not a report's, which is sent again).
        self._gathered: list[tuple[Piece, bool]] = []
        self._gathered_count = 0
        self._timer: asyncio.TimerHandle | None = None
        # Completes when the gathered readings some caller needs durable now are committed.
        self._urgent: asyncio.Future[None] | None = None
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._task: asyncio.Task[None] | None = None
        self._logged_at: dict[str, float] = {}
        self._losses_saved_at = time.monotonic()
        self._meta_set = False

    @property
    def waiting(self) -> int:
        """Messages queued and not committed yet."""
        return len(self._queue)

    @property
    def backlog(self) -> int:
        """Bytes of the messages queued and not committed yet (their bodies)."""
        return self._backlog

    @property
    def congested(self) -> bool:
        """The outbox is behind: more than `max_backlog` bytes or `max_waiting` messages wait.
        Pollers then skip their slots (backpressure) rather than take readings to queue."""
        return self._backlog >= self.max_backlog or len(self._queue) >= self.max_waiting

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="outbox writer")
        self._task.add_done_callback(self._ended)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Store everything queued, for at most `stop_timeout` (a failing disk must not hold
        the stop), then stop. What is left then is counted, logged and its waiters failed."""
        assert self._task is not None
        try:
            self.cut()
            drained = asyncio.create_task(self._drained.wait())
            try:
                # Also done if the writer itself died (its crash was logged): never hang here.
                await asyncio.wait(
                    {drained, self._task},
                    timeout=self.stop_timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                drained.cancel()
        finally:
            self._task.cancel()
            await asyncio.wait({self._task})
            self._give_up("stopped before these messages were stored; they are lost")

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The writer task ended: by our stop, or by a crash — then nothing can be stored any
        more, and waiters must hear it now rather than wait forever."""
        log_task_crash(task)
        if not task.cancelled():
            self._give_up("the outbox writer stopped; messages not stored")

    def _give_up(self, why: str) -> None:
        """Close: fail every waiter of what is not stored; later puts fail at once."""
        self._closed = True
        unstored = self._queue[self._in_flight :]  # a batch in flight may have been stored
        self._queue.clear()
        self._backlog = 0
        self._in_flight = 0
        if self._gathered:
            self._count_lost("telemetry")
            self._lose([piece for piece, counts in self._gathered if counts], STOPPED)
            self._gathered, self._gathered_count = [], 0
        exc = NotStored(why)
        for item in unstored:
            self._count_lost(item.kind)
            self._lose(item.readings, STOPPED)
            item.fail(exc)
        urgent, self._urgent = self._urgent, None
        if urgent is not None and not urgent.done():
            urgent.set_exception(exc)
            urgent.exception()
        if unstored:
            log.error(why, count=len(unstored), lost=dict(self.stats.lost))
        self._drained.set()

    # -- putting -----------------------------------------------------------------------------

    def put(self, kind: str, body: Any, priority: Priority) -> asyncio.Future[int]:
        """Queue one message; the future gives its seq once committed, or raises NotStored."""
        return self._put(_Waiting(kind, body, priority, _new_future()))

    def _put(self, item: _Waiting) -> asyncio.Future[int]:
        if self._closed:  # stopped (or crashed): counted, logged once a minute, refused
            self._count_lost(item.kind)
            self._lose(item.readings, STOPPED)
            if self._may_log("closed"):
                log.error("the outbox writer is stopped: message not stored", kind=item.kind)
            item.fail(NotStored(f"{item.kind}: the outbox writer is stopped"))
            return item.future
        self._make_room()
        self._queue.append(item)
        self._backlog += _size(item.body)
        self._ready.set()
        self._drained.clear()
        return item.future

    def set_meta(self, meta: Meta) -> asyncio.Future[int] | None:
        """Describe the terminals' points from now on (at start, and on reload when they
        change): what was gathered is cut first, with the meta it was encoded against; the meta
        message is queued (retained upstream; health priority, so it is stored and sent before
        the telemetry that refers to it, and never evicted). None: the same meta as now."""
        if self._meta_set and meta.id == self.encoder.meta.id:
            return None
        self.cut()
        self.encoder.meta = meta
        self._meta_set = True
        return self.put("meta", meta.body, Priority.HEALTH)

    def submit(self, readings: Sequence[Reading]) -> None:
        """Polled readings: gathered into telemetry messages (a `ReadingSink`)."""
        if not readings:
            return
        with contextlib.suppress(NotStored):  # counted and logged; the poller goes on
            self._gather(readings)
        if self._gathered_count >= self.batch:
            self.cut()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.linger, self.cut)

    def commit_readings(self, readings: Sequence[Reading]) -> asyncio.Future[None]:
        """Readings that must be durable as soon as possible (a report to confirm): gathered
        with the others and cut at the writer's next turn; completes once they are committed."""
        if not readings:
            return _done()
        try:
            self._gather(readings, counts=False)
        except NotStored as exc:
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed
        if self._urgent is None:
            self._urgent = asyncio.get_running_loop().create_future()
            self._ready.set()
            self._drained.clear()
        return self._urgent

    def cut(self) -> asyncio.Future[None]:
        """Store the gathered readings now; the future completes when all are committed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        bodies = self._telemetry_bodies()
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        joins = [_Join(committed, len(bodies))]
        urgent, self._urgent = self._urgent, None
        if urgent is not None:
            joins.append(_Join(urgent, len(bodies)))
        for body, pieces in bodies:
            self._put(_Waiting("telemetry", body, Priority.TELEMETRY, _new_future(), joins, pieces))
        if not bodies:
            for join in joins:
                join.future.set_result(None)
        return committed

    def _gather(self, readings: Sequence[Reading], counts: bool = True) -> None:
        """Encode readings once, on their way in (not in the writer's turn, which the reports
        waiting for their confirm are waiting for), in pieces of at most `batch` readings (a
        poll each, in schema 2). `counts`: counted as lost if given up (a report's are not:
        it is sent again)."""
        if self._closed:
            self._count_lost("telemetry")
            if counts:
                self._lose_readings(readings, STOPPED)
            if self._may_log("closed"):
                log.error("the outbox writer is stopped: readings not stored", count=len(readings))
            raise NotStored("telemetry: the outbox writer is stopped")
        encoder = self.encoder
        refused: NotStored | None = None
        for group in encoder.groups(readings, self.batch):
            try:
                piece = encoder.encode(group)
            except (ValueError, TypeError) as exc:  # NaN, say: not JSON, so not sent
                self._count_lost("telemetry")
                self._lose_readings(group, NOT_STORABLE)
                log.error(
                    "readings cannot be stored and are dropped", count=len(group), error=str(exc)
                )
                refused = NotStored(f"telemetry: {exc}")
                continue  # the other polls of the batch are stored
            self._gathered.append((piece, counts))
            self._gathered_count += piece.count
        if refused is not None:
            raise refused

    def _telemetry_bodies(self) -> list[tuple[EncodedJSON, list[Piece]]]:
        """The gathered readings as telemetry bodies of at most `batch` readings each, each
        with the pieces of it that count as lost if it is given up."""
        bodies: list[tuple[EncodedJSON, list[Piece]]] = []
        items: list[Piece] = []
        counted: list[Piece] = []
        count = 0
        body = self.encoder.body
        for piece, counts in self._gathered:
            if items and count + piece.count > self.batch:
                bodies.append((body(items), counted))
                items, counted, count = [], [], 0
            items.append(piece)
            if counts:
                counted.append(piece)
            count += piece.count
        if items:
            bodies.append((body(items), counted))
        self._gathered, self._gathered_count = [], 0
        return bodies

    def _make_room(self) -> None:
        """Past `max_waiting` messages, give up the oldest that holds no polled reading.

        Never the batch being written, never polled telemetry (the pollers are held back
        instead: `congested`); telemetry without polled readings first (a report's, sent
        again by its station), else the oldest other message. With only polled telemetry
        queued, the queue grows by the polls under way when it filled, then stops."""
        if len(self._queue) < self.max_waiting:
            return
        queue, first = self._queue, self._in_flight
        victim = next(
            (
                i
                for i in range(first, len(queue))
                if queue[i].priority is Priority.TELEMETRY and not queue[i].readings
            ),
            None,
        )
        if victim is None:
            victim = next(
                (
                    i
                    for i in range(first, len(queue))
                    if queue[i].priority is not Priority.TELEMETRY
                ),
                None,
            )
        if victim is None:
            return  # only polled telemetry, or what is being written: it waits its turn
        item = self._queue.pop(victim)
        self._backlog -= _size(item.body)
        self._count_lost(item.kind)
        self._lose(item.readings, OVERFLOW)
        item.fail(NotStored(f"{item.kind}: given up, more than {self.max_waiting} wait"))
        if self._may_log("overflow"):
            log.error(
                "outbox is not keeping up: oldest messages given up",
                waiting=len(self._queue),
                lost=dict(self.stats.lost),
            )

    def _count_lost(self, kind: str) -> None:
        self.stats.lost[kind] = self.stats.lost.get(kind, 0) + 1

    def _lose(self, pieces: Sequence[Piece], reason: str) -> None:
        """Readings (encoded pieces) given up: counted per terminal, handed to the outbox."""
        if not pieces:
            return
        ledger = LossLedger()
        self.stats.lost_readings += sum(piece.lose(ledger, reason) for piece in pieces)
        self.outbox.note_lost(ledger)

    def _lose_readings(self, readings: Sequence[Reading], reason: str) -> None:
        ledger = LossLedger()
        for r in readings:
            ledger.add(r.terminal, format_timestamp(r.observed_at), reason)
        self.stats.lost_readings += len(readings)
        self.outbox.note_lost(ledger)

    # -- storing -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            if self._urgent is not None:
                if self.gather_window and not self._queue:
                    # Let the reports arriving now join this turn: one transaction for many.
                    await asyncio.sleep(self.gather_window)
                self.cut()  # what reports gathered since the last turn: one message
            if not self._queue:
                self._ready.clear()
                self._drained.set()
                continue
            batch = self._queue[: self.max_batch]
            self._in_flight = len(batch)
            try:
                stored = await self._store(batch)
            finally:
                self._in_flight = 0
            if stored:
                del self._queue[:stored]
            # Counted again after each turn (a turn may also reorder what is left).
            self._backlog = sum(_size(w.body) for w in self._queue)
            if not stored and self._queue:
                await asyncio.sleep(self.retry)

    async def _store(self, batch: list[_Waiting]) -> int:
        """Store the head of the queue; returns how many left it (stored or failed for good)."""
        try:
            seqs = await self.outbox.put_batch([(w.kind, w.body, w.priority) for w in batch])
        except (ValueError, TypeError) as exc:
            if len(batch) == 1:
                self._refuse(batch[0], exc)
                return 1
            return await self._store_singly(batch)
        except OutboxFull:
            return await self._store_without_telemetry(batch)
        except (OutboxError, OSError, sqlite3.Error) as exc:
            self._failed(exc, len(batch))
            return 0
        for item, seq in zip(batch, seqs, strict=True):
            item.settle(seq)
        self.stats.stored += len(batch)
        return len(batch)

    async def _store_without_telemetry(self, batch: list[_Waiting]) -> int:
        """The disk is full: the batch's telemetry is given up (counted per terminal), the
        rest stored with the outbox's reserve — or kept and tried again."""
        telemetry = [w for w in batch if w.priority is Priority.TELEMETRY]
        others = [w for w in batch if w.priority is not Priority.TELEMETRY]
        exc = NotStored("telemetry: the disk is full")
        lost = 0
        for item in telemetry:
            self._count_lost(item.kind)
            before = self.stats.lost_readings
            self._lose(item.readings, DISK_FULL)
            lost += self.stats.lost_readings - before
            item.fail(exc)
        if self._may_log("disk full"):
            log.error(
                "disk full: readings not stored, counted as lost per terminal",
                readings=lost,
                lost_total=self.stats.lost_readings,
            )
        await self._save_losses()
        if not others:
            return len(batch)
        try:
            seqs = await self.outbox.put_batch([(w.kind, w.body, w.priority) for w in others])
        except (ValueError, TypeError, OutboxError, OSError, sqlite3.Error) as error:
            # Keep the others at the head of the queue, in order; the telemetry is gone.
            self._queue[: len(batch)] = others
            self._in_flight = len(others)
            if isinstance(error, ValueError | TypeError):
                return await self._store_singly(others)
            self._failed(error, len(others))
            return 0
        for item, seq in zip(others, seqs, strict=True):
            item.settle(seq)
        self.stats.stored += len(others)
        return len(batch)

    async def _save_losses(self) -> None:
        """Save the loss count now and then while only losses happen (a restart keeps it)."""
        now = time.monotonic()
        if now - self._losses_saved_at < LOSS_SAVE_INTERVAL:
            return
        self._losses_saved_at = now
        try:
            await self.outbox.save_losses()
        except (OutboxError, OSError, sqlite3.Error) as exc:
            if self._may_log("save losses"):
                log.error("cannot save the count of lost readings now", error=str(exc))

    async def _store_singly(self, batch: list[_Waiting]) -> int:
        """One message of the batch cannot be stored: find it, store the others."""
        done = 0
        for item in batch:
            try:
                [seq] = await self.outbox.put_batch([(item.kind, item.body, item.priority)])
            except (ValueError, TypeError) as exc:
                self._refuse(item, exc)
            except (OutboxError, OSError, sqlite3.Error) as exc:
                self._failed(exc, len(batch) - done)
                return done
            else:
                item.settle(seq)
                self.stats.stored += 1
            done += 1
        return done

    def _refuse(self, item: _Waiting, exc: ValueError | TypeError) -> None:
        self._count_lost(item.kind)
        self._lose(item.readings, NOT_STORABLE)
        log.error("a message cannot be stored and is dropped", kind=item.kind, error=str(exc))
        item.fail(NotStored(f"{item.kind}: {exc}"))

    def _failed(self, exc: BaseException, count: int) -> None:
        self.stats.failures += 1
        if self._may_log("failed"):
            log.error(
                "outbox cannot take messages now; keeping them and trying again",
                error=f"{type(exc).__name__}: {exc}",
                waiting=count,
                retry=self.retry,
            )

    def _may_log(self, what: str) -> bool:
        now = time.monotonic()
        if now - self._logged_at.get(what, -LOG_INTERVAL) < LOG_INTERVAL:
            return False
        self._logged_at[what] = now
        return True


def _size(body: Any) -> int:
    """A queued body's weight in bytes: encoded telemetry by its length; other kinds (small
    dicts, events and health) by a nominal size."""
    return len(body) if isinstance(body, str | bytes) else 1024


def _new_future() -> asyncio.Future[int]:
    return asyncio.get_running_loop().create_future()


def _settle(future: asyncio.Future[int], seq: int) -> None:
    if not future.done():  # its caller may have given up waiting; the message is stored anyway
        future.set_result(seq)


def _fail(future: asyncio.Future[int], exc: NotStored) -> None:
    if not future.done():
        future.set_exception(exc)
        future.exception()  # retrieved: fire-and-forget callers must not log it as unhandled


def _done() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def all_of(futures: Sequence[asyncio.Future[Any]]) -> asyncio.Future[None]:
    """A future that completes when every one of `futures` has, failing as the first fails."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    if not futures:
        done.set_result(None)
        return done
    join = _Join(done, len(futures))

    def one_done(future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            join.failed(NotStored("cancelled"))
        elif isinstance(error := future.exception(), NotStored):
            join.failed(error)
        elif error is not None:
            join.failed(NotStored(str(error)))
        else:
            join.stored()

    for future in futures:
        future.add_done_callback(one_done)
    return done
