"""The SL651 driver's config: the stations (terminals) and the central station's own section.

`agent/config.py` takes the terminal model through the protocol registry and the `sl651:`
section as a field of the whole config.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from agent.config_base import Frozen, HostPort, Language, TerminalModel, parse_host_port
from agent.durations import PositiveDuration
from agent.model import TerminalInfo
from agent.protocols.sl651.elements import element_label


class Sl651Terminal(TerminalModel):
    """A hydrology station that reports to the agent (the agent is its central station)."""

    protocol: Literal["sl651"]
    station: str = Field(pattern=r"^[0-9A-Fa-f]{10}$")  # the 5-byte address as 10 hex digits
    password: str = Field(default="0000", pattern=r"^[0-9A-Fa-f]{4}$")
    expected_interval: PositiveDuration = 3600.0  # a report at least this often, else stale
    query_period: PositiveDuration | None = None  # ask for real-time data (0x37) this often
    clock_sync: bool = True  # set the station clock (0x4A) when off by more than 5 minutes

    @property
    def address(self) -> str:
        return f"station {self.station.upper()}"

    def point_label(self, point: str, language: Language) -> str | None:
        """What the standard calls the element ("Z" -> instantaneous river level)."""
        return element_label(point, language)

    @property
    def info(self) -> TerminalInfo:
        # The station decides what it reports: no configured point list.
        return TerminalInfo(
            name=self.name,
            protocol=self.protocol,
            address=self.address,
            interval=self.expected_interval,
            polled=False,
        )


class Sl651SerialPort(Frozen):
    device: str = Field(min_length=1)
    baudrate: int = Field(default=9600, gt=0)


class Sl651Config(Frozen):
    """The central station: where SL651 stations connect and how the agent answers them."""

    center: int = Field(default=1, ge=1, le=255)  # our centre address
    listen: list[HostPort] = Field(default_factory=list)  # e.g. "0.0.0.0:5001" (0: any free)
    serial: list[Sl651SerialPort] = Field(default_factory=list)
    # End character of our confirmations: EOT lets the station go offline, ESC keeps it online
    # (for queries).
    ack_end: Literal["EOT", "ESC"] = "EOT"
    accept_unknown: bool = True  # frames from stations not configured: report them, or refuse
    utc_offset: str = Field(default="+08:00", pattern=r"^[+-]\d\d:\d\d$")  # station clocks
    packet_timeout: PositiveDuration = 30.0  # M3: NAK a missing packet after this silence
    idle_timeout: PositiveDuration = (
        900.0  # close a station connection with no good frame this long
    )
    # At most this many TCP connections at once; capped below what the descriptor limit allows
    # (transport.connection_cap). While full, no connection is accepted.
    max_connections: int = Field(default=2000, ge=1)
    max_frame_bytes: int = Field(default=8192, ge=256, le=65536)
    # Per-connection budgets (TCP). A frame begun (bytes the decoder holds undecided; bytes it
    # throws away, e.g. a modem's heartbeat, start no clock) must be whole within frame_timeout
    # of its first byte, and keep coming at min_rate bytes/s on average (from the fifth second on); a connection
    # may send max_rate bytes/s on average (bursts of two seconds' worth), more is read later.
    frame_timeout: PositiveDuration = 30.0
    min_rate: float = Field(default=16.0, gt=0)
    max_rate: int = Field(default=32768, ge=1024)
    max_unknown_per_link: int = Field(default=8, ge=1)  # unconfigured stations on one link
    # M3 multi-packet transfers being collected: packets announced by one transfer, bytes held
    # per station and for all stations, age of a transfer. Beyond, the transfer is dropped.
    m3_max_packets: int = Field(default=1024, ge=1, le=4095)
    m3_max_bytes: int = Field(default=4 * 1024 * 1024, ge=65536)
    m3_max_total_bytes: int = Field(default=32 * 1024 * 1024, ge=65536)
    m3_max_age: PositiveDuration = 900.0

    @model_validator(mode="after")
    def _m3_bounds(self) -> Sl651Config:
        if self.m3_max_total_bytes < self.m3_max_bytes:
            raise ValueError(
                f"m3_max_total_bytes ({self.m3_max_total_bytes}) is below m3_max_bytes "
                f"({self.m3_max_bytes})"
            )
        return self

    @property
    def listen_addresses(self) -> list[tuple[str, int]]:
        return [parse_host_port(a) for a in self.listen]


def check_terminals(terminals: Sequence[TerminalModel]) -> None:
    """No two stations share an address."""
    stations = [t.station.upper() for t in terminals if isinstance(t, Sl651Terminal)]
    dupes = [s for s, c in Counter(stations).items() if c > 1]
    if dupes:
        raise ValueError(f"two SL651 terminals use station {', '.join(dupes)}")


def unreachable_stations(settings: Sl651Config, terminals: Sequence[TerminalModel]) -> str | None:
    """Why the configured stations could never report (no listener, no serial port), if so."""
    if settings.listen or settings.serial:
        return None
    stations = [t.name for t in terminals if isinstance(t, Sl651Terminal)]
    if not stations:
        return None
    return (
        f"nothing listens for the SL651 station{'s' if len(stations) > 1 else ''} "
        f'{", ".join(stations)}: set sl651.listen (e.g. ["0.0.0.0:5001"]) or sl651.serial '
        "(e.g. [{device: /dev/ttyS1}])"
    )
