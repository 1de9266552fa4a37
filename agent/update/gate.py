"""The trial gate's judgement: what the running agent looks like now, and what is still missing.

A release on trial commits once it does its job at least as well as the one before it did
(docs/updates.md, "The installer", step 5). The baseline is taken of the old release before the
switch (`update-baseline` on the control socket, the same `Observation.baseline()` as here);
the new release compares itself with it: every check failing now was failing then, every
terminal that answered then answered since this start, and a publish was acknowledged since
this start if the uplink was connected then. Pure functions over a snapshot: no IO, and no
import of the rest of the agent (the daemon builds the `Observation`: `Daemon.observe`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Observation:
    """What the gate sees of the running agent at one moment."""

    started_at: datetime  # when this agent started (UTC)
    last_good: Mapping[str, datetime | None]  # per terminal: its last good poll or report
    answering: frozenset[str]  # terminals whose last poll or report succeeded
    uplink_connected: bool
    last_ack_at: datetime | None  # the broker's last acknowledgement of a publish (UTC)
    failing_checks: frozenset[str]
    checks_run: bool  # at least one round of checks has results

    def baseline(self) -> dict[str, Any]:
        """The shape `update-baseline` answers and the record keeps as `baseline`."""
        return {
            "terminals": sorted(self.answering),
            "uplink_connected": self.uplink_connected,
            "failing_checks": sorted(self.failing_checks),
        }


def missing(baseline: Mapping[str, Any] | None, now: Observation) -> list[str]:
    """What the gate still waits for, in words (empty: the gate is passed).

    An absent baseline (the old agent did not answer) asks only that checks ran and nothing
    fails that is not failing now: there is nothing to compare terminals or the uplink with.
    """
    base = baseline or {}
    wanting: list[str] = []
    if not now.checks_run:
        wanting.append("no round of checks yet")
    new_failures = sorted(now.failing_checks - set(base.get("failing_checks") or ()))
    if new_failures:
        wanting.append(f"checks failing that did not before: {', '.join(new_failures)}")
    silent = [
        name
        for name in sorted(base.get("terminals") or ())
        if (at := now.last_good.get(name)) is None or at < now.started_at
    ]
    if silent:
        wanting.append(f"terminals not polled successfully: {', '.join(silent)}")
    if base.get("uplink_connected") and (
        now.last_ack_at is None or now.last_ack_at < now.started_at
    ):
        wanting.append("no publish acknowledged by the broker")
    return wanting
