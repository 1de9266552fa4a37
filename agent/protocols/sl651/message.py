"""What a decoded SL651 body says: the message, its elements and the function-specific parts.

Plain frozen values. Times are naive station-local wall clock as sent (SL651 carries no zone;
`readings.py` attaches one). Elements keep their identifier key ("39", "F4", "FF11"), the table
row, the data-definition byte as sent and the raw data bytes for traceability. NOTES §n:
docs/sl651-notes.md, section n.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, NamedTuple

from agent.protocols.sl651.bcd import Fill, Number
from agent.protocols.sl651.elements import ElementSpec, Kind, status_flags
from agent.protocols.sl651.frame import Direction, Encoding
from agent.protocols.sl651.params import ParamSpec

FIVE_MINUTES: Final = timedelta(minutes=5)


class BodyError(ValueError):
    """A body that does not decode: `offset` into the body where, `reason` why."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"body offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True, slots=True)
class StationAddress:
    """A station address as sent and as interpreted (NOTES §4.1).

    `raw` is the 10 hex digits. A5 = 00 is a hydrological station: `code` is the 10 BCD digits.
    Anything else is "other": A5A4A3 are the administrative code (`admin_code`, 6 BCD digits) and
    A2A1 a HEX station number (`number`); `code` is the 12-digit form a centre stores.
    """

    raw: str
    kind: str
    code: str
    admin_code: str | None = None
    number: int | None = None

    @classmethod
    def from_raw(cls, raw: str) -> StationAddress:
        raw = raw.upper()
        if raw.startswith("00"):
            return cls(raw, "hydrology", raw)
        number = int(raw[6:], 16)
        return cls(raw, "other", f"{raw[:6]}{number:06d}", raw[:6], number)

    @property
    def role(self) -> str:
        """station / relay / broadcast / invalid for "other" addresses (STD §6.2.3.2 b)."""
        if self.number is None:
            return "station"
        if self.number == 0:
            return "invalid"
        if self.number == 0xFFFF:
            return "broadcast"
        return "relay" if self.number > 60000 else "station"


@dataclass(frozen=True, slots=True)
class TimeStep:
    """The time-step code `04 18 d h m` [Appendix C note g, Table C.3]."""

    days: int = 0
    hours: int = 0
    minutes: int = 0

    @property
    def delta(self) -> timedelta:
        return timedelta(days=self.days, hours=self.hours, minutes=self.minutes)

    @property
    def hourly_blocks(self) -> bool:
        """000000: the values are hourly 5-minute blocks (F4/F5-FC)."""
        return not (self.days or self.hours or self.minutes)

    def ascii_code(self) -> str:
        """DRxnn of the ASCII encoding [Table C.2]."""
        if self.days:
            return f"DRD{self.days:02d}"
        if self.minutes:
            return f"DRN{self.minutes:02d}"
        return f"DRH{self.hours:02d}"


class Sample(NamedTuple):
    """One slot of a 5-minute block or one step of a series, with its own time (a NamedTuple:
    blocks and series make many of them)."""

    observed_at: datetime
    value: Number | None
    missing: Fill | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Element:
    """Common part of every decoded element."""

    key: str  # identifier as upper-case hex: "39", "F4", "FF11"
    spec: ElementSpec
    datadef: int  # the data-definition byte as sent
    observed_at: datetime | None  # the observation time in force (F0F0), None before any
    station: StationAddress | None  # the station group (F1F1) in force
    raw: bytes  # the data bytes

    @property
    def ascii_id(self) -> str:
        return self.spec.ascii_id

    @property
    def unit(self) -> str:
        return self.spec.unit


@dataclass(frozen=True, slots=True)
class NumberElement(Element):
    """A BCD value. `value` None when `missing` ("FF"/"AA"/"M") or `error` (not BCD) is set;
    `sentinel` flags an all-nines value some devices send for "no sensor"."""

    value: Number | None
    missing: Fill | None = None
    error: str | None = None
    sentinel: bool = False

    @property
    def decimals(self) -> int:
        return self.datadef & 7


@dataclass(frozen=True, slots=True)
class BlockElement(Element):
    """F4 (rain, mm) or F5-FC (relative level, m): twelve 5-minute slots, each with its time."""

    samples: tuple[Sample, ...]


@dataclass(frozen=True, slots=True)
class SeriesElement(Element):
    """A time-step series (31/38): one element, N values, each with its own time."""

    step: TimeStep
    samples: tuple[Sample, ...]


@dataclass(frozen=True, slots=True)
class StatusElement(Element):
    """The status/alarm word 45H (Table 58)."""

    word: int

    @property
    def flags(self) -> dict[str, bool]:
        return status_flags(self.word)


@dataclass(frozen=True, slots=True)
class TextElement(Element):
    """Manual data (F2) or a duration written as text: characters as sent."""

    text: str


@dataclass(frozen=True, slots=True)
class BytesElement(Element):
    """A picture (F3) or flow-velocity bulk data (FD): bytes to the end of the body. In M3 packet
    1 a picture is only its first part; join the packets (`body.decode_packets`)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ElementRef:
    """An identifier without data (query lists of 3A/41/43/47/48, the element of a 38 query)."""

    key: str
    datadef: int
    name: str


@dataclass(frozen=True, slots=True)
class Channel:
    """A centre's channel (D.1 04-0B): type and address; IPv4 as "a.b.c.d:port"."""

    type: int
    type_name: str
    address: str


