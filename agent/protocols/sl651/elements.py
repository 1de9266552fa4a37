"""SL651-2014 element tables: Appendix C identifiers, Appendix A station categories, and the
status/alarm word of Table 58. Data only, no decoding.

`ElementSpec.digits`/`decimals` are the nominal N(D,d) of the table; decoders never use them for
widths (a frame's data-definition byte rules, docs/sl651-notes.md §8), encoders use them as
defaults. NOTES §n below means section n of docs/sl651-notes.md.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final


class Kind(enum.Enum):
    """How an element's data is laid out."""

    NUMBER = "number"  # packed BCD, FF sign byte, width and decimals from the data-definition byte
    OBS_TIME = "obs_time"  # F0: 5 BCD bytes YYMMDDHHmm
    STATION = "station"  # F1: 5-byte station address
    TEXT = "text"  # F2: manual data, characters to the end of the body
    PICTURE = "picture"  # F3: JPEG, bytes to the end of the body
    RAIN_BLOCK = "rain_block"  # F4: 12 x 1-byte HEX 5-minute rainfall, 0.1 mm, FF invalid
    LEVEL_BLOCK = "level_block"  # F5-FC: 12 x 2-byte HEX 5-minute levels, cm, FFFF invalid
    BULK = "bulk"  # FD: flow-velocity bulk data, bytes to the end of the body
    TIME_STEP = "time_step"  # 04: 3 BCD bytes d h m
    DURATION = "duration"  # 05: HH.mm
    STATUS = "status"  # 45: 4-byte HEX bit field (Table 58)


@dataclass(frozen=True, slots=True)
class ElementSpec:
    """One row of Table C.1."""

    guide: int  # identifier guide byte; 0xFFxx for user-defined extensions
    ascii_id: str  # the standard's ASCII identifier ("Z", "PJ", "DRP"); hex for unlisted ones
    name: str
    unit: str
    digits: int | None  # N(D,d): D
    decimals: int  # N(D,d): d
    kind: Kind = Kind.NUMBER
    key: str = ""  # the identifier as upper-case hex: "39", "F4", "FF11" (set from guide)

    def __post_init__(self) -> None:
        if not self.key:
            key = f"{self.guide:02X}" if self.guide <= 0xFF else f"{self.guide:04X}"
            object.__setattr__(self, "key", key)

    @property
    def nominal_width(self) -> int | None:
        """Bytes for a positive value of the nominal N(D,d) (ceil(D/2))."""
        return None if self.digits is None else (self.digits + 1) // 2


def _row(
    guide: int,
    ascii_id: str,
    name: str,
    unit: str,
    n: tuple[int, int] | None,
    kind: Kind = Kind.NUMBER,
) -> ElementSpec:
    digits, decimals = n if n is not None else (None, 0)
    return ElementSpec(guide, ascii_id, name, unit, digits, decimals, kind)


