"""The SL651 driver: the agent as central station for the site's hydrology stations.

Behind the `Driver` interface: entering starts the central station (TCP listeners, serial
ports, timers) when the `sl651:` section or an SL651 terminal asks for one; `apply` hands the
sans-IO `Centre` the stations of a reloaded config (listen addresses and ports need a restart);
leaving closes every link. Stations report by themselves, so there is nothing to poll; `ask`
queues a query for specified elements (0x3A) that goes out at the station's next chance.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import structlog

from agent.model import TerminalClock, TerminalView
from agent.protocols.driver import DriverContext, DriverError, NotPolled, PollAnswer
from agent.protocols.sl651.config import Sl651Terminal
from agent.protocols.sl651.session import Centre
from agent.protocols.sl651.transport import CentralStation

if TYPE_CHECKING:
    from agent.config import Config

log = structlog.get_logger(__name__)


class Sl651Driver:
    """The centre's rules and its links, run only where the config asks for them."""

    def __init__(self, context: DriverContext) -> None:
        config = context.config
        self.section = config.sl651
        stations = config.terminals_of(Sl651Terminal)
        self.centre = Centre(self.section, stations, context.clock_synchronised)
        self.station = CentralStation(self.section, self.centre, context.intake)
        self.active = bool(self.section.listen or self.section.serial or stations)

    async def __aenter__(self) -> Self:
        if self.active:
            await self.station.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.active:
            await self.station.stop()

    async def apply(self, config: Config) -> None:
        stations = config.terminals_of(Sl651Terminal)
        if stations and not self.active:
            log.warning(
                "SL651 stations added while no central station runs: restart the agent to "
                "start one",
                stations=[t.name for t in stations],
            )
        self.centre.configure(stations)

    def views(self) -> dict[str, TerminalView]:
        views = {}
        for code, state in self.centre.stations.items():
            terminal = self.centre.terminals.get(code)
            if terminal is not None:
                views[terminal.name] = TerminalView(terminal.info, state.stats)
        return views

    def clocks(self) -> dict[str, TerminalClock]:
        now = datetime.now(UTC)
        return {
            state.terminal: TerminalClock(now + timedelta(seconds=state.clock_offset), now)
            for state in self.centre.stations.values()
            if state.clock_offset is not None
        }

    def buses(self) -> dict[str, float]:
        return {}

    def counters(self) -> dict[str, int]:
        if not self.active:
            return {}
        return {f"sl651.{name}": value for name, value in self.station.counters().items()}

    def watch_allowance(self) -> float | None:
        return None  # stations report when they will; the checks watch for silence

    async def poll(self, terminal: str) -> PollAnswer:
        raise NotPolled(
            f"{terminal} is an SL651 station: it reports by itself; see its readings with "
            "'edge-agent status' or decode its frames with 'edge-agent sl651 decode'"
        )

    async def restart(self, terminal: str) -> dict[str, Any]:
        """Close the station's TCP connection (it connects again by itself); a station on a
        serial line shares it with others, so it is not closed."""
        state = next((s for s in self.centre.stations.values() if s.terminal == terminal), None)
        if state is None:
            raise KeyError(terminal)
        link = state.link
        if link is None:
            raise DriverError(f"{terminal} is not connected: nothing to restart")
        if self.station.is_serial(link):
            raise DriverError(f"{terminal} is on a shared serial line: not closed for one station")
        self.station.close_link(link)
        return {"terminal": terminal, "restarted": True, "link": "tcp (the station reconnects)"}

    async def ask(self, terminal: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """Ask a station for specified elements (0x3A): `{"elements": ["Z", "PJ"]}`."""
        if not self.active:
            raise DriverError("no SL651 central station is configured")
        elements = request.get("elements")
        if not isinstance(elements, list) or not elements:
            raise DriverError("elements: a list of identifiers, e.g. ['Z', 'PJ']")
        try:
            state = self.centre.ask_elements(terminal, [str(e) for e in elements])
        except KeyError as exc:
            raise DriverError(str(exc.args[0])) from None
        except ValueError as exc:
            raise DriverError(f"elements: {exc}") from None
        return {"query": state}
