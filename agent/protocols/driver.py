"""The one interface every protocol driver offers the composition root, and what it is given.

A driver owns one protocol's runtime (pollers and serial buses, a central station's listeners)
for the terminals of its protocols. The daemon treats every driver alike: it enters it (start),
hands it a new set of terminals on reload (`apply`), asks it for views (status, checks,
metrics), for one poll of a terminal, for a protocol's own request (`ask`) or to restart one
terminal's link (`restart`), and leaves it (stop: no reading is taken after `__aexit__`
returns). Optional capabilities are protocols of their own, checked at run time:
`CountingDriver` (counters of its own) and `HaltingDriver` (`halt`: take no more readings at
once, when the agent is asked to stop). A driver reaches the rest of the agent only through
its `DriverContext`; it never imports the uplink, the outbox or another driver.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

import structlog

from agent.config_base import TerminalModel
from agent.model import Intake, Quality, Reading, TerminalClock, TerminalView

if TYPE_CHECKING:
    from agent.config import Config

log = structlog.get_logger(__name__)


class DriverError(Exception):
    """A request a driver cannot serve; the message says why in words for the caller."""


class NotPolled(DriverError):
    """The terminal reports by itself: there is nothing to poll."""


@dataclass(frozen=True)
class PollAnswer:
    """One poll of one terminal: its readings, and what the faces show of each point.

    `fields` are the protocol's own identifiers of each point in the poll's JSON (Modbus:
    table and address); `kinds` the data type shown beside it on screen.
    """

    terminal: str
    where: str
    readings: list[Reading]
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    @property
    def all_good(self) -> bool:
        return all(r.quality is Quality.GOOD for r in self.readings)


@dataclass(frozen=True)
class DriverContext:
    """What a driver is given: the config, where its readings and events go, the clock state.

    `intake.submit` takes polled readings (batched into the outbox); `intake.commit` makes a
    report's readings and events durable and returns once they are (or raises).
    """

    config: Config
    intake: Intake
    clock_synchronised: Callable[[], bool | None]


class Driver(Protocol):
    """One protocol's runtime, as the composition root sees every protocol alike."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def apply(self, config: Config) -> None:
        """Run the terminals of this new config (reload); unchanged ones keep running."""
        ...

    def views(self) -> dict[str, TerminalView]:
        """Every terminal it runs, protocol-neutral, by name."""
        ...

    def clocks(self) -> dict[str, TerminalClock]:
        """The terminals' own clocks, where the protocol tells them."""
        ...

    def buses(self) -> dict[str, float]:
        """Shared lines (serial devices) and how busy each is, 0..1."""
        ...

    def watch_allowance(self) -> float | None:
        """The longest it may go without handing readings over (watchdog), None: not watched."""
        ...

    async def poll(self, terminal: str) -> PollAnswer:
        """Read every point of one of its terminals now; NotPolled, or KeyError if unknown."""
        ...

    async def ask(self, terminal: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """A protocol's own request to a terminal (e.g. SL651: ask for elements); DriverError."""
        ...

    async def restart(self, terminal: str) -> dict[str, Any]:
        """Close and reopen one terminal's link, the others untouched (remote diagnosis'
        `restart-terminal`); what was done. KeyError if unknown, DriverError if it cannot."""
        ...


@runtime_checkable
class CountingDriver(Protocol):
    """A driver that also counts what it refused or dropped at its own level (a listener's
    refused connections, peers dropped by a budget), beyond each terminal's stats."""

    def counters(self) -> dict[str, int]:
        """Counter name (prefixed with the driver's name, e.g. `sl651.refused_connections`) ->
        value; shown in `status` and as metrics."""
        ...


@runtime_checkable
class HaltingDriver(Protocol):
    """A driver that can stop taking readings at once, before it is left.

    The agent calls `halt` as soon as it is asked to stop: thousands of pollers would otherwise
    keep the event loop busy while the parts left before the drivers (remote diagnosis, the
    control socket, the checks) end, each of them waiting for turns of a loop that is behind,
    and the agent would not end within 5 s of SIGTERM."""

    def halt(self) -> None:
        """Take no more readings from now on, without waiting (what is cancelled ends on the
        loop's next turns); `__aexit__` still releases the rest."""
        ...


def halt_drivers(drivers: Sequence[object]) -> None:
    """Every halting driver halted (the agent is stopping); one that fails to is logged and
    the others are halted all the same (it still stops when it is left)."""
    for driver in drivers:
        if isinstance(driver, HaltingDriver):
            try:
                driver.halt()
            except Exception as exc:  # noqa: BLE001 -- the stop goes on whatever a driver does
                log.error("driver not halted", driver=type(driver).__name__, error=repr(exc))


def driver_counters(drivers: Sequence[object]) -> dict[str, int]:
    """Every counting driver's counters, merged."""
    out: dict[str, int] = {}
    for driver in drivers:
        if isinstance(driver, CountingDriver):
            out.update(driver.counters())
    return out


@dataclass(frozen=True)
class DriverSpec:
    """A registry entry: the protocols a driver serves, their config models, how to make it.

    `create` and `poll_once` import the driver's runtime only when called, so reading the
    config (which needs the models) does not load every protocol's IO stack.
    """

    name: str
    terminal_models: tuple[type[TerminalModel], ...]
    create: Callable[[DriverContext], Driver]
    # One poll without a running agent (`edge-agent poll`); None: its terminals report.
    poll_once: Callable[[Config, str], Awaitable[PollAnswer]] | None = None
    # Rules across its terminals (raises ValueError, reported as a config error).
    check: Callable[[Sequence[TerminalModel]], None] | None = None

    @property
    def protocols(self) -> tuple[str, ...]:
        return tuple(_protocol_of(m) for m in self.terminal_models)

    def terminals(self, terminals: Sequence[TerminalModel]) -> list[TerminalModel]:
        return [t for t in terminals if t.protocol in self.protocols]


def _protocol_of(model: type[TerminalModel]) -> str:
    """The `Literal` value a terminal model's `protocol` field is narrowed to."""
    annotation = model.model_fields["protocol"].annotation
    args: tuple[Any, ...] = getattr(annotation, "__args__", ())
    if len(args) != 1 or not isinstance(args[0], str):
        raise TypeError(f"{model.__name__}.protocol must be a Literal of one name")
    return args[0]