_ROWS: list[ElementSpec] = [
    _row(0xF0, "TT", "observation time", "", (10, 0), Kind.OBS_TIME),
    _row(0xF1, "ST", "station address", "", (10, 0), Kind.STATION),
    _row(0xF2, "RGZS", "manual data", "", None, Kind.TEXT),
    _row(0xF3, "PIC", "picture", "", None, Kind.PICTURE),
    _row(0xF4, "DRP", "5-minute rainfall x12 in the hour", "mm", None, Kind.RAIN_BLOCK),
    *(
        _row(
            0xF5 + i,
            f"DRZ{i + 1}",
            f"5-minute relative water level {i + 1} x12",
            "m",
            None,
            Kind.LEVEL_BLOCK,
        )
        for i in range(8)
    ),
    _row(0xFD, "DATA", "flow-velocity bulk data", "", None, Kind.BULK),
    _row(0x01, "AC", "cross-section area", "m²", (8, 2)),
    _row(0x02, "AI", "instantaneous air temperature", "°C", (3, 1)),
    _row(0x03, "C", "instantaneous water temperature", "°C", (3, 1)),
    _row(0x04, "DRxnn", "time-step code", "", (6, 0), Kind.TIME_STEP),
    _row(
        0x05,
        "DT",
        "period length / rain, diversion or pumping duration",
        "h.min",
        (4, 2),
        Kind.DURATION,
    ),
    _row(0x06, "ED", "daily evaporation", "mm", (5, 1)),
    _row(0x07, "EJ", "current evaporation", "mm", (5, 1)),
    _row(0x08, "FL", "air pressure", "hPa", (5, 0)),
    _row(0x09, "GH", "gate opening height", "m", (5, 2)),
    _row(0x0A, "GN", "conveyance device / gate (group) number", "", (3, 0)),
    _row(0x0B, "GS", "conveyance device type", "", (1, 0)),
    _row(0x0C, "GT", "number of gate openings", "", (3, 0)),
    _row(0x0D, "GTP", "ground temperature", "°C", (3, 1)),
    _row(0x0E, "H", "groundwater instantaneous depth", "m", (6, 2)),
    _row(0x0F, "HW", "wave height", "m", (5, 2)),
    *(
        _row(0x10 + i, f"M{depth}", f"soil moisture at {depth} cm", "%", (4, 1))
        for i, depth in enumerate((10, 20, 30, 40, 50, 60, 80, 100))
    ),
    _row(0x18, "MST", "humidity", "%", (4, 1)),
    _row(0x19, "NS", "number of running units", "", (2, 0)),
    _row(0x1A, "P1", "1-hour rainfall", "mm", (5, 1)),
    _row(0x1B, "P2", "2-hour rainfall", "mm", (5, 1)),
    _row(0x1C, "P3", "3-hour rainfall", "mm", (5, 1)),
    _row(0x1D, "P6", "6-hour rainfall", "mm", (5, 1)),
    _row(0x1E, "P12", "12-hour rainfall", "mm", (5, 1)),
    _row(0x1F, "PD", "daily rainfall", "mm", (5, 1)),
    _row(0x20, "PJ", "current rainfall", "mm", (5, 1)),
    _row(0x21, "PN01", "1-minute rainfall", "mm", (5, 1)),
    _row(0x22, "PN05", "5-minute rainfall", "mm", (5, 1)),
    _row(0x23, "PN10", "10-minute rainfall", "mm", (5, 1)),
    _row(0x24, "PN30", "30-minute rainfall", "mm", (5, 1)),
    _row(0x25, "PR", "storm rainfall", "mm", (5, 1)),
    _row(0x26, "PT", "accumulated rainfall", "mm", (6, 1)),
    _row(0x27, "Q", "instantaneous flow / pumping flow", "m³/s", (9, 3)),
    *(_row(0x28 + i, f"Q{i + 1}", f"intake/outlet flow {i + 1}", "m³/s", (9, 3)) for i in range(8)),
    _row(0x30, "QA", "total outflow / total flow through sluice", "m³/s", (9, 3)),
    _row(0x31, "QZ", "conveyance device / gate-group flow", "m³/s", (9, 3)),
    _row(0x32, "SW", "sediment discharge", "10⁴ t", (11, 3)),
    _row(0x33, "UC", "wind direction", "", (2, 0)),
    _row(0x34, "UE", "wind force", "grade", (2, 0)),
    _row(0x35, "US", "wind speed", "m/s", (4, 1)),
    _row(0x36, "VA", "section mean velocity", "m/s", (5, 3)),
    _row(0x37, "VJ", "current instantaneous velocity", "m/s", (5, 3)),
    _row(0x38, "VT", "supply voltage", "V", (4, 2)),
    _row(0x39, "Z", "instantaneous river level / tide level", "m", (7, 3)),
    _row(0x3A, "ZB", "level downstream of reservoir/sluice/station", "m", (7, 3)),
    _row(0x3B, "ZU", "level upstream of reservoir/sluice/station", "m", (7, 3)),
    *(
        _row(0x3C + i, f"Z{i + 1}", f"intake/outlet water level {i + 1}", "m", (7, 3))
        for i in range(8)
    ),
    _row(0x44, "SQ", "sediment concentration", "kg/m³", (9, 3)),
    _row(0x45, "ZT", "station status and alarm", "", (8, 0), Kind.STATUS),
    _row(0x46, "pH", "pH", "", (4, 2)),
    _row(0x47, "DO", "dissolved oxygen", "mg/L", (4, 1)),
    _row(0x48, "COND", "conductivity", "µS/cm", (5, 0)),
    _row(0x49, "TURB", "turbidity", "degree", (3, 0)),
    _row(0x4A, "CODMN", "permanganate index", "mg/L", (4, 1)),
    _row(0x4B, "REDOX", "redox potential", "mV", (5, 1)),
    _row(0x4C, "NH4N", "ammonia nitrogen", "mg/L", (6, 2)),
    _row(0x4D, "TP", "total phosphorus", "mg/L", (5, 3)),
    _row(0x4E, "TN", "total nitrogen", "mg/L", (5, 2)),
    _row(0x4F, "TOC", "total organic carbon", "mg/L", (4, 2)),
    _row(0x50, "CU", "copper", "mg/L", (7, 4)),
    _row(0x51, "ZN", "zinc", "mg/L", (6, 4)),
    _row(0x52, "SE", "selenium", "mg/L", (7, 5)),
    _row(0x53, "AS", "arsenic", "mg/L", (7, 5)),
    _row(0x54, "THG", "total mercury", "mg/L", (7, 5)),
    _row(0x55, "CD", "cadmium", "mg/L", (7, 5)),
    _row(0x56, "PB", "lead", "mg/L", (7, 5)),
    _row(0x57, "CHLA", "chlorophyll a", "mg/L", (4, 2)),
    *(_row(0x58 + i, f"WP{i + 1}", f"water pressure {i + 1}", "kPa", (5, 2)) for i in range(8)),
    *(
        _row(0x60 + i, f"SYL{i + 1}", f"water meter {i + 1} remaining volume", "m³", (11, 3))
        for i in range(8)
    ),
    *(
        _row(0x68 + i, f"SBL{i + 1}", f"water meter {i + 1} hourly volume", "m³/h", (10, 2))
        for i in range(8)
    ),
    _row(0x70, "VTA", "AC phase A voltage", "V", (4, 1)),
    _row(0x71, "VTB", "AC phase B voltage", "V", (4, 1)),
    _row(0x72, "VTC", "AC phase C voltage", "V", (4, 1)),
    _row(0x73, "VIA", "AC phase A current", "A", (4, 1)),
    _row(0x74, "VIB", "AC phase B current", "A", (4, 1)),
    _row(0x75, "VIC", "AC phase C current", "A", (4, 1)),
]

