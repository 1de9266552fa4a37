"""The daemon's continuous self-inspection: checks on their intervals, alarms, health, history.

Part of the composition root (only daemon.py uses it): it connects the check framework
(agent/checks) to the outbox writer. Each round of due checks becomes alarm events (hysteresis
in AlarmTracker) stored at EVENT priority, a health report stored at HEALTH priority when its
schedule says so (every `health.interval`, and at once on a change), and rows in the bounded
history behind `edge-agent report`. The watchdog pings systemd only while polling, checks and
the uplink keep moving. An async context manager: entering opens the history and starts the
watchdog; leaving stops it and saves the history. The check loop runs between `start_checks`
and `stop_checks`, which the daemon calls once every part is up and before the drivers leave:
checks judge the running agent, so a round during start or stop would report a site without
its terminals (a health report counting none of them, kept as the last one on disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import structlog

from agent.check_settings import ChecksConfig
from agent.checks.alarms import AlarmTracker
from agent.checks.data import DataMonitor
from agent.checks.framework import Check, CheckResult, CheckRunner, Round, Slices
from agent.checks.health import HealthSchedule, build_health
from agent.checks.history import History, terminal_plans
from agent.checks.registry import build_checks, data_monitor, terminal_intervals
from agent.checks.terminals import Overload
from agent.checks.view import AgentView
from agent.config import Config
from agent.durations import parse_duration
from agent.logs import log_task_crash
from agent.model import ReadingSink
from agent.outbox import OutboxError, Priority
from agent.storage.atomic import write_atomic
from agent.watchdog import BeatSink, Progress, run_watchdog, status_line
from agent.writer import OutboxWriter

log = structlog.get_logger(__name__)
RECORD_SLICE = 1000  # check results recorded in the history at a time (a few ms)

ViewSource = Callable[[], Awaitable[AgentView]]
CHECKS_ALLOWANCE = 600.0  # the check loop beats at least every round; rounds are <= 5 min apart
# Of the 5 s the agent has to end after SIGTERM, what saving the history may take.
HISTORY_STOP = 1.5
SAVE_LOG_INTERVAL = 60.0  # a failing save of the alarm state is logged at most this often


class Inspection:
    """Owns the check runner, alarm tracker, health schedule and history of a running agent."""

    def __init__(self, config: Config, writer: OutboxWriter, view: ViewSource) -> None:
        self.config = config
        self.settings: ChecksConfig = config.checks
        self.writer = writer
        self._view = view
        self.monitor: DataMonitor = data_monitor(config, self.settings)
        # One judge of overload for as long as the agent runs: a reload keeps what it knows.
        self.overload = Overload(self.settings)
        self.runner = CheckRunner(self._checks_of(config))
        self.alarms = AlarmTracker(self.settings.alarms, config.layout.alarms)
        self.health = HealthSchedule.from_config(config.health)
        self.history: History | None = None
        self.progress = Progress()
        self._tasks: list[asyncio.Task[None]] = []
        self._checks: asyncio.Task[None] | None = None
        self._last_flush = time.monotonic()
        self._latest_view: AgentView | None = None
        self._saver: asyncio.Task[None] | None = None
        self._alarm_save_logged = -SAVE_LOG_INTERVAL

    @property
    def sinks(self) -> list[ReadingSink]:
        """Readings go here too: data checks, history statistics, the polling heartbeat."""
        sinks: list[ReadingSink] = [self.monitor, BeatSink(self.progress)]
        if self.history is not None:
            sinks.append(self.history)
        return sinks

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.alarms.load)
        h = self.settings.history
        if h.enabled:
            history = History(history_path(self.config), h.retention, h.max_events)
            await asyncio.to_thread(self._open_history, history)
            self.history = history
        watchdog = asyncio.create_task(run_watchdog(self.progress, status=self._status))
        watchdog.add_done_callback(log_task_crash)
        self._tasks = [watchdog]
        return self

    def start_checks(self) -> None:
        """Run the check loop from now on (every part of the agent is up)."""
        if self._checks is None:
            self.progress.register("checks", CHECKS_ALLOWANCE)
            self._checks = asyncio.create_task(
                self.runner.run_forever(self._beating_view, self._on_round), name="checks"
            )
            self._checks.add_done_callback(log_task_crash)
            self._tasks.append(self._checks)

    async def stop_checks(self) -> None:
        """End the check loop (the parts it judges are about to leave); a round in progress is
        cancelled, its results not recorded."""
        task, self._checks = self._checks, None
        if task is None:
            return
        self.progress.unregister("checks")
        task.cancel()
        await asyncio.wait({task})

    def _open_history(self, history: History) -> None:
        """In a worker thread: open the database and note this start."""
        history.open()
        try:
            history.set_meta("gateway", self.config.gateway.id)
            history.set_terminals(terminal_plans(self.config))
            history.record_start()
        except BaseException:
            history.close()
            raise

    def set_polling_allowance(self, allowance: float | None) -> None:
        """Watch the pollers with this allowance, or not at all (no polled terminal)."""
        if allowance is None:
            self.progress.unregister("polling")
        else:
            self.progress.register("polling", allowance)

    async def _beating_view(self) -> AgentView:
        self.progress.beat("checks")
        view = await self._view()
        self._latest_view = view
        return view

    def _status(self) -> str:
        view = self._latest_view
        if view is None:
            return "starting"
        ok, total = view.terminals_ok()
        outbox = view.outbox
        uplink = None if view.uplink is None else view.uplink.connected
        return status_line(
            ok,
            total,
            outbox.messages if outbox else None,
            uplink,
            outbox.oldest_age if outbox else None,
        )

    async def _on_round(self, done: Round) -> None:
        """One round's alarms, history and health; a failure here (a full disk, say) is
        logged and the next round tries again — the check loop must outlive it."""
        try:
            await self._handle(done)
        except (OSError, OutboxError, sqlite3.Error, ValueError) as exc:
            log.error("could not record a round of checks", error=f"{type(exc).__name__}: {exc}")

    async def _handle(self, done: Round) -> None:
        # A large site's round is thousands of results: handled in slices, with pauses that
        # leave the interpreter to the TCP engine's thread (framework.Slices).
        slices = Slices()
        events = self.alarms.update(done.results)
        for event in events:
            log.warning("alarm", check=event.get("check"), status=event.get("status"))
        self._store_events(events)
        self._save_alarms_soon()  # also retries a save that failed before
        if self.history is not None:
            results = done.results
            for start in range(0, len(results), RECORD_SLICE):
                if slices.due():
                    await slices.pause()
                changed = done.changed if start == 0 else ()
                self.history.record_results(results[start : start + RECORD_SLICE], changed)
            self.history.record_alarms(events)
            self.history.record_anomalies(self.monitor.take_anomalies())
            if time.monotonic() - self._last_flush >= self.settings.history.flush_interval:
                await asyncio.to_thread(self.history.flush)
                self._last_flush = time.monotonic()
        now = time.monotonic()
        if self.health.due(now, bool(done.changed)):
            if slices.due():
                await slices.pause()
            view = self._latest_view or await self._view()
            report = build_health(
                self.runner.results, view, max_terminals=self.config.health.max_terminals
            )
            # Taken by the writer: stored now, or kept and tried again if the disk fails.
            self.writer.put("health", report, Priority.HEALTH)
            self.health.sent(now)
            # Kept on disk too: `edge-agent status` shows it when the agent does not run.
            text = json.dumps(report, default=str).encode()
            try:
                await asyncio.to_thread(write_atomic, self.config.layout.health, text)
            except OSError as exc:
                log.warning("cannot save the health report", error=str(exc))

    def _store_events(self, events: list[dict[str, Any]]) -> None:
        """Alarm events to the writer; a status is announced once its event is stored, and an
        event the writer gives up is handed out again by the tracker's next round."""
        for event in events:
            future = self.writer.put("event", event, Priority.EVENT)
            future.add_done_callback(functools.partial(self._event_settled, event))

    def _event_settled(self, event: dict[str, Any], future: asyncio.Future[int]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.alarms.not_stored(event)
        else:
            self.alarms.stored(event)
            self._save_alarms_soon()

    def _save_alarms_soon(self) -> None:
        if self.alarms.dirty and (self._saver is None or self._saver.done()):
            self._saver = asyncio.create_task(self._save_alarms(), name="alarm state")
            self._saver.add_done_callback(log_task_crash)

    async def _save_alarms(self) -> None:
        """Keep the announced statuses on disk; a failure (a full disk) leaves them dirty for
        the next round to try again."""
        while self.alarms.dirty:
            data = self.alarms.take_state()
            try:
                await asyncio.to_thread(self.alarms.write_state, data)
            except OSError as exc:
                self.alarms.dirty = True
                if time.monotonic() - self._alarm_save_logged >= SAVE_LOG_INTERVAL:
                    self._alarm_save_logged = time.monotonic()
                    log.warning("cannot save the alarm state; trying again", error=str(exc))
                return

    def _checks_of(self, config: Config) -> list[Check]:
        return build_checks(config, self.settings, monitor=self.monitor, overload=self.overload)

    def results(self) -> list[CheckResult]:
        return self.runner.results

    async def reload(self, config: Config) -> None:
        """Use the checks of a reloaded config (terminals changed); results of kept ids stay."""
        self.config = config
        self.monitor.set_intervals(terminal_intervals(config))  # gap checks of new periods
        self.runner.replace(self._checks_of(config))
        cleared = self.alarms.retire([c.id for c in self.runner.checks])
        self._store_events(cleared)
        self._save_alarms_soon()
        if self.history is not None:
            self.history.set_terminals(terminal_plans(config))

    async def flush_history(self) -> Path | None:
        """Write the buffered history now (for a report up to now); its path, if kept."""
        if self.history is None:
            return None
        await asyncio.to_thread(self.history.flush)
        self._last_flush = time.monotonic()
        return history_path(self.config)

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # A crash of either task was logged when it happened; a cancellation of this
            # coroutine is not swallowed (wait returns on their end, and raises for ours).
            await asyncio.wait(self._tasks)
        self.runner.close()
        if self._saver is not None:
            await asyncio.wait({self._saver})
        if self.alarms.dirty:
            with contextlib.suppress(OSError):  # a full disk: logged already, if it persists
                await asyncio.to_thread(self.alarms.save)
        if self.history is not None:
            await self._save_history_on_the_way_out(self.history)

    async def _save_history_on_the_way_out(self, history: History) -> None:
        """The last statistics written, within `HISTORY_STOP` seconds: at thousands of
        terminals a flush takes seconds, and the agent promises to end within 5 s of SIGTERM.
        The flush runs in a thread of its own that does not hold the process up: one still
        running when the time is up is left to the exit (its transaction is rolled back, the
        history stays whole), and what it held — statistics since the last periodic save — is
        said to be lost."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def flush() -> None:
            error: BaseException | None = None
            try:
                history.flush()
                history.close()
            except (OSError, sqlite3.Error) as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, done, error)

        threading.Thread(target=flush, name="history save at stop", daemon=True).start()
        try:
            async with asyncio.timeout(HISTORY_STOP):
                await asyncio.shield(done)
        except TimeoutError:
            log.error(
                "history not saved on the way out: out of time (the statistics since the last "
                "save are lost)",
                seconds=HISTORY_STOP,
            )
        except (OSError, sqlite3.Error) as exc:
            log.error("history not saved on the way out", error=str(exc))


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def report_since(text: str, now: datetime | None = None) -> datetime:
    """`--since 7d` → the datetime that long ago (UTC)."""
    now = now or datetime.now(UTC)
    return datetime.fromtimestamp(now.timestamp() - parse_duration(text), UTC)


def history_path(config: Config) -> Path:
    """`config.layout.history_db` (kept for the command line)."""
    return config.layout.history_db
