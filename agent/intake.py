"""What drivers hand over: readings to the local parts at once and into the outbox.

The daemon builds one `SiteIntake` and gives it to every driver (it is the `Intake` of
agent/model.py). Polled readings (`submit`) go to the local sinks (data checks, history,
counters, the optional local copy) and are gathered into telemetry by the outbox writer. A
report (`commit`) goes the same way but is stored at once with its events, and `commit`
returns only once all of it is durable: what a driver awaits before it confirms the report.
`congested` passes on the writer's backpressure (pollers skip slots while it holds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from agent.model import Reading, ReadingSink
from agent.outbox import Priority
from agent.writer import OutboxWriter, all_of


class SiteIntake:
    """The local sinks and the outbox writer, behind the drivers' one interface."""

    def __init__(self, local: ReadingSink, writer: OutboxWriter) -> None:
        self.local = local
        self.writer = writer

    def submit(self, readings: Sequence[Reading]) -> None:
        self.local.submit(readings)
        self.writer.submit(readings)

    def congested(self) -> bool:
        """The outbox writer is behind: pollers skip their slots until it catches up."""
        return self.writer.congested

    def commit(
        self, readings: Sequence[Reading], events: Sequence[dict[str, Any]]
    ) -> asyncio.Future[None]:
        """Store these readings and events at the writer's next turn; the future completes once
        all are durable (or fails with NotStored)."""
        pending: list[asyncio.Future[Any]] = []
        if readings:
            self.local.submit(readings)
            pending.append(self.writer.commit_readings(readings))
        pending.extend(self.writer.put("event", e, Priority.EVENT) for e in events)
        # The usual report has no event: its readings' future is the answer (one step less).
        return pending[0] if len(pending) == 1 else all_of(pending)