@dataclass(frozen=True, slots=True)
class DeviceId:
    """D.1 0F: card type ("1" mobile, "2" BeiDou) and card number."""

    card_type: str
    number: str


ParamValue = (
    Number
    | str
    | tuple[int, ...]
    | tuple[tuple[str, int], ...]
    | StationAddress
    | Channel
    | DeviceId
    | None
)


@dataclass(frozen=True, slots=True)
class Param:
    """One configuration parameter (Appendix D): identifier, table row, data-definition byte,
    decoded value (None for identifier-only items and missing data), raw bytes."""

    key: str
    spec: ParamSpec
    datadef: int
    value: ParamValue
    raw: bytes
    missing: Fill | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ConfigParams:
    """40/41 (table "basic", D.1) and 42/43 (table "runtime", D.4) parameters with data."""

    table: str
    params: tuple[Param, ...]


@dataclass(frozen=True, slots=True)
class IdentifierList:
    """Identifiers without data: 3A (elements), 41/43 reads, 47/48 guards."""

    table: str  # "elements", "basic" or "runtime"
    items: tuple[ElementRef, ...]


@dataclass(frozen=True, slots=True)
class PeriodQuery:
    """38 downlink: period data from `start` to `end` (hours), at `step`, of one element."""

    start: datetime
    end: datetime
    step: TimeStep
    element: ElementRef


@dataclass(frozen=True, slots=True)
class PasswordChange:
    """49: old and new password (downlink), or the new one (uplink)."""

    old: str | None
    new: str


@dataclass(frozen=True, slots=True)
class SoftwareVersion:
    """45 uplink."""

    text: str


@dataclass(frozen=True, slots=True)
class SwitchStates:
    """4C pumps / 4D valves: unit n is `states[n-1]`, True = on/open (Tables 71, 74)."""

    kind: str
    states: tuple[bool, ...]


@dataclass(frozen=True, slots=True)
class GateStates:
    """4E: per gate open or not and its opening in cm (None when not BCD) (Table 77)."""

    open: tuple[bool, ...]
    openings_cm: tuple[int | None, ...]


@dataclass(frozen=True, slots=True)
class FixedVolume:
    """4F: fixed water-volume control enabled (FF) or disabled (00)."""

    enabled: bool
    raw: int


ERC_NAMES: Final[tuple[str, ...]] = (
    "history initialized",
    "parameter changed",
    "state change",
    "sensor/meter fault",
    "password changed",
    "terminal fault",
    "AC power lost",
    "battery low",
    "box opened illegally",
    "pump fault",
    "remaining-water alarm",
    "water-level alarm",
    "pressure alarm",
    "water-quality alarm",
    "data error",
    "messages sent",
    "messages received",
    "send errors",
)


@dataclass(frozen=True, slots=True)
class EventCounts:
    """50 uplink: ERC1..ERC32 event counters (Table 82); `counts[0]` is ERC1."""

    counts: tuple[int, ...]

    def named(self) -> dict[str, int]:
        return {f"ERC{i + 1}": n for i, n in enumerate(self.counts)}


@dataclass(frozen=True, slots=True)
class RawBody:
    """Body bytes after serial and send time that no table describes (reserved/user functions)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Continuation:
    """M3 packets 2..n carry body bytes only (NOTES §3.3); also the undecodable tail of
    packet 1 of a multi-packet message."""

    data: bytes


Detail = (
    ConfigParams
    | IdentifierList
    | PeriodQuery
    | PasswordChange
    | SoftwareVersion
    | SwitchStates
    | GateStates
    | FixedVolume
    | EventCounts
    | RawBody
    | Continuation
)


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded body. `serial`/`sent_at` are None only for M3 continuation packets.

    `station`/`category`/`observed_at` are the first F1F1 group, its category and the first
    observation time; every element carries the ones in force where it stood.
    """

    function: int
    direction: Direction
    encoding: Encoding
    serial: int | None
    sent_at: datetime | None
    station: StationAddress | None = None
    category: int | None = None
    observed_at: datetime | None = None
    elements: tuple[Element, ...] = ()
    detail: Detail | None = None
    complete: bool = field(default=True)


_SLOT_OFFSETS: Final = tuple(FIVE_MINUTES * i for i in range(4096))


def _offset(i: int) -> timedelta:
    return _SLOT_OFFSETS[i] if i < len(_SLOT_OFFSETS) else FIVE_MINUTES * i


def block_samples(
    kind: Kind, data: bytes, first: datetime, at: int, key: str
) -> tuple[Sample, ...]:
    """5-minute slots: F4 1 byte HEX in 0.1 mm, F5-FC 2 bytes HEX in cm; all-F invalid.

    Shared by the HEX and ASCII bodies (ASCII carries the same bytes as hex text)."""
    if kind is Kind.RAIN_BLOCK:
        return tuple(
            Sample(first + _offset(i), None, "FF")
            if b == 0xFF
            else Sample(first + _offset(i), b / 10)
            for i, b in enumerate(data)
        )
    if len(data) % 2:
        raise BodyError(at, f"{key} block of {len(data)} bytes: slots are 2 bytes")
    samples = []
    for i in range(0, len(data), 2):
        word = (data[i] << 8) | data[i + 1]
        when = first + _offset(i // 2)
        samples.append(Sample(when, None, "FF") if word == 0xFFFF else Sample(when, word / 100))
    return tuple(samples)
