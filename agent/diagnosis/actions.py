"""The allow-list: every action a diagnosis request may name, over `ActionContext` only.

`ALL` lists them (docs/diagnosis.md, "Actions"), `ACTIONS` by name; the names are exactly
`settings.ACTION_NAMES`. Each validates its own `args` (an `ActionError` with a clear reason
for anything else) and returns a JSON value; the part runs it within its time limit.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from agent.diagnosis.redact import redact_config
from agent.diagnosis.registry import REQUESTER, ActionContext, ActionError, ActionSpec
from agent.diagnosis.support_bundle import build as build_support_bundle
from agent.model import format_timestamp
from agent.operations import OperationError

T = TypeVar("T")
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_SINCE = 30 * 24 * 3600.0
MAX_LOG_LIMIT = 10_000


async def _op(call: Awaitable[T]) -> T:
    """An operation's result; its refusal as the action's."""
    try:
        return await call
    except OperationError as exc:
        raise ActionError(str(exc)) from None


def _only(args: Mapping[str, Any], *names: str) -> None:
    unknown = sorted(set(args) - set(names))
    if unknown:
        allowed = ", ".join(names) if names else "none"
        raise ActionError(f"unknown args {', '.join(unknown)} (allowed: {allowed})")


def _text(args: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = args.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise ActionError(f"{key}: a non-empty string is required")
    return value.strip()


def _number(args: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ActionError(f"{key}: a number from {low:g} to {high:g} is required")
    return float(value)


def _whole(args: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ActionError(f"{key}: a whole number from {low} to {high} is required")
    return value


def _level(args: Mapping[str, Any], default: str | None = None) -> str:
    level = _text(args, "level", default).lower()
    if level not in LOG_LEVELS:
        raise ActionError(f"level: one of {', '.join(LOG_LEVELS)}")
    return level


# -- health: no site data, nothing changed -----------------------------------------------------


async def status(ctx: ActionContext, args: Mapping[str, Any]) -> Any:
    _only(args)
    return await _op(ctx.operations.status())


async def checks(ctx: ActionContext, args: Mapping[str, Any]) -> Any:
    _only(args, "run")
    run = args.get("run", False)
    if not isinstance(run, bool):
        raise ActionError("run: true or false")
    return await _op(ctx.operations.checks(run))


async def ping_upstream(ctx: ActionContext, args: Mapping[str, Any]) -> Any:
    _only(args)
    return await ctx.ping_upstream()


async def update_check(ctx: ActionContext, args: Mapping[str, Any]) -> Any:
    """What `edge-agent update check --json` prints, with the agent's own metadata (even when
    the agent runs as root: root's trusted metadata is root's `update apply` business)."""
    _only(args)
    from agent.update.apply import ApplyError
    from agent.update.trust import UpdateRejected
    from agent.update.update_cli import newest_release

    try:
        return await asyncio.to_thread(newest_release, ctx.config, agent_copy=True)
    except ApplyError as exc:
        raise ActionError(exc.reason) from None
    except UpdateRejected as exc:
        raise ActionError(f"{exc.check}: {exc.reason}") from None


# -- site data ----------------------------------------------------------------------------------


async def logs(ctx: ActionContext, args: Mapping[str, Any]) -> Any:
    _only(args, "level", "since", "limit")
    level = _level(args, "info")
    since = _number(args, "since", 3600, 1, MAX_SINCE)
    limit = _whole(args, "limit", 500, 1, MAX_LOG_LIMIT)
    return ctx.recent_logs(level, time.time() - since, limit)


async def read_point(ctx: ActionContext, args: Mapping[str, Any]) -> Any:
    _only(args, "terminal", "point")
    terminal, point = _text(args, "terminal"), _text(args, "point")
    answer = await _op(ctx.operations.poll(terminal))
    for reading in answer["readings"]:
        if reading["point"] == point:
            return {"terminal": terminal, **reading}
    known = ", ".join(r["point"] for r in answer["readings"]) or "none"
    raise ActionError(f"{terminal} has no point {point!r} (points: {known})")


async def poll(ctx: ActionContext, args: Mapping[str, Any]) -> Any:
    _only(args, "terminal")
    return await _op(ctx.operations.poll(_text(args, "terminal")))


async def config(ctx: ActionContext, args: Mapping[str, Any]) -> Any:
    _only(args)
    return redact_config(ctx.config)


async def outbox(ctx: ActionContext, args: Mapping[str, Any]) -> Any:
    _only(args, "limit")
    return await _op(ctx.operations.outbox(_whole(args, "limit", 0, 0, 1000)))


async def support_bundle(ctx: ActionContext, args: Mapping[str, Any]) -> Any:
    _only(args, "since")
    since = _number(args, "since", 86400, 60, MAX_SINCE)
    data = await build_support_bundle(ctx, since=time.time() - since, layout=ctx.config.layout)
    return {
        "name": f"support-{ctx.config.gateway.id}-{int(time.time())}.tar.gz",
        "bytes": len(data),
        "base64": base64.b64encode(data).decode("ascii"),
    }


# -- changes -----------------------------------------------------------------------------------


async def restart_terminal(ctx: ActionContext, args: Mapping[str, Any]) -> Any:
    _only(args, "terminal")
    return await ctx.restart_terminal(_text(args, "terminal"))


async def log_level(ctx: ActionContext, args: Mapping[str, Any]) -> Any:
    _only(args, "level", "minutes")
    level = _level(args)
    minutes = _number(args, "minutes", 0, 1, 120)
    reverts_to = ctx.set_log_level(level, minutes * 60)
    until = format_timestamp(datetime.fromtimestamp(time.time() + minutes * 60, UTC), "seconds")
    return {"level": level, "until": until, "reverts_to": reverts_to}


async def update_rollback(ctx: ActionContext, args: Mapping[str, Any]) -> Any:
    """Ask root to roll back: `pending/request.json`, which starts `update apply --pending`."""
    _only(args, "reason")
    from agent.update.requests import pending_request, request_rollback

    reason = _text(args, "reason")
    if len(reason) > 200:
        raise ActionError("reason: at most 200 characters")
    layout = ctx.config.layout
    if await asyncio.to_thread(pending_request, layout) is not None:
        raise ActionError("a request for root is already waiting (update/pending/request.json)")
    recorded = f"remote: {REQUESTER.get() or 'unknown'}: {reason}"
    await asyncio.to_thread(request_rollback, layout, recorded)
    return {"requested": "rollback", "reason": recorded}


ALL: tuple[ActionSpec, ...] = (
    ActionSpec("status", status, "the status --json shape"),
    ActionSpec("checks", checks, "check results (run: run them now)"),
    ActionSpec("ping-upstream", ping_upstream, "the broker's round trip now"),
    ActionSpec("update-check", update_check, "edge-agent update check --json"),
    ActionSpec("logs", logs, "recent log events, secrets redacted", site_data=True),
    ActionSpec("read-point", read_point, "one point read now", site_data=True),
    ActionSpec("poll", poll, "every point of a terminal read now", site_data=True),
    ActionSpec("config", config, "the running config, secrets redacted", site_data=True),
    ActionSpec("outbox", outbox, "outbox statistics (and the oldest messages)", site_data=True),
    ActionSpec(
        "support-bundle", support_bundle, "the support bundle (base64 .tar.gz)", site_data=True
    ),
    ActionSpec(
        "restart-terminal", restart_terminal, "close and reopen one terminal's link", changes=True
    ),
    ActionSpec("log-level", log_level, "log at a level for a while", changes=True),
    ActionSpec("update-rollback", update_rollback, "ask root to roll back a release", changes=True),
)
ACTIONS: dict[str, ActionSpec] = {spec.name: spec for spec in ALL}