# [STD Appendix C Table C.1]; 76-EF reserved, FFxx user-defined (see `element_spec`).
ELEMENTS: Final[Mapping[int, ElementSpec]] = {row.guide: row for row in _ROWS}
BY_ASCII: Final[Mapping[str, ElementSpec]] = {row.ascii_id.upper(): row for row in _ROWS}

# Fixed data-definition bytes [Appendix C notes a-d, f], and the 0x28 real devices send for
# F0/F1 (NOTES §8, NOV "nanshui" frames).
FIXED_DATADEF: Final[Mapping[int, frozenset[int]]] = {
    0xF0: frozenset({0xF0, 0x28}),
    0xF1: frozenset({0xF1, 0x28}),
}


def element_spec(guide: int) -> ElementSpec:
    """The table row for a guide byte (or 0xFFxx extension); unlisted identifiers get a row
    named after their hex so that nothing a station sends is lost."""
    spec = ELEMENTS.get(guide)
    if spec is not None:
        return spec
    key = f"{guide:02X}" if guide <= 0xFF else f"{guide:04X}"
    what = "user-defined element" if guide > 0xFF else "reserved element"
    return ElementSpec(guide, key, f"{what} {key}", "", None, 0)


def parse_key(ident: str | int) -> int:
    """A guide from "39", 0x39, "FF11" or an ASCII identifier ("Z", "DRP"). Raises KeyError."""
    if isinstance(ident, int):
        return ident
    spec = BY_ASCII.get(ident.upper())
    if spec is not None:
        return spec.guide
    text = ident.upper()
    if len(text) in (2, 4) and all(c in "0123456789ABCDEF" for c in text):
        guide = int(text, 16)
        if len(text) == 4 and guide >> 8 != 0xFF:
            raise KeyError(f"{ident!r}: a 4-digit identifier must be an FFxx extension")
        return guide
    raise KeyError(f"{ident!r} is not an element identifier")


@dataclass(frozen=True, slots=True)
class Category:
    code: int
    letter: str
    name: str


