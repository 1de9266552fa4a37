"""The composition root: builds the parts from config, runs them, and stops them in time.

Lifecycle: start (device key, outbox, uplink, sinks, one poller per terminal) -> run until
SIGTERM/SIGINT -> graceful stop within `STOP_DEADLINE` seconds (pollers stop, taken readings are
made durable, the uplink says `offline`) -> cancel what is left. SIGHUP and a change of the
config file reload the terminals without a restart; a new config with errors is refused, its
errors logged, and the running config kept. Signal handlers only set events.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sqlite3
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import structlog
from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from agent import sdnotify
from agent.checks.framework import sort_results
from agent.checks.view import (
    AgentView,
    LogCounter,
    TerminalClock,
    TerminalView,
    record_start,
    terminal_views,
)
from agent.config import (
    Config,
    ConfigError,
    ModbusRtuTerminal,
    Sl651Terminal,
    parse_config_bytes,
)
from agent.control import ControlError, ControlServer
from agent.inspection import Inspection
from agent.logs import log_task_crash
from agent.metrics import MetricsServer, ReadingCounter, Snapshot
from agent.model import Reading, ReadingSink
from agent.outbox import AsyncOutbox, Outbox
from agent.polling import ModbusTerminal, Poller
from agent.protocols.modbus import (
    BusLink,
    Link,
    SerialBus,
    SerialSettings,
    TcpLink,
    quiet_undecodable_replies,
)
from agent.protocols.sl651.session import Centre
from agent.protocols.sl651.transport import CentralStation
from agent.render import poll_json
from agent.sdnotify import notify
from agent.signing import KeyNotFoundError, init_key, key_path, load_key
from agent.sinks import EventQueue, FanOut, JsonlSink, OutboxSink
from agent.status import message_summary, status_dict
from agent.timesync import clock_synchronised
from agent.uplink import Uplink

log = structlog.get_logger(__name__)

STOP_DEADLINE = 5.0
RELOAD_SETTLE = 0.3  # editors write a file in several steps; reload once it is quiet


def polling_allowance(terminals: Sequence[ModbusTerminal]) -> float | None:
    """The longest the pollers may go without handing readings over (for the watchdog).

    A dead terminal still gives bad readings at every attempt, at least every `backoff_max`.
    """
    if not terminals:
        return None
    longest = max(
        max(t.period, t.backoff_max) + t.timeout * (t.retries + 1) * len(t.points)
        for t in terminals
    )
    return longest + 60.0


def uplink_allowance(config: Config) -> float:
    """The longest the uplink loop may go without a beat: a reconnect wait and an attempt."""
    u = config.uplink
    return u.backoff_max + u.connect_timeout + u.keepalive + 60.0


def serial_settings(t: ModbusRtuTerminal) -> SerialSettings:
    return SerialSettings(
        t.device, t.baudrate, t.parity, t.stopbits, t.bytesize, t.effective_frame_gap
    )


class Acquisition:
    """The running pollers, their links and serial buses; changed by difference on reload."""

    def __init__(self, sink: ReadingSink) -> None:
        self.sink = sink
        self.pollers: dict[str, Poller] = {}
        self.buses: dict[str, SerialBus] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def link_for(self, terminal: ModbusTerminal) -> Link:
        if isinstance(terminal, ModbusRtuTerminal):
            bus = self.buses.get(terminal.device)
            if bus is None:
                bus = self.buses[terminal.device] = SerialBus(serial_settings(terminal))
            return BusLink(bus)
        return TcpLink(terminal.host, terminal.port)

    async def apply(self, terminals: Sequence[ModbusTerminal]) -> None:
        wanted = {t.name: t for t in terminals}
        for name in list(self.pollers):
            if wanted.get(name) != self.pollers[name].terminal:
                await self._stop(name)
        # A bus whose line settings changed, or that no terminal uses any more, is reopened.
        for device, bus in list(self.buses.items()):
            users = [
                t for t in terminals if isinstance(t, ModbusRtuTerminal) and t.device == device
            ]
            if not users or serial_settings(users[0]) != bus.settings:
                for t in users:
                    if t.name in self.pollers:
                        await self._stop(t.name)
                await bus.close()
                del self.buses[device]
        for name, terminal in wanted.items():
            if name not in self.pollers:
                poller = Poller(terminal, self.link_for(terminal), self.sink)
                self.pollers[name] = poller
                task = asyncio.create_task(poller.run(), name=f"poll {name}")
                task.add_done_callback(log_task_crash)
                self._tasks[name] = task

    async def _stop(self, name: str) -> None:
        poller = self.pollers.pop(name)
        task = self._tasks.pop(name)
        task.cancel()
        with contextlib.suppress(BaseException):  # a crash was logged when it happened
            await task
        await poller.link.close()

    async def close(self) -> None:
        for name in list(self.pollers):
            await self._stop(name)
        for bus in self.buses.values():
            await bus.close()
        self.buses.clear()


class _ConfigFileHandler(FileSystemEventHandler):
    """Watchdog runs this on its own thread: it only pokes the event loop.

    Only events that can change the file count: a write closed, a create, a rename onto it, a
    delete. Reading the file (the config check does, and so does the reload itself) raises
    'opened' and 'closed without writing' events, which must not start a reload.
    """

    CHANGES = (
        FileClosedEvent,
        FileCreatedEvent,
        FileMovedEvent,
        FileDeletedEvent,
        FileModifiedEvent,
    )

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop, changed: asyncio.Event):
        self.path = path
        self.loop = loop
        self.changed = changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not isinstance(event, self.CHANGES):
            return
        paths = {event.src_path, getattr(event, "dest_path", "")}
        if any(p and Path(str(p)) == self.path for p in paths):
            self.loop.call_soon_threadsafe(self.changed.set)


class Daemon:
    """The agent as `edge-agent run` runs it."""

    def __init__(
        self,
        config: Config,
        config_path: Path,
        extra_sinks: Sequence[ReadingSink] = (),
        log_counter: LogCounter | None = None,
    ) -> None:
        self.config = config
        self.log_counter = log_counter
        self.started_at = datetime.now(UTC)
        self.restarts: list[datetime] = []
        self.inspection: Inspection | None = None
        self.centre: Centre | None = None
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self.reading_counter = ReadingCounter()
        self.central: CentralStation | None = None
        self.events: EventQueue | None = None
        self._config_bytes: bytes | None = None  # the file's content when the config was read
        self.config_path = config_path.resolve()
        self.stop_requested = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._extra_sinks = list(extra_sinks)
        self._jsonl: JsonlSink | None = None
        self.acquisition: Acquisition | None = None
        self.outbox: AsyncOutbox | None = None
        self.outbox_sink: OutboxSink | None = None
        self.uplink: Uplink | None = None
        self._uplink_task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        sdnotify.claim()
        with contextlib.suppress(OSError):
            self._config_bytes = self.config_path.read_bytes()
        quiet_undecodable_replies(loop)
        self._install_signal_handlers(loop)
        observer = self._watch_config(loop)
        try:
            await self._start_outbox()
            assert self.outbox is not None
            if self.config.uplink.broker:
                self.uplink = Uplink(
                    self.config.uplink,
                    self.outbox,
                    self.config.topic_prefix,
                    self.config.client_id,
                )
                self._uplink_task = asyncio.create_task(self.uplink.run(), name="uplink")
            self.outbox_sink = OutboxSink(
                self.outbox,
                self.config.outbox.batch,
                self.config.outbox.linger,
            )
            self.restarts = await asyncio.to_thread(record_start, self.config.state_dir)
            self.events = EventQueue(self.outbox)
            self.inspection = Inspection(self.config, self.outbox, self.events, self.snapshot)
            await self.inspection.start(polling_allowance(self.config.modbus_terminals))
            if self.uplink is not None:
                self.inspection.progress.register("uplink", uplink_allowance(self.config))
                self.uplink.on_progress = partial(self.inspection.progress.beat, "uplink")
            sinks: list[ReadingSink] = [
                self.outbox_sink,
                *self.inspection.sinks,
                *self._extra_sinks,
            ]
            if self.config.metrics.address is not None:
                sinks.append(self.reading_counter)
            if self.config.jsonl.enabled:
                self._jsonl = JsonlSink(self.config.jsonl_path, self.config.jsonl.max_bytes)
                self._jsonl.open()
                sinks.append(self._jsonl)
            fan_out = FanOut(sinks)
            self.acquisition = Acquisition(fan_out)
            await self.acquisition.apply(self.config.modbus_terminals)
            await self._start_central_station(fan_out)
            await self._start_control()
            # What exists now lives as long as the agent: keep the collector from walking it
            # (a full collection of a large site's objects showed as 60 ms of poll lateness).
            gc.freeze()
            notify("READY=1", f"STATUS=polling {len(self.config.terminals)} terminals")
            log.info(
                "agent started",
                gateway=self.config.gateway.id,
                terminals=len(self.config.terminals),
                config=str(self.config_path),
                uplink=self.config.uplink.broker,
            )
            await self._serve()
        finally:
            notify("STOPPING=1")
            log.info("agent stopping")
            try:
                async with asyncio.timeout(STOP_DEADLINE):
                    await self._stop_parts()
            except TimeoutError:
                log.error("stop deadline passed; leaving the rest to cancellation")
            if observer is not None:
                observer.stop()
                observer.join(timeout=1)
            self._remove_signal_handlers(loop)
            log.info("agent stopped")

    async def _start_control(self) -> None:
        """The control socket and, when configured, the metrics endpoint."""
        control = ControlServer(
            self.config.control.socket,
            {
                "status": self._status,
                "checks": self._checks,
                "terminals": self._terminals,
                "outbox": self._outbox,
                "poll": self._poll,
                "reload": self._reload_request,
                "sl651-query": self._sl651_query,
                "history-flush": self._history_flush,
            },
            self.config.control.group,
        )
        try:
            await control.start()
        except (OSError, KeyError) as exc:
            # Not fatal: the agent's job is the data; `status` then says it cannot reach it.
            log.error(
                "control socket unavailable",
                path=str(self.config.control.socket),
                error=str(exc),
            )
        else:
            self.control = control
        address = self.config.metrics.address
        if address is not None:
            self.metrics = MetricsServer(address, self._metrics_snapshot)
            await self.metrics.start()

    async def _status(self, args: Mapping[str, Any]) -> dict[str, Any]:
        results = self.inspection.results() if self.inspection else []
        return status_dict(await self.snapshot(), results)

    async def _checks(self, args: Mapping[str, Any]) -> list[dict[str, Any]]:
        if self.inspection is None:
            raise ControlError("the checks are not running")
        if args.get("run"):
            done = await self.inspection.runner.run_all(await self.snapshot())
            return [r.to_dict() for r in sort_results(done.results)]
        return [r.to_dict() for r in self.inspection.results()]

    async def _terminals(self, args: Mapping[str, Any]) -> list[dict[str, Any]]:
        terminals: list[dict[str, Any]] = (await self._status(args))["terminals"]
        return terminals

    async def _outbox(self, args: Mapping[str, Any]) -> dict[str, Any]:
        if self.outbox is None:
            raise ControlError("the outbox is not open")
        limit = max(0, min(int(args.get("limit", 0)), 1000))
        stats = await self.outbox.stats()
        now = time.time()
        pending = await self.outbox.pending(limit) if limit else []
        return {
            "stats": stats.to_dict(),
            "messages": [
                message_summary(m.seq, m.kind, m.priority, m.payload, m.size, m.created_at, now)
                for m in pending
            ],
        }

    async def _poll(self, args: Mapping[str, Any]) -> dict[str, Any]:
        name = str(args.get("terminal", ""))
        poller = self.acquisition.pollers.get(name) if self.acquisition else None
        if poller is None:
            known = ", ".join(self.acquisition.pollers) if self.acquisition else ""
            raise ControlError(f"no polled terminal named {name!r} (known: {known or 'none'})")
        readings = await poller.poll_once()
        return poll_json(name, poller.terminal.points, readings)

    async def _sl651_query(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Ask an SL651 station for specified elements (0x3A) at its next chance."""
        if self.centre is None:
            raise ControlError("no SL651 central station is configured")
        elements = args.get("elements")
        if not isinstance(elements, list) or not elements:
            raise ControlError("elements: a list of identifiers, e.g. ['Z', 'PJ']")
        try:
            state = self.centre.ask_elements(
                str(args.get("terminal", "")), [str(e) for e in elements]
            )
        except KeyError as exc:
            raise ControlError(str(exc.args[0])) from None
        except ValueError as exc:
            raise ControlError(f"elements: {exc}") from None
        return {"query": state}

    async def _history_flush(self, args: Mapping[str, Any]) -> dict[str, str]:
        """Write the buffered history now, so that `edge-agent report` covers up to now."""
        history = self.inspection.history if self.inspection else None
        if history is None:
            raise ControlError("no history is kept (checks.history.enabled is false)")
        try:
            await asyncio.to_thread(history.flush)
        except (OSError, sqlite3.Error) as exc:  # unanswered, the client would see a closed socket
            raise ControlError(f"cannot write the history to {history.path}: {exc}") from exc
        return {"path": str(history.path.absolute())}

    async def _reload_request(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return {"reloaded": await self.reload()}

    async def _metrics_snapshot(self) -> Snapshot:
        results = self.inspection.results() if self.inspection else []
        return Snapshot(await self.snapshot(), results, self.reading_counter.counts)

    async def _start_central_station(self, sink: FanOut) -> None:
        sl651 = self.config.sl651
        if not (sl651.listen or sl651.serial or self.config.sl651_terminals):
            return
        self.centre = Centre(sl651, self.config.sl651_terminals, clock_synchronised)
        self.central = CentralStation(sl651, self.centre, sink.submit, self._store_events)
        await self.central.start()

    def _store_events(self, events: list[dict[str, Any]]) -> None:
        """Alarms from the field (station status words) into the outbox, at EVENT priority."""
        for event in events:
            log.warning("station alarm", **{k: event[k] for k in ("terminal", "flag", "action")})
        if self.events is not None:
            self.events.submit(events)

    async def _start_outbox(self) -> None:
        state_dir = self.config.state_dir
        try:
            key = load_key(state_dir)
        except KeyNotFoundError:
            key = init_key(state_dir)
            log.info("created the device identity", kid=key.kid, path=str(key_path(state_dir)))
        outbox = Outbox(
            self.config.outbox_path,
            key,
            self.config.gateway.id,
            max_bytes=self.config.outbox.max_bytes,
            max_age=self.config.outbox.max_age,
            synchronous=self.config.outbox.synchronous,
        )
        self.outbox = AsyncOutbox(outbox)
        await self.outbox.open()  # a damaged database is set aside (and logged) there

    async def snapshot(self) -> AgentView:
        """What the checks and the health report see of the running agent."""
        acquisition = self.acquisition
        window = self.config.checks.software.log_window
        terminals = terminal_views(acquisition.pollers) if acquisition else {}
        clocks: dict[str, TerminalClock] = {}
        if self.centre is not None:
            now = datetime.now(UTC)
            for code, state in self.centre.stations.items():
                terminal = self.centre.terminals.get(code)
                if terminal is not None:
                    terminals[terminal.name] = TerminalView(terminal, state.stats)
                if state.clock_offset is not None:
                    station_time = now + timedelta(seconds=state.clock_offset)
                    clocks[state.terminal] = TerminalClock(station_time, now)
        return AgentView(
            config=self.config,
            config_path=self.config_path,
            started_at=self.started_at,
            restarts=self.restarts,
            terminals=terminals,
            terminal_clocks=clocks,
            buses=(
                {d: bus.utilisation() for d, bus in acquisition.buses.items()}
                if acquisition
                else {}
            ),
            outbox=await self.outbox.stats() if self.outbox is not None else None,
            uplink=self.uplink.state if self.uplink is not None else None,
            logs=self.log_counter.snapshot(window) if self.log_counter is not None else None,
        )

    async def _stop_parts(self) -> None:
        """Stop taking readings, make the taken ones durable, then leave the broker cleanly."""
        if self.control is not None:
            await self.control.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.central is not None:
            await self.central.stop()
        if self.acquisition is not None:
            await self.acquisition.close()
        if self.events is not None:
            await self.events.flush()
        if self.outbox_sink is not None:
            await self.outbox_sink.flush()
        if self.inspection is not None:
            await self.inspection.stop()
        if self._uplink_task is not None:
            self._uplink_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._uplink_task
        if self._jsonl is not None:
            self._jsonl.close()
        if self.outbox is not None:
            await self.outbox.close()

    async def _serve(self) -> None:
        stop = asyncio.create_task(self.stop_requested.wait())
        try:
            while not self.stop_requested.is_set():
                reload = asyncio.create_task(self._reload_requested.wait())
                await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
                if self._reload_requested.is_set() and not self.stop_requested.is_set():
                    await asyncio.sleep(RELOAD_SETTLE)
                    self._reload_requested.clear()
                    log.debug("config reload requested")
                    notify("RELOADING=1")
                    await self.reload()
                    notify("READY=1")
                reload.cancel()
        finally:
            stop.cancel()

    def request_reload(self) -> None:
        self._reload_requested.set()

    async def reload(self) -> bool:
        """Apply the config file as it is now; keep the running config if it has errors.

        The file is parsed off the event loop (a large site's YAML takes a while) and only when
        its bytes changed since the config in use was read.
        """
        try:
            text = await asyncio.to_thread(self.config_path.read_bytes)
        except OSError as exc:
            log.error("cannot read the config file; keeping the running one", error=str(exc))
            return False
        if text == self._config_bytes:
            return True
        try:
            new = await asyncio.to_thread(parse_config_bytes, text, self.config_path)
        except ConfigError as exc:
            log.error("new config refused; keeping the running one", errors=exc.lines())
            self._config_bytes = text  # refused once is enough: wait for the next change
            return False
        self._config_bytes = text
        if new == self.config:
            return True
        restart_keys = ("gateway", "state_dir", "log", "jsonl", "outbox", "uplink", "sl651")
        for key in (*restart_keys, "checks", "health"):
            if getattr(new, key) != getattr(self.config, key):
                log.warning("config change needs a restart to take effect", key=key)
        assert self.acquisition is not None
        await self.acquisition.apply(new.modbus_terminals)
        self.config = self.config.model_copy(update={"terminals": new.terminals})
        if self.centre is not None:
            self.centre.configure(self.config.sl651_terminals)
        if self.inspection is not None:
            await self.inspection.reload(self.config)
            self.inspection.set_polling_allowance(polling_allowance(self.config.modbus_terminals))
        log.info("config reloaded", terminals=len(new.terminals))
        return True

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    @staticmethod
    def _remove_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    def _watch_config(self, loop: asyncio.AbstractEventLoop) -> Observer | None:  # type: ignore[valid-type]
        handler = _ConfigFileHandler(self.config_path, loop, self._reload_requested)
        observer = Observer()
        try:
            observer.schedule(handler, str(self.config_path.parent), recursive=False)
            observer.start()
        except OSError as exc:  # e.g. inotify limits: SIGHUP still works
            log.warning("cannot watch the config file; reload with SIGHUP", error=str(exc))
            return None
        return observer


async def poll_terminal(config: Config, name: str) -> tuple[ModbusTerminal, list[Reading]]:
    """Read every point of one terminal once (`edge-agent poll`).

    KeyError for an unknown name, ValueError for a terminal that is not polled (SL651 stations
    report by themselves).
    """
    terminal = config.terminal(name)
    if isinstance(terminal, Sl651Terminal):
        raise ValueError(
            f"{name} is an SL651 station: it reports by itself; see its readings with "
            "'edge-agent status' or decode its frames with 'edge-agent sl651 decode'"
        )
    quiet_undecodable_replies(asyncio.get_running_loop())
    acquisition = Acquisition(FanOut([]))
    link = acquisition.link_for(terminal)
    try:
        readings = await Poller(terminal, link, acquisition.sink).poll_once()
    finally:
        await link.close()
        await acquisition.close()
    return terminal, readings
