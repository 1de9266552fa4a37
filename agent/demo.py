"""`edge-agent demo`: the simulated site and the agent together, with a live view.

Starts a simulated device behind every terminal of config/demo.yaml, runs the real daemon on
that config (readings go into its outbox, and upstream with `--broker`), and shows the newest
reading of every point and the outbox depth until the duration ends or Ctrl-C. Each demo runs
in a place of its own (`agent.demo_setup`): a fresh state directory and free ports, printed at
the start, so a demo starts empty and two can run side by side.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agent.checks.view import AgentView
from agent.daemon import Daemon
from agent.data import DEMO_CONFIG
from agent.demo_setup import DemoPlace, demo_place
from agent.durations import approximate_duration
from agent.render import QUALITY_STYLE, age, format_value
from agent.sim.site import SimulatedSite
from agent.sinks import LatestValues


def outbox_line(view: AgentView) -> Text:
    stats = view.outbox
    if stats is None:
        return Text("outbox: opening", style="dim")
    age_text = (
        f", oldest {approximate_duration(stats.oldest_age)}" if stats.oldest_age is not None else ""
    )
    text = (
        f"outbox: {stats.messages} messages, {stats.bytes / 1024:.0f} KiB waiting{age_text}, "
        f"evicted {stats.evicted}"
    )
    uplink = view.uplink
    if uplink is None:
        text += " · uplink: none configured (readings wait in the outbox)"
    elif uplink.connected:
        text += f" · uplink: connected to {uplink.broker}, {uplink.published} acknowledged"
    else:
        text += f" · uplink: down ({uplink.last_error or 'connecting'})"
    return Text(text)


def demo_view(
    view: AgentView,
    latest: LatestValues,
    now: datetime,
    max_points: int | None = None,
) -> Group:
    """The live screen; `max_points` keeps the readings table within a terminal's height."""
    terminals = Table(title="terminals", title_justify="left")
    for column in ("terminal", "address", "state", "polls/reports", "failed", "p95", "last error"):
        terminals.add_column(column)
    rows = [(t.name, t.address, t.stats) for t in view.terminals.values()]
    for name, address, s in rows:
        state = (
            Text("answering", "green") if s.consecutive_failures == 0 else Text("failing", "red")
        )
        p95 = s.latency_p95()
        terminals.add_row(
            name,
            address,
            state if s.polls else Text("waiting", "yellow"),
            str(s.polls),
            str(s.failed_polls),
            f"{p95 * 1000:.0f} ms" if p95 is not None else "-",
            s.last_error or "",
        )
    points = Table(title="latest readings", title_justify="left")
    for column in ("terminal", "point", "value", "unit", "quality", "age"):
        points.add_column(column, justify="right" if column == "value" else "left")
    shown = sorted(latest.latest.items())
    if max_points is not None and len(shown) > max_points:
        points.caption = f"… and {len(shown) - max_points} more points (a taller window shows them)"
        points.caption_justify = "left"
        shown = shown[:max_points]
    for (terminal, point), r in shown:
        points.add_row(
            terminal,
            point,
            format_value(r.value),
            r.unit,
            Text(r.quality.value, QUALITY_STYLE[r.quality]),
            age(r.observed_at, now),
        )
    footer = Text(f"{latest.count} readings so far · Ctrl-C to stop", style="dim")
    return Group(terminals, points, outbox_line(view), footer)


async def run_demo(
    console: Console,
    duration: float,
    config_path: Path = DEMO_CONFIG,
    broker: str | None = None,
    keep_state: bool = False,
) -> int:
    """The demo of `config_path`, in a place of its own (`agent.demo_setup`): fresh state and
    free ports unless `keep_state`; `broker` also publishes there."""
    with demo_place(config_path, keep_state, broker) as place:
        return await _run(console, duration, place)


async def _run(console: Console, duration: float, place: DemoPlace) -> int:
    config = place.config
    site = SimulatedSite(config)
    await site.start()
    latest = LatestValues()
    daemon = Daemon(config, place.config_path, extra_sinks=[latest])
    agent = asyncio.create_task(daemon.run(), name="agent")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration if duration > 0 else None
    kept = "kept for the next --keep-state run" if place.kept else "removed at exit"
    console.print(
        f"edge-agent demo: {len(config.terminals)} simulated terminals, state in {place.root} "
        f"({kept})",
        highlight=False,
        soft_wrap=True,  # whole lines: paths and ports are copied from here
    )
    if place.ports:
        console.print(
            "ports: " + " · ".join(p.describe() for p in place.ports),
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"readings also in {config.jsonl_path}; from another terminal: "
        f"edge-agent status --config {place.config_path}",
        highlight=False,
        soft_wrap=True,
    )
    try:
        if console.is_terminal:
            with Live(console=console, refresh_per_second=2) as live:
                while not agent.done() and (deadline is None or loop.time() < deadline):
                    room = max(5, console.height - 24)  # the terminals table, titles, footer
                    view = await daemon.snapshot()
                    live.update(demo_view(view, latest, datetime.now(UTC), room))
                    await asyncio.sleep(0.5)
        else:
            while not agent.done() and (deadline is None or loop.time() < deadline):
                await asyncio.sleep(min(5.0, deadline - loop.time()) if deadline else 5.0)
                view = await daemon.snapshot()
                failing = [n for n, t in view.terminals.items() if t.stats.consecutive_failures]
                console.print(
                    f"{latest.count} readings from {len(latest.latest)} points; "
                    f"failing terminals: {', '.join(failing) or 'none'}"
                )
                console.print(outbox_line(view))
        if not agent.done():
            console.print(demo_view(await daemon.snapshot(), latest, datetime.now(UTC)))
    finally:
        daemon.request_stop()
        await asyncio.wait({agent})  # ours is not swallowed: wait raises it
        await site.stop()
    agent.result()  # the agent's own failure (a port in use, say) is the demo's
    return 0
