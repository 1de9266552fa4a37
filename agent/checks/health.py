"""The health report: every current check result, summarised, with the agent's vital figures.

`build_health` is pure (results + snapshot -> dict); its shape is documented in HEALTH.md and
is a contract (schema 1). It stays bounded at any number of terminals (one message of a few
tens of KiB, far under the outbox's message limit): the terminals are summed up by status, and
only the worst `max_terminals` of them are listed with their own checks; the lists of failing
and warning check ids hold at most `MAX_IDS` each; what is left out is counted. The full list
is `edge-agent status --json` (and the diagnosis `status` action). `HealthSchedule` decides when to publish it: every `health.interval`,
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
MAX_TERMINALS = 50  # terminals listed in the report by default (the worst first)
MAX_IDS = 100  # check ids listed in summary.failing / summary.warning at most


def _stamp(posix: float | None) -> str | None:
    return format_timestamp(datetime.fromtimestamp(posix, UTC)) if posix is not None else None


def _stamp_dt(at: datetime | None) -> str | None:
    return format_timestamp(at) if at is not None else None


def summarise(results: Iterable[CheckResult], max_ids: int | None = None) -> dict[str, Any]:
    """Worst status and the count of each status (ids of failing and warning checks; at most
    `max_ids` of each, with `failing_omitted` / `warning_omitted` counting the rest)."""
    results = list(results)
    counts = {s.value: 0 for s in (Status.OK, Status.WARN, Status.FAIL, Status.UNKNOWN)}
    for r in results:
        counts[r.status.value] += 1
    failing = sorted(r.id for r in results if r.status is Status.FAIL)
    warning = sorted(r.id for r in results if r.status is Status.WARN)
    out: dict[str, Any] = {
        "status": worst(r.status for r in results).value,
        "counts": counts,
        "failing": failing,
        "warning": warning,
    }
    if max_ids is not None:
        out["failing"], out["warning"] = failing[:max_ids], warning[:max_ids]
        out["failing_omitted"] = len(failing) - len(out["failing"])
        out["warning_omitted"] = len(warning) - len(out["warning"])
    return out


def _terminal_of(result: CheckResult) -> str | None:
    """The terminal a result is about (`terminals.<check>:<terminal>`), None for others."""
    if result.family != "terminals":
        return None
    check, sep, subject = result.id.partition(":")
    return subject if sep and check != "terminals.bus" else None


def build_health(
    results: Iterable[CheckResult],
    view: AgentView,
    now: datetime | None = None,
    max_terminals: int = MAX_TERMINALS,
) -> dict[str, Any]:
    """The health report published retained on `…/health` (HEALTH.md), bounded: the worst
    `max_terminals` terminals listed, every terminal counted in `terminals_summary`."""
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
    by_terminal: dict[str, list[CheckResult]] = {}  # one pass: a site may have 5000 terminals
    for r in ordered:
        if (subject := _terminal_of(r)) is not None:
            by_terminal.setdefault(subject, []).append(r)
    statuses = {
        name: worst(r.status for r in own) if (own := by_terminal.get(name)) else Status.UNKNOWN
        for name in view.terminals
    }
    # The worst first: status, then failing polls in a row, then slots skipped; then by name.
    ranked = sorted(
        view.terminals.items(),
        key=lambda item: (
            -statuses[item[0]].severity,
            -item[1].stats.consecutive_failures,
            -item[1].stats.missed_slots,
            item[0],
        ),
    )
    listed = dict(ranked[: max(0, max_terminals)])
    by_status = {s.value: 0 for s in (Status.OK, Status.WARN, Status.FAIL, Status.UNKNOWN)}
    for status in statuses.values():
        by_status[status.value] += 1
    terminals_summary = {
        "total": len(view.terminals),
        "listed": len(listed),
        "omitted": len(view.terminals) - len(listed),
        "status": by_status,
        "missed_slots": sum(t.stats.missed_slots for t in view.terminals.values()),
        "behind_slots": sum(t.stats.behind_slots for t in view.terminals.values()),
        "held_slots": sum(t.stats.held_slots for t in view.terminals.values()),
        "late_starts": sum(t.stats.late_starts for t in view.terminals.values()),
    }
    # Every check but the per-terminal ones of terminals not listed (counted in `summary`).
    checks = [r for r in ordered if (subject := _terminal_of(r)) is None or subject in listed]
    terminals = []
    for name, t in sorted(listed.items()):
        s = t.stats
        p95 = s.latency_p95()
        terminals.append(
            {
                "name": name,
                "address": t.address,
                "status": statuses[name].value,
                "interval": t.interval,
                "polls": s.polls,
                "failed_polls": s.failed_polls,
                "success_ratio": None if s.success_ratio is None else round(s.success_ratio, 4),
                "latency_p95": None if p95 is None else round(p95, 4),
                "last_good_at": _stamp_dt(s.last_good_at),
                "consecutive_failures": s.consecutive_failures,
                "missed_slots": s.missed_slots,
                "behind_slots": s.behind_slots,
                "held_slots": s.held_slots,
                "late_starts": s.late_starts,
                "last_error": s.last_error,
            }
        )
    return {
        "schema": SCHEMA,
        "gateway": view.config.gateway.id,
        "generated_at": format_timestamp(now),
        "summary": summarise(ordered, MAX_IDS),
        "checks": [r.to_dict() for r in checks],
        "checks_omitted": len(ordered) - len(checks),
        "truncated": len(listed) < len(view.terminals) or len(checks) < len(ordered),
        "agent": agent,
        "outbox": view.outbox.to_dict() if view.outbox is not None else None,
        "uplink": uplink,
        "terminals": terminals,
        "terminals_summary": terminals_summary,
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
