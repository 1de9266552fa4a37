"""SL651-2014 station configuration tables: Appendix D.1 (basic configuration, functions 40/41),
D.2 (collected-elements bitmap) and D.4 (runtime parameters, functions 42/43). Data only.

Parameter identifiers share numbers with element identifiers (`28 23` is water-level base 1 in
42H/43H, Q1 in a report): the function code picks the table [STD Table 26 note].
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final


class ParamKind(enum.Enum):
    CENTRES = "centres"  # 01: 4 bytes, one centre address each, 0 = disabled
    STATION = "station"  # 02: 5-byte station address
    PASSWORD = "password"  # noqa: S105 (a kind of parameter, not a secret) 03: 2 bytes HEX
    CHANNEL = "channel"  # 04-0B: channel type (1 B BCD) + address
    BCD_INT = "bcd_int"  # 0C: work mode
    BITMAP = "bitmap"  # 0D: 8 bytes, Table D.2
    RELAY = "relay"  # 0E: the whole data-definition byte is the byte count (Table D.3)
    DEVICE_ID = "device_id"  # 0F: ASCII, card type + card number
    NUMBER = "number"  # BCD N(D,d), FF sign byte allowed
    FLAG = "flag"  # 97/98: identifier only
    RAW = "raw"  # reserved or user-defined: bytes as sent


@dataclass(frozen=True, slots=True)
class ParamSpec:
    ident: int
    name: str
    unit: str
    kind: ParamKind
    digits: int | None = None  # N(D,d) of numeric parameters
    decimals: int = 0

    @property
    def key(self) -> str:
        return f"{self.ident:02X}" if self.ident <= 0xFF else f"{self.ident:04X}"

    @property
    def nominal_datadef(self) -> int:
        """The data-definition byte a read request (41H/43H) names this parameter with."""
        return _READ_DATADEF.get(self.kind, ((self.digits or 0) + 1) // 2 << 3 | self.decimals)


_READ_DATADEF: Final = {
    ParamKind.CENTRES: 0x20,
    ParamKind.STATION: 0x28,
    ParamKind.PASSWORD: 0x10,
    ParamKind.CHANNEL: 0x00,  # variable length: 00 [STD §6.6.4.15]
    ParamKind.BCD_INT: 0x08,
    ParamKind.BITMAP: 0x40,
    ParamKind.RELAY: 0x00,
    ParamKind.DEVICE_ID: 0x00,
    ParamKind.FLAG: 0x00,
    ParamKind.RAW: 0x00,
}

CHANNEL_TYPES: Final[Mapping[int, str]] = {
    0: "disabled",
    1: "SMS",
    2: "IPv4",
    3: "BeiDou",
    4: "Inmarsat",
    5: "PSTN",
    6: "UHF radio",
}

_CENTRE_ORDINAL = ("1", "2", "3", "4")


def _basic_rows() -> list[ParamSpec]:
    rows = [
        ParamSpec(0x01, "centre addresses", "", ParamKind.CENTRES),
        ParamSpec(0x02, "station address", "", ParamKind.STATION),
        ParamSpec(0x03, "password", "", ParamKind.PASSWORD),
    ]
    for i in range(8):
        which = "main" if i % 2 == 0 else "backup"
        rows.append(
            ParamSpec(
                0x04 + i, f"centre{_CENTRE_ORDINAL[i // 2]} {which} channel", "", ParamKind.CHANNEL
            )
        )
    rows += [
        ParamSpec(0x0C, "work mode", "", ParamKind.BCD_INT, 2),
        ParamSpec(0x0D, "collected elements bitmap", "", ParamKind.BITMAP),
        ParamSpec(0x0E, "relay service address range", "", ParamKind.RELAY),
        ParamSpec(0x0F, "communication device id", "", ParamKind.DEVICE_ID),
    ]
    return rows


# [STD Appendix D Table D.1]; 10-1F reserved.
BASIC: Final[Mapping[int, ParamSpec]] = {p.ident: p for p in _basic_rows()}

WORK_MODES: Final[Mapping[int, str]] = {
    1: "self-report",
    2: "self-report with confirm",
    3: "query/response",
    4: "debug/maintenance",
}

# [STD Appendix D Table D.2]: byte A1..A8, bit D7..D0.
COLLECTED_ELEMENTS: Final[tuple[tuple[str, ...], ...]] = (
    (
        "rain",
        "evaporation",
        "wind direction",
        "wind speed",
        "air temperature",
        "humidity",
        "ground temperature",
        "air pressure",
    ),
    tuple(f"water level {n}" for n in range(8, 0, -1)),
    (
        "groundwater depth",
        "picture",
        "wave",
        "gate opening",
        "water volume",
        "velocity",
        "flow",
        "water pressure",
    ),
    tuple(f"water meter {n}" for n in range(8, 0, -1)),
    tuple(f"soil moisture {cm} cm" for cm in (100, 80, 60, 50, 40, 30, 20, 10)),
    (
        "pH",
        "dissolved oxygen",
        "conductivity",
        "turbidity",
        "redox potential",
        "permanganate index",
        "ammonia nitrogen",
        "water temperature",
    ),
    (
        "total organic carbon",
        "total nitrogen",
        "total phosphorus",
        "zinc",
        "selenium",
        "arsenic",
        "total mercury",
        "cadmium",
    ),
    ("", "", "", "", "", "chlorophyll a", "copper", "lead"),
)


def collected_elements(bitmap: bytes) -> list[str]:
    """The names of the elements a D.2 bitmap switches on."""
    names = []
    for byte, row in zip(bitmap, COLLECTED_ELEMENTS, strict=False):
        for position, name in enumerate(row):
            if name and byte & (0x80 >> position):
                names.append(name)
    return names


def _n(ident: int, name: str, unit: str, digits: int, decimals: int = 0) -> ParamSpec:
    return ParamSpec(ident, name, unit, ParamKind.NUMBER, digits, decimals)


def _runtime_rows() -> list[ParamSpec]:
    rows = [
        _n(0x20, "timed-report interval", "h", 2),
        _n(0x21, "add-report interval", "min", 2),
        _n(0x22, "rain day start hour", "h", 2),
        _n(0x23, "sampling interval", "s", 4),
        _n(0x24, "water-level storage interval", "min", 2),
        _n(0x25, "rain gauge resolution", "mm", 2, 1),
        _n(0x26, "level gauge resolution", "cm", 2, 1),
        _n(0x27, "rain add-report threshold", "mm", 2),
    ]
    rows += [_n(0x28 + i, f"water level base value {i + 1}", "m", 7, 3) for i in range(8)]
    rows += [_n(0x30 + i, f"water level correction {i + 1}", "m", 5, 3) for i in range(8)]
    rows += [_n(0x38 + i, f"add-report water level {i + 1}", "m", 4, 2) for i in range(8)]
    rows += [
        _n(0x40, "threshold above add-report level", "m", 3, 2),
        _n(0x41, "threshold below add-report level", "m", 3, 2),
        _n(0x42, "flow add-report threshold", "m³/s", 6, 3),
        _n(0x43, "velocity add-report threshold", "m/s", 5, 3),
        _n(0x44, "gate-position add-report threshold", "m", 3, 2),
        _n(0x45, "power add-report threshold", "kW", 6),
        _n(0x46, "air-pressure add-report threshold", "hPa", 4),
        _n(0x47, "wind-speed add-report threshold", "m/s", 4, 2),
        _n(0x48, "water-temperature add-report threshold", "°C", 2, 1),
    ]
    for i in range(8):
        rows.append(_n(0x49 + 2 * i, f"intake/outlet {i + 1} upper water level", "m", 4, 2))
        rows.append(_n(0x4A + 2 * i, f"intake/outlet {i + 1} lower water level", "m", 4, 2))
    for i in range(8):
        rows.append(_n(0x59 + 2 * i, f"intake/outlet {i + 1} upper water pressure", "kPa", 8, 2))
        rows.append(_n(0x5A + 2 * i, f"intake/outlet {i + 1} lower water pressure", "kPa", 8, 2))
    quality = (
        ("water temperature", "°C", 3, 1),
        ("pH", "", 2, 1),
        ("dissolved oxygen", "mg/L", 4, 1),
        ("permanganate index", "mg/L", 4, 1),
        ("conductivity", "µS/cm", 5, 0),
        ("redox potential", "mV", 5, 1),
        ("turbidity", "degree", 3, 0),
        ("ammonia nitrogen", "mg/L", 6, 2),
        ("total nitrogen", "mg/L", 5, 2),
        ("copper", "mg/L", 7, 4),
        ("zinc", "mg/L", 6, 4),
        ("fluoride", "mg/L", 5, 2),
        ("selenium", "mg/L", 7, 5),
        ("arsenic", "mg/L", 7, 5),
        ("mercury", "mg/L", 7, 5),
        ("cadmium", "mg/L", 7, 5),
        ("total organic carbon", "mg/L", 4, 2),
        ("chlorophyll", "mg/L", 4, 2),
    )
    for i, (what, unit, digits, decimals) in enumerate(quality):
        rows.append(_n(0x69 + 2 * i, f"{what} upper limit", unit, digits, decimals))
        rows.append(_n(0x6A + 2 * i, f"{what} lower limit", unit, digits, decimals))
    rows.append(_n(0x8D, "flow upper limit", "m³/s", 11, 3))
    rows += [_n(0x8E + i, f"water meter {i + 1} top-up volume", "m³", 11, 3) for i in range(8)]
    rows.append(_n(0x96, "fixed water volume", "m³", 11, 3))
    rows.append(ParamSpec(0x97, "initialize storage", "", ParamKind.FLAG))
    rows.append(ParamSpec(0x98, "restore factory settings", "", ParamKind.FLAG))
    rows += [_n(0x99 + i, f"water meter {i + 1} base reading", "m³", 11, 3) for i in range(8)]
    rows += [
        _n(0xA1 + i, f"water meter {i + 1} remaining-volume alarm", "m³", 11, 3) for i in range(8)
    ]
    return rows


# [STD Appendix D Table D.4]; A9-FE reserved, FFxx user-defined.
RUNTIME: Final[Mapping[int, ParamSpec]] = {p.ident: p for p in _runtime_rows()}

PARAM_TABLES: Final[Mapping[str, Mapping[int, ParamSpec]]] = {"basic": BASIC, "runtime": RUNTIME}


def param_spec(table: str, ident: int) -> ParamSpec:
    """The row for `ident` in "basic" or "runtime"; unlisted identifiers get a RAW row."""
    spec = PARAM_TABLES[table].get(ident)
    if spec is not None:
        return spec
    key = f"{ident:02X}" if ident <= 0xFF else f"{ident:04X}"
    return ParamSpec(ident, f"parameter {key}", "", ParamKind.RAW)
