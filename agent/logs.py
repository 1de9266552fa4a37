"""Logging, configured once by the application (never by library modules).

Modules only call `structlog.get_logger(__name__)`. Output is JSON lines when stderr is not a
terminal (journald keeps them), readable key=value lines on a terminal.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, Literal

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def log_task_crash(task: asyncio.Task[Any]) -> None:
    """Done-callback for a loop that should only end by cancellation: an error is a loud line."""
    if not task.cancelled() and task.exception() is not None:
        structlog.get_logger(__name__).error(
            "a loop stopped by an error", task=task.get_name(), error=repr(task.exception())
        )


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    counter: structlog.typing.Processor | None = None,
) -> None:
    """Configure structlog for the process; `counter` sees every event (the checks count errors)."""
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *([counter] if counter is not None else []),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the standard library: their warnings and errors only.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