# Station category codes [STD Appendix A Table A.1]; the HEX code is the letter's ASCII code.
CATEGORIES: Final[Mapping[int, Category]] = {
    c.code: c
    for c in (
        Category(0x50, "P", "precipitation"),
        Category(0x48, "H", "river"),
        Category(0x4B, "K", "reservoir / lake"),
        Category(0x5A, "Z", "sluice / dam"),
        Category(0x44, "D", "pumping station"),
        Category(0x54, "T", "tide"),
        Category(0x4D, "M", "soil moisture"),
        Category(0x47, "G", "groundwater"),
        Category(0x51, "Q", "water quality"),
        Category(0x49, "I", "water intake"),
        Category(0x4F, "O", "drainage outlet"),
    )
}


@dataclass(frozen=True, slots=True)
class StatusBit:
    """One bit of the status/alarm word. `name` reads true in the notable state: for the two
    bits the standard defines the other way round (7: 0 = door open; 10: 0 = pump running)
    the decoder inverts the bit. `alarm` says whether true is an alarm."""

    bit: int
    name: str
    meaning: str
    inverted: bool = False
    alarm: bool = True


# Status and alarm word, element 45H [STD Table 58; NOTES §12].
STATUS_BITS: Final[tuple[StatusBit, ...]] = (
    StatusBit(0, "ac_power_cut", "AC charging: power cut"),
    StatusBit(1, "battery_low", "battery voltage low"),
    StatusBit(2, "level_limit_alarm", "water-level limit exceeded"),
    StatusBit(3, "flow_limit_alarm", "flow limit exceeded"),
    StatusBit(4, "quality_limit_alarm", "water-quality limit exceeded"),
    StatusBit(5, "flow_meter_fault", "flow meter fault"),
    StatusBit(6, "level_meter_fault", "water-level meter fault"),
    StatusBit(7, "door_open", "terminal box door open (bit 7 = 0)", inverted=True),
    StatusBit(8, "memory_fault", "memory abnormal"),
    StatusBit(9, "ic_card_valid", "IC-card function on, card valid", alarm=False),
    StatusBit(10, "pump_running", "pump running (bit 10 = 0)", inverted=True, alarm=False),
    StatusBit(11, "remaining_water_alarm", "remaining water below the alarm value"),
)


def status_flags(word: int) -> dict[str, bool]:
    """Each named bit of a status word, inversion applied (true = the state the name says)."""
    return {b.name: bool((word >> b.bit) & 1) != b.inverted for b in STATUS_BITS}


def status_word(**flags: bool) -> int:
    """The status word for named states (the inverse of status_flags; unnamed bits 0)."""
    by_name = {b.name: b for b in STATUS_BITS}
    word = 0
    for b in STATUS_BITS:
        if b.inverted:
            word |= 1 << b.bit  # the quiet state of an inverted bit is 1
    for name, value in flags.items():
        spec = by_name.get(name)
        if spec is None:
            raise KeyError(f"{name!r} is not a status bit ({', '.join(by_name)})")
        if value != spec.inverted:
            word |= 1 << spec.bit
        else:
            word &= ~(1 << spec.bit)
    return word


