"""A new protocol through the one driver interface: a smoke test with the real daemon in-process.

The protocol, "counter", lives only in this file: a terminal model, a driver that submits one
reading per 100 ms and commits one report, and the `DriverSpec` that registers it. The daemon
is given it with `drivers=(*DRIVERS, COUNTER)` and runs with no broker, its state in tmp_path.

A limitation worked around here: the config's terminal union (`agent.config.Terminal`) is
built from `agent.protocols.registry.DRIVERS` when `agent.config` is imported, so a config
*file* cannot name a protocol registered at run time (`parse_config` refuses "counter"). The
test validates the counter terminal with its own model, then puts it into a config parsed
from YAML with `Config.model_copy(update={"terminals": ...})`, which does not validate again:
the daemon and the driver then see it in `config.terminals` as they would see any terminal.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import pytest
import yaml

from agent.config import Config, ConfigError
from agent.config_base import TerminalModel
from agent.daemon import Daemon
from agent.model import (
    Quality,
    Reading,
    TerminalClock,
    TerminalInfo,
    TerminalStats,
    TerminalView,
)
from agent.outbox import Outbox
from agent.protocols.driver import Driver, DriverContext, DriverError, DriverSpec, PollAnswer
from agent.protocols.registry import DRIVERS
from agent.signing import load_key
from agent.telemetry import expand, open_token
from tests.agentproc import short_socket_path
from tests.conftest import make_config


class CounterTerminal(TerminalModel):
    """A terminal of the test protocol: counts, one reading per `period` seconds."""

    protocol: Literal["counter"]
    period: float = 0.1

    @property
    def info(self) -> TerminalInfo:
        return TerminalInfo(
            self.name, self.protocol, f"counter:{self.name}", self.period, True, ("count",)
        )


@dataclass
class Trace:
    """What the test driver did, for the test to assert."""

    entered: int = 0
    left: int = 0
    halted: int = 0  # `halt` calls (HaltingDriver)
    left_when_halted: int | None = None
    submitted_after_leaving: int = 0
    last_submitted: int = 0
    polls: list[str] = field(default_factory=list)
    committed: asyncio.Event = field(default_factory=asyncio.Event)
    report_durable_when_committed: bool | None = None


TRACE = Trace()


class CounterDriver:
    """The "counter" protocol's runtime: one task per terminal, behind the Driver protocol."""

    def __init__(self, context: DriverContext) -> None:
        self.context = context
        self.terminals = context.config.terminals_of(CounterTerminal)
        self.stats = {t.name: TerminalStats() for t in self.terminals}
        self.count = dict.fromkeys(self.stats, 0)
        self.tasks: list[asyncio.Task[None]] = []
        self.running = False

    async def __aenter__(self) -> Self:
        TRACE.entered += 1
        self.running = True
        self.tasks = [asyncio.create_task(self._count(t)) for t in self.terminals]
        self.tasks += [asyncio.create_task(self._report(t)) for t in self.terminals]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.running = False
        TRACE.left += 1

    def _reading(self, terminal: str, value: int) -> Reading:
        return Reading(
            terminal, "count", value, "1", Quality.GOOD, datetime.now(UTC), f"counter:{value}"
        )

    def _next(self, terminal: str) -> Reading:
        self.count[terminal] += 1
        stats = self.stats[terminal]
        stats.polls += 1
        stats.outcomes.append(True)
        stats.last_good_at = datetime.now(UTC)
        return self._reading(terminal, self.count[terminal])

    async def _count(self, terminal: CounterTerminal) -> None:
        while True:
            await asyncio.sleep(terminal.period)
            if not self.running:
                TRACE.submitted_after_leaving += 1
            reading = self._next(terminal.name)
            self.context.intake.submit([reading])
            TRACE.last_submitted = self.count[terminal.name]

    async def _report(self, terminal: CounterTerminal) -> None:
        """One report, confirmed only once durable (as an SL651 station's would be)."""
        report = [self._reading(terminal.name, -1)]
        event = {"type": "report", "terminal": terminal.name}
        await self.context.intake.commit(report, [event])
        # Read the outbox file with a connection of our own, the moment commit returns.
        db = sqlite3.connect(self.context.config.outbox_path)
        try:
            rows = db.execute("SELECT kind, payload FROM messages").fetchall()
        finally:
            db.close()
        stored = [(kind, body_of(payload)) for kind, payload in rows]
        TRACE.report_durable_when_committed = ("event", event) in stored and any(
            kind == "telemetry" and -1 in [r["value"] for r in expand(body, {})]
            for kind, body in stored
        )
        TRACE.committed.set()

    def halt(self) -> None:
        """Take no more readings (agent.protocols.driver.HaltingDriver)."""
        TRACE.halted += 1
        TRACE.left_when_halted = TRACE.left
        self.running = False
        for task in self.tasks:
            task.cancel()

    async def apply(self, config: Config) -> None:
        raise NotImplementedError  # no reload in this test

    def views(self) -> dict[str, TerminalView]:
        return {t.name: TerminalView(t.info, self.stats[t.name]) for t in self.terminals}

    def clocks(self) -> dict[str, TerminalClock]:
        return {}

    def buses(self) -> dict[str, float]:
        return {}

    def watch_allowance(self) -> float | None:
        return None

    async def poll(self, terminal: str) -> PollAnswer:
        TRACE.polls.append(terminal)
        r = self._next(terminal)
        return PollAnswer(terminal, f"counter:{terminal}", [r], fields={r.point: {"n": r.value}})

    async def ask(self, terminal: str, request: Mapping[str, Any]) -> dict[str, Any]:
        raise DriverError("counter terminals answer no requests")

    async def restart(self, terminal: str) -> dict[str, Any]:
        raise DriverError("counter terminals have no link to restart")


