"""Polled Modbus terminals: one fixed-rate schedule per terminal, readings into the sink.

A poller reads every point of its terminal through a `Link` (its own TCP connection or its
turn on a shared serial bus) with retries, and hands the readings to the sink. Its schedule is
`agent.protocols.schedule.FixedRateSchedule` (no drift; overruns skipped and counted; lateness
measured; a terminal that stops answering retried at exponentially wider intervals up to
`backoff_max`), and every attempt gives readings of quality `bad` with the reason. Pollers share nothing, so a dead or slow
terminal never delays another. While `held()` says the outbox is behind (backpressure), a slot
is skipped rather than polled — counted in `missed_slots` and `held_slots` — so that nothing
polled has to be given up and memory stays bounded.

`run()` is the loop of an asyncio task; the TCP engine (tcp_engine.py) runs the same slots on
its own thread through `schedule()`, `slot_begins()`, `poll_once()` and `slot_ends()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import structlog

from agent.model import PollReadings, Quality, Reading, ReadingSink, TerminalStats, Value
from agent.protocols.modbus.config import ModbusTerminal
from agent.protocols.modbus.links import Link, ModbusFailure
from agent.protocols.modbus.planner import (
    Read,
    bad_readings,
    decode_read,
    plain_readings,
    plain_values,
    plan_reads,
)
from agent.protocols.schedule import FixedRateSchedule

log = structlog.get_logger(__name__)

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
        held: Callable[[], bool] = lambda: False,
    ) -> None:
        self.terminal = terminal
        self.link = link
        self.sink = sink
        self.held = held
        self.stats = TerminalStats()
        self._wall_clock = wall_clock
        self._clock = clock
        self._reads: list[Read] = plan_reads(terminal.points, terminal.max_gap)
        self._layout_of: list[Read] | None = None
        self._layout_cache: tuple[tuple[str, str, str], ...] | None = None
        self._log = log.bind(terminal=terminal.name)

    @property
    def reads(self) -> list[Read]:
        """The requests one poll makes (after any split of refused coalesced reads)."""
        return list(self._reads)

    def _layout(self) -> tuple[tuple[str, str, str], ...] | None:
        """(point, unit, source) of every value of a poll whose reads are all plain (the
        `PollReadings` layout: one tuple for as long as the reads stay the same)."""
        if self._layout_of is not self._reads:
            self._layout_of = self._reads
            plains = [r.plain for r in self._reads]
            self._layout_cache = (
                tuple((name, unit, source) for p in plains if p for _, name, unit, source in p)
                if all(p is not None for p in plains)
                else None
            )
        return self._layout_cache

    async def poll_once(self) -> PollReadings:
        """Read every point once; never raises for what the terminal does."""
        name = self.terminal.name
        observed_at = self._wall_clock()
        layout = self._layout()
        # While every read so far was plain and good: their values, in the layout's order
        # (readings are made only if the poll turns out otherwise).
        values: list[Value] | None = [] if layout is not None else None
        readings: list[Reading] = []

        def one_by_one() -> None:
            nonlocal values
            if values is not None and layout is not None:  # the readings of the values so far
                readings.extend(
                    PollReadings.plain(name, observed_at, layout[: len(values)], values)
                )
            values = None

        reads = list(self._reads)
        while reads:
            read = reads.pop(0)
            try:
                answer = await self._read_with_retries(read)
            except ModbusFailure as failure:
                one_by_one()
                if failure.exception_code == 2 and len(read.points) > 1:
                    # The device refuses a read that spans unmapped registers: read these points
                    # one by one from now on.
                    self._log.info("coalesced read refused, reading points singly", read=read)
                    parts = read.split()
                    if read in self._reads:  # a concurrent poll (`edge-agent poll`) may have
                        index = self._reads.index(read)  # split it already
                        self._reads[index : index + 1] = parts
                        self._layout_of = None  # worked out again for the new reads
                    reads[0:0] = parts
                    continue
                readings.extend(bad_readings(name, read.points, observed_at, failure.reason))
                if failure.kind in ("connect", "timeout"):
                    # The terminal is unreachable: the other reads would only wait out their timeouts.
                    rest = [p for r in reads for p in r.points]
                    readings.extend(bad_readings(name, rest, observed_at, failure.reason))
                    break
                continue
            if read.plain is not None and len(answer) >= read.count:
                decoded = plain_values(read, answer)
                if values is not None:
                    values.extend(decoded)
                else:
                    readings.extend(plain_readings(name, read.plain, decoded, observed_at))
                continue
            one_by_one()
            readings.extend(decode_read(name, read, answer, observed_at))
        if values is not None and layout is not None:
            return PollReadings.plain(name, observed_at, layout, values)
        return PollReadings(readings)

    async def _read_with_retries(self, read: Read) -> Sequence[int] | Sequence[bool]:
        return await read_with_retries(self.link, self.terminal, read)

    async def run(self) -> None:
        """The fixed-rate loop; returns only by cancellation."""
        schedule = self.schedule()
        while True:
            lateness = await schedule.wait()
            if not self.slot_begins(schedule, lateness):
                continue
            started = self._clock()
            readings = await self.poll_once()
            self.slot_ends(schedule, readings, self._clock() - started)
            self.sink.submit(readings)

    def schedule(self) -> FixedRateSchedule:
        """This terminal's schedule, on the poller's clock."""
        t = self.terminal
        return FixedRateSchedule(t.period, t.name, t.backoff_max, self._clock)

    def slot_begins(self, schedule: FixedRateSchedule, lateness: float) -> bool:
        """A slot has come, `lateness` seconds after it was due: whether to poll in it. Counts
        the slots skipped before it (behind), and skips this one while `held()`."""
        s = self.stats
        late = schedule.take_skipped()  # slots that could not start in time: behind
        s.missed_slots += late
        s.behind_slots += late
        if self.held():  # the outbox is behind: skip this slot rather than poll
            s.held_slots += 1
            self.slot_skipped(schedule)
            return False
        s.lateness.append(lateness)
        s.late_starts += schedule.is_late(lateness)
        return True

    def slot_skipped(self, schedule: FixedRateSchedule) -> None:
        """The slot is skipped because the agent is behind (counted as such); the next one."""
        s = self.stats
        s.missed_slots += 1
        s.behind_slots += 1
        s.missed_slots += schedule.advance(s.consecutive_failures)

    def slot_ends(
        self, schedule: FixedRateSchedule, readings: PollReadings, seconds: float
    ) -> None:
        """The slot's poll took `seconds` and gave `readings`: recorded, and the schedule moved
        on (later while the terminal keeps failing). The caller hands the readings over."""
        self._record(readings, seconds)
        self.stats.missed_slots += schedule.advance(self.stats.consecutive_failures)

    def _record(self, readings: PollReadings, seconds: float) -> None:
        s = self.stats
        s.polls += 1
        if readings.values is not None:  # every reading good: nothing to look through
            good, errors = True, []
        else:
            good = any(r.quality is Quality.GOOD for r in readings)
            errors = [r.error for r in readings if r.error]
        s.outcomes.append(good)
        if good:
            # Only a poll that got an answer is timed: a dead terminal's polls last its
            # timeout, which says nothing of how fast it answers (terminals.latency).
            s.record_latency(seconds)
            s.last_good_at = readings.observed_at
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


async def read_with_retries(
    link: Link, terminal: ModbusTerminal, read: Read
) -> Sequence[int] | Sequence[bool]:
    """One read with the terminal's unit, timeout and retries; ModbusFailure once they are
    spent (or at once, for a failure no retry mends)."""
    attempt = 0
    while True:
        try:
            return await link.read(
                terminal.unit, read.table, read.address, read.count, terminal.timeout
            )
        except ModbusFailure as failure:
            if not failure.retryable or attempt >= terminal.retries:
                raise
            attempt += 1
