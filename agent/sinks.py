"""Where readings go once taken: the sink interface and its implementations.

A sink's `submit` never blocks on the network or the disk's fsync and never raises for a
reading's content: the pollers call it from the event loop and must keep their schedule.
The way upstream is the outbox writer (agent/writer.py); the sinks here are the local parts:
`FanOut` hands readings to several of them, the JSON-lines file is an optional local copy,
bounded by size, rotating to `<path>.1`, and `LatestValues` keeps the newest of each point.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import structlog

from agent.model import Reading, ReadingSink, format_timestamp
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

    def __enter__(self) -> JsonlSink:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
