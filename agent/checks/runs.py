"""When the agent ran, as its history records it: its runs, each from a start to the last mark
of life the agent wrote, and the stretches between them when it did not run.

Pure arithmetic on POSIX times. Rules: a run lasts from its start to its last mark (the agent
marks itself alive each time it writes its history, and at stop), so the time after a stop or a
crash does not count as running; before the first recorded run nothing is known (a history an
older agent wrote, which kept no runs): that time counts as running.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Runs:
    """The runs that overlap a window, oldest first, and where the recorded runs begin."""

    spans: tuple[tuple[float, float], ...]  # (start, last mark)
    first: float | None  # the start of the first run the history holds (None: none)

    def off(self, since: float, until: float) -> list[tuple[float, float]]:
        """The stretches of [since, until) the agent did not run, oldest first."""
        if self.first is None or until <= since:
            return []
        out = []
        cursor = max(since, self.first)
        for start, end in self.spans:
            if cursor >= until or start >= until:
                break
            if start > cursor:
                out.append((cursor, start))
            cursor = max(cursor, end)
        if cursor < until:
            out.append((cursor, until))
        return out

    def running(self, since: float, until: float) -> float:
        """Seconds of [since, until) the agent ran."""
        if until <= since:
            return 0.0
        return until - since - sum(b - a for a, b in self.off(since, until))

    def end_of(self, at: float) -> float | None:
        """The last mark of the run `at` falls in (None: before the first recorded run)."""
        if self.first is None or at < self.first:
            return None
        ends = [end for start, end in self.spans if start <= at]
        return max(ends) if ends else at
