"""The fixed-rate schedule any polled protocol reuses: no drift, overruns counted, backoff.

Slot n is due at t0 + n*period. t0 is the moment the schedule starts plus a stable phase per
terminal (a hash of its name mapped onto the period), so that the terminals of a site — and
their first connections — are spread over the first period instead of all starting at once.
A slot missed because the previous poll overran is skipped and counted; so is a slot that
cannot start within `max_late` of its due time (the agent fell behind: after a stall of the
event loop every late terminal waits for its own next slot, so they stay spread over the
period rather than all firing together, and the work shed lets the agent catch up). A slot
that starts, but later than `late_start` (a quarter of the period), is polled and said to be
late (`is_late`): the agent's event loop is that far behind, so it is the agent's doing, and
the poll's timing says as much about the agent as about the terminal. While a
terminal keeps failing, its polls are spaced 2^(n-1) slots apart, at most `backoff_max`
seconds. Pure timing: the caller polls, this only says when.
"""

from __future__ import annotations

import asyncio
import math
import time
import zlib
from collections.abc import Callable

MAX_LATE = 0.5  # a slot not started within this share of the period is skipped
LATE_START = 0.25  # a slot started later than this share of the period was started late


def phase_of(key: str, period: float) -> float:
    """The stable offset (0 <= phase < period) of the terminal named `key` within its period."""
    return (zlib.crc32(key.encode()) % 1000) / 1000 * period


class FixedRateSchedule:
    """When to poll one terminal; `wait()` for the next slot, `advance()` after each poll."""

    def __init__(
        self,
        period: float,
        key: str,
        backoff_max: float,
        clock: Callable[[], float] = time.monotonic,
        max_late: float | None = None,
    ) -> None:
        self.period = period
        self.backoff_max = backoff_max
        self.phase = phase_of(key, period)
        # A poll that starts a little late is still a good sample; a later one is shed.
        self.max_late = MAX_LATE * period if max_late is None else max_late
        self.late_start = min(LATE_START * period, self.max_late)
        self._clock = clock
        self._t0: float | None = None
        self._slot = 0
        self._skipped = 0  # slots skipped in wait() (started too late), not taken yet

    @property
    def due(self) -> float:
        """When the current slot is due (clock time); the schedule starts at the first call."""
        if self._t0 is None:
            self._t0 = self._clock() + self.phase
        return self._t0 + self._slot * self.period

    async def wait(self) -> float:
        """Sleep until the current slot is due; returns how late it starts (seconds, >= 0).

        A slot that could not start within `max_late` is skipped (see `take_skipped`) and the
        next one not due yet is waited for."""
        while True:
            delay = self.due - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            late = self.start()
            if late is not None:
                return late

    def start(self) -> float | None:
        """The current slot, due by now, starts: how late (seconds, >= 0); or None when it is
        too late, and the slots up to the next one not due yet are skipped (`take_skipped`).
        What `wait()` does once the slot is due, for a caller with a timer of its own."""
        due = self.due
        now = self._clock()
        late = max(0.0, now - due)
        if late <= self.max_late:
            return late
        assert self._t0 is not None
        upcoming = math.floor((now - self._t0) / self.period) + 1
        self._skipped += upcoming - self._slot
        self._slot = upcoming
        return None

    def is_late(self, lateness: float) -> bool:
        """Whether a slot that started `lateness` seconds after its due time started late."""
        return lateness > self.late_start

    def take_skipped(self) -> int:
        """Slots `wait()` skipped since the last call (they started too late)."""
        skipped, self._skipped = self._skipped, 0
        return skipped

    def advance(self, consecutive_failures: int = 0) -> int:
        """Move to the first slot not started yet (later while failing); returns slots missed."""
        assert self._t0 is not None, "advance() before the first wait()"
        slot, now = self._slot, self._clock()
        upcoming = max(slot + 1, math.floor((now - self._t0) / self.period) + 1)
        missed = upcoming - slot - 1
        if consecutive_failures:
            max_skip = max(1, int(self.backoff_max // self.period))
            wait_slots = min(2 ** (consecutive_failures - 1), max_skip)
            upcoming = max(upcoming, slot + wait_slots)
        self._slot = upcoming
        return missed
