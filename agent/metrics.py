"""Prometheus metrics, off by default (`metrics.listen: 127.0.0.1:9108`).

Nothing is counted on the hot path but readings per terminal and quality (`ReadingCounter`, a
sink in agent/reading_counts.py, so that an agent without metrics never imports
prometheus_client); everything else is read from the agent's own statistics when Prometheus scrapes. The
HTTP endpoint runs on the event loop (asyncio), so a scrape reads the agent's state from the
thread that changes it. Names follow Prometheus conventions: `edge_agent_` prefix, base units
(seconds, bytes), `_total` for counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agent import __version__
from agent.checks.framework import CheckResult, Status
from agent.checks.view import AgentView
from agent.model import LATENCY_BUCKETS
from agent.outbox import QUEUE_NAMES
from agent.reading_counts import ReadingCounter

log = structlog.get_logger(__name__)
__all__ = ["MetricsServer", "ReadingCounter", "Snapshot", "families"]

MAX_REQUEST_HEAD = 8192


@dataclass
class Snapshot:
    view: AgentView
    results: Sequence[CheckResult]
    readings: Counter[tuple[str, str]] = field(default_factory=Counter)
    announcements: Counter[str] = field(default_factory=Counter)  # update announcements by result


def families(s: Snapshot) -> Iterator[Metric]:
    """Every metric family of one snapshot."""
    view = s.view
    info = GaugeMetricFamily(
        "edge_agent_info", "The agent's version and gateway id.", labels=["version", "gateway"]
    )
    info.add_metric([__version__, view.config.gateway.id], 1)
    yield info
    started = GaugeMetricFamily(
        "edge_agent_start_time_seconds", "When the agent started (Unix time)."
    )
    started.add_metric([], view.started_at.timestamp())
    yield started

    readings = CounterMetricFamily(
        "edge_agent_readings",
        "Readings taken, by terminal and quality.",
        labels=["terminal", "quality"],
    )
    for (terminal, quality), n in sorted(s.readings.items()):
        readings.add_metric([terminal, quality], n)
    yield readings

    up = GaugeMetricFamily(
        "edge_agent_terminal_up",
        "1 while the terminal's last poll or report was good.",
        labels=["terminal"],
    )
    polls = CounterMetricFamily(
        "edge_agent_polls",
        "Polls (reports) by terminal and outcome.",
        labels=["terminal", "outcome"],
    )
    latency = HistogramMetricFamily(
        "edge_agent_poll_duration_seconds",
        "Time to read every point of a terminal, polls that got an answer (SL651: query to answer).",
        labels=["terminal"],
    )
    lateness = GaugeMetricFamily(
        "edge_agent_poll_lateness_seconds",
        "p99 of poll start lateness over the last 1024 polls.",
        labels=["terminal"],
    )
    skipped = CounterMetricFamily(
        "edge_agent_poll_skipped_slots",
        "Poll slots skipped, by terminal and why: overrun (the poll before took too long), "
        "late (the agent was behind), held (the outbox was behind).",
        labels=["terminal", "reason"],
    )
    late_starts = CounterMetricFamily(
        "edge_agent_poll_late_starts",
        "Polls started over a quarter period late (polled, not skipped: the agent was behind).",
        labels=["terminal"],
    )
    for name, t in sorted(view.terminals.items()):
        st = t.stats
        if t.info.polled:
            late = st.behind_slots - st.held_slots
            skipped.add_metric([name, "overrun"], st.missed_slots - st.behind_slots)
            skipped.add_metric([name, "late"], late)
            skipped.add_metric([name, "held"], st.held_slots)
            late_starts.add_metric([name], st.late_starts)
        up.add_metric([name], 1 if st.polls and not st.consecutive_failures else 0)
        polls.add_metric([name, "good"], st.polls - st.failed_polls)
        polls.add_metric([name, "failed"], st.failed_polls)
        buckets = [(str(b), n) for b, n in zip(LATENCY_BUCKETS, st.latency_buckets, strict=True)]
        buckets.append(("+Inf", st.latency_count))
        latency.add_metric([name], buckets, st.latency_sum)
        p99 = st.lateness_p99()
        if p99 is not None:
            lateness.add_metric([name], p99)
    yield from (up, polls, latency, lateness, skipped, late_starts)

    bus = GaugeMetricFamily(
        "edge_agent_bus_utilisation_ratio",
        "Share of recent time a serial bus was busy.",
        labels=["device"],
    )
    for device, used in sorted(view.buses.items()):
        bus.add_metric([device], used)
    yield bus

    if view.outbox is not None:
        o = view.outbox
        depth = GaugeMetricFamily(
            "edge_agent_outbox_messages", "Messages waiting in the outbox.", labels=["priority"]
        )
        for priority, n in zip(QUEUE_NAMES.values(), o.per_priority, strict=True):
            depth.add_metric([priority], n)
        yield depth
        yield GaugeMetricFamily(
            "edge_agent_outbox_bytes", "Bytes of waiting messages.", value=o.bytes
        )
        yield GaugeMetricFamily(
            "edge_agent_outbox_oldest_age_seconds",
            "Age of the oldest waiting message (0 when empty).",
            value=o.oldest_age or 0.0,
        )
        yield CounterMetricFamily(
            "edge_agent_outbox_evicted",
            "Telemetry messages evicted from a full outbox.",
            value=o.evicted,
        )
        yield GaugeMetricFamily(
            "edge_agent_outbox_disk_full",
            "1 while the disk is full: telemetry refused, the reserve in use.",
            value=int(o.disk_full or not o.opened),
        )
        yield GaugeMetricFamily(
            "edge_agent_outbox_reserve_bytes",
            "Bytes of the outbox's reserve allocated now (of outbox.reserve_bytes).",
            value=o.reserve_bytes,
        )
        lost = CounterMetricFamily(
            "edge_agent_readings_lost",
            "Readings that could not be stored (disk full, overflow ...), by terminal, "
            "since the agent started.",
            labels=["terminal"],
        )
        for terminal, n in sorted(o.lost_counted.items()):
            lost.add_metric([terminal], n)
        yield lost
        yield GaugeMetricFamily(
            "edge_agent_readings_lost_unreported",
            "Readings lost and not yet reported upstream in a loss event.",
            value=o.lost.readings,
        )

    if view.uplink is not None:
        u = view.uplink
        yield GaugeMetricFamily(
            "edge_agent_uplink_connected",
            "1 while connected to the broker.",
            value=int(u.connected),
        )
        published = CounterMetricFamily(
            "edge_agent_uplink_publishes", "Publishes by result.", labels=["result"]
        )
        published.add_metric(["acknowledged"], u.published)
        published.add_metric(["refused"], u.refused)
        published.add_metric(["resent"], u.resent)  # sent again (DUP) for want of a PUBACK
        yield published
        yield GaugeMetricFamily(
            "edge_agent_uplink_unacknowledged_seconds",
            "How long publishes have waited for a PUBACK with none arriving (0: none waits).",
            value=0.0 if u.unacked_since is None else max(0.0, time.time() - u.unacked_since),
        )
        yield CounterMetricFamily(
            "edge_agent_uplink_ack_timeouts",
            "Sessions renewed because the broker sent no PUBACK for publish_timeout.",
            value=u.ack_timeouts,
        )
        yield CounterMetricFamily(
            "edge_agent_uplink_connects", "Successful connections to the broker.", value=u.connects
        )

    yield from update_families(view.update, s.announcements)
    yield driver_family(view.counters)

    checks = GaugeMetricFamily(
        "edge_agent_check_status",
        "1 for each check's current status (ok, warn, fail, unknown).",
        labels=["check", "family", "status"],
    )
    for r in s.results:
        for status in Status:
            checks.add_metric([r.id, r.family, status.value], 1 if r.status is status else 0)
    yield checks


def driver_family(counters: Mapping[str, int]) -> Metric:
    """Drivers' own counters (a listener's refusals, drops and evictions; `status` shows the
    same under `counters`), one sample each, by name."""
    family = GaugeMetricFamily(
        "edge_agent_driver_counter",
        "Drivers' own counters by name (e.g. sl651.refused_connections, sl651.dropped_slow); "
        "most only grow, sl651.connections and sl651.m3_bytes are levels.",
        labels=["counter"],
    )
    for name, value in sorted(counters.items()):
        family.add_metric([name], value)
    return family


def update_families(
    summary: Mapping[str, Any] | None, announcements: Counter[str]
) -> Iterator[Metric]:
    """Signed updates: the release and state, the last outcome, announcements by result."""
    if summary is not None and "state" in summary:
        info = GaugeMetricFamily(
            "edge_agent_update_info",
            "The release the update record names current (else the one running) and its state.",
            labels=["version", "state"],
        )
        info.add_metric([summary.get("current") or __version__, summary["state"]], 1)
        yield info
        last = summary.get("last")
        outcome = GaugeMetricFamily(
            "edge_agent_update_last_outcome",
            "The last update outcome (installed, committed, rolled_back, rejected) and its release.",
            labels=["outcome", "version"],
        )
        if last:
            outcome.add_metric([str(last.get("outcome")), str(last.get("version") or "")], 1)
        yield outcome
    counted = CounterMetricFamily(
        "edge_agent_update_announcements",
        "Update announcements received, by result (in_rollout, not_in_rollout, malformed, "
        "requested).",
        labels=["result"],
    )
    for result, n in sorted(announcements.items()):
        counted.add_metric([result], n)
    yield counted


class _SnapshotCollector(Collector):
    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        if self.snapshot is not None:
            yield from families(self.snapshot)


class MetricsServer:
    """`GET /metrics` on host:port, answered on the event loop."""

    def __init__(self, address: tuple[str, int], snapshot: Callable[[], Awaitable[Snapshot]]):
        self.address = address
        self._snapshot = snapshot
        self._collector = _SnapshotCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self._collector)
        self._server: asyncio.Server | None = None
        self.port: int | None = None

    async def start(self) -> None:
        host, port = self.address
        try:
            self._server = await asyncio.start_server(
                self._serve, host, port, limit=MAX_REQUEST_HEAD
            )
        except OSError as exc:
            raise OSError(f"metrics cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics listening", address=f"{host}:{self.port}")

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                await self._server.wait_closed()
            self._server = None

    async def render(self) -> bytes:
        self._collector.snapshot = await self._snapshot()
        return generate_latest(self.registry)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, path, *_ = [*request_line.split(" "), "", ""]
            if method == "GET" and path.split("?")[0] in ("/metrics", "/"):
                body = await self.render()
                status, kind = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
            else:
                body, status, kind = b"not found: try /metrics\n", "404 Not Found", "text/plain"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