def create(context: DriverContext) -> Driver:
    return CounterDriver(context)


COUNTER = DriverSpec("counter", (CounterTerminal,), create)


def body_of(payload: str) -> Any:
    """The body of a stored message (a JWS), not verified (tests/test_signing.py does that)."""
    return open_token(payload)["body"]


def bodies(outbox: Outbox, kind: str) -> list[Any]:
    """The bodies of the messages of one kind waiting in the outbox, by seq."""
    messages = sorted(outbox.pending(10_000), key=lambda m: m.seq)
    return [body_of(m.payload) for m in messages if m.kind == kind]


async def test_a_protocol_registered_through_a_driver_spec_runs_in_the_daemon_end_to_end(
    tmp_path: Path,
) -> None:
    global TRACE
    TRACE = Trace()
    config_path = tmp_path / "config.yaml"
    state = tmp_path / "state"
    base = make_config([], state_dir=str(state), control={"socket": short_socket_path(config_path)})
    config_path.write_text(yaml.safe_dump({"gateway": {"id": "gw-test"}}))
    counter = CounterTerminal.model_validate({"name": "c1", "protocol": "counter"})
    config = base.model_copy(update={"terminals": [counter]})
    assert COUNTER.protocols == ("counter",)

    daemon = Daemon(config, config_path, drivers=(*DRIVERS, COUNTER))
    agent = asyncio.create_task(daemon.run())
    try:
        async with asyncio.timeout(4):
            while daemon.parts is None:
                await asyncio.sleep(0.02)
            assert TRACE.entered == 1 and TRACE.left == 0
            assert daemon.parts.writer.batch == 5000  # messages of schema 2's default size
            await TRACE.committed.wait()
            await asyncio.sleep(0.6)  # some readings, and a linger (0.2 s) to store them

            status = await daemon.operations.status()
            [terminal] = status["terminals"]
            assert terminal["name"] == "c1" and terminal["protocol"] == "counter"
            assert terminal["address"] == "counter:c1" and terminal["polls"] >= 3
            snapshot = await daemon.snapshot()
            assert snapshot.terminals["c1"].info == counter.info

            answer = await daemon.operations.poll("c1")
            [polled] = answer["readings"]
            assert TRACE.polls == ["c1"] and answer["terminal"] == "c1" and polled["n"] >= 4

            while_running = await daemon.operations.outbox(limit=100)
            assert {m["kind"] for m in while_running["messages"]} >= {"event", "telemetry"}
    finally:
        daemon.request_stop()  # as SIGTERM does
        halted_at_the_request = TRACE.halted  # before the loop turned once
        await asyncio.wait_for(agent, 5)

    # Halted at the request itself, before any part left (a large site's pollers would keep
    # the loop busy while the parts before the drivers leave); then left once.
    assert halted_at_the_request == 1 and TRACE.left_when_halted == 0
    assert TRACE.left == 1 and TRACE.submitted_after_leaving == 0
    assert TRACE.report_durable_when_committed  # commit returned once the report was stored

    outbox = Outbox(config.outbox_path, load_key(state), "gw-test")
    with outbox:
        telemetry = [r for b in bodies(outbox, "telemetry") for r in expand(b, {})]
        events = bodies(outbox, "event")
    counted = [r["value"] for r in telemetry if r["terminal"] == "c1" and r["value"] > 0]
    assert len(counted) >= 4 and counted == sorted(counted)  # every reading stored, in order
    assert counted[-1] == TRACE.last_submitted  # the last ones too, gathered when it stopped
    assert set(counted) >= set(range(1, max(counted) + 1)) - {polled["n"]}
    assert [r["value"] for r in telemetry if r["value"] == -1] == [-1]  # the report's reading
    assert {"type": "report", "terminal": "c1"} in events


def test_a_config_file_cannot_name_a_protocol_registered_only_at_run_time() -> None:
    """The limitation the test above works around: the terminal union is fixed at import.

    If this starts failing, the config takes protocols registered at run time: the test above
    can then write its terminal in the config file instead of using `model_copy`.
    """
    with pytest.raises(ConfigError, match="counter"):
        make_config([{"name": "c1", "protocol": "counter"}])
