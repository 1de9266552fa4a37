"""What the encoders take: the values of an uplink report, grouped by observation time.

Plain frozen values, shared by the HEX encoder (`encode.py`) and the ASCII one (`ascii.py`).
Identifiers are given as hex ("39", "FF11"), an int guide, or the ASCII identifier ("Z").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from agent.protocols.sl651.bcd import Fill, Number
from agent.protocols.sl651.elements import ElementSpec, element_spec, parse_key
from agent.protocols.sl651.message import TimeStep

Amount = Number | Decimal


class EncodeError(ValueError):
    """Values the standard cannot carry (too wide, out of range, unknown identifier)."""


def spec_for(ident: str | int) -> ElementSpec:
    try:
        return element_spec(parse_key(ident))
    except KeyError as exc:
        raise EncodeError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class Value:
    """One element value. `decimals` defaults to the table's d; the width is `width` bytes
    (sign byte included) if given, else ceil(`digits`/2) (table's D by default) plus a sign
    byte for negatives. None is missing, sent as `fill`."""

    ident: str | int
    value: Amount | None
    decimals: int | None = None
    digits: int | None = None
    width: int | None = None
    fill: Fill = "FF"


@dataclass(frozen=True, slots=True)
class BlockValues:
    """F4 (mm, 0.1 mm steps, 0-25.4) or F5-FC (m, cm steps, 0-655.34): 12 five-minute slots
    from the group's observation time; None is an invalid slot."""

    ident: str | int
    values: Sequence[float | None]


@dataclass(frozen=True, slots=True)
class StatusValue:
    """The status/alarm word 45H (`elements.status_word` builds one from named states)."""

    word: int


@dataclass(frozen=True, slots=True)
class SeriesValues:
    """A time-step series (31/38): values of one element from the group's observation time,
    one every `step` (for F4/F5-FC with step 000000: 5-minute slots, 12 per hour)."""

    ident: str | int
    step: TimeStep
    values: Sequence[Amount | None]
    decimals: int | None = None
    digits: int | None = None
    width: int | None = None


@dataclass(frozen=True, slots=True)
class ManualText:
    """Manual data (F2): SL 330 text, to the end of the body."""

    text: str


@dataclass(frozen=True, slots=True)
class RawElement:
    """An identifier with data bytes as given (vendor elements, deliberately odd frames)."""

    ident: str | int
    datadef: int
    data: bytes


Item = Value | BlockValues | StatusValue | SeriesValues | ManualText | RawElement


@dataclass(frozen=True, slots=True)
class Group:
    """Elements observed at one time (one F0F0 group)."""

    observed_at: datetime
    items: Sequence[Item]


def block_slots(item: BlockValues) -> list[int | None]:
    """The slot integers of a block: 0.1 mm for F4, cm for F5-FC. Raises EncodeError."""
    spec = spec_for(item.ident)
    rain = spec.guide == 0xF4
    if not rain and not 0xF5 <= spec.guide <= 0xFC:
        raise EncodeError(f"{item.ident!r} is not a 5-minute block (F4, F5-FC)")
    top, scale = (0xFE, 10) if rain else (0xFFFE, 100)
    slots: list[int | None] = []
    for value in item.values:
        if value is None:
            slots.append(None)
            continue
        try:
            n = round(Decimal(str(value)) * scale)
        except ArithmeticError as exc:
            raise EncodeError(f"{value!r} is not a number") from exc
        if not 0 <= n <= top:
            raise EncodeError(f"{value} does not fit a {spec.ascii_id} slot (0-{top / scale})")
        slots.append(int(n))
    return slots
