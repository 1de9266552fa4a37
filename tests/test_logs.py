"""The log ring and the temporary log level (agent/logs.py), with the real structlog chain."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from agent import logs
from agent.diagnosis.redact import REDACTED
from agent.logs import LOG_RING, LogRing, configure_logging, log_level, set_log_level


@pytest.fixture
def configured() -> Iterator[None]:
    """The process's logging as `edge-agent run` configures it; put back afterwards."""
    LOG_RING.clear()
    configure_logging("info", "json")
    yield
    if logs._LEVEL.revert is not None:
        logs._LEVEL.revert.cancel()
        logs._LEVEL.revert = None
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logs._RingHandler)]:
        root.removeHandler(handler)
    structlog.reset_defaults()
    LOG_RING.clear()


def events(level: str = "debug") -> list[str]:
    return [e["event"] for e in LOG_RING.recent(level, None, 10_000)]


def test_every_logged_event_is_kept_as_a_plain_redacted_dict(configured: None) -> None:
    log = structlog.get_logger("agent.test")
    before = time.time()
    log.info("connected", broker="mqtt://u:pw-in-url@b:1883", attempt=2, path=logging)
    log.warning("login refused", password="hunter2")  # noqa: S106 -- the secret to redact
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("a loop failed")
    log.debug("not at info")  # below the level: not logged, not kept
    logging.getLogger("aiomqtt").warning("a library's warning")

    kept = LOG_RING.recent("debug", None, 100)
    assert [e["event"] for e in kept] == [
        "connected", "login refused", "a loop failed", "a library's warning",
    ]  # fmt: skip
    first = kept[0]
    assert before <= first["ts"] <= time.time()
    assert first["level"] == "info" and first["logger"] == "agent.test"
    assert first["broker"] == f"mqtt://u:{REDACTED}@b:1883" and first["attempt"] == 2
    assert isinstance(first["path"], str)  # a module object kept as its text
    assert kept[1]["password"] == REDACTED
    assert kept[2]["level"] == "error" and "ValueError: boom" in kept[2]["exception"]
    assert kept[3]["logger"] == "aiomqtt" and kept[3]["level"] == "warning"
    assert "timestamp" not in first  # `ts` says it
    assert all("hunter2" not in repr(e) and "pw-in-url" not in repr(e) for e in kept)


def test_recent_filters_by_level_time_and_count_newest_last(configured: None) -> None:
    log = structlog.get_logger("agent.test")
    for i in range(5):
        log.info("old", i=i)
    middle = time.time()
    time.sleep(0.01)
    for i in range(5):
        log.warning("new", i=i)
        log.error("bad", i=i)
    assert len(LOG_RING.recent("info", None, 100)) == 15
    assert {e["event"] for e in LOG_RING.recent("warning", None, 100)} == {"new", "bad"}
    assert {e["event"] for e in LOG_RING.recent("error", None, 100)} == {"bad"}
    assert {e["event"] for e in LOG_RING.recent("info", middle, 100)} == {"new", "bad"}
    last3 = LOG_RING.recent("info", None, 3)
    assert [(e["event"], e["i"]) for e in last3] == [("bad", 3), ("new", 4), ("bad", 4)]
    with pytest.raises(ValueError, match="unknown level"):
        LOG_RING.recent("loud", None, 10)


def test_the_ring_is_bounded_by_events_and_by_bytes() -> None:
    ring = LogRing(max_events=100, max_bytes=20_000)
    for i in range(250):
        ring({}, "info", {"event": "tick", "level": "info", "i": i})
    assert len(ring) == 100
    assert [e["i"] for e in ring.recent("info", None, 1000)] == list(range(150, 250))
    for i in range(20):
        ring({}, "info", {"event": "big", "level": "info", "blob": "x" * 3000, "i": i})
    assert 6 * 3000 < ring.bytes <= 20_000
    assert [e["i"] for e in ring.recent("info", None, 1000)] == [14, 15, 16, 17, 18, 19]
    # One value is cut, so that one event cannot take the whole ring.
    ring({}, "info", {"event": "huge", "level": "info", "blob": "y" * 1_000_000})
    (huge,) = [e for e in ring.recent("info", None, 1000) if e["event"] == "huge"]
    assert len(huge["blob"]) == logs.MAX_VALUE_CHARS + 1


async def test_a_raised_level_logs_debug_everywhere_then_returns_by_itself(
    configured: None,
) -> None:
    bound = structlog.get_logger("agent.poller").bind(terminal="plc")  # bound before the change
    bound.debug("before")
    assert set_log_level("debug", 0.3) == "info"
    assert log_level() == "debug"
    bound.debug("during", n=1)
    structlog.get_logger("agent.other").debug("during", n=2)
    assert [e.get("n") for e in LOG_RING.recent("debug", None, 100) if e["event"] == "during"] == [
        1, 2,
    ]  # fmt: skip
    await asyncio.sleep(0.6)
    assert log_level() == "info"
    bound.debug("after")
    assert "before" not in events() and "after" not in events()
    assert "log level back" in events()


async def test_a_second_change_replaces_the_pending_return(configured: None) -> None:
    set_log_level("debug", 0.2)
    assert set_log_level("warning", 0.8) == "info"  # the first return must not happen
    await asyncio.sleep(0.4)
    assert log_level() == "warning"
    structlog.get_logger("agent.test").info("quiet")
    assert "quiet" not in events()
    await asyncio.sleep(0.7)
    assert log_level() == "info"


async def test_bad_levels_and_times_are_refused(configured: None) -> None:
    with pytest.raises(ValueError, match="unknown level"):
        set_log_level("trace", 10)
    with pytest.raises(ValueError, match="positive"):
        set_log_level("debug", 0)
    assert log_level() == "info"


def test_is_enabled_for_follows_the_level(configured: None) -> None:
    log: Any = structlog.get_logger("agent.test").bind()
    assert not log.is_enabled_for(logging.DEBUG) and log.is_enabled_for(logging.INFO)
    logs._set_level("error")
    assert log.get_effective_level() == logging.ERROR
    log.warning("dropped")
    log.log(logging.ERROR, "kept")
    assert events() == ["kept"]