# The standard's own (Chinese) names of the elements of Table C.1 and of the bits of Table 58,
# by ASCII identifier and bit name: what a site owner reads in the report (`element_label`).
NAMES_ZH: Final[Mapping[str, str]] = {
    "TT": "观测时间",
    "ST": "测站编码",
    "RGZS": "人工置数",
    "PIC": "图片信息",
    "DRP": "1小时内每5分钟时段雨量",
    **{f"DRZ{i}": f"1小时内每5分钟间隔相对水位{i}" for i in range(1, 9)},
    "DATA": "流速批量数据",
    "AC": "断面面积",
    "AI": "瞬时气温",
    "C": "瞬时水温",
    "DRXNN": "时间步长码",
    "DT": "时段长（降水、引排水、抽水历时）",
    "ED": "日蒸发量",
    "EJ": "当前蒸发",
    "FL": "气压",
    "GH": "闸门开启高度",
    "GN": "输水设备、闸门（组）编号",
    "GS": "输水设备类别",
    "GT": "闸门开启孔数",
    "GTP": "地温",
    "H": "地下水瞬时埋深",
    "HW": "波浪高度",
    **{f"M{d}": f"{d}厘米处土壤含水量" for d in (10, 20, 30, 40, 50, 60, 80, 100)},
    "MST": "湿度",
    "NS": "开机台数",
    "P1": "1小时时段降水量",
    "P2": "2小时时段降水量",
    "P3": "3小时时段降水量",
    "P6": "6小时时段降水量",
    "P12": "12小时时段降水量",
    "PD": "日降水量",
    "PJ": "当前降水量",
    "PN01": "1分钟时段降水量",
    "PN05": "5分钟时段降水量",
    "PN10": "10分钟时段降水量",
    "PN30": "30分钟时段降水量",
    "PR": "暴雨量",
    "PT": "降水量累计值",
    "Q": "瞬时流量、抽水流量",
    **{f"Q{i}": f"取（排）水口流量{i}" for i in range(1, 9)},
    "QA": "总出库流量、过闸总流量",
    "QZ": "输水设备流量、过闸（组）流量",
    "SW": "输沙量",
    "UC": "风向",
    "UE": "风力",
    "US": "风速",
    "VA": "断面平均流速",
    "VJ": "当前瞬时流速",
    "VT": "电源电压",
    "Z": "瞬时河道水位、潮位",
    "ZB": "库（闸、站）下水位",
    "ZU": "库（闸、站）上水位",
    **{f"Z{i}": f"取（排）水口水位{i}" for i in range(1, 9)},
    "SQ": "含沙量",
    "ZT": "遥测站状态及报警信息",
    "PH": "pH值",
    "DO": "溶解氧",
    "COND": "电导率",
    "TURB": "浊度",
    "CODMN": "高锰酸盐指数",
    "REDOX": "氧化还原电位",
    "NH4N": "氨氮",
    "TP": "总磷",
    "TN": "总氮",
    "TOC": "总有机碳",
    "CU": "铜",
    "ZN": "锌",
    "SE": "硒",
    "AS": "砷",
    "THG": "总汞",
    "CD": "镉",
    "PB": "铅",
    "CHLA": "叶绿素a",
    **{f"WP{i}": f"水压{i}" for i in range(1, 9)},
    **{f"SYL{i}": f"水表{i}剩余水量" for i in range(1, 9)},
    **{f"SBL{i}": f"水表{i}每小时水量" for i in range(1, 9)},
    "VTA": "交流A相电压",
    "VTB": "交流B相电压",
    "VTC": "交流C相电压",
    "VIA": "交流A相电流",
    "VIB": "交流B相电流",
    "VIC": "交流C相电流",
}
STATUS_NAMES_ZH: Final[Mapping[str, str]] = {
    "ac_power_cut": "交流电停电",
    "battery_low": "蓄电池电压低",
    "level_limit_alarm": "水位超限报警",
    "flow_limit_alarm": "流量超限报警",
    "quality_limit_alarm": "水质超限报警",
    "flow_meter_fault": "流量仪表故障",
    "level_meter_fault": "水位仪表故障",
    "door_open": "终端箱门开",
    "memory_fault": "存储器故障",
    "ic_card_valid": "IC卡功能有效",
    "pump_running": "水泵工作",
    "remaining_water_alarm": "剩余水量超限报警",
}
_STATUS_BY_NAME: Final[Mapping[str, StatusBit]] = {b.name: b for b in STATUS_BITS}


def element_label(point: str, language: str = "en") -> str | None:
    """The plain name of an SL651 reading's point ("Z", "DRZ1", "ZT.battery_low", "7A") in
    English or Chinese ("zh"); None for a name that is no element."""
    if point.startswith("ZT."):
        bit = _STATUS_BY_NAME.get(point[3:])
        if bit is None:
            return None
        if language == "zh":
            return f"测站状态：{STATUS_NAMES_ZH[bit.name]}"
        return f"station status: {bit.meaning.split(' (')[0]}"
    spec = BY_ASCII.get(point.upper())
    if spec is None:
        try:
            spec = element_spec(parse_key(point))
        except KeyError:
            return None
    if language != "zh":
        return spec.name
    named = NAMES_ZH.get(spec.ascii_id.upper())
    if named is not None:
        return named
    return f"{'用户自定义要素' if spec.guide > 0xFF else '保留要素'} {spec.key}"
