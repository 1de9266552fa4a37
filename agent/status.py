"""`edge-agent status`: the running agent at a glance, most important first.

`status_dict` is the stable JSON shape (documented in README.md), built in the daemon from the
same snapshot the checks read; `offline_status` is what can be read from disk when the agent
does not run (the last health report it saved, the outbox's depth; `unconfigured_status` when
the config's errors hide where those are); `status_view` renders either for people. Pure
functions over values: no sockets, no printing.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.check_settings import checks_settings
from agent.checks.framework import CheckResult, Status
from agent.checks.health import summarise
from agent.checks.view import AgentView
from agent.durations import approximate_duration
from agent.model import TerminalView, format_timestamp, parse_timestamp
from agent.outbox import QUEUE_NAMES, RESERVE_SUFFIX, OutboxError, OutboxStats, read_stats
from agent.signing import read_envelope
from agent.storage.layout import StateLayout
from agent.telemetry import count_readings
from agent.update.state import StateError, UpdateStore, describe

if TYPE_CHECKING:  # rich only in the views, which the CLI calls: the daemon never loads it
    from rich.console import RenderableType
    from rich.table import Table
    from rich.text import Text

    from agent.config import Config

SCHEMA = 1
QUEUE_BY_NUMBER = {int(p): name for p, name in QUEUE_NAMES.items()}  # as stored in the database
STALE_INTERVALS = 3.0


def _stamp(posix: float | None) -> str | None:
    return None if posix is None else format_timestamp(datetime.fromtimestamp(posix, UTC))


def _age(since: datetime | None, now: datetime) -> float | None:
    return None if since is None else round(max(0.0, (now - since).total_seconds()), 1)


def terminal_state(t: TerminalView, now: datetime) -> str:
    """waiting (nothing yet) · ok · failing (last attempt failed) · stale (no good reading for
    3 intervals)."""
    s = t.stats
    if s.polls == 0 and s.failed_polls == 0:
        return "waiting"
    if s.consecutive_failures:
        return "failing"
    interval = t.interval
    age = None if s.last_good_at is None else (now - s.last_good_at).total_seconds()
    if age is not None and interval is not None and age > STALE_INTERVALS * interval:
        return "stale"
    return "ok"


def _shape() -> dict[str, Any]:
    """Every key `status --json` has, whether the running agent answered (`source: agent`),
    the state directory was read (`disk`: the agent does not run) or nothing could be (`none`:
    the config is invalid, so nothing says where the state is); what is not known is null or
    empty."""
    return {
        "schema": SCHEMA,
        "source": "none",
        "running": False,
        "status": "not running",
        "config": None,
        "config_errors": [],
        "agent": None,
        "last_health": None,
        "update": None,
        "uplink": None,
        "outbox": None,
        "terminals": [],
        "checks": None,
        "diagnosis": None,
        "counters": {},
    }


def status_dict(
    view: AgentView, results: Sequence[CheckResult], now: datetime | None = None
) -> dict[str, Any]:
    """The `status --json` shape, schema 1."""
    now = now or datetime.now(UTC)
    u = view.uplink
    uplink = None
    if view.config.uplink.broker is not None and u is not None:
        uplink = {
            "broker": u.broker,
            "connected": u.connected,
            "since": _stamp(u.connected_since if u.connected else u.disconnected_since),
            "last_ack_at": _stamp(u.last_ack_at),
            "published": u.published,
            "refused": u.refused,
            "last_error": u.last_error,
        }
        uplink.update(_acknowledgements(view, now))
    terminals = []
    for name, t in sorted(view.terminals.items()):
        s = t.stats
        p95 = s.latency_p95()
        terminals.append(
            {
                "name": name,
                "protocol": t.protocol,
                "address": t.address,
                "state": terminal_state(t, now),
                "last_good_at": format_timestamp(s.last_good_at) if s.last_good_at else None,
                "last_good_age": _age(s.last_good_at, now),
                "success_ratio": None if s.success_ratio is None else round(s.success_ratio, 4),
                "latency_p95": None if p95 is None else round(p95, 4),
                "polls": s.polls,
                "failed": s.failed_polls,
                # Slots skipped: all, because the agent was behind, held back by the outbox;
                # and polls started late (the agent behind, though not skipping).
                "missed_slots": s.missed_slots,
                "behind_slots": s.behind_slots,
                "held_slots": s.held_slots,
                "late_starts": s.late_starts,
                "last_error": s.last_error,
            }
        )
    summary = summarise(results)
    checks = {
        "summary": summary,
        "failing": [r.to_dict() for r in results if r.status is Status.FAIL],
        "warning": [r.to_dict() for r in results if r.status is Status.WARN],
    }
    failing = bool(checks["failing"]) or any(t["state"] in ("failing", "stale") for t in terminals)
    config_path = str(view.config_path) if view.config_path else None
    return {
        **_shape(),
        "source": "agent",
        "running": True,
        "status": "failing" if failing else "ok",
        "config": config_path,
        "agent": {
            "version": view.version,
            "pid": os.getpid(),
            "started_at": format_timestamp(view.started_at),
            "uptime": _age(view.started_at, now),
            "config": config_path,
            "gateway": view.config.gateway.id,
        },
        "update": dict(view.update) if view.update is not None else None,
        "uplink": uplink,
        "outbox": None if view.outbox is None else {"source": "agent", **view.outbox.to_dict()},
        "terminals": terminals,
        "checks": checks,
        "diagnosis": dict(view.diagnosis) if view.diagnosis is not None else None,
        "counters": dict(sorted(view.counters.items())),
    }


def _acknowledgements(view: AgentView, now: datetime) -> dict[str, Any]:
    """How long the broker has left our publishes without a PUBACK, and acknowledgements the
    outbox could not save yet (`status --json` uplink fields; README, status)."""
    u = view.uplink
    assert u is not None
    waited = None
    if u.connected and u.unacked_since is not None:
        waited = round(max(0.0, now.timestamp() - u.unacked_since), 1)
    warn = checks_settings(view.config).network.ack_warn
    return {
        "inflight": u.inflight,
        "no_ack_for": waited,
        "ack_late": waited is not None and waited >= warn,
        "resent": u.resent,
        "acks_unsaved": u.acks_unsaved,
        "ack_error": u.ack_error,
    }


def health_path(state_dir: Path) -> Path:
    """The last health report kept on disk (`StateLayout.health`)."""
    return StateLayout(state_dir).health


def outbox_on_disk(path: Path, max_bytes: int, reserve_target: int) -> dict[str, Any]:
    """The outbox's figures read from its database when no agent has it open (read-only), in
    the shape the running agent gives (`Outbox` stats), with `"source": "disk"`. What only the
    running agent knows is null; `state` is `absent` (no database yet), `closed` (read from
    the file) or `unreadable` (with `error`)."""
    error: str | None = None
    try:
        stats = read_stats(path, max_bytes, reserve_target)
    except OutboxError as exc:
        stats, error = None, str(exc)
    shown = (
        stats or OutboxStats(0, 0, 0, 0, max_bytes, None, 0, 0, None, False, 0, None)
    ).to_dict()
    shown.update(source="disk", over_budget=None, full_since=None)
    if stats is None:
        shown["reserve"] = {
            "bytes": _size(path.with_name(path.name + RESERVE_SUFFIX)),
            "target": reserve_target,
        }
        shown.update(last_seq=None, state="unreadable" if error else "absent")
        return {**shown, "error": error} if error else shown
    if stats.oldest_age is not None:
        shown["oldest_age"] = round(stats.oldest_age, 1)
    return {**shown, "state": "closed"}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def offline_status(config: Config, config_path: Path) -> dict[str, Any]:
    """What `status` can still say when the agent does not run."""
    state_dir = config.state_dir
    health: dict[str, Any] | None = None
    try:
        health = json.loads(health_path(state_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        health = None
    return {
        **_shape(),
        "source": "disk",
        "config": str(config_path),
        "last_health": health,
        "outbox": config_outbox_on_disk(config),
        "update": update_summary(state_dir),
    }


def config_outbox_on_disk(config: Config) -> dict[str, Any]:
    """`outbox_on_disk` of the outbox the config says."""
    return outbox_on_disk(config.outbox_path, config.outbox.max_bytes, config.outbox.reserve_bytes)


def update_summary(state_dir: Path) -> dict[str, Any] | None:
    """The update record's summary read from disk (None when it cannot be read)."""
    try:
        return UpdateStore(StateLayout(state_dir)).summary()
    except StateError:
        return None


