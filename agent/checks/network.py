"""Network checks: can the broker be reached (DNS, TCP connect time), how much of the time the
uplink is connected, and whether the outbox drains (backlog depth and age, evictions).

The connect and DNS probes are async with their own bound (`network.connect_timeout`). The
uplink ratio and the backlog growth keep a little state between evaluations (their windows).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import time
from collections import deque
from datetime import datetime, timedelta

from agent.check_settings import ChecksConfig
from agent.checks.framework import Check, Outcome, Probe, Status, unknown
from agent.checks.view import AgentView
from agent.durations import approximate_duration, format_duration
from agent.model import format_timestamp

FAMILY = "network"
MIN_SPAN = 60.0  # the uplink ratio needs this much history before it means something


def checks(settings: ChecksConfig, broker: str | None) -> list[Check]:
    s = settings.network

    def make(check_id: str, probe: Probe, needs_agent: bool = False) -> Check:
        return Check(check_id, FAMILY, probe, s.interval, settings.timeout, False, needs_agent)

    out = []
    if broker is not None:
        out += [
            make("network.broker_dns", lambda v, now: broker_dns(v, settings)),
            make("network.broker_tcp", lambda v, now: broker_tcp(v, settings)),
            make("network.uplink", UplinkRatio(settings), needs_agent=True),
            make("network.acks", lambda v, now: acks(v, now, settings), needs_agent=True),
        ]
    out += [
        make("network.backlog", Backlog(settings)),
        make("network.evictions", lambda v, now: evictions(v, now, settings)),
    ]
    return out


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


async def broker_dns(view: AgentView, settings: ChecksConfig) -> Outcome:
    uplink = view.config.uplink
    if uplink.broker is None:
        return unknown("no broker configured")
    host = uplink.host
    if _is_ip(host):
        return Outcome(Status.OK, host, message=f"{host} is an IP address: no DNS needed")
    loop = asyncio.get_running_loop()
    limit = settings.network.connect_timeout
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            infos = await loop.getaddrinfo(host, uplink.port, type=socket.SOCK_STREAM)
    except TimeoutError:
        return Outcome(Status.FAIL, None, "s", limit, f"no DNS answer for {host} within {limit:g}s")
    except OSError as exc:
        return Outcome(Status.FAIL, None, message=f"cannot resolve {host}: {exc.strerror or exc}")
    took = round(time.monotonic() - started, 3)
    addresses = sorted({str(info[4][0]) for info in infos})
    return Outcome(Status.OK, took, "s", limit, f"{host} is {', '.join(addresses[:4])}")


async def broker_tcp(view: AgentView, settings: ChecksConfig) -> Outcome:
    """Time to open (and at once close) a TCP connection to the broker's port."""
    uplink = view.config.uplink
    if uplink.broker is None:
        return unknown("no broker configured")
    where = f"{uplink.host}:{uplink.port}"
    limit, warn = settings.network.connect_timeout, settings.network.connect_warn
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            _, writer = await asyncio.open_connection(uplink.host, uplink.port)
    except TimeoutError:
        return Outcome(
            Status.FAIL, None, "s", limit, f"no TCP answer from {where} within {limit:g}s"
        )
    except socket.gaierror:  # one fault, one finding: network.broker_dns says it
        return unknown(f"not tried: {uplink.host} does not resolve (see network.broker_dns)")
    except OSError as exc:
        # asyncio puts "Connect call failed (addr)" in strerror; the errno says it in words.
        reason = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
        return Outcome(Status.FAIL, None, "s", warn, f"cannot connect to {where}: {reason.lower()}")
    took = round(time.monotonic() - started, 3)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    if took > warn:
        return Outcome(
            Status.WARN, took, "s", warn, f"{where} took {took:g}s to accept, over {warn:g}s"
        )
    return Outcome(
        Status.OK, took, "s", warn, f"{where} accepts connections ({took * 1000:.0f} ms)"
    )


class UplinkRatio:
    """Share of the last `window` the uplink was connected (from the uplink's own totals)."""

    def __init__(self, settings: ChecksConfig) -> None:
        self.settings = settings.network.uplink_ratio
        self._samples: deque[tuple[float, float]] = deque(maxlen=10_000)

    def __call__(self, view: AgentView, now: datetime) -> Outcome:
        u = view.uplink
        if u is None:
            return unknown("the uplink is not running")
        t = now.timestamp()
        total = u.connected_seconds
        if u.connected and u.connected_since is not None:
            total += max(0.0, t - u.connected_since)
        window = self.settings.window
        while len(self._samples) > 1 and self._samples[1][0] <= t - window:
            self._samples.popleft()  # keep one sample at or before the window's start
        self._samples.append((t, total))
        base_t, base_total = self._samples[0]
        if t - base_t < MIN_SPAN:
            base_t, base_total = u.started_at, 0.0
        span = t - base_t
        state = "connected" if u.connected else f"disconnected ({u.last_error or 'no session yet'})"
        if span < MIN_SPAN:
            if u.connected:
                return Outcome(Status.OK, None, "", self.settings.warn, f"{state}")
            return unknown(f"{state}; started {approximate_duration(span)} ago")
        ratio = round(min(1.0, max(0.0, (total - base_total) / span)), 4)
        shown = f"connected {ratio:.1%} of the last {approximate_duration(span)}; now {state}"
        w, f = self.settings.warn, self.settings.fail
        if f is not None and ratio < f:
            return Outcome(Status.FAIL, ratio, "", f, f"{shown}, below {f:.0%}")
        if w is not None and ratio < w:
            return Outcome(Status.WARN, ratio, "", w, f"{shown}, below {w:.0%}")
        return Outcome(Status.OK, ratio, "", w, shown)


