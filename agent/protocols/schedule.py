"""The fixed-rate schedule any polled protocol reuses: no drift, overruns counted, backoff.

Slot n is due at t0 + n*period, t0 spread over the first period by a stable phase per terminal
so that terminals do not all fire at once. A slot missed because the previous poll overran is
skipped and counted; while a terminal keeps failing, its polls are spaced 2^(n-1) slots apart,
at most `backoff_max` seconds. Pure timing: the caller polls, this only says when.
"""

from __future__ import annotations

import asyncio
import math
import time
import zlib
from collections.abc import Callable


class FixedRateSchedule:
    """When to poll one terminal; `wait()` for the next slot, `advance()` after each poll."""

    def __init__(
        self,
        period: float,
        key: str,
        backoff_max: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.period = period
        self.backoff_max = backoff_max
        self.phase = (zlib.crc32(key.encode()) % 1000) / 1000 * period
        self._clock = clock
        self._t0: float | None = None
        self._slot = 0

    @property
    def due(self) -> float:
        """When the current slot is due (clock time); the schedule starts at the first call."""
        if self._t0 is None:
            self._t0 = self._clock() + self.phase
        return self._t0 + self._slot * self.period

    async def wait(self) -> float:
        """Sleep until the current slot is due; returns how late it starts (seconds, >= 0)."""
        due = self.due
        delay = due - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        return max(0.0, self._clock() - due)

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
