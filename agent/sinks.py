"""Where readings go once taken: the sink interface and its local implementations.

A sink's `submit` never blocks on the network and never raises for a reading's content: the
pollers call it from the event loop and must keep their schedule. The JSON-lines file is the
durable local copy until the outbox exists (and an optional copy after); it is bounded by size
and rotates to `<path>.1`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Protocol

from agent.model import Reading, format_timestamp


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
