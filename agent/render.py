"""How the command line shows things: tables for people, stable JSON shapes for programs.

Pure functions from values to text or dicts; no IO beyond the rich Console they are given.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agent.checks.framework import CheckResult, Status, worst
from agent.durations import approximate_duration
from agent.model import Quality, Reading, Value, parse_timestamp
from agent.protocols.driver import PollAnswer
from agent.protocols.sl651.describe import function_name

if TYPE_CHECKING:  # rich only in the tables, which the CLI calls: the daemon never loads it
    from rich.console import RenderableType
    from rich.table import Table
    from rich.text import Text

    from agent.protocols.modbus.adhoc import RawPoll

POLL_SCHEMA = 1

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


POLL_SCHEMA = 1


def poll_json(answer: PollAnswer) -> dict[str, Any]:
    """`edge-agent poll --json` (documented in README.md)."""
    return {
        "schema": POLL_SCHEMA,
        "terminal": answer.terminal,
        "where": answer.where,
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


def _raw(values: Sequence[int] | Sequence[bool] | None, table: str) -> list[Any] | None:
    """Register words as hex strings ("0x41C8"), bits as booleans."""
    if values is None:
        return None
    if table in ("coil", "discrete"):
        return [bool(v) for v in values]
    return [f"0x{int(v):04X}" for v in values]


def _words_text(values: Sequence[int] | Sequence[bool] | None, table: str) -> str:
    """Words in hex without the prefix ("41C8 0000"), bits as 1 and 0."""
    shown = _raw(values, table) or []
    return " ".join(w.removeprefix("0x") if isinstance(w, str) else str(int(w)) for w in shown)


def raw_poll_json(raw: RawPoll) -> dict[str, Any]:
    """`edge-agent poll --raw --json` (documented in README.md)."""
    return {
        "schema": POLL_SCHEMA,
        "terminal": raw.terminal,
        "where": raw.where,
        "reads": [
            {
                "table": r.table,
                "address": r.address,
                "count": r.count,
                "raw": _raw(r.values, r.table),
                "error": r.error,
            }
            for r in raw.reads
        ],
        "points": [
            {
                "point": p.point.name,
                "table": p.point.table,
                "address": p.point.address,
                "type": p.point.type,
                "unit": p.point.unit,
                "word_order": p.point.word_order,
                "raw": _raw(p.values, p.point.table),
                "value": p.value,
                "orders": p.orders,
                "error": p.error,
            }
            for p in raw.points
        ],
    }


def raw_poll_view(raw: RawPoll) -> Table:
    """`edge-agent poll --raw`: each point's words and its value in every word order, the
    configured one in bold; the reads and their words in the caption."""
    from rich.table import Table
    from rich.text import Text

    orders = ("ABCD", "CDAB", "BADC", "DCBA")
    table = Table(
        title=f"{raw.terminal} ({raw.where}): register words, decoded in every word order",
        title_justify="left",
    )
    for column in ("point", "type", "words", *orders):
        table.add_column(column, justify="right" if column in orders else "left")
    for p in raw.points:
        words = _words_text(p.values, p.point.table)
        if p.values is None:
            table.add_row(p.point.name, p.point.type, Text(p.error or "-", "red"))
            continue
        decoded = p.orders or {p.point.word_order: p.value}
        cells = [
            Text(
                format_value(decoded[o]) if o in decoded else "",
                "bold green" if o == p.point.word_order else "",
            )
            for o in orders
        ]
        table.add_row(p.point.name, p.point.type, words, *cells)
    lines = [
        f"read {r.table} {r.address}..{r.address + r.count - 1}: "
        + (_words_text(r.values, r.table) if r.error is None else r.error)
        for r in raw.reads
    ]
    table.caption = "\n".join(
        [*lines, "bold: the configured word order; '-': no finite number in that order"]
    )
    table.caption_justify = "left"
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
    """A check's value or threshold for people: yes/no for a flag, a minute or more in words
    (``4m05s``), a count of one in the singular (``1 problem``)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if unit == "s" and isinstance(value, int | float) and abs(value) >= 60:
        return ("-" if value < 0 else "") + approximate_duration(abs(value))
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    if value == 1 and len(unit) > 2 and unit.endswith("s") and unit.isalpha():
        unit = unit[:-1]  # "problems", "messages", "days": one of them
    return f"{text} {unit}".strip()


CHECKS_SCHEMA = 1


def checks_summary(results: Sequence[CheckResult]) -> dict[str, Any]:
    """How many results of each status, and the worst of them."""
    counts = {s.value: 0 for s in Status}
    for r in results:
        counts[r.status.value] += 1
    return {**counts, "status": worst(r.status for r in results).value}


def checks_json(results: Sequence[CheckResult], source: str) -> dict[str, Any]:
    """`edge-agent check --json` (documented in README.md): the same shape whether the running
    agent answered (`source` "agent") or `check` probed without it ("probe")."""
    return {
        "schema": CHECKS_SCHEMA,
        "source": source,
        "summary": checks_summary(results),
        "checks": [r.to_dict() for r in results],
    }


def checks_source_line(results: Sequence[CheckResult], source: str) -> Text:
    """The line under the table: the counts, and where the figures came from."""
    from rich.text import Text

    summary = checks_summary(results)
    counts = ", ".join(f"{summary[s.value]} {s.value}" for s in Status if summary[s.value])
    where = (
        "from the running agent"
        if source == "agent"
        else "the agent is not running: the terminals, the broker and the outbox were probed "
        "from here"
    )
    return Text(f"{counts or 'no checks'} · {where}", style="dim")


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


def sl651_heard(event: dict[str, Any], confirming: bool) -> RenderableType:
    """`edge-agent sl651 listen`: one event as people read it (a frame as `sl651 decode`
    shows it, under the time and the peer it came from)."""
    from rich.console import Group
    from rich.text import Text

    kind, peer = event["type"], event.get("peer")
    at = parse_timestamp(str(event["at"])).astimezone().strftime("%H:%M:%S")  # local time
    if kind == "listening":
        where = ", ".join(event.get("tcp", [])) or f"{event['serial']} at {event['baudrate']} Bd"
        answer = (
            "answering as the central station (--confirm): stations delete what is confirmed"
            if confirming
            else "answering nothing (stations keep their reports; --confirm to confirm them)"
        )
        return Text(f"listening on {where}, {answer} · Ctrl-C to stop", style="bold")
    if kind in ("connected", "closed"):
        return Text(f"{at} {peer} {kind}", style="dim")
    if kind == "rejected":
        return Text(
            f"{at} {peer} rejected {event['reason']}: {event['detail']} ({event['hex'][:64]})",
            style="yellow",
        )
    answered = event.get("answered") or []
    lines = [Text(f"{a}", style="green") for a in answered]
    said = [Text(f"{at} {peer} answered:", style="green"), *lines] if answered else []
    if kind == "answered":
        return Group(*said)
    frame = event["frame"]
    if "error" not in frame and not frame["elements"] and "detail" not in frame:
        # A keep-alive, say: its header is all there is to show.
        name = function_name(int(frame["function"], 16))
        line = (
            f"{at} from {peer}: {frame['function']} {name} · station {frame['station']} · "
            f"serial {frame['serial']} · sent {frame['sent_at']}"
        )
        return Group(Text(line, style="bold"), *said)
    return Group(Text(f"{at} from {peer}", style="bold"), sl651_frame_view(frame), *said)
