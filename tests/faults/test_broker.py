"""Brokers that never acknowledge, and acknowledgements the outbox cannot save (issue 13).

A silent broker (tests/silent_broker.py: takes the connection, answers pings and subscriptions,
records every PUBLISH with its DUP flag, never sends a PUBACK) against the agent as a process;
a real mosquitto and a real outbox on a full (or locked) file system against the uplink itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from agent.config import UplinkConfig
from agent.outbox import AsyncOutbox, Outbox, Priority
from agent.signing import init_key
from agent.storage.layout import StateLayout
from agent.telemetry import open_token
from agent.uplink import Uplink
from tests.agentproc import Agent, write_config
from tests.broker import Mosquitto
from tests.collector import Collector
from tests.conftest import ROOT, tcp_terminal
from tests.faults.conftest import SmallFs
from tests.silent_broker import Publish, SilentBroker

PREFIX = "edge/gw-test"
INFLIGHT = 8


def seq_of(payload: bytes) -> int:
    """The seq of a signed message (the JWS payload's JSON, inflated if compressed, read
    without verifying)."""
    seq: int = open_token(payload)["seq"]
    return seq


def signed(broker: SilentBroker) -> list[Publish]:
    """Every publish of an outbox message (everything but `…/state` and pings)."""
    return [p for p in broker.publishes if not p.topic.endswith(("/state", "/diag/ping"))]


@pytest.fixture
async def silent() -> AsyncIterator[SilentBroker]:
    async with SilentBroker() as broker:
        yield broker


def agent_config(tmp_path: Path, port: int, broker: SilentBroker, **uplink: Any) -> Path:
    config = tmp_path / "config.yaml"
    write_config(
        config,
        tmp_path / "state",
        [tcp_terminal(port, [{"name": "level", "address": 0, "type": "float32"}], period="100ms")],
        uplink={
            "broker": broker.url,
            "inflight": INFLIGHT,
            "backoff_min": "500ms",
            "backoff_max": "2s",
            **uplink,
        },
        outbox={"synchronous": "normal"},
        checks={"network": {"interval": "500ms", "ack_warn": "2s"}},
        health={"min_gap": "500ms"},
    )
    return config


def status_json(config: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--json", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    status: dict[str, Any] = json.loads(out)
    return status


def status_text(config: Path) -> str:
    return subprocess.run(
        [sys.executable, "-m", "agent", "status", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "250"},
    ).stdout


def health_report(state: Path) -> dict[str, Any] | None:
    try:
        report: dict[str, Any] = json.loads(StateLayout(state).health.read_text())
    except (OSError, ValueError):
        return None
    return report


async def eventually(what: str, predicate: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_a_silent_broker_gets_the_queue_at_once_and_status_and_health_say_no_acknowledgement(
    tmp_path: Path, device: Any, silent: SilentBroker, agent_factory: Any
) -> None:
    """`online` does not hold the queue back; within `publish_timeout` the session is kept and
    nothing is sent twice; status and the health report say the broker does not acknowledge."""
    _sim, port = device
    config = agent_config(tmp_path, port, silent, publish_timeout="60s")
    agent: Agent = await agent_factory(config)
    # The whole window goes out although `online` (and everything else) never gets a PUBACK.
    await eventually("a full window", lambda: len(signed(silent)) >= INFLIGHT)
    assert [p.payload for p in silent.on("/state")] == [b"online"]

    status = await eventually(
        "status to say no acknowledgement",
        lambda: (s := status_json(config))["uplink"].get("ack_late") and s,
    )
    uplink = status["uplink"]
    assert uplink["connected"] is True
    assert uplink["no_ack_for"] >= 2
    assert uplink["inflight"] == INFLIGHT + 1  # the window and `online`
    assert "connected, no acknowledgement for" in status_text(config)

    report = await eventually(
        "the health report's warning",
        lambda: (
            (r := health_report(agent.state)) and "network.acks" in r["summary"]["warning"] and r
        ),
    )
    check = next(c for c in report["checks"] if c["id"] == "network.acks")
    assert check["status"] == "warn"
    assert "no acknowledgement for" in check["message"]
    assert report["uplink"]["unacked_since"] is not None

    # Kept waiting: one connection, each message sent once, none marked DUP.
    assert silent.connections == 1
    publishes = signed(silent)
    assert len(publishes) == INFLIGHT
    assert len({p.payload for p in publishes}) == INFLIGHT
    assert not any(p.dup for p in silent.publishes)
    assert await agent.stop() == 0


async def test_a_silent_broker_gets_each_message_again_once_per_renewed_session_marked_dup(
    tmp_path: Path, device: Any, silent: SilentBroker, agent_factory: Any
) -> None:
    """After `publish_timeout` without a PUBACK the session is renewed with a growing backoff,
    and what was sent before goes again byte for byte, DUP set: bounded, never a tight loop."""
    _sim, port = device
    timeout = 2.0
    config = agent_config(tmp_path, port, silent, publish_timeout=f"{timeout:g}s")
    agent: Agent = await agent_factory(config)
    await eventually("three sessions", lambda: silent.connections >= 3, timeout=20)
    started = time.monotonic()
    await asyncio.sleep(4)
    span = time.monotonic() - started + 3 * timeout  # at least this long since the first
    assert await agent.stop() == 0

    publishes = signed(silent)
    seen: set[bytes] = set()
    for p in publishes:  # the first publish of a message is plain, every later one DUP
        assert p.dup == (p.payload in seen), (seq_of(p.payload), p.connection)
        seen.add(p.payload)
    per_session = Counter((p.connection, p.payload) for p in publishes)
    assert max(per_session.values()) == 1  # never twice in one session
    # Session 2 began with what session 1 left unacknowledged, unchanged (a health report or an
    # alarm stored meanwhile goes first: priority).
    first = {p.payload for p in publishes if p.connection == 1}
    again = {p.payload for p in publishes if p.connection == 2 and p.dup}
    assert again and again <= first
    # Bounded: each session lasts at least `publish_timeout` (+ backoff), each message goes at
    # most once per session, and only a window's worth goes each time.
    sessions = silent.connections
    assert sessions <= 1 + span / timeout
    assert max(Counter(p.payload for p in publishes).values()) <= sessions
    assert len(publishes) <= sessions * INFLIGHT
    # One warning for the whole episode, not one per session.
    renewals = [
        e
        for e in agent.events("uplink failed") + agent.events("uplink still failing")
        if "sent no PUBACK" in e.get("reason", "")
    ]
    assert len(renewals) == 1


# -- acknowledgements the outbox cannot save -------------------------------------------------


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "broker", extra="max_queued_messages 100000\n").start()
    yield broker
    broker.stop()


class Locked:
    """The outbox database write-locked by another process's transaction (a backup, say)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


