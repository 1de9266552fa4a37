"""What can be asked of a running agent: one place, typed, each read-only or changing.

The control socket (local CLI) calls these, and remote diagnosis will call the same ones. Each
operation takes typed arguments and returns a JSON-able result (shapes documented in
README.md); `OPERATIONS` is the table the faces use, with each operation's argument parser
and whether it changes anything. A request that cannot be served raises `OperationError`
with a one-line reason for the person who asked.
"""

from __future__ import annotations

import base64
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.checks.framework import CheckResult, sort_results
from agent.checks.view import AgentView
from agent.diagnosis import support_bundle
from agent.logs import LOG_RING
from agent.protocols.driver import DriverError, PollAnswer
from agent.render import poll_json
from agent.status import message_summary, status_dict
from agent.update.gate import Observation

MAX_PEEK = 1000
SUPPORT_BUNDLE_SINCE = 86400.0  # seconds of logs in a support bundle unless asked otherwise


class OperationError(Exception):
    """A request the agent cannot serve; the message says why in one line."""


class RunningAgent(Protocol):
    """What operations need of the running agent (the daemon provides it)."""

    async def snapshot(self) -> AgentView: ...

    def check_results(self) -> list[CheckResult]: ...

    async def run_checks(self) -> list[CheckResult]: ...

    async def outbox_summary(self, limit: int) -> tuple[dict[str, Any], list[Any]]: ...

    async def poll(self, terminal: str) -> PollAnswer: ...

    async def ask(self, terminal: str, request: Mapping[str, Any]) -> dict[str, Any]: ...

    async def reload(self) -> bool: ...

    async def flush_history(self) -> Path | None: ...

    async def observe(self) -> Observation: ...

    async def grant_consent(
        self, minutes: int, by: str, actions: Sequence[str] | None
    ) -> dict[str, Any]: ...

    async def revoke_consent(self, by: str) -> dict[str, Any]: ...

    def consent_status(self) -> dict[str, Any]: ...