def update_line(update: dict[str, Any] | None, now: datetime | None = None) -> Text | None:
    """One line for people: "committed 0.2.0", "on trial 0.3.0, 7m left", "rolled back …"."""
    from rich.text import Text

    if not update or "state" not in update:
        return None
    state, last = update["state"], update.get("last") or {}
    style = {
        "trial": "yellow",
        "staging": "yellow",
        "committed": "green",
        "rolled_back": "bold red",
    }
    line = Text("update     ")
    line.append(describe(update, now), style.get(state, ""))
    if last.get("outcome") == "rejected":
        line.append(
            f" · last rejected {last.get('version') or 'bundle'}: {last.get('reason')}", "red"
        )
    return line


def unconfigured_status(config_path: Path, errors: Sequence[str]) -> dict[str, Any]:
    """`offline_status` when the config has errors: nothing says where the state is kept."""
    return {**_shape(), "config": str(config_path), "config_errors": list(errors)}


# -- rendering ---------------------------------------------------------------------------------

STATE_STYLE = {"ok": "green", "failing": "bold red", "stale": "yellow", "waiting": "dim"}
CHECK_STYLE = {"fail": "bold red", "warn": "yellow"}


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else approximate_duration(seconds)


def approximate_size(size: float) -> str:
    """Bytes for people: ``512 B``, ``80 KiB``, ``3.5 MiB``, ``1.2 GiB``."""
    if size < 1024:
        return f"{size:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.0f} {unit}" if size >= 10 else f"{size:.1f} {unit}".replace(".0 ", " ")


