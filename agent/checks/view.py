"""What the checks see of the agent: a snapshot the daemon builds, plus the two small state
keepers it needs (the restart log and the log-event counter).

The checks never import the daemon; the daemon builds an `AgentView` from its parts each time
checks run (a cheap snapshot of counters, no IO). The restart log is a state file written
atomically (`<state_dir>/state/restarts.json`); the log counter is a structlog processor.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.model import TerminalClock, TerminalView, format_timestamp, parse_timestamp
from agent.storage.atomic import PRIVATE_DIR_MODE, ensure_dir, write_atomic
from agent.storage.layout import StateLayout

if TYPE_CHECKING:
    from agent.config import Config
    from agent.outbox import OutboxStats
    from agent.uplink import UplinkState

RESTARTS_KEEP = timedelta(days=7)
RESTARTS_MAX = 500


@dataclass(frozen=True, slots=True)
class LogCounts:
    """The agent's own warning and error log events: totals and within `window` seconds."""

    errors: int = 0
    warnings: int = 0
    recent_errors: int = 0
    recent_warnings: int = 0
    window: float = 3600.0
    latest_error: str | None = None


@dataclass(frozen=True)
class AgentView:
    """A snapshot of the agent for the checks and the health report. Build one per round."""

    config: Config
    config_path: Path | None = None
    # sha256 of the file content `config` was parsed from, if known: the config check then
    # knows that content valid without parsing it again (agent.checks.software).
    config_digest: bytes | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    restarts: Sequence[datetime] = ()  # starts after an earlier run (see record_start)
    terminals: Mapping[str, TerminalView] = field(default_factory=dict)
    buses: Mapping[str, float] = field(default_factory=dict)  # device -> utilisation 0..1
    outbox: OutboxStats | None = None
    uplink: UplinkState | None = None
    logs: LogCounts | None = None
    terminal_clocks: Mapping[str, TerminalClock] = field(default_factory=dict)
    version: str = __version__
    update: Mapping[str, Any] | None = None  # the update record's summary (UpdateStore.summary)
    # The owner's consent to remote diagnosis: {"consent": mode, "window": {...} | None}.
    diagnosis: Mapping[str, Any] | None = None
    # Drivers' own counters (agent.protocols.driver.CountingDriver), e.g. sl651.dropped_slow.
    counters: Mapping[str, int] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    def terminals_ok(self) -> tuple[int, int]:
        """(terminals whose last poll gave a good reading, terminals): for STATUS= lines."""
        ok = sum(
            1
            for t in self.terminals.values()
            if t.stats.last_good_at is not None and not t.stats.consecutive_failures
        )
        return ok, len(self.terminals)


# -- restarts --------------------------------------------------------------------------------


def restarts_path(state_dir: Path) -> Path:
    """`StateLayout.restarts` of `state_dir`."""
    return StateLayout(state_dir).restarts


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return parse_timestamp(text)
    except ValueError:
        return None


def _read_starts(path: Path) -> tuple[datetime | None, list[datetime]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, []  # absent or damaged: start over (the count restarts, nothing breaks)
    if not isinstance(data, dict):
        return None, []
    first = _parse_time(data.get("first_start"))
    starts = [t for t in map(_parse_time, data.get("starts") or []) if t is not None]
    return first, sorted(starts)


def load_restarts(state_dir: Path) -> list[datetime]:
    """The recorded restarts: every start after the first one ever recorded."""
    first, starts = _read_starts(restarts_path(state_dir))
    return [s for s in starts if first is not None and s > first]


def record_start(state_dir: Path, at: datetime | None = None) -> list[datetime]:
    """Record that the agent starts now; returns the restarts (as `load_restarts`).

    Keeps a week of starts, at most RESTARTS_MAX, in a state file written atomically.
    """
    at = at or datetime.now(UTC)
    path = restarts_path(state_dir)
    first, starts = _read_starts(path)
    if first is None:
        first = starts[0] if starts else at
    starts = [s for s in starts if s > at - RESTARTS_KEEP]
    starts.append(at)
    starts = sorted(starts)[-RESTARTS_MAX:]
    body = {"first_start": format_timestamp(first), "starts": [format_timestamp(s) for s in starts]}
    ensure_dir(path.parent, PRIVATE_DIR_MODE)  # state/: the agent's own, narrowed if wider
    write_atomic(path, json.dumps(body, indent=1).encode())
    return [s for s in starts if s > first]


# -- log events ------------------------------------------------------------------------------

_ERROR_METHODS = frozenset({"error", "exception", "critical", "fatal", "err"})
_WARNING_METHODS = frozenset({"warning", "warn"})


class LogCounter:
    """A structlog processor that counts the agent's warning and error events.

    Install it in the processor chain before the renderer (the daemon does, once). It passes
    every event on unchanged. Thread-safe; bounded: it keeps the times of the last `keep` events
    of each level.
    """

    def __init__(self, keep: int = 10_000, clock: Any = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._errors: deque[float] = deque(maxlen=keep)
        self._warnings: deque[float] = deque(maxlen=keep)
        self.errors = 0
        self.warnings = 0
        self.latest_error: str | None = None

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        name = str(event_dict.get("level", method_name)).lower()
        if name in _ERROR_METHODS:
            with self._lock:
                self.errors += 1
                self._errors.append(self._clock())
                self.latest_error = str(event_dict.get("event", ""))[:200]
        elif name in _WARNING_METHODS:
            with self._lock:
                self.warnings += 1
                self._warnings.append(self._clock())
        return event_dict

    def snapshot(self, window: float = 3600.0, now: float | None = None) -> LogCounts:
        now = self._clock() if now is None else now
        with self._lock:
            recent_errors = sum(1 for t in self._errors if t > now - window)
            recent_warnings = sum(1 for t in self._warnings if t > now - window)
            return LogCounts(
                self.errors,
                self.warnings,
                recent_errors,
                recent_warnings,
                window,
                self.latest_error,
            )