class Operations:
    """The operations over one running agent."""

    def __init__(self, agent: RunningAgent) -> None:
        self.agent = agent

    async def status(self) -> dict[str, Any]:
        """The agent at a glance (`edge-agent status --json`)."""
        return status_dict(await self.agent.snapshot(), self.agent.check_results())

    async def checks(self, run: bool = False) -> list[dict[str, Any]]:
        """The latest check results, or every check run now."""
        results = await self.agent.run_checks() if run else self.agent.check_results()
        return [r.to_dict() for r in sort_results(results)]

    async def terminals(self) -> list[dict[str, Any]]:
        terminals: list[dict[str, Any]] = (await self.status())["terminals"]
        return terminals

    async def outbox(self, limit: int = 0) -> dict[str, Any]:
        """The outbox's figures and up to `limit` of the messages waiting, decoded."""
        stats, pending = await self.agent.outbox_summary(max(0, min(limit, MAX_PEEK)))
        now = time.time()
        return {
            "stats": stats,
            "messages": [
                message_summary(m.seq, m.kind, m.priority, m.payload, m.size, m.created_at, now)
                for m in pending
            ],
        }

    async def poll(self, terminal: str) -> dict[str, Any]:
        """Read every point of one polled terminal now."""
        try:
            return poll_json(await self.agent.poll(terminal))
        except DriverError as exc:
            raise OperationError(str(exc)) from None

    async def query(self, terminal: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """A protocol's own request to a terminal (SL651: ask a station for elements)."""
        try:
            return await self.agent.ask(terminal, request)
        except DriverError as exc:
            raise OperationError(str(exc)) from None

    async def reload(self) -> dict[str, Any]:
        """Apply the config file as it is now (refused, and the running one kept, if bad)."""
        return {"reloaded": await self.agent.reload()}

    async def history_flush(self) -> dict[str, Any]:
        """Write the buffered history now, so a report covers the period up to now."""
        try:
            path = await self.agent.flush_history()
        except (OSError, sqlite3.Error) as exc:
            raise OperationError(f"cannot write the history now: {exc}") from None
        if path is None:
            raise OperationError("no history is kept (checks.history.enabled is false)")
        return {"path": str(path)}

    async def support_bundle(self, since: float = SUPPORT_BUNDLE_SINCE) -> dict[str, Any]:
        """The support bundle with the logs of the last `since` seconds (agent/diagnosis/
        support_bundle.py): `{"gateway", "bytes", "base64"}`, the .tar.gz base64-encoded."""
        config = (await self.agent.snapshot()).config
        source = support_bundle.AgentSource(self, config, LOG_RING.recent)
        data = await support_bundle.build(source, since=time.time() - since, layout=config.layout)
        return {
            "gateway": config.gateway.id,
            "bytes": len(data),
            "base64": base64.b64encode(data).decode("ascii"),
        }

    async def update_baseline(self) -> dict[str, Any]:
        """What a release on trial must match (asked by `update apply` before the switch)."""
        return (await self.agent.observe()).baseline()

    async def diag_grant(
        self, minutes: int, by: str, actions: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Open the site owner's consent window for remote diagnosis (docs/diagnosis.md)."""
        return await self.agent.grant_consent(minutes, by, actions)

    async def diag_revoke(self, by: str) -> dict[str, Any]:
        """Close the consent window now."""
        return await self.agent.revoke_consent(by)

    async def diag_status(self) -> dict[str, Any]:
        """The consent mode and the open window, if any."""
        return self.agent.consent_status()


Args = Mapping[str, Any]


@dataclass(frozen=True)
class Operation:
    """One entry of the table: its name, whether it changes anything, how to call it."""

    name: str
    changes: bool
    call: Callable[[Operations, Args], Awaitable[Any]]
    summary: str


def _text(args: Args, key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise OperationError(f"{key}: a non-empty string is required")
    return value


def _count(args: Args, key: str) -> int:
    value = args.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise OperationError(f"{key}: a whole number is required")
    return value


def _seconds(args: Args, key: str, default: float) -> float:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise OperationError(f"{key}: a positive number of seconds is required")
    return float(value)


def _actions(args: Args) -> list[str] | None:
    value = args.get("actions")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise OperationError("actions: a list of action names is required")
    return value


def _by(args: Args) -> str:
    value = args.get("by")
    if not isinstance(value, str) or not value.strip():
        raise OperationError("by: who grants or revokes is required")
    return value


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("status", False, lambda o, a: o.status(), "the agent at a glance"),
        Operation(
            "checks", False, lambda o, a: o.checks(bool(a.get("run"))), "check results (run: now)"
        ),
        Operation("terminals", False, lambda o, a: o.terminals(), "every terminal's state"),
        Operation(
            "outbox", False, lambda o, a: o.outbox(_count(a, "limit")), "the outbox; limit: peek"
        ),
        Operation(
            "poll", False, lambda o, a: o.poll(_text(a, "terminal")), "poll a terminal once now"
        ),
        Operation(
            "query",
            True,
            lambda o, a: o.query(_text(a, "terminal"), a),
            "a protocol's request to a terminal",
        ),
        # The name SL651 users know; the same operation as `query`.
        Operation(
            "sl651-query",
            True,
            lambda o, a: o.query(_text(a, "terminal"), a),
            "ask an SL651 station for elements",
        ),
        Operation("reload", True, lambda o, a: o.reload(), "apply the config file now"),
        Operation("history-flush", True, lambda o, a: o.history_flush(), "write the history now"),
        Operation(
            "support-bundle",
            False,
            lambda o, a: o.support_bundle(_seconds(a, "since", SUPPORT_BUNDLE_SINCE)),
            "the support bundle (base64 .tar.gz); since: seconds of logs",
        ),
        Operation(
            "update-baseline",
            False,
            lambda o, a: o.update_baseline(),
            "terminals answering, uplink, failing checks (an update's gate)",
        ),
        Operation(
            "diag-grant",
            True,
            lambda o, a: o.diag_grant(_count(a, "minutes"), _by(a), _actions(a)),
            "open a consent window for remote diagnosis",
        ),
        Operation(
            "diag-revoke", True, lambda o, a: o.diag_revoke(_by(a)), "close the consent window"
        ),
        Operation("diag-status", False, lambda o, a: o.diag_status(), "remote-diagnosis consent"),
    )
}