def _waiting(m: dict[str, int]) -> str:
    return (
        f"{sum(m.values())} waiting ({m['events']} events, {m['health']} health, "
        f"{m['telemetry']} telemetry)"
    )


def _since(stamp: object, now: datetime) -> float | None:
    """Seconds from an RFC 3339 time to `now`; None for anything else (null, say)."""
    try:
        when = parse_timestamp(str(stamp))
    except ValueError:
        return None
    return (now - when).total_seconds()


def _ago(stamp: object, now: datetime) -> str:
    """ " (5m02s ago)" for an RFC 3339 time, "" for anything else."""
    seconds = _since(stamp, now)
    return "" if seconds is None else f" ({_duration(seconds)} ago)"


def _outbox_line(outbox: dict[str, Any] | None, now: datetime | None = None) -> Text:
    from rich.text import Text

    if outbox is None or outbox.get("state") == "absent":
        return Text("outbox     none yet")
    if "error" in outbox:
        return Text(f"outbox     unreadable: {outbox['error']}", "red")
    m = outbox["messages"]
    total = sum(m.values())
    line = Text(f"outbox     {_waiting(m)}, {approximate_size(outbox['bytes'])}")
    if outbox.get("oldest_age") is not None and total:
        line.append(f", oldest {_duration(outbox['oldest_age'])}")
    if outbox.get("evicted"):
        line.append(f", {outbox['evicted']} evicted", "yellow")
    if outbox.get("recovered_from"):
        line.append(f", damaged database kept at {outbox['recovered_from']}", "red")
    state = outbox.get("state")
    if state == "disk full":
        full_for = _since(outbox.get("full_since"), now or datetime.now(UTC))
        line.append(
            "\n           DISK FULL"
            + ("" if full_for is None else f" for {_duration(full_for)}")
            + ": read-only, telemetry refused (counted as lost); "
            "acknowledgements, alarms and health use the reserve",
            "bold red",
        )
    elif state == "unavailable":
        line.append(
            "\n           DISK FULL: the outbox could not be opened; telemetry counted as lost, "
            "opened once there is room",
            "bold red",
        )
    lost = outbox.get("lost") or {}
    if lost.get("readings"):
        spans = ", ".join(
            f"{name} {t['readings']} ({t['from']} … {t['to']})"
            for name, t in lost.get("terminals", {}).items()
        )
        line.append(
            f"\n           {lost['readings']} readings lost, not reported yet: {spans}", "red"
        )
    return line


