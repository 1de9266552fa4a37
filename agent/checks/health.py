"""The health report: every current check result, summarised, with the agent's vital figures.

`build_health` is pure (results + snapshot -> dict); its shape is documented in HEALTH.md and
is a contract (schema 1). `HealthSchedule` decides when to publish it: every `health.interval`,
and at once when a check's status changed — changes closer together than `health.min_gap` are
published together.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.check_settings import HealthConfig
from agent.checks.framework import CheckResult, Status, sort_results, utc_now, worst
from agent.checks.view import AgentView
from agent.model import format_timestamp

SCHEMA = 1


def _stamp(posix: float | None) -> str | None:
    return format_timestamp(datetime.fromtimestamp(posix, UTC)) if posix is not None else None


def _stamp_dt(at: datetime | None) -> str | None:
    return format_timestamp(at) if at is not None else None


def summarise(results: Iterable[CheckResult]) -> dict[str, Any]:
    """Worst status and the count of each status (ids of failing and warning checks)."""
    results = list(results)
    counts = {s.value: 0 for s in (Status.OK, Status.WARN, Status.FAIL, Status.UNKNOWN)}
    for r in results:
        counts[r.status.value] += 1
    return {
        "status": worst(r.status for r in results).value,
        "counts": counts,
        "failing": sorted(r.id for r in results if r.status is Status.FAIL),
        "warning": sorted(r.id for r in results if r.status is Status.WARN),
    }


def build_health(
    results: Iterable[CheckResult], view: AgentView, now: datetime | None = None
) -> dict[str, Any]:
    """The health report published retained on `…/health` (HEALTH.md)."""
    now = now or utc_now()
    ordered = sort_results(results)
    restarts_24h = sum(1 for t in view.restarts if t > now - timedelta(days=1))
    agent = {
        "version": view.version,
        "python": platform.python_version(),
        "started_at": format_timestamp(view.started_at),
        "uptime": round(max(0.0, (now - view.started_at).total_seconds()), 1),
        "restarts_24h": restarts_24h,
        "config": str(view.config_path) if view.config_path else None,
        "log": (
            {
                "errors": view.logs.recent_errors,
                "warnings": view.logs.recent_warnings,
                "window": view.logs.window,
            }
            if view.logs
            else None
        ),
    }
    u = view.uplink
    uplink = (
        {
            "broker": u.broker,
            "connected": u.connected,
            "connected_since": _stamp(u.connected_since),
            "disconnected_since": _stamp(u.disconnected_since),
            "connects": u.connects,
            "published": u.published,
            "refused": u.refused,
            "last_ack_at": _stamp(u.last_ack_at),
            "last_error": u.last_error,
            # Acknowledgements (HEALTH.md): what waits for a PUBACK, since when, re-sends.
            "inflight": u.inflight,
            "unacked_since": _stamp(u.unacked_since),
            "resent": u.resent,
            "ack_timeouts": u.ack_timeouts,
            "acks_unsaved": u.acks_unsaved,
            "ack_error": u.ack_error,
        }
        if u is not None
        else None
    )
    by_terminal: dict[str, list[CheckResult]] = {}  # one pass: a site may have 1000 terminals
    for r in ordered:
        if r.family == "terminals":
            by_terminal.setdefault(r.id.rpartition(":")[2], []).append(r)
    terminals = []
    for name, t in sorted(view.terminals.items()):
        own = by_terminal.get(name, [])
        s = t.stats
        p95 = s.latency_p95()
        terminals.append(
            {
                "name": name,
                "address": t.address,
                "status": worst(r.status for r in own).value if own else Status.UNKNOWN.value,
                "interval": t.interval,
                "polls": s.polls,
                "failed_polls": s.failed_polls,
                "success_ratio": None if s.success_ratio is None else round(s.success_ratio, 4),
                "latency_p95": None if p95 is None else round(p95, 4),
                "last_good_at": _stamp_dt(s.last_good_at),
                "consecutive_failures": s.consecutive_failures,
                "missed_slots": s.missed_slots,
                "last_error": s.last_error,
            }
        )
    return {
        "schema": SCHEMA,
        "gateway": view.config.gateway.id,
        "generated_at": format_timestamp(now),
        "summary": summarise(ordered),
        "checks": [r.to_dict() for r in ordered],
        "agent": agent,
        "outbox": view.outbox.to_dict() if view.outbox is not None else None,
        "uplink": uplink,
        "terminals": terminals,
        "buses": {device: round(used, 4) for device, used in sorted(view.buses.items())},
        "update": dict(view.update) if view.update is not None else None,
    }


@dataclass
class HealthSchedule:
    """When to publish the health report. Times are monotonic seconds (`time.monotonic()`).

    Due when nothing was published yet, when `interval` has passed since the last one, or when a
    status changed (now or since the last publication) and `min_gap` has passed since it.
    Call `sent(now)` after publishing.
    """

    interval: float = 300.0
    min_gap: float = 5.0
    last_sent: float | None = None
    pending_change: bool = False

    @classmethod
    def from_config(cls, config: HealthConfig) -> HealthSchedule:
        return cls(config.interval, config.min_gap)

    def due(self, now: float, changed: bool = False) -> bool:
        if changed:
            self.pending_change = True
        if self.last_sent is None:
            return True
        since = now - self.last_sent
        if since >= self.interval:
            return True
        return self.pending_change and since >= self.min_gap

    def sent(self, now: float) -> None:
        self.last_sent = now
        self.pending_change = False

    def next_in(self, now: float) -> float:
        """Seconds until the report is due without a further change (0: due now)."""
        if self.last_sent is None:
            return 0.0
        wait = self.interval
        if self.pending_change:
            wait = self.min_gap
        return max(0.0, self.last_sent + wait - now)
