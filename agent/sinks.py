"""Where readings go once taken: the sink interface and its implementations.

A sink's `submit` never blocks on the network or the disk's fsync and never raises for a
reading's content: the pollers call it from the event loop and must keep their schedule.
`OutboxSink` makes readings durable and signed in the outbox (the way upstream); the JSON-lines
file is an optional local copy, bounded by size, rotating to `<path>.1`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import structlog

from agent.model import Reading, ReadingSink, format_timestamp
from agent.outbox import AsyncOutbox, OutboxError, Priority
from agent.storage.atomic import open_private_append

log = structlog.get_logger(__name__)
_encode = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per reading
SINK_LOG_INTERVAL = 60.0


def records(readings: Sequence[Reading]) -> list[dict[str, Any]]:
    """The JSON shape of each reading; a poll's readings share one timestamp, formatted once."""
    stamps: dict[datetime, str] = {}
    out = []
    for r in readings:
        stamp = stamps.get(r.observed_at)
        if stamp is None:
            stamp = stamps[r.observed_at] = format_timestamp(r.observed_at)
        out.append(r.to_dict(stamp))
    return out


class JsonlSink:
    """Appends one JSON object per reading to a file; rotates at `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._file: IO[str] | None = None
        self._size = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open_private_append(self.path)
        self._size = self._file.tell()

    def submit(self, readings: Sequence[Reading]) -> None:
        if self._file is None:
            raise RuntimeError("JsonlSink.submit before open()")
        lines = [_encode(record) for record in records(readings)]
        if not lines:
            return
        text = "\n".join(lines) + "\n"
        if self._size + len(text) > self.max_bytes and self._size > 0:
            self._rotate()
        self._file.write(text)
        self._file.flush()
        self._size += len(text)

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self.path.replace(self.path.with_name(self.path.name + ".1"))
        self._file = open_private_append(self.path)
        self._size = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class LatestValues:
    """Keeps the newest reading of every point: what the demo and `status` show."""

    def __init__(self) -> None:
        self.latest: dict[tuple[str, str], Reading] = {}
        self.count = 0

    def submit(self, readings: Sequence[Reading]) -> None:
        for r in readings:
            self.latest[(r.terminal, r.point)] = r
        self.count += len(readings)


class FanOut:
    """Hands every batch to several sinks in turn.

    The boundary where a sink's failure stops: a local copy on a full disk, say, must not take
    the pollers or the other sinks down with it. Each failing sink is logged once per minute.
    """

    def __init__(self, sinks: Sequence[ReadingSink]) -> None:
        self.sinks = list(sinks)
        self.failures = 0
        self._logged_at: dict[int, float] = {}

    def submit(self, readings: Sequence[Reading]) -> None:
        for sink in self.sinks:
            try:
                sink.submit(readings)
            except Exception as exc:  # noqa: BLE001 -- any sink, any failure: see the docstring
                self.failures += 1
                now = time.monotonic()
                if now - self._logged_at.get(id(sink), -SINK_LOG_INTERVAL) >= SINK_LOG_INTERVAL:
                    self._logged_at[id(sink)] = now
                    log.error(
                        "a reading sink failed",
                        sink=type(sink).__name__,
                        error=f"{type(exc).__name__}: {exc}",
                        failures=self.failures,
                    )


class OutboxSink:
    """Telemetry into the durable outbox as signed messages of up to `batch` readings.

    `submit` returns at once. Readings of several polls are gathered into one message — sent
    when `batch` readings are waiting or `linger` seconds after the first of them — because a
    message costs a signature, a row and a trip to the writer thread whatever its size. So a
    reading is durable at most `linger` after it was taken (documented; `flush()` on stop
    stores the rest). Puts waiting at once are bounded by `max_pending`; past that (a disk that
    has stalled) readings are refused, counted and logged, never queued without bound.
    """

    def __init__(
        self,
        outbox: AsyncOutbox,
        batch: int = 200,
        linger: float = 0.2,
        max_pending: int = 1000,
    ) -> None:
        self.outbox = outbox
        self.batch = batch
        self.linger = linger
        self.max_pending = max_pending
        self.lost = 0
        self._records: list[dict[str, Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, readings: Sequence[Reading]) -> None:
        if not readings:
            return
        self._records.extend(records(readings))
        if len(self._records) >= self.batch:
            self._send()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.linger, self._send)

    def _send(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        records, self._records = self._records, []
        if not records:
            return
        if len(self._tasks) >= self.max_pending:
            self.lost += len(records)
            log.error("outbox is not keeping up; readings refused", count=len(records))
            return
        items = [
            ("telemetry", {"readings": records[i : i + self.batch]}, Priority.TELEMETRY)
            for i in range(0, len(records), self.batch)
        ]
        task = asyncio.create_task(self._put(items, len(records)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put(self, items: list[tuple[str, Any, Priority]], count: int) -> None:
        try:
            await self.outbox.put_many(items)
        except (OutboxError, OSError, sqlite3.Error, ValueError) as exc:
            self.lost += count
            log.error("readings not stored in the outbox", count=count, error=str(exc))
            return

    async def flush(self) -> None:
        """Store what is gathered now and wait until every put is done (or has failed)."""
        self._send()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class EventQueue:
    """Alarm and station events into the outbox at EVENT priority, never dropped on a failure.

    `submit` returns at once; a writer task stores what waits. A put that fails (a full or
    failing disk) keeps the events and tries again after `retry` seconds; at most `max_kept`
    events wait in memory (the oldest go first beyond that, counted and logged).
    """

    def __init__(self, outbox: AsyncOutbox, retry: float = 5.0, max_kept: int = 10_000) -> None:
        self.outbox = outbox
        self.retry = retry
        self.max_kept = max_kept
        self.dropped = 0
        self._waiting: list[dict[str, Any]] = []
        self._writer: asyncio.Task[None] | None = None

    def submit(self, events: Sequence[dict[str, Any]]) -> None:
        if not events:
            return
        self._waiting.extend(events)
        overflow = len(self._waiting) - self.max_kept
        if overflow > 0:
            del self._waiting[:overflow]
            self.dropped += overflow
            log.error("events could not be stored and were dropped", count=overflow)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="event writer")

    async def _write(self) -> None:
        while self._waiting:
            batch = list(self._waiting)
            try:
                await self.outbox.put_many([("event", e, Priority.EVENT) for e in batch])
            except (OutboxError, OSError, sqlite3.Error, ValueError) as exc:
                log.error("events not stored yet; retrying", count=len(batch), error=str(exc))
                await asyncio.sleep(self.retry)
                continue
            del self._waiting[: len(batch)]

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def flush(self) -> None:
        """Give the writer its chance to store what waits (used on the way out)."""
        if self._writer is not None and not self._writer.done():
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