def status_view(status: dict[str, Any], now: datetime | None = None) -> RenderableType:
    """The one screen: agent, uplink, outbox, terminals, failing and warning checks; times as
    ages at `now` (the JSON has the timestamps)."""
    now = now or datetime.now(UTC)
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    if not status.get("running"):
        return _offline_view(status, now)
    a = status["agent"]
    parts: list[RenderableType] = []
    state = Text("OK", "bold green") if status["status"] == "ok" else Text("FAILING", "bold red")
    head = Text(f"edge-agent {a['version']} · gateway {a['gateway']} · ")
    head.append(state)
    parts.append(head)
    parts.append(
        Text(f"agent      running {_duration(a['uptime'])} (pid {a['pid']}) · config {a['config']}")
    )
    u = status["uplink"]
    if u is None:
        parts.append(Text("uplink     none configured (readings wait in the outbox)"))
    else:
        line = Text("uplink     ")
        since, acked = _since(u["since"], now), _since(u["last_ack_at"], now)
        late = u["connected"] and u.get("ack_late")
        style = ("bold yellow" if late else "green") if u["connected"] else "bold red"
        line.append("connected" if u["connected"] else "down", style)
        line.append("" if since is None else f" for {_duration(since)}", style)
        if late:
            line.append(f", no acknowledgement for {_duration(u['no_ack_for'])}", style)
        line.append(
            f" · {u['broker']} · "
            + ("no ack yet" if acked is None else f"last ack {_duration(acked)} ago")
        )
        if u["last_error"]:
            line.append(f" · {u['last_error']}", "red")
        if u.get("ack_error"):
            line.append(
                f" · {u['acks_unsaved']} delivered messages not yet removed from the outbox"
                f" ({u['ack_error']})",
                "red",
            )
        parts.append(line)
    parts.append(_outbox_line(status["outbox"], now))
    if (update := update_line(status.get("update"))) is not None:
        parts.append(update)
    table = Table(title="terminals", title_justify="left", expand=False)
    for column in (
        "name",
        "protocol",
        "address",
        "state",
        "last good",
        "success",
        "p95",
        "last error",
    ):
        table.add_column(column)
    for t in status["terminals"]:
        ratio = t["success_ratio"]
        table.add_row(
            t["name"],
            t["protocol"],
            t["address"],
            Text(t["state"], STATE_STYLE.get(t["state"], "")),
            f"{_duration(t['last_good_age'])} ago" if t["last_good_age"] is not None else "never",
            "-" if ratio is None else f"{ratio:.0%}",
            "-" if t["latency_p95"] is None else f"{t['latency_p95'] * 1000:.0f} ms",
            t["last_error"] or "",
        )
    parts.append(table)
    checks = status["checks"]
    listed = checks["failing"] + checks["warning"]
    if listed:
        parts.append(Text("checks"))
        for r in listed:
            line = Text(f"  {r['status']:<5} ", CHECK_STYLE.get(r["status"], ""))
            line.append(f"{r['id']}: {r['message']}")
            parts.append(line)
    else:
        counts = checks["summary"]["counts"]
        parts.append(Text(f"checks     all {counts.get('ok', 0)} ok", "green"))
    return Group(*parts)


def _offline_view(status: dict[str, Any], now: datetime) -> RenderableType:
    from rich.console import Group
    from rich.text import Text

    parts: list[RenderableType] = [
        Text("edge-agent is not running.", "bold red"),
        Text("  see: systemctl status edge-agent · journalctl -u edge-agent -n 50"),
    ]
    errors = status.get("config_errors")
    if errors:
        parts.append(
            Text(
                f"config     {status['config']} is invalid ({len(errors)} "
                f"error{'s' if len(errors) > 1 else ''}): no saved health report or outbox to show",
                "red",
            )
        )
        return Group(*parts)
    health = status.get("last_health")
    if health:
        summary = health.get("summary", {})
        at = health.get("generated_at")
        line = Text(f"last health report {at or '?'}{_ago(at, now)}: ")
        line.append(str(summary.get("status", "?")), CHECK_STYLE.get(summary.get("status", ""), ""))
        failing = summary.get("failing") or []
        if failing:
            line.append(f" · failing: {', '.join(failing)}")
        parts.append(line)
    else:
        parts.append(Text("no health report saved yet"))
    parts.append(_outbox_line(status.get("outbox"), now))
    if (update := update_line(status.get("update"))) is not None:
        parts.append(update)
    return Group(*parts)


