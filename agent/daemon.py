"""The composition root: builds the parts from config, enters them in order, runs, leaves them.

Every long-running part is an async context manager, entered in one `AsyncExitStack` in
dependency order and left in reverse: outbox → uplink → writer → inspection (checks, history,
watchdog) → local copy → protocol drivers → updates → diagnosis (with an uplink) → control
socket → metrics → config watcher. The check loop starts once every part is up and ends
before the drivers leave (it judges the running agent). The daemon is also what diagnosis
actions may use of the running agent (`agent.diagnosis.registry.ActionContext`). So on
the way out the drivers stop taking readings first, the history is saved, the writer stores
what was taken, the uplink publishes it while the broker is there (briefly) and says
`offline`, and the outbox closes last. Leaving is bounded by `STOP_DEADLINE`, counted from
the moment the stop is asked (so that the process ends within 5 s of SIGTERM at any load:
the drivers that can halt (`HaltingDriver`: Modbus) are halted right then, their pollers all
cancelled before any part leaves, and the writer stores what it can within `WRITER_STOP`);
past it, each part still leaving is cancelled in turn (`leave_by`). SIGHUP and a change of
the config file reload the terminals without a restart; a new config with errors is refused,
its errors logged, and the running config kept. SIGTERM and SIGINT ask for the stop
(`request_stop`: an event set, the drivers halted); SIGHUP only sets an event. At start it
raises the descriptor soft limit to the hard one (agent/limits.py) before any part opens a
file. This module names no protocol: the drivers come from agent/protocols/registry.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import signal
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent import sdnotify
from agent.checks.framework import CheckResult, Status
from agent.checks.view import AgentView, LogCounter, load_restarts, record_start
from agent.config import NO_RESTART_SECTIONS, Config, ConfigError, parse_config_bytes
from agent.config_watch import ConfigWatcher
from agent.control import ControlServer
from agent.credentials import resolve_uplink
from agent.diagnosis.consent import ConsentStore, consent_event, consent_state
from agent.diagnosis.part import DiagnosisPart
from agent.diagnosis.registry import ActionError
from agent.inspection import Inspection
from agent.intake import SiteIntake
from agent.limits import raise_descriptor_limit
from agent.logs import LOG_RING, set_log_level
from agent.model import ReadingSink, TerminalClock, TerminalView
from agent.operations import OPERATIONS, OperationError, Operations
from agent.outbox import AsyncOutbox, Message, Outbox, Priority
from agent.protocols.driver import (
    Driver,
    DriverContext,
    DriverError,
    DriverSpec,
    PollAnswer,
    driver_counters,
    halt_drivers,
)
from agent.protocols.registry import DRIVERS
from agent.reading_counts import ReadingCounter
from agent.sdnotify import notify
from agent.signing import KeyNotFoundError, init_key, key_path, load_key
from agent.sinks import FanOut, JsonlSink
from agent.telemetry import Meta
from agent.timesync import clock_synchronised
from agent.update.gate import Observation
from agent.update.part import UpdatePart
from agent.uplink import Uplink
from agent.writer import OutboxWriter

if TYPE_CHECKING:
    from agent.metrics import Snapshot

YOUNG_GENERATION = 10_000  # objects allocated between young collections (default 700)

log = structlog.get_logger(__name__)

# From the stop request to every part left; the rest of the 5 s after SIGTERM is the
# interpreter's exit.
STOP_DEADLINE = 4.0
CUT_GRACE = 0.05  # past the deadline, each part still leaving is cancelled this far apart
WRITER_STOP = 2.0  # of which the writer may spend this storing what was taken
RELOAD_SETTLE = 0.3  # editors write a file in several steps; reload once it is quiet


def uplink_allowance(config: Config) -> float:
    """The longest the uplink loop may go without a beat: a reconnect wait and an attempt."""
    u = config.uplink
    return u.backoff_max + u.connect_timeout + u.keepalive + 60.0


@dataclass(frozen=True)
class Parts:
    """The running agent's parts, each entered in the daemon's exit stack."""

    outbox: AsyncOutbox
    writer: OutboxWriter
    uplink: Uplink | None
    inspection: Inspection
    drivers: Sequence[Driver]
    update: UpdatePart
    diagnosis: DiagnosisPart | None


class Daemon:
    """The agent as `edge-agent run` runs it."""

    def __init__(
        self,
        config: Config,
        config_path: Path,
        extra_sinks: Sequence[ReadingSink] = (),
        log_counter: LogCounter | None = None,
        drivers: Sequence[DriverSpec] = DRIVERS,
        config_bytes: bytes | None = None,
    ) -> None:
        """`config_bytes`: the file content `config` was parsed from, if the caller has it."""
        self.config = config
        self.config_path = config_path.resolve()
        self.log_counter = log_counter
        self.started_at = datetime.now(UTC)
        self.restarts: list[datetime] = []
        self._leaving: list[tuple[str, float]] = []  # (part left, loop time) on the way out
        self.reading_counter = ReadingCounter()
        self.stop_requested = asyncio.Event()
        self._stop_asked_at: float | None = None  # loop time of the first stop request
        self.exit_code = 0  # what `edge-agent run` returns (4: the update gate was not met)
        self.started = asyncio.Event()  # set once every part runs and READY=1 was sent
        self.operations = Operations(self)
        # Set once every part has started (for the demo's screen); cleared on the way out.
        self.parts: Parts | None = None
        self._driver_specs = tuple(drivers)
        self._extra_sinks = list(extra_sinks)
        self._reload_requested = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        # sha256 of the file's content when it was last read (a large site's file is a
        # megabyte: its digest is what tells a change), and of the content self.config was
        # parsed from (AgentView.config_digest).
        self._file_digest = None if config_bytes is None else hashlib.sha256(config_bytes).digest()
        self._config_digest = self._file_digest
        self.consent = ConsentStore(config.layout)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        sdnotify.claim()
        # Before any part opens a file or socket: listeners size themselves from it.
        limit = raise_descriptor_limit()
        if limit.error is not None:
            log.warning("descriptor limit not raised", **limit.to_log())
        else:
            log.info("descriptor limit", **limit.to_log())
        if self._file_digest is None:
            with contextlib.suppress(OSError):
                self._file_digest = hashlib.sha256(self.config_path.read_bytes()).digest()
        self._install_signal_handlers(loop)
        stack = AsyncExitStack()
        try:
            self.parts = await self._start(stack)
            # What exists now lives as long as the agent: keep the collector from walking it
            # (a full collection of a large site's objects showed as 60 ms of poll lateness).
            gc.freeze()
            # Polls allocate many short-lived objects and almost no cycles: a young generation
            # of 10,000 (not 700) collects about 14 times less often for little more memory
            # (bench/poll_scale.py, K=1000: about a tenth less CPU per point, RSS unchanged).
            gc.set_threshold(YOUNG_GENERATION, *gc.get_threshold()[1:])
            notify("READY=1", f"STATUS=serving {len(self.config.terminals)} terminals")
            self.started.set()
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
            self._leaving.append(("", loop.time()))
            if self.parts is not None:  # a stop asked while the parts were starting halted none
                halt_drivers(self.parts.drivers)
            asked = loop.time() if self._stop_asked_at is None else self._stop_asked_at
            cut = await leave_by(stack, asked + STOP_DEADLINE)
            if cut:
                log.error("stop deadline passed; the rest was cancelled", left=self._left_times())
            self.parts = None
            self._remove_signal_handlers(loop)
            log.info("agent stopped", left=self._left_times())

    async def _left(self, part: str) -> None:
        """On the way out: every part entered after this mark has been left (an exit stack
        callback between the parts); the times say which part took how long to leave."""
        self._leaving.append((part, asyncio.get_running_loop().time()))

    def _left_times(self) -> dict[str, float]:
        """Seconds each part took to leave, in the order they were left (the last one, cut
        short by the deadline, not among them)."""
        marks = self._leaving
        return {part: round(at - before, 3) for (_, before), (part, at) in pairwise(marks)}

    async def _start(self, stack: AsyncExitStack) -> Parts:
        """Enter every part in dependency order; the stack leaves them in reverse."""
        config = self.config
        # The secrets systemd hands over (agent/credentials.py), before anything is opened; only
        # the uplink sees them: self.config stays the file's, as reload and the checks compare.
        uplink_config = resolve_uplink(config.uplink)
        self._leaving.clear()
        stack.push_async_callback(self._left, "outbox")
        outbox = await stack.enter_async_context(AsyncOutbox(self._open_outbox()))
        stack.push_async_callback(self._left, "uplink")
        uplink = None
        if config.uplink.broker:
            uplink = Uplink(uplink_config, outbox, config.topic_prefix, config.client_id)
            await stack.enter_async_context(uplink)
        stack.push_async_callback(self._left, "writer")
        # After the uplink, so that on the way out what the writer stores last is published.
        writer = await stack.enter_async_context(
            OutboxWriter(
                outbox,
                batch=config.telemetry_batch,
                linger=config.outbox.linger,
                gather_window=config.outbox.commit_window,
                schema=config.telemetry.body_schema,
                max_backlog=config.outbox.max_backlog,
                stop_timeout=WRITER_STOP,
            )
        )
        # Before any driver hands a reading over: the point lists telemetry refers to.
        writer.set_meta(Meta.of(config.terminals))
        # Reports update outcomes through the writer; its gate judges the agent only once
        # `started` is set, when every part runs.
        stack.push_async_callback(self._left, "update")
        update = await stack.enter_async_context(self._update_part(writer, uplink))
        self.restarts = await asyncio.to_thread(self._record_start)
        stack.push_async_callback(self._left, "inspection")
        inspection = await stack.enter_async_context(Inspection(config, writer, self.snapshot))
        if uplink is not None:
            inspection.progress.register("uplink", uplink_allowance(config))
            uplink.on_progress = partial(inspection.progress.beat, "uplink")
        local: list[ReadingSink] = [*inspection.sinks, *self._extra_sinks]
        if config.metrics.address is not None:
            local.append(self.reading_counter)
        if config.jsonl.enabled:
            local.append(stack.enter_context(JsonlSink(config.jsonl_path, config.jsonl.max_bytes)))
        context = DriverContext(config, SiteIntake(FanOut(local), writer), clock_synchronised)
        drivers: list[Driver] = []
        stack.push_async_callback(self._left, "drivers")
        for spec in self._driver_specs:
            drivers.append(await stack.enter_async_context(spec.create(context)))
        # The checks judge the running agent: they end before the drivers leave.
        stack.push_async_callback(inspection.stop_checks)
        # Made before it is entered: the parts exist, for every task the entering lets run.
        diagnosis = self._diagnosis_part(writer, uplink) if uplink is not None else None
        stack.push_async_callback(self._left, "diagnosis, control")
        self.parts = parts = Parts(outbox, writer, uplink, inspection, drivers, update, diagnosis)
        inspection.set_polling_allowance(self._polling_allowance(drivers))
        if diagnosis is not None:
            await stack.enter_async_context(diagnosis)
        await self._start_control(stack)
        stack.enter_context(ConfigWatcher(self.config_path, self._reload_requested))
        inspection.start_checks()  # every part is up
        return parts

    def _record_start(self) -> list[datetime]:
        """Note this start (the restarts check); on a full disk the agent starts anyway."""
        state_dir = self.config.state_dir
        try:
            return record_start(state_dir)
        except OSError as exc:
            log.error("cannot record this start; starting anyway", error=str(exc))
            return load_restarts(state_dir)

    def _update_part(self, writer: OutboxWriter, uplink: Uplink | None) -> UpdatePart:
        """Signed updates' part: reports through the writer, listens on the uplink's router."""
        config = self.config
        subscribe = None
        if uplink is not None:
            subscribe = partial(uplink.router.register, absolute=True)
        return UpdatePart(
            config.update,
            config.layout,
            config.gateway.id,
            report=lambda body: writer.put("event", body, Priority.EVENT),
            observe=self.observe,
            started=self.started,
            stop=self.request_stop,
            subscribe=subscribe,
        )

    def _diagnosis_part(self, writer: OutboxWriter, uplink: Uplink) -> DiagnosisPart:
        """Remote diagnosis: requests from the uplink's router, answers through the writer."""
        config = self.config
        return DiagnosisPart(
            config.diagnosis,
            config.layout,
            config.gateway.id,
            context=self,
            answer=lambda body: writer.put("diag", body, Priority.EVENT),
            report=lambda body: writer.put("event", body, Priority.EVENT),
            subscribe=uplink.router.register,
        )

    def _open_outbox(self) -> Outbox:
        state_dir = self.config.state_dir
        try:
            key = load_key(state_dir)
        except KeyNotFoundError:
            key = init_key(state_dir)
            log.info("created the device identity", kid=key.kid, path=str(key_path(state_dir)))
        o = self.config.outbox
        return Outbox(
            self.config.outbox_path,
            key,
            self.config.gateway.id,
            max_bytes=o.max_bytes,
            max_age=o.max_age,
            synchronous=o.synchronous,
            reserve_bytes=o.reserve_bytes,
            compression=self.config.telemetry.compressed_kinds,
        )

    async def _start_control(self, stack: AsyncExitStack) -> None:
        """The control socket and, when configured, the metrics endpoint."""
        handlers = {name: partial(op.call, self.operations) for name, op in OPERATIONS.items()}
        control = ControlServer(self.config.control.socket, handlers, self.config.control.group)
        try:
            await stack.enter_async_context(control)
        except (OSError, KeyError) as exc:
            # Not fatal: the agent's job is the data; `status` then says it cannot reach it.
            log.error(
                "control socket unavailable",
                path=str(self.config.control.socket),
                error=str(exc),
            )
        address = self.config.metrics.address
        if address is not None:
            from agent.metrics import MetricsServer  # prometheus_client: only when configured

            await stack.enter_async_context(MetricsServer(address, self._metrics_snapshot))

    @staticmethod
    def _polling_allowance(drivers: Sequence[Driver]) -> float | None:
        allowances = [a for d in drivers if (a := d.watch_allowance()) is not None]
        return max(allowances) if allowances else None

    # -- what the operations ask of the running agent ----------------------------------------

    def _running(self) -> Parts:
        if self.parts is None:
            raise OperationError("the agent is starting or stopping")
        return self.parts

    async def snapshot(self) -> AgentView:
        """What the checks, the health report and status see of the running agent."""
        parts = self.parts
        drivers = parts.drivers if parts is not None else ()
        terminals: dict[str, TerminalView] = {}
        clocks: dict[str, TerminalClock] = {}
        buses: dict[str, float] = {}
        for driver in drivers:
            terminals.update(driver.views())
            clocks.update(driver.clocks())
            buses.update(driver.buses())
        window = self.config.checks.software.log_window
        return AgentView(
            config=self.config,
            config_path=self.config_path,
            config_digest=self._config_digest,
            started_at=self.started_at,
            restarts=self.restarts,
            terminals=terminals,
            terminal_clocks=clocks,
            buses=buses,
            outbox=await parts.outbox.stats() if parts is not None else None,
            uplink=parts.uplink.state if parts is not None and parts.uplink else None,
            logs=self.log_counter.snapshot(window) if self.log_counter is not None else None,
            update=parts.update.summary if parts is not None else None,
            diagnosis=consent_state(self.config.diagnosis.consent, self.consent.read()),
            counters=driver_counters(drivers),
        )

    async def observe(self) -> Observation:
        """What the update gate (and `update-baseline`) sees of the agent now."""
        return observe(await self.snapshot(), self.check_results())

    def check_results(self) -> list[CheckResult]:
        return self.parts.inspection.results() if self.parts is not None else []

    async def run_checks(self) -> list[CheckResult]:
        done = await self._running().inspection.runner.run_all(await self.snapshot())
        return done.results

    async def outbox_summary(self, limit: int) -> tuple[dict[str, Any], list[Message]]:
        outbox = self._running().outbox
        stats = await outbox.stats()
        return stats.to_dict(), (await outbox.pending(limit) if limit else [])

    def _driver_for(self, terminal: str) -> Driver:
        for driver in self._running().drivers:
            if terminal in driver.views():
                return driver
        known = ", ".join(t.name for t in self.config.terminals) or "none"
        raise OperationError(f"no running terminal named {terminal!r} (known: {known})")

    async def poll(self, terminal: str) -> PollAnswer:
        return await self._driver_for(terminal).poll(terminal)

    async def ask(self, terminal: str, request: Mapping[str, Any]) -> dict[str, Any]:
        return await self._driver_for(terminal).ask(terminal, request)

    async def flush_history(self) -> Path | None:
        return await self._running().inspection.flush_history()

    # -- consent (`edge-agent diag grant/revoke/status`) -------------------------------------

    async def grant_consent(
        self, minutes: int, by: str, actions: Sequence[str] | None
    ) -> dict[str, Any]:
        """Open a consent window (the file), then say so upstream (an event)."""
        writer = self._running().writer
        try:
            consent = await asyncio.to_thread(self.consent.grant, minutes, by, actions)
        except ValueError as exc:
            raise OperationError(str(exc)) from None
        log.info("diagnosis consent granted", by=by, until=consent.to_dict()["until"])
        await writer.put("event", consent_event("granted", consent, by), Priority.EVENT)
        return self.consent_status()

    async def revoke_consent(self, by: str) -> dict[str, Any]:
        writer = self._running().writer
        closed = await asyncio.to_thread(self.consent.revoke)
        log.info("diagnosis consent revoked", by=by, was_open=closed is not None)
        await writer.put("event", consent_event("revoked", closed, by), Priority.EVENT)
        return {**self.consent_status(), "revoked": closed.to_dict() if closed else None}

    def consent_status(self) -> dict[str, Any]:
        settings = self.config.diagnosis
        return {
            **consent_state(settings.consent, self.consent.read()),
            "without_consent": list(settings.without_consent),
        }

    # -- what diagnosis actions use (ActionContext) ------------------------------------------

    def recent_logs(self, level: str, since: float | None, limit: int) -> list[dict[str, Any]]:
        return LOG_RING.recent(level, since, limit)

    def set_log_level(self, level: str, seconds: float) -> str:
        try:
            return set_log_level(level, seconds)
        except ValueError as exc:
            raise ActionError(str(exc)) from None

    async def restart_terminal(self, name: str) -> dict[str, Any]:
        try:
            driver = self._driver_for(name)
            answer = await driver.restart(name)
        except (OperationError, DriverError) as exc:
            raise ActionError(str(exc)) from None
        except KeyError:
            raise ActionError(f"no running terminal named {name!r}") from None
        log.info("terminal restarted (remote diagnosis)", terminal=name)
        return answer

    async def ping_upstream(self) -> dict[str, Any]:
        uplink = self._running().uplink
        if uplink is None:
            return {"broker": None, "connected": False, "error": "no uplink.broker configured"}
        return await uplink.ping()

    async def _metrics_snapshot(self) -> Snapshot:
        from agent.metrics import Snapshot

        announcements = self.parts.update.announcements if self.parts is not None else None
        return Snapshot(
            await self.snapshot(),
            self.check_results(),
            self.reading_counter.counts,
            announcements or Counter(),
        )

    # -- serving and reloading ---------------------------------------------------------------

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
                    try:
                        await self.reload()
                    except Exception as exc:  # noqa: BLE001 -- a failed reload must not stop the agent
                        log.error("config reload failed", error=f"{type(exc).__name__}: {exc}")
                    notify("READY=1")
                reload.cancel()
        finally:
            stop.cancel()

    def request_stop(self, exit_code: int = 0) -> None:
        """Stop the agent; `edge-agent run` then exits with `exit_code` (the first one asked)."""
        if not self.stop_requested.is_set():
            self.exit_code = exit_code
            self._stop_asked_at = asyncio.get_running_loop().time()
        self.stop_requested.set()
        if self.parts is not None:
            # At once, not when the drivers' turn to leave comes: a large site's polling would
            # keep the loop busy while the parts before them leave.
            halt_drivers(self.parts.drivers)

    def request_reload(self) -> None:
        self._reload_requested.set()

    async def reload(self) -> bool:
        """Apply the config file as it is now; keep the running config if it has errors.

        The file is parsed off the event loop (a large site's YAML takes a while) and only when
        its bytes changed since the config in use was read. One reload at a time (the file
        watcher, SIGHUP and the control socket may ask together); once started, applying it
        is not cut short by the caller giving up (a control request's timeout).
        """
        async with self._reload_lock:
            return await asyncio.shield(self._reload())

    async def _reload(self) -> bool:
        try:
            text = await asyncio.to_thread(self.config_path.read_bytes)
        except OSError as exc:
            log.error("cannot read the config file; keeping the running one", error=str(exc))
            return False
        digest = hashlib.sha256(text).digest()
        if digest == self._file_digest:
            return True
        try:
            new = await asyncio.to_thread(parse_config_bytes, text, self.config_path)
        except ConfigError as exc:
            log.error("new config refused; keeping the running one", errors=exc.lines())
            self._file_digest = digest  # refused once is enough: wait for the next change
            return False
        if new == self.config:
            self._file_digest = digest
            return True
        # A reload applies the terminals; every other section takes effect at the next start.
        for key in type(new).model_fields:
            if key not in NO_RESTART_SECTIONS and getattr(new, key) != getattr(self.config, key):
                log.warning("config change needs a restart to take effect", key=key)
        parts = self._running()
        applied = self.config.model_copy(update={"terminals": new.terminals})
        # The new point lists before the new terminals' first readings (queued if changed).
        parts.writer.set_meta(Meta.of(applied.terminals))
        for driver in parts.drivers:
            await driver.apply(applied)
        await parts.inspection.reload(applied)
        parts.inspection.set_polling_allowance(self._polling_allowance(parts.drivers))
        # Only now: a reload that failed half-way is tried again at the next change or SIGHUP.
        self.config, self._file_digest = applied, digest
        self._config_digest = None  # the running config is no longer one file's content
        log.info("config reloaded", terminals=len(new.terminals))
        return True

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    @staticmethod
    def _remove_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def leave_by(stack: AsyncExitStack, deadline: float) -> bool:
    """Leave every part on `stack` by `deadline` (loop time); whether any was cut short.

    Past the deadline each part still leaving is cancelled in turn, `CUT_GRACE` apart: a
    single cancellation (`asyncio.timeout`) cuts only the part leaving at that moment, and the
    exit stack then leaves the others without any limit. An error of a part's own is raised."""
    loop = asyncio.get_running_loop()
    leaving = asyncio.ensure_future(stack.aclose())
    try:
        await asyncio.wait({leaving}, timeout=max(0.0, deadline - loop.time()))
        cut = not leaving.done()
        while not leaving.done():
            leaving.cancel()
            await asyncio.wait({leaving}, timeout=CUT_GRACE)
    except asyncio.CancelledError:
        leaving.cancel()  # ours: the parts are not left running behind us
        raise
    if not leaving.cancelled() and (error := leaving.exception()) is not None:
        raise error
    return cut


def observe(view: AgentView, results: Sequence[CheckResult]) -> Observation:
    """An `Observation` of the agent from the snapshot the checks read and their results."""
    uplink = view.uplink
    last_ack = None
    if uplink is not None and uplink.last_ack_at is not None:
        last_ack = datetime.fromtimestamp(uplink.last_ack_at, view.started_at.tzinfo)
    return Observation(
        started_at=view.started_at,
        last_good={name: t.stats.last_good_at for name, t in view.terminals.items()},
        answering=frozenset(
            name
            for name, t in view.terminals.items()
            if t.stats.last_good_at is not None and not t.stats.consecutive_failures
        ),
        uplink_connected=bool(uplink is not None and uplink.connected),
        last_ack_at=last_ack,
        failing_checks=frozenset(r.id for r in results if r.status is Status.FAIL),
        checks_run=bool(results),
    )
