"""Logging, configured once by the application (never by library modules).

Modules only call `structlog.get_logger(__name__)`. Output is JSON lines when stderr is not a
terminal (journald keeps them), readable key=value lines on a terminal.

Two things serve remote diagnosis (docs/diagnosis.md):

- `LOG_RING`, the last events the agent logged (at most `RING_EVENTS` of them and about
  `RING_BYTES` of their text), each kept as a plain dict (`ts` UNIX time, `level`, `event`,
  `logger`, the event's other keys, long values cut) by a processor in the chain, so it holds
  whatever the agent logs at its level of the moment. The standard library's own records
  (libraries: warnings and errors) are kept too. `LOG_RING.recent(...)` gives them back with
  secrets redacted (agent/diagnosis/redact.py). Keeping an event costs a shallow copy of it
  (bench/log_ring.py measures it).
- `set_log_level(level, seconds)`: the agent logs at another level for a while, then returns to
  the config's level by itself. The level is one shared value every logger reads on each call
  (loggers bound earlier too), so a change takes effect at once everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Any, Literal

import structlog

from agent.diagnosis.redact import redact_event

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# The names an event's `level` may have (add_log_level) and their order.
_EVENT_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}

RING_EVENTS = 5000
RING_BYTES = 2 * 1024 * 1024
MAX_VALUE_CHARS = 4096  # one value longer than this is cut (a traceback keeps its head)
_OVERHEAD = 16  # bytes counted per key beside its text (quotes, separators)


def log_task_crash(task: asyncio.Task[Any]) -> None:
    """Done-callback for a loop that should only end by cancellation: an error is a loud line."""
    if not task.cancelled() and task.exception() is not None:
        structlog.get_logger(__name__).error(
            "a loop stopped by an error", task=task.get_name(), error=repr(task.exception())
        )


# -- the ring ----------------------------------------------------------------------------------


def _plain(value: Any, depth: int = 0) -> Any:
    """`value` as JSON-able data, strings cut at MAX_VALUE_CHARS (what the ring keeps)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS] + "…"
    if depth < 3 and isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in list(value.items())[:100]}
    if depth < 3 and isinstance(value, list | tuple | set | frozenset):
        return [_plain(v, depth + 1) for v in list(value)[:100]]
    text = repr(value) if isinstance(value, BaseException) else str(value)
    return _plain(text, depth)


def _size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(k) + _OVERHEAD + _size(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_OVERHEAD + _size(v) for v in value)
    return 8


class LogRing:
    """The last events logged, bounded by count and by the size of their text. Thread-safe."""

    def __init__(self, max_events: int = RING_EVENTS, max_bytes: int = RING_BYTES) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._events: deque[tuple[int, dict[str, Any]]] = deque()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._events)

    @property
    def bytes(self) -> int:
        """The size of the text kept now (roughly that of the events as JSON)."""
        return self._bytes

    def add(self, event: dict[str, Any]) -> None:
        """Keep one event (a plain dict, already JSON-able); the oldest go to make room."""
        self._add(_size(event), event)

    def _add(self, size: int, event: dict[str, Any]) -> None:
        with self._lock:
            self._events.append((size, event))
            self._bytes += size
            while len(self._events) > self.max_events or (
                self._bytes > self.max_bytes and len(self._events) > 1
            ):
                gone, _ = self._events.popleft()
                self._bytes -= gone

    def clear(self) -> None:
        with self._lock:
            self._events.clear()
            self._bytes = 0

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """The structlog processor: keeps a plain copy of the event, passes it on unchanged."""
        kept: dict[str, Any] = {
            "ts": time.time(),
            "level": str(event_dict.get("level", method_name)),
            "event": _plain(event_dict.get("event", "")),
            "logger": getattr(logger, "name", None),
        }
        size = 4 * _OVERHEAD + 24 + _size(kept["event"])
        for key, value in event_dict.items():
            if key in kept or key == "timestamp":
                continue
            kind = type(value)
            if kind is str:
                if len(value) > MAX_VALUE_CHARS:
                    value = value[:MAX_VALUE_CHARS] + "…"
                size += len(key) + _OVERHEAD + len(value)
            elif value is None or kind is int or kind is float or kind is bool:
                size += len(key) + _OVERHEAD + 8
            else:
                value = _plain(value)
                size += len(key) + _OVERHEAD + _size(value)
            kept[key] = value
        self._add(size, kept)
        return event_dict

    def recent(self, level: str, since: float | None, limit: int) -> list[dict[str, Any]]:
        """Events at `level` or above logged at or after `since` (a UNIX time; None: all kept),
        newest last, the newest `limit` of them, each with its secrets redacted."""
        floor = _EVENT_LEVELS.get(level.lower())
        if floor is None:
            raise ValueError(f"unknown level {level!r} (one of: {', '.join(_LEVELS)})")
        with self._lock:
            events = [e for _, e in self._events]
        picked: list[dict[str, Any]] = []
        for event in reversed(events):
            if len(picked) >= limit:
                break
            if since is not None and event["ts"] < since:
                continue  # not `break`: the clock may have been set back meanwhile
            if _EVENT_LEVELS.get(event["level"], logging.INFO) >= floor:
                picked.append(redact_event(event))
        picked.reverse()
        return picked


LOG_RING = LogRing()