SOURCE = {"agent": "the running agent", "disk": "the database on disk (the agent is not running)"}


def outbox_stats_table(stats: dict[str, Any], where: Path | None = None) -> Table:
    """`edge-agent outbox stats`: the figures of either source, one row each."""
    from rich.table import Table
    from rich.text import Text

    source = SOURCE.get(stats.get("source", ""), "-")
    title = f"outbox, from {source}" + (f": {where}" if where else "")
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    state = stats.get("state") or "-"
    if state == "absent":
        table.add_row("state", "no outbox database yet: nothing was queued")
        return table
    if state == "unreadable":
        table.add_row("state", Text(f"unreadable: {stats.get('error')}", "red"))
        return table
    table.add_row("state", Text(state, "bold red" if state in ("disk full", "unavailable") else ""))
    table.add_row("messages", _waiting(stats["messages"]))
    size = approximate_size(stats["bytes"])
    table.add_row("size", f"{size} of {approximate_size(stats['max_bytes'])}")
    oldest = stats.get("oldest_age")
    table.add_row("oldest", "-" if oldest is None else f"{_duration(oldest)} ago")
    evicted = stats.get("evicted") or 0
    if evicted:
        table.add_row(
            "evicted",
            Text(
                f"{evicted} telemetry messages ({approximate_size(stats['evicted_bytes'])}), "
                f"the last at {stats.get('last_evicted_at') or '-'}",
                "yellow",
            ),
        )
    else:
        table.add_row("evicted", "none")
    lost = stats.get("lost") or {}
    if lost.get("readings"):
        table.add_row("lost", Text(f"{lost['readings']} readings, not reported yet", "red"))
    if stats.get("lost_reported"):
        table.add_row("reported lost", f"{stats['lost_reported']} readings, ever")
    reserve = stats.get("reserve") or {}
    if reserve.get("target"):
        table.add_row(
            "reserve",
            f"{approximate_size(reserve.get('bytes') or 0)} of "
            f"{approximate_size(reserve['target'])}",
        )
    if stats.get("full_since"):
        table.add_row("disk full since", Text(str(stats["full_since"]), "bold red"))
    if stats.get("recovered_from"):
        table.add_row("damaged database", Text(f"kept at {stats['recovered_from']}", "red"))
    if stats.get("last_seq") is not None:
        table.add_row("last seq", str(stats["last_seq"]))
    return table


def message_summary(
    seq: int, kind: str, priority: int, payload: str, size: int, created_at: float, now: float
) -> dict[str, Any]:
    """One waiting outbox message, decoded for people (`edge-agent outbox peek`)."""
    out: dict[str, Any] = {
        "seq": seq,
        "kind": kind,
        "priority": QUEUE_BY_NUMBER.get(priority, str(priority)),
        "age": round(max(0.0, now - created_at), 1),
        "size": size,
    }
    try:
        header, body = read_envelope(payload)
    except ValueError as exc:
        out["error"] = str(exc)
        return out
    out["header"] = header
    out["ts"] = body.get("ts")
    out["gw"] = body.get("gw")
    if body.get("kind") == "telemetry":
        count = count_readings(body.get("body"))
        if count is not None:
            out["readings"] = count
    return out


def peek_outbox(path: Path, limit: int) -> list[dict[str, Any]]:
    """The next `limit` messages of an outbox nobody has open, in sending order (read-only)."""
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    try:
        rows = conn.execute(
            "SELECT seq, kind, priority, payload, size, created_at FROM messages "
            "ORDER BY priority, seq LIMIT ?",
            (limit,),
        ).fetchall()
    finally:
        conn.close()
    now = datetime.now(UTC).timestamp()
    return [
        message_summary(seq, kind, priority, payload, size, created, now)
        for seq, kind, priority, payload, size, created in rows
    ]


def outbox_peek_table(messages: Sequence[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(title="next messages to send", title_justify="left")
    for column in ("seq", "kind", "age", "size", "readings", "kid", "ts"):
        table.add_column(column)
    for m in messages:
        table.add_row(
            str(m["seq"]),
            m["kind"],
            f"{_duration(m['age'])} ago",
            approximate_size(m["size"]),
            str(m.get("readings", "")),
            str(m.get("header", {}).get("kid", m.get("error", "")))[:16],
            str(m.get("ts") or ""),
        )
    return table
