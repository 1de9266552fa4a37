"""`edge-agent fleet`: every gateway under a prefix at a glance, worst first (docs/diagnosis.md).

It subscribes to ``<prefix>/state`` and ``<prefix>/health`` with the gateway's level a ``+``
(``edge/+`` by default), where every gateway's uplink keeps its retained ``online``/``offline``
and its latest signed health report, and collects what the broker sends for at most ``--wait``
seconds, stopping early once nothing new came for `QUIET` seconds. Each health report is
verified with the gateway's key when the known-gateways file has it ("verified"), else read as it
is ("unverified"); a report that fails verification is "FORGED" and none of its figures are shown.
``online`` comes from the unsigned ``…/state`` (the broker's retained message and last will).

`Fleet` turns messages into rows (pure, no IO); `collect` and `watch` are the MQTT side;
`run_fleet` the command's face. Exit status: 0 when no gateway is forged, offline or failing, 1
when one is (or none was found), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt

from agent.cli_parser import seconds
from agent.diagnosis.connect import (
    Broker,
    add_broker_arguments,
    broker_from_args,
    describe_connect_error,
)
from agent.diagnosis.engineer import DeskError, KnownGateways, Unverifiable, verify_envelope
from agent.durations import approximate_duration
from agent.model import format_timestamp, parse_timestamp
from agent.signing import read_envelope

if TYPE_CHECKING:  # rich only where the desk shows something: the agent's parser never loads it
    from rich.console import RenderableType

SCHEMA = 1
EXIT_OK, EXIT_FINDING, EXIT_USAGE = 0, 1, 2
DEFAULT_PREFIX = "edge/+"
QUIET = 0.3  # seconds without a new retained message after which the collection is complete
REFRESH = 1.0  # --watch redraws this often
# Worst first; the order of `summary.status` (ok < unknown < warn < fail) below the two that
# matter more: a report that is not what it claims, a gateway that is gone.
CONDITIONS = ("FORGED", "offline", "failing", "warning", "unknown", "ok")
_FROM_STATUS = {"fail": "failing", "warn": "warning", "unknown": "unknown", "ok": "ok"}


class Unreachable(Exception):
    """The broker could not be reached, or refused us."""


@dataclass
class _Gateway:
    state: str | None = None  # the retained …/state text
    health: bytes | None = None  # the retained …/health JWS


def topic_filters(prefix: str) -> tuple[str, str]:
    """The two filters of a prefix with exactly one ``+`` (or ``{gateway_id}``) for the gateway."""
    pattern = prefix.replace("{gateway_id}", "+").strip("/")
    levels = pattern.split("/")
    if levels.count("+") != 1 or "#" in pattern or any(not level for level in levels):
        raise DeskError(
            f"--prefix {prefix}: needs exactly one + for the gateway's level (like edge/+)"
        )
    return f"{pattern}/state", f"{pattern}/health"


class Fleet:
    """The gateways seen so far; `ingest` a message, `rows` the table worst first."""

    def __init__(self, prefix: str, known: dict[str, dict[str, Any]]) -> None:
        state_filter, _ = topic_filters(prefix)
        self._levels = state_filter.split("/")[:-1]
        self._slot = self._levels.index("+")
        self.known = known
        self.gateways: dict[str, _Gateway] = {}
        self._rows: dict[str, dict[str, Any]] = {}  # verified once per report, not per redraw

    def gateway_of(self, topic: str) -> tuple[str, str] | None:
        """(gateway id, "state" | "health") of a topic under the prefix, else None."""
        levels = topic.split("/")
        if len(levels) != len(self._levels) + 1 or levels[-1] not in ("state", "health"):
            return None
        for i, level in enumerate(self._levels):
            if i != self._slot and levels[i] != level:
                return None
        return levels[self._slot], levels[-1]

    def ingest(self, topic: str, payload: bytes) -> bool:
        """Take one message; True when it changed what is known. An empty payload clears."""
        where = self.gateway_of(topic)
        if where is None:
            return False
        gateway, what = where
        entry = self.gateways.setdefault(gateway, _Gateway())
        if what == "state":
            entry.state = payload.decode("utf-8", "replace").strip() or None
        else:
            entry.health = payload or None
        if entry.state is None and entry.health is None:
            del self.gateways[gateway]
        self._rows.pop(gateway, None)
        return True

    def rows(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """One row per gateway (the `--json` shape), worst first, then by id."""
        at = now or datetime.now(UTC)
        for gateway, entry in self.gateways.items():
            if gateway not in self._rows:
                self._rows[gateway] = self._row(gateway, entry)
        rows = []
        for gateway in self.gateways:
            row = dict(self._rows[gateway])
            seen = row["last_seen"]
            try:
                row["age"] = (at - parse_timestamp(seen)).total_seconds() if seen else None
            except ValueError:
                row["age"] = None
            rows.append(row)
        rows.sort(key=lambda r: (CONDITIONS.index(r["condition"]), r["gateway"]))
        return rows

    def _row(self, gateway: str, entry: _Gateway) -> dict[str, Any]:
        online = {"online": True, "offline": False}.get(entry.state or "")
        row: dict[str, Any] = {
            "gateway": gateway,
            "condition": "unknown",
            "online": online,
            "signature": None,
            "problem": None,
            "status": None,
            "version": None,
            "update": None,
            "failing": [],
            "warning": [],
            "backlog": None,
            "last_seen": None,
        }
        envelope: dict[str, Any] | None = None
        if entry.health is not None:
            info = self.known.get(gateway)
            try:
                if info is not None:
                    envelope = verify_envelope(entry.health, info, gateway=gateway, kind="health")
                    row["signature"] = "verified"
                else:
                    envelope = _read_unverified(entry.health, gateway)
                    row["signature"] = "unverified"
            except Unverifiable as exc:
                row["signature"] = "FORGED" if info is not None else "unreadable"
                row["problem"] = str(exc)
        if envelope is not None:
            _fill(row, envelope)
        if row["signature"] == "FORGED":
            row["condition"] = "FORGED"
        elif online is False:
            row["condition"] = "offline"
        elif row["status"] in _FROM_STATUS:
            row["condition"] = _FROM_STATUS[row["status"]]
        return row


def _read_unverified(token: bytes, gateway: str) -> dict[str, Any]:
    try:
        _, payload = read_envelope(token.decode("ascii", "replace"))
    except ValueError as exc:
        raise Unverifiable(str(exc)) from exc
    if payload.get("gw") != gateway or payload.get("kind") != "health":
        raise Unverifiable(f"a {payload.get('kind')!r} envelope of {payload.get('gw')!r}")
    return payload


def _fill(row: dict[str, Any], envelope: dict[str, Any]) -> None:
    """The figures of a health report (README, "Health report") into the row."""
    report = envelope.get("body")
    row["last_seen"] = envelope.get("ts") if isinstance(envelope.get("ts"), str) else None
    if not isinstance(report, dict):
        row["problem"] = "the health report is not an object"
        return
    if isinstance(report.get("generated_at"), str):
        row["last_seen"] = report["generated_at"]
    summary = report.get("summary") or {}
    if isinstance(summary, dict):
        row["status"] = summary.get("status")
        row["failing"] = list(summary.get("failing") or [])
        row["warning"] = list(summary.get("warning") or [])
    agent = report.get("agent") or {}
    if isinstance(agent, dict):
        row["version"] = agent.get("version")
    update = report.get("update")
    if isinstance(update, dict):
        row["update"] = update.get("state")
    outbox = report.get("outbox")
    if isinstance(outbox, dict) and isinstance(outbox.get("messages"), dict):
        row["backlog"] = sum(v for v in outbox["messages"].values() if isinstance(v, int))


# -- MQTT -----------------------------------------------------------------------------------------


async def _subscribed(client: aiomqtt.Client, fleet_prefix: str) -> None:
    state, health = topic_filters(fleet_prefix)
    await client.subscribe([(state, 1), (health, 1)])


async def collect(
    broker: Broker, prefix: str, known: dict[str, dict[str, Any]], *, wait: float
) -> Fleet:
    """The fleet from the retained messages: at most `wait` s, less once `QUIET` s pass quietly."""
    fleet = Fleet(prefix, known)
    try:
        async with broker.client("fleet", timeout=max(wait, 5.0)) as client:
            await _subscribed(client, prefix)
            messages = aiter(client.messages)
            deadline = time.monotonic() + wait
            last = time.monotonic()
            while (left := min(deadline, last + QUIET) - time.monotonic()) > 0:
                try:
                    message = await asyncio.wait_for(anext(messages), left)
                except TimeoutError:
                    break
                if fleet.ingest(message.topic.value, _payload(message)):
                    last = time.monotonic()
    except aiomqtt.MqttError as exc:
        raise Unreachable(describe_connect_error(broker, exc)) from exc
    return fleet


async def watch(
    broker: Broker,
    prefix: str,
    known: dict[str, dict[str, Any]],
    show: Callable[[Fleet], None],
) -> None:
    """Keep the fleet up to date from every message, and `show` it every `REFRESH` s."""
    fleet = Fleet(prefix, known)
    try:
        async with broker.client("fleet", timeout=10.0) as client:
            await _subscribed(client, prefix)

            async def receive() -> None:
                async for message in client.messages:
                    fleet.ingest(message.topic.value, _payload(message))

            task = asyncio.create_task(receive(), name="fleet receive")
            try:
                while not task.done():
                    show(fleet)
                    await asyncio.wait({task}, timeout=REFRESH)
                await task  # the connection ended: say why
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    except aiomqtt.MqttError as exc:
        raise Unreachable(describe_connect_error(broker, exc)) from exc


def _payload(message: aiomqtt.Message) -> bytes:
    payload = message.payload
    if isinstance(payload, bytes):
        return payload
    return str(payload).encode() if payload is not None else b""


# -- the face -------------------------------------------------------------------------------------

STYLE = {
    "FORGED": "bold red reverse",
    "offline": "bold red",
    "failing": "red",
    "warning": "yellow",
    "unknown": "dim",
    "ok": "green",
}


def fleet_json(fleet: Fleet, broker: Broker, prefix: str) -> dict[str, Any]:
    """The `--json` shape: ``{"schema", "at", "broker", "prefix", "gateways": [row, …]}``."""
    now = datetime.now(UTC)
    return {
        "schema": SCHEMA,
        "at": format_timestamp(now),
        "broker": broker.url,
        "prefix": prefix,
        "gateways": fleet.rows(now),
    }


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown} +{len(names) - limit}" if len(names) > limit else shown


def fleet_view(fleet: Fleet, prefix: str) -> RenderableType:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    rows = fleet.rows()
    counts = {c: sum(r["condition"] == c for r in rows) for c in CONDITIONS}
    head = Text(f"{len(rows)} gateways under {prefix}: ")
    head.append_text(
        Text(", ").join(Text(f"{n} {c}", STYLE[c]) for c, n in counts.items() if n) or Text("-")
    )
    table = Table(expand=False)
    for column in (
        "gateway",
        "state",
        "online",
        "signature",
        "version",
        "update",
        "checks",
        "backlog",
        "last seen",
    ):
        table.add_column(column)
    for r in rows:
        online = {True: "online", False: "offline", None: "?"}[r["online"]]
        if r["problem"]:
            checks = Text(r["problem"], "red")
        elif r["failing"]:
            checks = Text(f"{len(r['failing'])} failing: {_names(r['failing'])}", "red")
        elif r["warning"]:
            checks = Text(f"{len(r['warning'])} warning: {_names(r['warning'])}", "yellow")
        else:
            checks = Text("")
        table.add_row(
            r["gateway"],
            Text(r["condition"], STYLE[r["condition"]]),
            Text(online, "red" if r["online"] is False else ""),
            Text(r["signature"] or "-", "bold red" if r["signature"] == "FORGED" else ""),
            r["version"] or "-",
            r["update"] or "-",
            checks,
            "-" if r["backlog"] is None else str(r["backlog"]),
            "-" if r["age"] is None else f"{approximate_duration(r['age'])} ago",
        )
    return Group(head, table)


def add_fleet_parser(commands: Any) -> None:
    fleet = commands.add_parser(
        "fleet", help="support desk: every gateway's state and health from the broker, worst first"
    )
    add_broker_arguments(fleet)
    fleet.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"the gateways' topic prefix with + for the gateway (default {DEFAULT_PREFIX})",
    )
    fleet.add_argument(
        "--known",
        type=Path,
        default=None,
        metavar="PATH",
        help="known gateways (JSON): their health reports are verified",
    )
    fleet.add_argument(
        "--wait", type=seconds, default=2.0, help="collect at most this many seconds (default 2)"
    )
    fleet.add_argument("--watch", action="store_true", help="refresh live until Ctrl-C")
    fleet.add_argument("--json", action="store_true", help="print JSON")


def run_fleet(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    try:
        broker = broker_from_args(args)
        topic_filters(args.prefix)
        known = KnownGateways(args.known).load().gateways if args.known else {}
        if not args.wait > 0:
            raise DeskError("--wait must be more than 0 seconds")
    except DeskError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    console = Console() if sys.stdout.isatty() else Console(width=140)
    try:
        if args.watch and not args.json:
            with Live(console=console, auto_refresh=False) as live:
                asyncio.run(
                    watch(
                        broker,
                        args.prefix,
                        known,
                        lambda f: live.update(fleet_view(f, args.prefix), refresh=True),
                    )
                )
            return EXIT_OK
        fleet = asyncio.run(collect(broker, args.prefix, known, wait=args.wait))
    except Unreachable as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_FINDING
    except KeyboardInterrupt:
        return EXIT_OK
    if args.json:
        print(json.dumps(fleet_json(fleet, broker, args.prefix), indent=2, ensure_ascii=False))
    else:
        console.print(fleet_view(fleet, args.prefix))
    rows = fleet.rows()
    if not rows:
        print(f"edge-agent: no gateway under {args.prefix} on {broker.url}", file=sys.stderr)
        return EXIT_FINDING
    bad = {"FORGED", "offline", "failing"}
    return EXIT_FINDING if any(r["condition"] in bad for r in rows) else EXIT_OK
