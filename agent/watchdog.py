"""The systemd watchdog, fed only while the agent's loops make progress.

Loops call `progress.beat("polling")` (`"outbox"`, `"uplink"` …) each time they get something
done or at least try; each loop is registered with an allowance: the longest it may go without
a beat (its own period, timeouts and backoff included). `run_watchdog` sends `WATCHDOG=1` every
half `WATCHDOG_USEC` only while every registered loop is within its allowance — a stuck loop
stops the pings and systemd restarts the agent — and keeps the one-line `STATUS=` current.
Without `NOTIFY_SOCKET` (not under systemd) it does nothing; without `WATCHDOG_USEC` it only
updates the status. It runs on the event loop, so a blocked event loop stops the pings too.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from agent import sdnotify
from agent.durations import approximate_duration

log = structlog.get_logger(__name__)

STATUS_INTERVAL = 10.0  # how often the status line is refreshed without a watchdog
STATUS_MAX = 200

Notify = Callable[..., bool]


class Progress:
    """Last beat of each registered loop, on the monotonic clock. Safe from any thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._loops: dict[str, tuple[float, float]] = {}  # name -> (allowance, last beat)

    def register(self, name: str, allowance: float) -> None:
        """Watch a loop; its allowance starts now (a loop that never beats stalls after it)."""
        if allowance <= 0:
            raise ValueError(f"allowance of {name!r} must be positive")
        self._loops[name] = (allowance, self._clock())

    def unregister(self, name: str) -> None:
        self._loops.pop(name, None)

    def beat(self, name: str) -> None:
        """The loop made progress. A loop nobody registered is not watched: a beat from it (SL651
        readings pass the same sinks as polls) must not make it a loop that can stall."""
        entry = self._loops.get(name)
        if entry is not None:
            self._loops[name] = (entry[0], self._clock())

    def ages(self, now: float | None = None) -> dict[str, float]:
        """Seconds since each loop's last beat."""
        now = self._clock() if now is None else now
        return {name: now - last for name, (_, last) in self._loops.items()}

    def stalled(self, now: float | None = None) -> list[str]:
        now = self._clock() if now is None else now
        return sorted(n for n, (allow, last) in self._loops.items() if now - last > allow)

    def healthy(self, now: float | None = None) -> bool:
        """True while every registered loop has beaten within its allowance."""
        return not self.stalled(now)


class BeatSink:
    """A reading sink that beats a loop: in the FanOut, every poll's batch says "polling"."""

    def __init__(self, progress: Progress, name: str = "polling") -> None:
        self.progress = progress
        self.name = name

    def submit(self, readings: Sequence[Any]) -> None:
        self.progress.beat(self.name)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of WATCHDOG_USEC), or None when systemd wants none."""
    env = sdnotify.environment() if environ is None else environ
    if not env.get("NOTIFY_SOCKET"):
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were started by a wrapper)
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


def status_line(
    terminals_ok: int,
    terminals_total: int,
    backlog: int | None,
    uplink: bool | None,
    oldest_age: float | None = None,
) -> str:
    """The one-line STATUS= text: terminals ok/total, outbox backlog, uplink.

    `uplink` is True (connected), False (not connected) or None (no broker configured).
    """
    parts = [f"terminals {terminals_ok}/{terminals_total} ok"]
    if backlog is None:
        parts.append("outbox closed")
    else:
        age = f" (oldest {approximate_duration(oldest_age)})" if oldest_age and backlog else ""
        parts.append(f"backlog {backlog}{age}")
    parts.append({True: "uplink connected", False: "uplink down", None: "no uplink"}[uplink])
    return " · ".join(parts)[:STATUS_MAX]


async def run_watchdog(
    progress: Progress,
    notify: Notify = sdnotify.notify,
    interval: float | None = None,
    *,
    status: Callable[[], str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Ping systemd while the loops progress, and keep STATUS= current; until cancelled.

    `interval` overrides the ping period (default: half of WATCHDOG_USEC). Returns at once when
    there is nothing to do (no NOTIFY_SOCKET; or no WATCHDOG_USEC and no `status`).
    """
    env = sdnotify.environment() if environ is None else environ
    if not env.get("NOTIFY_SOCKET"):
        return
    ping_every = watchdog_interval(env)
    if ping_every is None and status is None:
        return
    period = interval or ping_every or STATUS_INTERVAL
    last_status: str | None = None
    reported: list[str] = []
    while True:
        messages = []
        if ping_every is not None:
            stalled = progress.stalled()
            if not stalled:
                messages.append("WATCHDOG=1")
            if stalled != reported:
                if stalled:
                    ages = progress.ages()
                    log.error(
                        "loop stalled: no watchdog ping until it moves again",
                        loops={n: round(ages[n], 1) for n in stalled},
                    )
                else:
                    log.info("every loop moves again: watchdog pings resumed")
                reported = stalled
        if status is not None:
            try:
                line = status().replace("\n", " ")[:STATUS_MAX]
            except Exception as exc:  # noqa: BLE001 -- a status text must never stop the pings
                line = f"status unavailable: {type(exc).__name__}"
            if line != last_status:
                messages.append(f"STATUS={line}")
                last_status = line
        if messages:
            notify(*messages)
        await asyncio.sleep(period)
