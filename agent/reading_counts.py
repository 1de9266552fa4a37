"""Readings counted by terminal and quality: the one metric kept on the hot path (a sink).

Apart from agent/metrics.py so that the daemon counts without importing prometheus_client,
which it loads only when `metrics.listen` is set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from agent.model import Quality, Reading


class ReadingCounter:
    """A sink that counts readings by terminal and quality."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def submit(self, readings: Sequence[Reading]) -> None:
        if not readings:
            return
        terminal, n = readings[0].terminal, len(readings)
        if [r.terminal for r in readings].count(terminal) == n and [
            r.quality for r in readings
        ].count(Quality.GOOD) == n:
            self.counts[(terminal, Quality.GOOD.value)] += n  # a good poll: one step, not n
        else:
            self.counts.update([(r.terminal, r.quality.value) for r in readings])