class _RingHandler(logging.Handler):
    """The standard library's records (libraries' warnings and errors) into the ring too."""

    def __init__(self, ring: LogRing) -> None:
        super().__init__(logging.NOTSET)
        self.ring = ring

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event: dict[str, Any] = {
                "ts": record.created,
                "level": record.levelname.lower(),
                "event": _plain(record.getMessage()),
                "logger": record.name,
            }
            if record.exc_info:
                event["exception"] = _plain(logging.Formatter().formatException(record.exc_info))
            self.ring.add(event)
        except Exception:  # noqa: BLE001 -- logging must never raise into its caller
            self.handleError(record)


# -- the level ---------------------------------------------------------------------------------


class _Level:
    """The agent's level now, the config's level, and the pending return to it."""

    def __init__(self) -> None:
        self.value = logging.INFO
        self.configured = "info"
        self.revert: asyncio.TimerHandle | None = None


_LEVEL = _Level()


def _level_methods() -> dict[str, Callable[..., Any]]:
    """Methods of the bound logger that read the shared level on every call."""
    base = structlog.make_filtering_bound_logger(logging.DEBUG)
    meths: dict[str, Callable[..., Any]] = {}
    for name, number in (
        ("debug", logging.DEBUG),
        ("info", logging.INFO),
        ("msg", logging.INFO),
        ("warning", logging.WARNING),
        ("warn", logging.WARNING),
        ("error", logging.ERROR),
        ("critical", logging.CRITICAL),
        ("fatal", logging.CRITICAL),
    ):
        meths[name] = _sync_method(getattr(base, name), number)
        meths[f"a{name}"] = _async_method(getattr(base, f"a{name}"), number)

    def log(self: Any, level: int, event: str, *args: Any, **kw: Any) -> Any:
        if level < _LEVEL.value:
            return None
        return base.log(self, level, event, *args, **kw)

    async def alog(self: Any, level: int, event: str, *args: Any, **kw: Any) -> Any:
        if level < _LEVEL.value:
            return None
        return await base.alog(self, level, event, *args, **kw)

    meths["log"], meths["alog"] = log, alog
    meths["is_enabled_for"] = lambda self, level: level >= _LEVEL.value
    meths["get_effective_level"] = lambda self: _LEVEL.value
    return meths


def _sync_method(inner: Callable[..., Any], number: int) -> Callable[..., Any]:
    def meth(self: Any, event: str, *args: Any, **kw: Any) -> Any:
        if number < _LEVEL.value:
            return None
        return inner(self, event, *args, **kw)

    return meth


def _async_method(inner: Callable[..., Any], number: int) -> Callable[..., Any]:
    async def ameth(self: Any, event: str, *args: Any, **kw: Any) -> Any:
        if number < _LEVEL.value:
            return None
        return await inner(self, event, *args, **kw)

    return ameth


_BoundLogger: type = type(
    "EdgeAgentBoundLogger",
    (structlog.make_filtering_bound_logger(logging.DEBUG),),
    _level_methods(),
)


class _NamedLogger(structlog.PrintLogger):
    """A PrintLogger that knows the name it was asked for (the ring's `logger`)."""

    def __init__(self, file: Any, name: str | None) -> None:
        super().__init__(file)
        self.name = name


class _NamedLoggerFactory:
    def __init__(self, file: Any) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedLogger:
        return _NamedLogger(self._file, str(args[0]) if args else None)


def _set_level(level: str) -> None:
    _LEVEL.value = _LEVELS[level]


def set_log_level(level: str, seconds: float) -> str:
    """Log at `level` for `seconds`, then return to the config's level by itself.

    Call it on the running loop (the return is scheduled there); a second call replaces the
    pending return. Returns the level it will return to. Raises ValueError for an unknown level
    or a non-positive time.
    """
    if level not in _LEVELS:
        raise ValueError(f"unknown level {level!r} (one of: {', '.join(_LEVELS)})")
    if not seconds > 0:
        raise ValueError(f"seconds must be positive, not {seconds!r}")
    loop = asyncio.get_running_loop()
    if _LEVEL.revert is not None:
        _LEVEL.revert.cancel()
    _set_level(level)
    _LEVEL.revert = loop.call_later(seconds, _revert)
    structlog.get_logger(__name__).info(
        "log level changed", to=level, seconds=seconds, reverts_to=_LEVEL.configured
    )
    return _LEVEL.configured


def _revert() -> None:
    _LEVEL.revert = None
    _set_level(_LEVEL.configured)
    structlog.get_logger(__name__).info("log level back", to=_LEVEL.configured)


def log_level() -> str:
    """The level the agent logs at now."""
    return next(name for name, number in _LEVELS.items() if number == _LEVEL.value)


# -- configuration -----------------------------------------------------------------------------


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    counter: structlog.typing.Processor | None = None,
) -> None:
    """Configure structlog for the process; `counter` sees every event (the checks count errors).

    Every event also goes to `LOG_RING`. `level` is the config's: `set_log_level` returns to it.
    """
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    if _LEVEL.revert is not None:
        _LEVEL.revert.cancel()
        _LEVEL.revert = None
    _LEVEL.configured = level
    _set_level(level)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *([counter] if counter is not None else []),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            LOG_RING,
            renderer,
        ],
        wrapper_class=_BoundLogger,
        logger_factory=_NamedLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the standard library: their warnings and errors only.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    root = logging.getLogger()
    if not any(isinstance(h, _RingHandler) for h in root.handlers):
        root.addHandler(_RingHandler(LOG_RING))
