"""Where readings go once taken: the sink interface and its implementations.

A sink's `submit` never blocks on the network or the disk's fsync and never raises for a
reading's content: the pollers call it from the event loop and must keep their schedule.
`OutboxSink` makes readings durable and signed in the outbox (the way upstream); the JSON-lines
file is an optional local copy, bounded by size, rotating to `<path>.1`.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

import structlog

from agent.model import Reading, format_timestamp
from agent.outbox import AsyncOutbox, OutboxCorruptError, OutboxError, Priority

log = structlog.get_logger(__name__)


class ReadingSink(Protocol):
    def submit(self, readings: Sequence[Reading]) -> None:
        """Take a batch of readings (one poll's worth); must not block on the network."""
        ...


class JsonlSink:
    """Appends one JSON object per reading to a file; rotates at `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._file: IO[str] | None = None
        self._size = 0
        self.written = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._size = self._file.tell()

    def submit(self, readings: Sequence[Reading]) -> None:
        if self._file is None:
            raise RuntimeError("JsonlSink.submit before open()")
        stamps: dict[datetime, str] = {}  # a poll's readings share one timestamp: format it once
        lines = []
        for r in readings:
            stamp = stamps.get(r.observed_at)
            if stamp is None:
                stamp = stamps[r.observed_at] = format_timestamp(r.observed_at)
            lines.append(json.dumps(r.to_dict(stamp), separators=(",", ":")))
        if not lines:
            return
        text = "\n".join(lines) + "\n"
        if self._size + len(text) > self.max_bytes and self._size > 0:
            self._rotate()
        self._file.write(text)
        self._file.flush()
        self._size += len(text)
        self.written += len(readings)

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self.path.replace(self.path.with_name(self.path.name + ".1"))
        self._file = self.path.open("a", encoding="utf-8")
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
    """Hands every batch to several sinks in turn."""

    def __init__(self, sinks: Sequence[ReadingSink]) -> None:
        self.sinks = list(sinks)

    def submit(self, readings: Sequence[Reading]) -> None:
        for sink in self.sinks:
            sink.submit(readings)


class OutboxSink:
    """Telemetry into the durable outbox: each poll's readings become signed telemetry messages.

    `submit` returns at once; the put runs as a task (the outbox joins concurrent puts into one
    transaction in a worker thread), so polling never waits on the disk. A batch is split into
    messages of at most `batch` readings. Puts waiting at once are bounded by `max_pending`;
    past that (a disk that has stalled) batches are refused, counted and logged, never queued
    without bound. `on_stored` is called after each durable put (it wakes the uplink).
    """

    def __init__(
        self,
        outbox: AsyncOutbox,
        batch: int = 200,
        on_stored: Callable[[], None] | None = None,
        max_pending: int = 10_000,
    ) -> None:
        self.outbox = outbox
        self.batch = batch
        self.on_stored = on_stored
        self.max_pending = max_pending
        self.stored = 0
        self.lost = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, readings: Sequence[Reading]) -> None:
        if not readings:
            return
        if len(self._tasks) >= self.max_pending:
            self.lost += len(readings)
            log.error("outbox is not keeping up; readings refused", count=len(readings))
            return
        stamps: dict[datetime, str] = {}
        records = []
        for r in readings:
            stamp = stamps.get(r.observed_at)
            if stamp is None:
                stamp = stamps[r.observed_at] = format_timestamp(r.observed_at)
            records.append(r.to_dict(stamp))
        items = [
            ("telemetry", {"readings": records[i : i + self.batch]}, Priority.TELEMETRY)
            for i in range(0, len(records), self.batch)
        ]
        task = asyncio.create_task(self._put(items, len(readings)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put(self, items: list[tuple[str, Any, Priority]], count: int) -> None:
        try:
            try:
                await self.outbox.put_many(items)
            except OutboxCorruptError:
                await asyncio.to_thread(self.outbox.outbox.recover)
                await self.outbox.put_many(items)
        except (OutboxError, OSError, sqlite3.Error, ValueError) as exc:
            self.lost += count
            log.error("readings not stored in the outbox", count=count, error=str(exc))
            return
        self.stored += count
        if self.on_stored is not None:
            self.on_stored()

    async def flush(self) -> None:
        """Wait until every submitted batch is stored (or has failed)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
