"""The Modbus driver: one poller per terminal, their TCP links and shared serial buses.

Behind the `Driver` interface: entering starts a poller for every Modbus terminal of the
config — run by the driver's TCP engine (tcp_engine.py: one thread, one epoll) for a TCP
terminal named by its IP address, by an asyncio task of its own otherwise (`Poller.run`);
`apply` changes the running set by difference on reload (a changed terminal is restarted, a
serial bus whose line settings changed or that nobody uses any more is reopened); leaving
stops every poller and closes every link, after which no reading is taken. Leaving
is quick at any size: `halt` (called as soon as the agent is asked to stop, before any part
leaves) cancels every poller at once without waiting, so the event loop is quiet again by the
time the driver leaves; leaving awaits their ends together and closes the links together
within `CLOSE_TIMEOUT` (thousands of terminals closed one by one held a stop for many
seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from agent.logs import log_task_crash
from agent.model import Intake, Reading, ReadingSink, TerminalClock, TerminalView
from agent.protocols.driver import DriverContext, DriverError, PollAnswer
from agent.protocols.modbus.config import (
    ModbusRtuTerminal,
    ModbusTcpTerminal,
    ModbusTerminal,
)
from agent.protocols.modbus.links import (
    BusLink,
    Link,
    SerialBus,
    SerialSettings,
    TcpLink,
)
from agent.protocols.modbus.poller import Poller
from agent.protocols.modbus.tcp_engine import Delivery, EngineLink, EngineStopped, TcpEngine

if TYPE_CHECKING:
    from agent.config import Config

CLOSE_TIMEOUT = 1.0  # the links of a stopping driver are closed together within this


def serial_settings(t: ModbusRtuTerminal) -> SerialSettings:
    return SerialSettings(
        t.device, t.baudrate, t.parity, t.stopbits, t.bytesize, t.effective_frame_gap
    )


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


def modbus_terminals(config: Config) -> list[ModbusTerminal]:
    return config.terminals_of(ModbusTcpTerminal, ModbusRtuTerminal)


class ModbusDriver:
    """The running pollers, their links and serial buses."""

    def __init__(
        self,
        terminals: Sequence[ModbusTerminal],
        sink: ReadingSink,
        held: Callable[[], bool] = lambda: False,
    ) -> None:
        self.sink = sink
        self.held = held  # the outbox is behind: pollers skip their slots (backpressure)
        self.terminals = list(terminals)
        self.pollers: dict[str, Poller] = {}
        self.serial_buses: dict[str, SerialBus] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}  # the pollers run by asyncio
        self._engine: TcpEngine | None = None  # runs the others (`engine_polled`)
        self._halted = False

    @classmethod
    def from_context(cls, context: DriverContext) -> ModbusDriver:
        intake: Intake = context.intake
        return cls(modbus_terminals(context.config), intake, intake.congested)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start a poller for every terminal."""
        await self._run(self.terminals)

    def halt(self) -> None:
        """Cancel every poller now (the agent is stopping); no poller starts, no terminal is
        polled on request after this. Once: a second cancel could cut a poller's cleanup."""
        if self._halted:
            return
        self._halted = True
        for task in self._tasks.values():
            task.cancel()
        if self._engine is not None:
            self._engine.halt()

    def _refuse_if_halted(self, what: str) -> None:
        if self._halted:
            raise DriverError(f"the agent is stopping: {what}")

    async def stop(self) -> None:
        """Stop every poller and close every link: no reading is taken after this."""
        self.halt()  # all at once, so a stop cut short leaves none polling
        tasks = list(self._tasks.values())
        if tasks:
            # Their ends, together; a crash was logged when it happened, and a cancellation
            # of this coroutine is not swallowed (wait raises it).
            await asyncio.wait(tasks)
        links = [p.link for p in self.pollers.values() if not isinstance(p.link, EngineLink)]
        self.pollers.clear()
        self._tasks.clear()
        await close_links(links)
        if self._engine is not None:
            await self._engine.stop()  # closes its connections
            self._engine = None
        for bus in self.serial_buses.values():
            await bus.close()
        self.serial_buses.clear()

    def link_for(self, terminal: ModbusTerminal) -> Link:
        if isinstance(terminal, ModbusRtuTerminal):
            bus = self.serial_buses.get(terminal.device)
            if bus is None:
                bus = self.serial_buses[terminal.device] = SerialBus(serial_settings(terminal))
            return BusLink(bus)
        if engine_polled(terminal):
            return EngineLink(self._started_engine(), terminal.host, terminal.port)
        return TcpLink(terminal.host, terminal.port)

    def _started_engine(self) -> TcpEngine:
        """The TCP engine, started; a new one if the last ended by an error (logged), so that a
        restarted or reloaded terminal is polled again."""
        if self._engine is None or not self._engine.running:
            self._engine = TcpEngine(self._deliver)
            self._engine.start()
        return self._engine

    def _deliver(self, polls: Delivery) -> None:
        """Polls the engine finished, on the event loop: to the sink (none once halted, and
        none of a poller stopped since)."""
        if self._halted:
            return
        for poller, readings in polls:
            if self.pollers.get(poller.terminal.name) is poller:
                self.sink.submit(readings)

    async def apply(self, config: Config) -> None:
        self.terminals = modbus_terminals(config)
        await self._run(self.terminals)

    async def _run(self, terminals: Sequence[ModbusTerminal]) -> None:
        wanted = {t.name: t for t in terminals}
        for name in list(self.pollers):
            if wanted.get(name) != self.pollers[name].terminal:
                await self._stop(name)
        # A bus whose line settings changed, or that no terminal uses any more, is reopened.
        for device, bus in list(self.serial_buses.items()):
            users = [
                t for t in terminals if isinstance(t, ModbusRtuTerminal) and t.device == device
            ]
            if not users or serial_settings(users[0]) != bus.settings:
                for t in users:
                    if t.name in self.pollers:
                        await self._stop(t.name)
                await bus.close()
                del self.serial_buses[device]
        if self._halted:
            return  # stopping: no poller starts
        for name, terminal in wanted.items():
            if name not in self.pollers:
                poller = Poller(terminal, self.link_for(terminal), self.sink, held=self.held)
                self.pollers[name] = poller
                if isinstance(poller.link, EngineLink):
                    poller.link.engine.add(poller)  # the engine `link_for` started
                    continue
                task = asyncio.create_task(poller.run(), name=f"poll {name}")
                task.add_done_callback(log_task_crash)
                self._tasks[name] = task

    async def restart(self, terminal: str) -> dict[str, Any]:
        """Stop the terminal's poller and close its link, then start a fresh one; a shared
        serial bus stays open for the other terminals on it."""
        if terminal not in self.pollers:
            raise KeyError(terminal)
        self._refuse_if_halted("no poller starts again")
        link = self.pollers[terminal].link
        await self._stop(terminal)
        await self._run(self.terminals)
        self._refuse_if_halted("no poller starts again")  # halted while this one stopped
        shared = isinstance(link, BusLink)
        return {
            "terminal": terminal,
            "restarted": True,
            "link": "serial bus (kept open for the others)" if shared else "tcp (reconnects)",
        }

    async def _stop(self, name: str) -> None:
        poller = self.pollers.pop(name)
        if isinstance(poller.link, EngineLink):
            await poller.link.engine.remove(poller)  # its link closed too
            return
        task = self._tasks.pop(name)
        task.cancel()
        # Wait for the poller to end; its own crash was logged when it happened. Our caller's
        # cancellation is not swallowed: `wait` returns on the task's end, and a cancellation
        # of this coroutine propagates from it.
        await asyncio.wait({task})
        await poller.link.close()

    def views(self) -> dict[str, TerminalView]:
        return {name: TerminalView(p.terminal.info, p.stats) for name, p in self.pollers.items()}

    def clocks(self) -> dict[str, TerminalClock]:
        return {}  # Modbus has no standard notion of a device clock

    def buses(self) -> dict[str, float]:
        return {device: bus.utilisation() for device, bus in self.serial_buses.items()}

    def watch_allowance(self) -> float | None:
        return polling_allowance(self.terminals)

    async def poll(self, terminal: str) -> PollAnswer:
        poller = self.pollers.get(terminal)
        if poller is None:
            raise KeyError(terminal)
        self._refuse_if_halted("no terminal is polled")  # a poll would reopen a closing link
        if isinstance(poller.link, EngineLink):  # the poll runs where the terminal's polls run
            try:
                readings = await poller.link.engine.call(poller.poll_once)
            except EngineStopped as exc:
                raise DriverError(f"{terminal} is not polled: {exc} (see the log)") from exc
            return answer(poller.terminal, readings)
        return answer(poller.terminal, await poller.poll_once())

    async def ask(self, terminal: str, request: Mapping[str, Any]) -> dict[str, Any]:
        raise DriverError(f"{terminal} is a Modbus terminal: it takes no requests but polls")


