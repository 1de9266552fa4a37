"""The Modbus driver's config: terminals over TCP and over a serial line (RTU), and their points.

`agent/config.py` takes these models into the whole config through the protocol registry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import cached_property
from typing import Literal, get_args

from pydantic import Field, model_validator

from agent.config_base import Frozen, Language, TerminalModel
from agent.durations import Duration, PositiveDuration
from agent.model import TerminalInfo

BIT_TABLES = frozenset({"coil", "discrete"})
# Protocol limits (Modbus Application Protocol V1.1b3, 6.1-6.4): one read returns at most
# 125 registers or 2000 bits.
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000
_REGISTER_WIDTH = {
    "uint16": 1,
    "int16": 1,
    "bool": 1,
    "uint32": 2,
    "int32": 2,
    "float32": 2,
    "uint64": 4,
    "int64": 4,
    "float64": 4,
}


class PointConfig(Frozen):
    name: str = Field(min_length=1)
    table: Literal["holding", "input", "coil", "discrete"] = "holding"
    address: int = Field(ge=0, le=65535)
    type: Literal[
        "uint16",
        "int16",
        "uint32",
        "int32",
        "uint64",
        "int64",
        "float32",
        "float64",
        "string",
        "bool",
    ] = "uint16"
    word_order: Literal["ABCD", "CDAB", "BADC", "DCBA"] = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    # The point's plain name for people (the inspection report), written in the site's language.
    label: str | None = Field(default=None, min_length=1, max_length=100)
    length: int | None = Field(default=None, ge=1, le=MAX_REGISTERS_PER_READ)
    bit: int | None = Field(default=None, ge=0, le=15)

    @model_validator(mode="after")
    def _consistent(self) -> PointConfig:
        if self.table in BIT_TABLES and self.type != "bool":
            raise ValueError(f"a {self.table} is a single bit: type must be bool, not {self.type}")
        if self.type == "string" and self.length is None:
            raise ValueError("type string needs length (in registers, 2 characters each)")
        if self.type != "string" and self.length is not None:
            raise ValueError("length applies only to type string")
        if self.bit is not None and (self.type != "bool" or self.table in BIT_TABLES):
            raise ValueError("bit applies only to type bool read from a holding or input register")
        if self.address + self.width > 65536:
            raise ValueError(f"address {self.address} + {self.width} runs past the last address")
        return self

    @property
    def width(self) -> int:
        """How many registers (or bits, for coil/discrete) the point occupies."""
        if self.table in BIT_TABLES:
            return 1
        if self.type == "string":
            return self.length or 1
        return _REGISTER_WIDTH[self.type]

    @cached_property
    def source(self) -> str:
        """The raw identifier carried by its readings, e.g. ``holding:40`` (once per point)."""
        return f"{self.table}:{self.address}"


# What a point may say, as the command line offers them (`edge-agent poll --table/--type`).
POINT_TABLES: tuple[str, ...] = get_args(PointConfig.model_fields["table"].annotation)
POINT_TYPES: tuple[str, ...] = get_args(PointConfig.model_fields["type"].annotation)


class _ModbusTerminal(TerminalModel):
    """What both Modbus transports share: a unit id, a poll schedule and the points."""

    unit: int = Field(default=1, ge=0, le=247)
    period: PositiveDuration = 5.0
    timeout: PositiveDuration = 1.0
    retries: int = Field(default=2, ge=0, le=10)
    # A dead terminal is retried at period * 2^n, at most this far apart.
    backoff_max: PositiveDuration = 300.0
    # Points of one table closer than this many registers (x16 for bits) are read together.
    max_gap: int = Field(default=8, ge=0, le=MAX_REGISTERS_PER_READ)
    points: list[PointConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_points(self) -> _ModbusTerminal:
        dupes = [n for n, c in Counter(p.name for p in self.points).items() if c > 1]
        if dupes:
            raise ValueError(f"point names must be unique; repeated: {', '.join(dupes)}")
        return self

    @property
    def address(self) -> str:
        raise NotImplementedError

    @property
    def bus(self) -> str | None:
        """The line it shares with other terminals, if any."""
        return None

    @property
    def points_meta(self) -> tuple[tuple[str, str, str], ...]:
        return tuple((p.name, p.unit, p.source) for p in self.points)

    def point_label(self, point: str, language: Language) -> str | None:
        """The point's configured `label` (as written, whatever the language)."""
        return next((p.label for p in self.points if p.name == point), None)

    @property
    def info(self) -> TerminalInfo:
        return TerminalInfo(
            name=self.name,
            protocol=self.protocol,
            address=self.address,
            interval=self.period,
            polled=True,
            points=tuple(p.name for p in self.points),
            bus=self.bus,
        )


class ModbusTcpTerminal(_ModbusTerminal):
    protocol: Literal["modbus-tcp"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)

    @property
    def address(self) -> str:
        """Where the terminal is, for people: ``host:port#unit``."""
        return f"{self.host}:{self.port}#{self.unit}"


class ModbusRtuTerminal(_ModbusTerminal):
    protocol: Literal["modbus-rtu"]
    device: str = Field(min_length=1)
    baudrate: int = Field(default=9600, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    # Silence between frames; default 3.5 character times (at least 1.75 ms), as the
    # Modbus over serial line spec 2.5.1.1 asks.
    frame_gap: Duration | None = None

    @property
    def address(self) -> str:
        return f"{self.device}#{self.unit}"

    @property
    def bus(self) -> str | None:
        return self.device

    @property
    def line_settings(self) -> tuple[int, str, int, int]:
        return (self.baudrate, self.parity, self.stopbits, self.bytesize)

    @property
    def char_time(self) -> float:
        """Seconds one character takes on the line (start + data + parity + stop bits)."""
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate

    @property
    def effective_frame_gap(self) -> float:
        if self.frame_gap is not None:
            return self.frame_gap
        return max(3.5 * self.char_time, 0.00175)


ModbusTerminal = ModbusTcpTerminal | ModbusRtuTerminal


def check_terminals(terminals: Sequence[TerminalModel]) -> None:
    """Terminals on one serial line agree on its settings and use distinct unit ids."""
    buses: dict[str, ModbusRtuTerminal] = {}
    for t in terminals:
        if not isinstance(t, ModbusRtuTerminal):
            continue
        first = buses.setdefault(t.device, t)
        if first is t:
            continue
        if first.line_settings != t.line_settings:
            raise ValueError(
                f"terminals {first.name} and {t.name} share {t.device} but not its line "
                "settings (baudrate, parity, stopbits, bytesize must match on one bus)"
            )
        if first.unit == t.unit:
            raise ValueError(
                f"terminals {first.name} and {t.name} both use unit {t.unit} on {t.device}"
            )
