"""The process's descriptor limit: raised to what the system allows at start, and what is left.

The daemon calls `raise_descriptor_limit()` once, before any part opens a file or socket: the
soft RLIMIT_NOFILE goes up to the hard one (systemd's default soft limit is 1024; its unit sets
both). A part that holds many descriptors (a listener) asks `descriptor_budget(reserve)` how
many it may take, leaving `reserve` for everyone else. Linux only; no other state.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

# Descriptors kept for the rest of the agent whatever a listener takes: the outbox (database,
# WAL, shared memory), logs, the uplink, the control socket and metrics, serial ports, Modbus
# TCP links, config and update watches. At least this many, or an eighth of the limit.
RESERVE_MIN = 64
RESERVE_SHARE = 8


@dataclass(frozen=True, slots=True)
class DescriptorLimit:
    """The limit before and after the raise; `error` says why it could not be raised."""

    before: int
    soft: int
    hard: int
    error: str | None = None

    def to_log(self) -> dict[str, object]:
        fields: dict[str, object] = {"soft": self.soft, "hard": self.hard, "before": self.before}
        if self.error is not None:
            fields["error"] = self.error
        return fields


def _unlimited(value: int) -> bool:
    return value == resource.RLIM_INFINITY


def raise_descriptor_limit() -> DescriptorLimit:
    """Raise the soft descriptor limit to the hard one; never raises (a sandbox may forbid
    setrlimit: the limit stays as it is and `error` says so)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return DescriptorLimit(soft, soft, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        return DescriptorLimit(soft, soft, hard, f"{type(exc).__name__}: {exc}")
    return DescriptorLimit(soft, hard, hard)


def descriptor_budget(reserve: int | None = None, limit: int | None = None) -> int:
    """How many descriptors one part may hold: the soft limit (this process's, or `limit`)
    less a reserve for the rest (`reserve`, else the larger of RESERVE_MIN and an eighth of
    the limit); at least 1."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if limit is None else limit
    if _unlimited(soft):
        soft = 1 << 20
    if reserve is None:
        reserve = max(RESERVE_MIN, soft // RESERVE_SHARE)
    return max(1, soft - reserve)
