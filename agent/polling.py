"""Polled terminals: one fixed-rate schedule per terminal, readings into the sink.

A poller reads every point of its terminal through a `Link` (its own TCP connection or its
turn on a shared serial bus) with retries, and hands the readings to the sink. Its schedule is
fixed-rate (slot n starts at t0 + n*period: no drift); a slot missed because a poll overran is
skipped and counted, and lateness (actual start - slot) is measured. A terminal that stops
answering is retried at exponentially wider intervals up to `backoff_max`, and every attempt
gives readings of quality `bad` with the reason. Pollers share nothing, so a dead or slow
terminal never delays another.
"""

from __future__ import annotations

import asyncio
import math
import time
import zlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import structlog

from agent.config import ModbusRtuTerminal, ModbusTcpTerminal
from agent.model import Quality, Reading, ReadingSink, TerminalStats
from agent.protocols.modbus import Link, ModbusFailure
from agent.protocols.modbus_plan import Read, bad_readings, decode_read, plan_reads

log = structlog.get_logger(__name__)

ModbusTerminal = ModbusTcpTerminal | ModbusRtuTerminal
WallClock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Poller:
    """Polls one Modbus terminal on its schedule until cancelled."""

    def __init__(
        self,
        terminal: ModbusTerminal,
        link: Link,
        sink: ReadingSink,
        wall_clock: WallClock = utc_now,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.terminal = terminal
        self.link = link
        self.sink = sink
        self.stats = TerminalStats()
        self._wall_clock = wall_clock
        self._clock = clock
        self._reads: list[Read] = plan_reads(terminal.points, terminal.max_gap)
        self._log = log.bind(terminal=terminal.name)

    @property
    def reads(self) -> list[Read]:
        """The requests one poll makes (after any split of refused coalesced reads)."""
        return list(self._reads)

    async def poll_once(self) -> list[Reading]:
        """Read every point once; never raises for what the terminal does."""
        observed_at = self._wall_clock()
        readings: list[Reading] = []
        reads = list(self._reads)
        while reads:
            read = reads.pop(0)
            try:
                values = await self._read_with_retries(read)
            except ModbusFailure as failure:
                if failure.exception_code == 2 and len(read.points) > 1:
                    # The device refuses a read that spans unmapped registers: read these points
                    # one by one from now on.
                    self._log.info("coalesced read refused, reading points singly", read=read)
                    parts = read.split()
                    index = self._reads.index(read)
                    self._reads[index : index + 1] = parts
                    reads[0:0] = parts
                    continue
                readings.extend(
                    bad_readings(self.terminal.name, read.points, observed_at, failure.reason)
                )
                if failure.kind in ("connect", "timeout"):
                    # The terminal is unreachable: the other reads would only wait out their timeouts.
                    rest = [p for r in reads for p in r.points]
                    readings.extend(
                        bad_readings(self.terminal.name, rest, observed_at, failure.reason)
                    )
                    break
                continue
            readings.extend(decode_read(self.terminal.name, read, values, observed_at))
        return readings

    async def _read_with_retries(self, read: Read) -> Sequence[int] | Sequence[bool]:
        t = self.terminal
        attempt = 0
        while True:
            try:
                return await self.link.read(t.unit, read.table, read.address, read.count, t.timeout)
            except ModbusFailure as failure:
                if not failure.retryable or attempt >= t.retries:
                    raise
                attempt += 1

    async def run(self) -> None:
        """The fixed-rate loop; returns only by cancellation."""
        period = self.terminal.period
        # Spread terminals over the period (stable per name) so they do not all fire at once.
        phase = (zlib.crc32(self.terminal.name.encode()) % 1000) / 1000 * period
        t0 = self._clock() + phase
        slot = 0
        while True:
            due = t0 + slot * period
            delay = due - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            started = self._clock()
            self.stats.lateness.append(max(0.0, started - due))
            readings = await self.poll_once()
            finished = self._clock()
            self._record(readings, finished - started)
            self.sink.submit(readings)
            slot = self._next_slot(slot, t0, period, finished)

    def _next_slot(self, slot: int, t0: float, period: float, now: float) -> int:
        # First slot that has not started yet; slots skipped by an overrun are counted.
        upcoming = max(slot + 1, math.floor((now - t0) / period) + 1)
        self.stats.missed_slots += upcoming - slot - 1
        failures = self.stats.consecutive_failures
        if failures:
            max_skip = max(1, int(self.terminal.backoff_max // period))
            wait_slots = min(2 ** (failures - 1), max_skip)
            upcoming = max(upcoming, slot + wait_slots)
        return upcoming

    def _record(self, readings: Sequence[Reading], seconds: float) -> None:
        s = self.stats
        s.polls += 1
        s.record_latency(seconds)
        good = any(r.quality is Quality.GOOD for r in readings)
        s.outcomes.append(good)
        errors = [r.error for r in readings if r.error]
        if good:
            s.last_good_at = readings[0].observed_at
            if s.consecutive_failures:
                self._log.info("terminal answering again", after_failures=s.consecutive_failures)
            s.consecutive_failures = 0
        else:
            s.failed_polls += 1
            s.consecutive_failures += 1
            if s.consecutive_failures == 1:
                self._log.warning("terminal not answering", reason=errors[0] if errors else None)
        if errors:
            if errors[0] != s.last_error and good:
                self._log.warning("points unreadable", reason=errors[0], count=len(errors))
            s.last_error = errors[0]
        elif good:
            s.last_error = None