def engine_polled(terminal: ModbusTerminal) -> bool:
    """Whether the TCP engine polls the terminal: a Modbus TCP terminal whose host is an IP
    address (a host name is resolved and polled by asyncio: a lookup would hold the engine)."""
    if not isinstance(terminal, ModbusTcpTerminal):
        return False
    try:
        ipaddress.ip_address(terminal.host)
    except ValueError:
        return False
    return True


async def close_links(links: Sequence[Link]) -> None:
    """Close links together, within CLOSE_TIMEOUT in all (a link still closing then is left to
    the transport, which has been told to close)."""
    closing = [gone for link in links if (gone := link.close_soon()) is not None]
    if closing:
        await asyncio.wait(closing, timeout=CLOSE_TIMEOUT)


def answer(terminal: ModbusTerminal, readings: Sequence[Reading]) -> PollAnswer:
    """One poll's readings with each point's table, address and type."""
    return PollAnswer(
        terminal=terminal.name,
        where=terminal.address,
        readings=list(readings),
        fields={p.name: {"table": p.table, "address": p.address} for p in terminal.points},
        kinds={
            p.name: p.type if p.word_order == "ABCD" else f"{p.type} {p.word_order}"
            for p in terminal.points
        },
    )


async def poll_once(config: Config, name: str) -> PollAnswer:
    """Read every point of one terminal once, without a running agent (`edge-agent poll`)."""
    terminal = config.terminal(name)
    if not isinstance(terminal, ModbusRtuTerminal | ModbusTcpTerminal):
        raise DriverError(f"{name} is not a Modbus terminal")
    return await poll_terminal(terminal)


