"""A first look at a Modbus device: a terminal described on the command line, and the raw
register words of a poll with every point decoded in each word order (`edge-agent poll --raw`).

`adhoc_terminal` builds the same terminal model the config would (so the poll is the agent's
own: its links, its framing, its retries) from a target and a run of values of one type;
`poll_raw` reads a terminal's points as its poller plans them and keeps the words, and the
decoding is `planner.decode_every_order`. Nothing here keeps state between calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from agent.model import Value
from agent.protocols.driver import DriverError
from agent.protocols.modbus.config import (
    BIT_TABLES,
    ModbusRtuTerminal,
    ModbusTcpTerminal,
    ModbusTerminal,
    PointConfig,
)
from agent.protocols.modbus.driver import one_off_link
from agent.protocols.modbus.links import ModbusFailure
from agent.protocols.modbus.planner import (
    Read,
    decode_every_order,
    decode_point,
    plan_reads,
)
from agent.protocols.modbus.poller import read_with_retries

if TYPE_CHECKING:
    from agent.config import Config

ADHOC_NAME = "adhoc"


def parse_host_port(text: str, default_port: int = 502) -> tuple[str, int]:
    """`HOST`, `HOST:PORT` or `[IPv6]:PORT`; ValueError with the reason in words."""
    host, port = text.strip(), default_port
    if host.startswith("["):
        inside, _, rest = host[1:].partition("]")
        host = inside
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r} is not HOST[:PORT]")
            port = _port(rest[1:], text)
    elif host.count(":") == 1:
        host, _, tail = host.partition(":")
        port = _port(tail, text)
    if not host:
        raise ValueError(f"{text!r} has no host")
    return host, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{whole!r}: the port must be a number from 1 to 65535")
    return int(text)


def adhoc_terminal(
    *,
    tcp: str | None = None,
    rtu: str | None = None,
    baudrate: int = 9600,
    parity: str = "N",
    bytesize: int = 8,
    stopbits: int = 1,
    unit: int = 1,
    table: str = "holding",
    address: int = 0,
    count: int = 1,
    type_: str | None = None,
    timeout: float = 1.0,
) -> ModbusTerminal:
    """A terminal at `tcp` (HOST[:PORT]) or on serial device `rtu` whose points are `count`
    values of `type_` from `address` of `table`, back to back, each named `table:address`
    (a string is one point of `count` registers). ValueError with the reason in words."""
    if (tcp is None) == (rtu is None):
        raise ValueError("give one target: --tcp HOST[:PORT] or --rtu DEVICE")
    if count < 1:
        raise ValueError("--count must be at least 1")
    bits = table in BIT_TABLES
    type_ = type_ or ("bool" if bits else "uint16")
    if bits and type_ != "bool":
        raise ValueError(f"a {table} is a single bit: --type must be bool, not {type_}")
    points: list[dict[str, Any]]
    if type_ == "string":
        points = [{"name": f"{table}:{address}", "address": address, "length": count}]
    else:
        width = 1 if bits else PointConfig(name="w", address=0, type=type_).width
        if address + count * width > 65536:
            raise ValueError(
                f"{count} x {type_} from address {address} runs past the last address (65535)"
            )
        points = [
            {"name": f"{table}:{address + i * width}", "address": address + i * width}
            for i in range(count)
        ]
    common = {
        "name": ADHOC_NAME,
        "unit": unit,
        "timeout": timeout,
        "max_gap": 0,
        "points": [{**p, "table": table, "type": type_} for p in points],
    }
    try:
        if tcp is not None:
            host, port = parse_host_port(tcp)
            return ModbusTcpTerminal.model_validate(
                {**common, "protocol": "modbus-tcp", "host": host, "port": port}
            )
        return ModbusRtuTerminal.model_validate(
            {
                **common,
                "protocol": "modbus-rtu",
                "device": rtu,
                "baudrate": baudrate,
                "parity": parity,
                "bytesize": bytesize,
                "stopbits": stopbits,
            }
        )
    except ValidationError as exc:
        raise ValueError(_first_problem(exc)) from None


# The command-line option behind each field of the terminal model.
_OPTIONS = {
    "host": "--tcp",
    "device": "--rtu",
    "baudrate": "--baudrate",
    "unit": "--unit",
    "timeout": "--timeout",
    "address": "--address",
    "length": "--count",
}


def _first_problem(exc: ValidationError) -> str:
    """The first error of the terminal model in words, with the option it is about."""
    error = exc.errors()[0]
    field = next((str(p) for p in reversed(error["loc"]) if isinstance(p, str)), "")
    message = str(error["msg"]).removeprefix("Value error, ")
    option = _OPTIONS.get(field)
    return f"{option}: {message}" if option else message


@dataclass(frozen=True, slots=True)
class RawRead:
    """One request of the poll and the words (or bits) it returned, or why none came."""

    table: str
    address: int
    count: int
    values: list[int] | list[bool] | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RawPoint:
    """One point: its own words, its value as configured, and in each word order."""

    point: PointConfig
    values: list[int] | list[bool] | None
    value: Value = None
    orders: dict[str, Value] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RawPoll:
    terminal: str
    where: str
    reads: list[RawRead]
    points: list[RawPoint]

    @property
    def all_read(self) -> bool:
        return all(p.error is None for p in self.points)


async def poll_raw(terminal: ModbusTerminal) -> RawPoll:
    """Read every point of `terminal` once, as its poller plans the reads, keeping the words.

    As the poller does: a coalesced read the device refuses (exception 2) is read point by
    point, and once the terminal is unreachable the other reads are not tried."""
    reads: list[RawRead] = []
    got: dict[str, tuple[list[int] | list[bool] | None, str | None]] = {}
    pending = plan_reads(terminal.points, terminal.max_gap)
    async with one_off_link(terminal) as link:
        while pending:
            read = pending.pop(0)
            try:
                values = list(await read_with_retries(link, terminal, read))
            except ModbusFailure as failure:
                if failure.exception_code == 2 and len(read.points) > 1:
                    pending[0:0] = read.split()
                    continue
                reads.append(RawRead(read.table, read.address, read.count, None, failure.reason))
                unread = [read]
                if failure.kind in ("connect", "timeout"):  # the rest would only wait it out
                    unread, pending = unread + pending, []
                for r in unread:
                    got.update({p.name: (None, failure.reason) for p in r.points})
                continue
            reads.append(RawRead(read.table, read.address, read.count, values))
            got.update(_slices(read, values))
    points = [_raw_point(p, *got[p.name]) for p in terminal.points]
    return RawPoll(terminal.name, terminal.address, reads, points)


async def poll_raw_of(config: Config, name: str) -> RawPoll:
    """`poll_raw` of a terminal of the config; KeyError for an unknown name, DriverError for
    one that is not a Modbus terminal."""
    terminal = config.terminal(name)
    if not isinstance(terminal, ModbusTcpTerminal | ModbusRtuTerminal):
        raise DriverError(f"--raw shows Modbus register words: {name} is {terminal.protocol}")
    return await poll_raw(terminal)


def _slices(
    read: Read, values: list[int] | list[bool]
) -> dict[str, tuple[list[int] | list[bool] | None, str | None]]:
    out: dict[str, tuple[list[int] | list[bool] | None, str | None]] = {}
    for p in read.points:
        offset = p.address - read.address
        chunk = values[offset : offset + p.width]
        short = f"short reply: {len(values)} of {read.count} values returned"
        out[p.name] = (chunk, None) if len(chunk) == p.width else (None, short)
    return out


def _raw_point(
    point: PointConfig, values: list[int] | list[bool] | None, error: str | None
) -> RawPoint:
    if values is None:
        return RawPoint(point, None, error=error)
    orders = (
        None if point.table in BIT_TABLES else decode_every_order(point, [int(v) for v in values])
    )
    try:
        value = decode_point(point, values)
    except ValueError as exc:  # codec.CodecError: no number as configured (NaN, inf)
        return RawPoint(point, values, None, orders, str(exc))
    return RawPoint(point, values, value, orders)