@pytest.mark.parametrize("fault", ["disk full, reserve used up", "database locked"])
async def test_an_ack_that_cannot_be_saved_never_ends_the_session_nor_repeats_messages(
    request: pytest.FixtureRequest, tmp_path: Path, mosquitto: Mosquitto, fault: str
) -> None:
    """The broker is back, the outbox's `ack` fails: delivered messages are kept in memory and
    not sent again, the session stays up, and the outbox empties once it can be written."""
    # A full disk needs a small file system of its own (root); a lock does not.
    small_fs: SmallFs | None = (
        request.getfixturevalue("small_fs") if fault.startswith("disk") else None
    )
    where = small_fs.path if small_fs is not None else tmp_path
    key = init_key(where / "state")
    outbox = Outbox(where / "outbox.db", key, "gw-test", synchronous="normal")
    outbox.open()
    count = 60
    outbox.put_many([("telemetry", {"n": i}, Priority.TELEMETRY) for i in range(count)])
    release: Any
    if small_fs is not None:
        # A full disk alone no longer fails an ack (the outbox's reserve pays for it): the
        # reserve used up as well is the case where the ack really cannot be written.
        small_fs.fill()
        outbox.reserve_path.unlink()
        small_fs.fill()
        release = small_fs.release
    else:
        release = Locked(outbox.path).release
    settings = UplinkConfig.model_validate(
        {"broker": mosquitto.url, "backoff_min": "100ms", "backoff_max": "1s"}
    )
    uplink = Uplink(settings, AsyncOutbox(outbox), PREFIX, "edge-agent-gw-test")
    try:
        with structlog.testing.capture_logs() as logs:
            async with (
                Collector(mosquitto.port, f"{PREFIX}/telemetry") as collector,
                uplink,
            ):

                def received() -> Counter[int]:
                    return Counter(seq_of(m.payload) for m in collector.messages)

                await collector.wait_for("every message", lambda: len(received()) == count)
                await eventually("an ack failure", lambda: uplink.state.ack_error is not None)
                await asyncio.sleep(3)  # time for repeats, if any were to come
                assert uplink.state.connects == 1  # the session was never torn down
                assert uplink.state.acks_unsaved == count
                assert outbox.stats().messages == count  # nothing removed: still unwritable
                assert max(received().values()) == 1
                failed = [e for e in logs if e["event"].startswith("outbox ack failed")]
                assert len(failed) == 1  # retried with a backoff, logged at most once a minute

                release()
                await eventually("the outbox emptied", lambda: outbox.stats().messages == 0, 20)
                assert uplink.state.acks_unsaved == 0
                assert uplink.state.ack_error is None
                assert uplink.state.connects <= 2
                assert max(received().values()) <= 2
        assert any(e["event"] == "outbox ack works again" for e in logs)
    finally:
        outbox.close()


async def test_a_stop_cut_short_while_draining_still_ends_the_session(
    tmp_path: Path, silent: SilentBroker
) -> None:
    """The agent's stop deadline may cancel the uplink's leaving while it drains the outbox to a
    broker that never acknowledges: the session still says `offline` and ends, rather than
    running on until the event loop itself ends (past the 5 s the agent has after SIGTERM)."""
    outbox = Outbox(tmp_path / "outbox.db", init_key(tmp_path / "state"), "gw-test")
    outbox.open()
    outbox.put_many([("telemetry", {"n": i}, Priority.TELEMETRY) for i in range(5)])
    settings = UplinkConfig.model_validate({"broker": silent.url})
    uplink = Uplink(settings, AsyncOutbox(outbox), PREFIX, "edge-agent-gw-test")
    try:
        await uplink.__aenter__()
        await eventually("the queue published", lambda: len(signed(silent)) == 5)
        leaving = asyncio.create_task(uplink.__aexit__(None, None, None))
        await asyncio.sleep(0.3)
        assert not leaving.done()  # draining: nothing is acknowledged, so nothing leaves
        leaving.cancel()  # the stop deadline
        with pytest.raises(asyncio.CancelledError):
            await leaving
        await eventually("the session ended", lambda: not uplink.state.connected, timeout=5)
        assert any(p.topic.endswith("/state") and p.payload == b"offline" for p in silent.publishes)
    finally:
        outbox.close()
