"""The shared vocabulary of the agent: plain, immutable values that every part may import.

Nothing here does IO or knows a protocol; protocols produce these, sinks and the uplink consume them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Value = float | int | bool | str | None


class Quality(enum.StrEnum):
    """How far a reading can be trusted (DESIGN.md, Reading)."""

    GOOD = "good"
    BAD = "bad"
    STALE = "stale"
    UNCERTAIN = "uncertain"


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one point of one terminal, as observed.

    `source` is the protocol's own identifier of the value (``holding:40`` for a Modbus
    register, the element identifier for SL651) so that any reading can be traced to the wire.
    `error` says why a reading is not good; it is None for good readings.
    """

    terminal: str
    point: str
    value: Value
    unit: str
    quality: Quality
    observed_at: datetime
    source: str
    error: str | None = None

    def to_dict(self, observed_at: str | None = None) -> dict[str, Any]:
        """The JSON shape of a reading (stable: documented in README.md).

        `observed_at` may pass the timestamp already formatted, for batches that share one.
        """
        return {
            "terminal": self.terminal,
            "point": self.point,
            "value": self.value,
            "unit": self.unit,
            "quality": self.quality.value,
            "observed_at": observed_at or format_timestamp(self.observed_at),
            "source": self.source,
            "error": self.error,
        }


def format_timestamp(at: datetime) -> str:
    """RFC 3339 UTC with milliseconds and a Z, the form every timestamp leaves the agent in."""
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
