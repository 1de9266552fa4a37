"""Modbus read planning and decoding: points -> the fewest reads -> readings.

Sans-IO: no pymodbus, no sockets. `plan_reads` coalesces points of one table into reads within
the protocol's limits (125 registers / 2000 bits per read), merging across gaps of up to
`max_gap` registers (x16 for bit tables); `decode_read` turns the values a read returned into
readings, one per point, with the reason for any point that cannot be decoded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from agent.model import Quality, Reading, Value
from agent.protocols.modbus import codec
from agent.protocols.modbus.config import (
    BIT_TABLES,
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    PointConfig,
)

# (offset in the read, point name, unit, source) of a point whose value is the raw word or bit.
PlainPoint = tuple[int, str, str, str]


@dataclass(frozen=True, slots=True)
class Read:
    """One request on the wire: `count` registers or bits of `table` from `address`.

    `plain` is worked out once, when the read is planned: when every point is a bit or an
    unscaled one-word integer (the commonest maps), what `decode_read` needs of each, so that
    a poll decodes without looking at the point configs again; None otherwise.
    """

    table: str
    address: int
    count: int
    points: tuple[PointConfig, ...]
    plain: tuple[PlainPoint, ...] | None = field(init=False, compare=False, repr=False)
    # Plain registers, one point a register from the first: the values are the reply's, as is.
    dense: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        plain = [
            (p.address - self.address, p.name, p.unit, p.source)
            for p in self.points
            if _is_plain(p)
        ]
        whole = len(plain) == len(self.points)
        object.__setattr__(self, "plain", tuple(plain) if whole else None)
        dense = whole and self.table not in BIT_TABLES and self.count == len(plain)
        dense = dense and [offset for offset, *_ in plain] == list(range(self.count))
        object.__setattr__(self, "dense", dense)

    def split(self) -> list[Read]:
        """One read per point: the fallback when a device refuses reads across unmapped gaps."""
        return [Read(self.table, p.address, p.width, (p,)) for p in self.points]


def plan_reads(points: Iterable[PointConfig], max_gap: int) -> list[Read]:
    """The fewest reads that cover `points`, in table then address order."""
    reads: list[Read] = []
    by_table: dict[str, list[PointConfig]] = {}
    for p in points:
        by_table.setdefault(p.table, []).append(p)
    for table in sorted(by_table):
        bits = table in BIT_TABLES
        limit = MAX_BITS_PER_READ if bits else MAX_REGISTERS_PER_READ
        gap = max_gap * 16 if bits else max_gap
        ordered = sorted(by_table[table], key=lambda p: (p.address, -p.width))
        start, end, members = (
            ordered[0].address,
            ordered[0].address + ordered[0].width,
            [ordered[0]],
        )
        for p in ordered[1:]:
            new_end = max(end, p.address + p.width)
            if p.address - end <= gap and new_end - start <= limit:
                end = new_end
                members.append(p)
                continue
            reads.append(Read(table, start, end - start, tuple(members)))
            start, end, members = p.address, p.address + p.width, [p]
        reads.append(Read(table, start, end - start, tuple(members)))
    return reads


def _is_plain(point: PointConfig) -> bool:
    """A point whose value is its bit, or its one register as it is (see decode_point)."""
    if point.table in BIT_TABLES:
        return True
    return (
        point.type == "uint16"
        and point.word_order in ("ABCD", "CDAB")
        and point.scale == 1.0
        and point.offset == 0.0
    )


def decode_point(point: PointConfig, values: Sequence[int] | Sequence[bool]) -> Value:
    """The engineering value of one point from exactly its own registers or bit.

    Raises codec.CodecError for values that are not a measurement (NaN, infinity).
    """
    if point.table in BIT_TABLES:
        return bool(values[0])
    if (
        point.type == "uint16"
        and point.word_order in ("ABCD", "CDAB")  # one word: only a byte swap changes it
        and point.scale == 1.0
        and point.offset == 0.0
    ):
        return int(values[0])  # the commonest point: no struct round trip
    registers = [int(v) for v in values]
    if point.type == "bool":
        return codec.decode_register_bit(registers[0], point.bit)
    if point.type == "string":
        return codec.decode_string(registers, point.word_order)
    raw = codec.decode_number(registers, point.type, point.word_order)
    if isinstance(raw, float) and not math.isfinite(raw):
        raise codec.CodecError(f"device sent {raw} (sensor fault or unmapped register)")
    if point.scale == 1.0 and point.offset == 0.0:
        return raw
    return raw * point.scale + point.offset


WORD_ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")


def word_orders(point: PointConfig) -> tuple[str, ...]:
    """The word orders in which `point`'s registers read differently: none for a bit, ABCD and
    BADC (bytes swapped) for one register or a string, all four for 32- and 64-bit types."""
    if point.table in BIT_TABLES or point.type == "bool":
        return ()
    if point.type == "string" or point.width == 1:
        return ("ABCD", "BADC")
    return WORD_ORDERS


def decode_every_order(point: PointConfig, values: Sequence[int]) -> dict[str, Value]:
    """`point`'s value from exactly its registers in each of its `word_orders` (how an engineer
    finds a device's word order); None where they are no number in that order (NaN, inf)."""
    decoded: dict[str, Value] = {}
    for order in word_orders(point):
        try:
            decoded[order] = decode_point(point.model_copy(update={"word_order": order}), values)
        except codec.CodecError:
            decoded[order] = None
    return decoded


def decode_read(
    terminal: str,
    read: Read,
    values: Sequence[int] | Sequence[bool],
    observed_at: datetime,
) -> list[Reading]:
    """Readings for every point of `read` from the values the device returned."""
    plain = read.plain
    if plain is not None and len(values) >= read.count:  # one pass, no per-point config
        return plain_readings(terminal, plain, plain_values(read, values), observed_at)
    readings = []
    for p in read.points:
        offset = p.address - read.address
        chunk = values[offset : offset + p.width]
        try:
            if len(chunk) < p.width:
                raise codec.CodecError(
                    f"short reply: {len(values)} of {read.count} values returned"
                )
            value = decode_point(p, chunk)
        except codec.CodecError as exc:
            readings.append(bad_reading(terminal, p, observed_at, str(exc)))
            continue
        readings.append(
            Reading(terminal, p.name, value, p.unit, Quality.GOOD, observed_at, p.source)
        )
    return readings


def plain_values(read: Read, values: Sequence[int] | Sequence[bool]) -> list[Value]:
    """The values of a plain read's points (`read.plain` set, `values` not short), in order."""
    assert read.plain is not None
    if read.dense:
        return list(values[: read.count])
    if read.table in BIT_TABLES:
        return [bool(values[p[0]]) for p in read.plain]
    return [int(values[p[0]]) for p in read.plain]


def plain_readings(
    terminal: str, plain: Sequence[PlainPoint], values: Sequence[Value], observed_at: datetime
) -> list[Reading]:
    """Good readings of plain points from their values (`plain_values`)."""
    good = Quality.GOOD
    return [
        Reading(terminal, name, value, unit, good, observed_at, source)
        for (_, name, unit, source), value in zip(plain, values, strict=True)
    ]


def bad_reading(terminal: str, point: PointConfig, observed_at: datetime, reason: str) -> Reading:
    return Reading(
        terminal, point.name, None, point.unit, Quality.BAD, observed_at, point.source, reason
    )


def bad_readings(
    terminal: str, points: Iterable[PointConfig], observed_at: datetime, reason: str
) -> list[Reading]:
    return [bad_reading(terminal, p, observed_at, reason) for p in points]