async def poll_terminal(terminal: ModbusTerminal) -> PollAnswer:
    """Read every point of `terminal` once, on a link of its own (or its turn on a shared
    serial line: `one_off_link`)."""
    async with one_off_link(terminal) as link:
        readings = await Poller(terminal, link, _Discard()).poll_once()
    return answer(terminal, readings)


class _BusLeases:
    """The serial buses of one-off polls, shared while in use: terminals on one line polled at
    once (`edge-agent check` with no agent running) take turns on one bus, as under the
    driver, rather than each opening the device and talking over the others."""

    def __init__(self) -> None:
        self._buses: dict[str, tuple[SerialBus, int]] = {}

    @contextlib.asynccontextmanager
    async def lease(self, settings: SerialSettings) -> AsyncIterator[SerialBus]:
        bus, users = self._buses.get(settings.device, (None, 0))
        if bus is None:
            bus = SerialBus(settings)
        self._buses[settings.device] = (bus, users + 1)
        try:
            yield bus
        finally:
            bus, users = self._buses.pop(settings.device)
            if users > 1:
                self._buses[settings.device] = (bus, users - 1)
            else:
                await bus.close()


_LEASES = _BusLeases()


@contextlib.asynccontextmanager
async def one_off_link(terminal: ModbusTerminal) -> AsyncIterator[Link]:
    """A link for reads outside the driver, closed on the way out: its own TCP connection, or
    a turn on the serial bus of its device (shared with other one-off polls under way)."""
    if isinstance(terminal, ModbusRtuTerminal):
        async with _LEASES.lease(serial_settings(terminal)) as bus:
            yield BusLink(bus)
        return
    link = TcpLink(terminal.host, terminal.port)
    try:
        yield link
    finally:
        await link.close()


class _Discard:
    def submit(self, readings: Sequence[Reading]) -> None:
        """A one-off poll's readings are printed, not kept."""
