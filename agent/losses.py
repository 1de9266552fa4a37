"""Loss accounting: readings the agent took but could not store, counted per terminal.

A `LossLedger` holds, for each terminal, how many readings were given up and the span of their
`observed_at` (first and last), and how many were given up for each reason (``disk full``,
``writer overflow``, ``writer stopped``, ``not storable``). The outbox keeps the ledger of
losses not yet reported (persisted with its counters) and turns it into one loss event upstream
(`loss_event`) once it takes writes again. Pure values: no IO, no clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Reasons a reading is given up, as the loss event and `status` name them.
DISK_FULL = "disk full"
OVERFLOW = "writer overflow"
STOPPED = "writer stopped"
NOT_STORABLE = "not storable"


@dataclass(slots=True)
class TerminalLoss:
    """Readings of one terminal given up, and the span of their `observed_at` (RFC 3339)."""

    readings: int
    first: str
    last: str

    def to_dict(self) -> dict[str, Any]:
        return {"readings": self.readings, "from": self.first, "to": self.last}


@dataclass(slots=True)
class LossLedger:
    """Readings given up, per terminal and per reason. Merged, never subtracted."""

    terminals: dict[str, TerminalLoss] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.terminals)

    @property
    def readings(self) -> int:
        return sum(t.readings for t in self.terminals.values())

    def add(self, terminal: str, observed_at: str, reason: str, count: int = 1) -> None:
        """`count` readings of `terminal` observed at `observed_at` (timestamps of one form
        sort as text: RFC 3339 UTC to the millisecond, as `format_timestamp` writes them)."""
        loss = self.terminals.get(terminal)
        if loss is None:
            self.terminals[terminal] = TerminalLoss(count, observed_at, observed_at)
        else:
            loss.readings += count
            if observed_at < loss.first:
                loss.first = observed_at
            if observed_at > loss.last:
                loss.last = observed_at
        self.reasons[reason] = self.reasons.get(reason, 0) + count

    def add_records(self, records: Iterable[Mapping[str, Any]], reason: str) -> int:
        """Readings in their JSON shape (`Reading.to_dict`); how many were counted."""
        n = 0
        for record in records:
            self.add(str(record.get("terminal")), str(record.get("observed_at")), reason)
            n += 1
        return n

    def add_encoded(self, pieces: Iterable[str], reason: str) -> int:
        """Readings encoded as JSON array items (the writer's gathered pieces)."""
        n = 0
        for piece in pieces:
            n += self.add_records(json.loads(f"[{piece}]"), reason)
        return n

    def merge(self, other: LossLedger) -> None:
        for name, loss in other.terminals.items():
            mine = self.terminals.get(name)
            if mine is None:
                self.terminals[name] = TerminalLoss(loss.readings, loss.first, loss.last)
            else:
                mine.readings += loss.readings
                mine.first = min(mine.first, loss.first)
                mine.last = max(mine.last, loss.last)
        for reason, n in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n

    def copy(self) -> LossLedger:
        out = LossLedger()
        out.merge(self)
        return out

    def to_dict(self) -> dict[str, Any]:
        """`{"readings": N, "reasons": {...}, "terminals": {name: {readings, from, to}}}`."""
        return {
            "readings": self.readings,
            "reasons": dict(sorted(self.reasons.items())),
            "terminals": {name: t.to_dict() for name, t in sorted(self.terminals.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LossLedger:
        """The inverse of `to_dict` (ValueError/KeyError/TypeError for another shape)."""
        out = cls()
        for name, t in dict(data.get("terminals") or {}).items():
            out.terminals[str(name)] = TerminalLoss(
                int(t["readings"]), str(t["from"]), str(t["to"])
            )
        out.reasons = {str(k): int(v) for k, v in dict(data.get("reasons") or {}).items()}
        return out


def loss_event(ledger: LossLedger) -> dict[str, Any]:
    """The event reporting a ledger upstream (README: "Loss events")."""
    reasons = ledger.reasons
    main = max(sorted(reasons), key=lambda r: reasons[r]) if reasons else "unknown"
    return {"type": "loss", "reason": main, **ledger.to_dict()}
