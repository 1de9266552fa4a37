"""How the command line shows things: tables for people, stable JSON shapes for programs.

Pure functions from values to text or dicts; no IO beyond the rich Console they are given.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agent.checks.framework import CheckResult, Status
from agent.durations import approximate_duration
from agent.model import Quality, Reading, Value
from agent.protocols.driver import PollAnswer
from agent.protocols.sl651.describe import function_name

if TYPE_CHECKING:  # rich only in the tables, which the CLI calls: the daemon never loads it
    from rich.table import Table

QUALITY_STYLE = {
    Quality.GOOD: "green",
    Quality.BAD: "bold red",
    Quality.STALE: "yellow",
    Quality.UNCERTAIN: "yellow",
}


def format_value(value: Value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def poll_json(answer: PollAnswer) -> dict[str, Any]:
    """`edge-agent poll --json` (documented in README.md)."""
    return {
        "terminal": answer.terminal,
        "readings": [
            {
                "point": r.point,
                "value": r.value,
                "unit": r.unit,
                "quality": r.quality.value,
                **answer.fields.get(r.point, {}),
                "error": r.error,
            }
            for r in answer.readings
        ],
    }


def poll_table(answer: PollAnswer) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{answer.terminal} ({answer.where})", title_justify="left", expand=False)
    for column in ("point", "value", "unit", "quality", "source", "type"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for r in answer.readings:
        table.add_row(
            r.point,
            format_value(r.value),
            r.unit,
            Text(r.quality.value, style=QUALITY_STYLE[r.quality]),
            r.source,
            answer.kinds.get(r.point, ""),
        )
    return table


def poll_errors(readings: Sequence[Reading]) -> list[str]:
    """The distinct reasons points failed, each with the points it hit."""
    reasons: dict[str, list[str]] = {}
    for r in readings:
        if r.error:
            reasons.setdefault(r.error, []).append(r.point)
    return [f"{', '.join(points)}: {reason}" for reason, points in reasons.items()]


def age(since: datetime | None, now: datetime) -> str:
    return "never" if since is None else approximate_duration((now - since).total_seconds())


STATUS_STYLE = {
    Status.OK: "green",
    Status.WARN: "yellow",
    Status.FAIL: "bold red",
    Status.UNKNOWN: "dim",
}


def _scalar(value: object, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"{text} {unit}".strip()


def checks_table(results: Sequence[CheckResult]) -> Table:
    """`edge-agent check`: one row per check, failing first."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="self-checks", title_justify="left")
    for column in ("status", "check", "value", "threshold", "message"):
        table.add_column(column)
    for r in results:
        table.add_row(
            Text(r.status.value, STATUS_STYLE[r.status]),
            r.id,
            _scalar(r.value, r.unit),
            _scalar(r.threshold, r.unit),
            r.message,
        )
    return table


def _sl651_value(element: dict[str, Any]) -> str:
    value = element.get("value")
    if value is None:
        missing = element.get("missing")
        return f"missing ({missing})" if missing else str(element.get("error") or "-")
    if isinstance(value, list):
        return " ".join("·" if v is None else format_value(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={format_value(v)}" for k, v in value.items())
    return format_value(value)


def sl651_frame_view(described: dict[str, Any]) -> Table:
    """`edge-agent sl651 decode`: a frame's header as the title, its elements as rows."""
    from rich.table import Table

    if "error" in described:
        table = Table(title=f"[bold red]not decoded:[/] {described['error']}", title_justify="left")
        table.add_column("hex")
        table.add_row(described["hex"])
        return table
    code = int(described["function"], 16)
    name = function_name(code)
    packet = described.get("packet")
    header = (
        f"{described['function']} {name} · {described['direction']} · station "
        f"{described['station']} · centre {described['center']} · password {described['password']}"
        f"\nserial {described['serial']} · sent {described['sent_at']} · end {described['end']}"
        + (f" · packet {packet['seq']}/{packet['total']}" if packet else "")
        + ("" if described["crc_ok"] else " · [bold red]CRC WRONG[/]")
    )
    table = Table(title=header, title_justify="left", min_width=72)
    for column in ("id", "name", "value", "unit", "observed"):
        table.add_column(column, overflow="fold")
    for element in described.get("elements", []):
        table.add_row(
            element["id"],
            element.get("name") or "",
            _sl651_value(element),
            element.get("unit") or "",
            element.get("observed_at") or "",
        )
    notes = []
    if any(isinstance(e.get("value"), list) and None in e["value"] for e in described["elements"]):
        notes.append("· marks a missing slot")
    if described.get("detail") is not None:
        notes.append(f"detail: {described['detail']}")
    if notes:
        table.caption = " · ".join(notes)
        table.caption_justify = "left"
    return table