def acks(view: AgentView, now: datetime, settings: ChecksConfig) -> Outcome:
    """Warn while connected with publishes left without a PUBACK for `ack_warn` or more, and
    while acknowledged messages cannot be removed from the outbox (its `ack` fails)."""
    u = view.uplink
    if u is None:
        return unknown("the uplink is not running")
    warn = settings.network.ack_warn
    if u.ack_error is not None:
        return Outcome(
            Status.WARN,
            u.acks_unsaved,
            "",
            0,
            f"{u.acks_unsaved} messages the broker acknowledged cannot be removed from the "
            f"outbox ({u.ack_error}); they are not sent again",
        )
    if not u.connected:
        return unknown(f"not connected ({u.last_error or 'no session yet'})")
    if u.unacked_since is None:
        return Outcome(Status.OK, 0.0, "s", warn, "connected, nothing waits for a PUBACK")
    waited = round(max(0.0, now.timestamp() - u.unacked_since), 1)
    if waited >= warn:
        return Outcome(
            Status.WARN,
            waited,
            "s",
            warn,
            f"connected, no acknowledgement for {approximate_duration(waited)} ({u.inflight} publishes wait "
            f"for a PUBACK; {u.resent} sent again so far)",
        )
    return Outcome(Status.OK, waited, "s", warn, f"connected, acknowledged within {warn:g} s")


class Backlog:
    """Outbox depth and age; warns when the backlog keeps growing for longer than a threshold."""

    def __init__(self, settings: ChecksConfig) -> None:
        self.settings = settings.network.backlog
        self._previous: tuple[datetime, int] | None = None
        self.growing_since: datetime | None = None

    def __call__(self, view: AgentView, now: datetime) -> Outcome:
        o = view.outbox
        if o is None:
            return unknown("the outbox is not open")
        s = self.settings
        depth = o.messages
        if self._previous is not None:
            before_at, before = self._previous
            if depth == 0 or depth < before:
                self.growing_since = None  # it drains
            elif depth > before and self.growing_since is None:
                self.growing_since = before_at
        self._previous = (now, depth)
        age = o.oldest_age
        text = f"{depth} messages waiting"
        if age is not None and depth:
            text += f", the oldest for {approximate_duration(age)}"
        growing = (now - self.growing_since).total_seconds() if self.growing_since else 0.0
        if growing:
            text += f"; growing for {approximate_duration(growing)}"
        if o.over_budget:
            return Outcome(
                Status.FAIL,
                depth,
                "messages",
                None,
                f"{text}; over max_bytes with no telemetry left to evict",
            )
        if age is not None and s.age_fail is not None and age > s.age_fail:
            return Outcome(
                Status.FAIL,
                depth,
                "messages",
                s.age_fail,
                f"{text}, over {format_duration(s.age_fail)}",
            )
        if age is not None and s.age_warn is not None and age > s.age_warn:
            return Outcome(
                Status.WARN,
                depth,
                "messages",
                s.age_warn,
                f"{text}, over {format_duration(s.age_warn)}",
            )
        if growing > s.grow_warn:
            return Outcome(
                Status.WARN,
                depth,
                "messages",
                s.grow_warn,
                f"{text}, longer than {format_duration(s.grow_warn)}",
            )
        return Outcome(Status.OK, depth, "messages", s.grow_warn, text)


def evictions(view: AgentView, now: datetime, settings: ChecksConfig) -> Outcome:
    o = view.outbox
    if o is None:
        return unknown("the outbox is not open")
    window = settings.network.eviction_window
    last = o.last_evicted_at
    if o.evicted and last is not None and last > now - timedelta(seconds=window):
        return Outcome(
            Status.WARN,
            o.evicted,
            "messages",
            0,
            f"{o.evicted} telemetry messages evicted (readings lost), the last at "
            f"{format_timestamp(last)}",
        )
    text = f"{o.evicted} telemetry messages evicted in all" if o.evicted else "nothing evicted"
    return Outcome(Status.OK, o.evicted, "messages", 0, text)
