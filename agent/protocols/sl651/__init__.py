"""SL651-2014 (水文监测数据通信规约) codec: sans-IO, both encodings, both directions.

Modules, one job each:
    frame     control characters, CRC-16/MODBUS, Frame, whole-frame parse and build
    stream    StreamDecoder: bytes in any split → Frame | Rejected | NEED_DATA
    bcd       packed-BCD numbers and times
    elements  Appendix C identifiers, Appendix A categories, Table 58 status bits
    params    Appendix D configuration tables
    message   decoded types: Message, elements, function-specific details, BodyError
    body      HEX body → Message (decode_body, decode_packets for M3)
    ascii     ASCII bodies of the report functions (30-35, 37), both directions
    items     encoder inputs (Value, BlockValues, SeriesValues, Group …)
    encode    every downlink of the centre and every uplink of the simulator
    readings  Message → agent.model.Reading
    describe  the JSON of `edge-agent sl651 decode --json`

The authority is docs/sl651-notes.md (our reading of the standard; "NOTES §n" in these modules
is its section n); clause numbers in docstrings are the standard's.
"""

from agent.protocols.crc16 import crc16
from agent.protocols.sl651 import encode
from agent.protocols.sl651.body import decode_body, decode_packets, frame_serial, join_packets
from agent.protocols.sl651.describe import decode_hex_frame, describe_hex, error_json, frame_json
from agent.protocols.sl651.elements import (
    CATEGORIES,
    ELEMENTS,
    STATUS_BITS,
    status_flags,
    status_word,
)
from agent.protocols.sl651.frame import (
    Ctrl,
    Frame,
    FrameError,
    LinkAddress,
    RejectReason,
    build_frame,
    parse_frame,
)
from agent.protocols.sl651.items import (
    BlockValues,
    EncodeError,
    Group,
    ManualText,
    SeriesValues,
    StatusValue,
    Value,
)
from agent.protocols.sl651.message import (
    BlockElement,
    BodyError,
    BytesElement,
    Element,
    Message,
    NumberElement,
    Sample,
    SeriesElement,
    StationAddress,
    StatusElement,
    TextElement,
    TimeStep,
)
from agent.protocols.sl651.readings import CHINA_STANDARD_TIME, readings_from
from agent.protocols.sl651.stream import NEED_DATA, Event, Rejected, StreamDecoder

__all__ = [
    "CATEGORIES",
    "CHINA_STANDARD_TIME",
    "ELEMENTS",
    "NEED_DATA",
    "STATUS_BITS",
    "BlockElement",
    "BlockValues",
    "BodyError",
    "BytesElement",
    "Ctrl",
    "Element",
    "EncodeError",
    "Event",
    "Frame",
    "FrameError",
    "Group",
    "LinkAddress",
    "ManualText",
    "Message",
    "NumberElement",
    "RejectReason",
    "Rejected",
    "Sample",
    "SeriesElement",
    "SeriesValues",
    "StationAddress",
    "StatusElement",
    "StatusValue",
    "StreamDecoder",
    "TextElement",
    "TimeStep",
    "Value",
    "build_frame",
    "crc16",
    "decode_body",
    "decode_hex_frame",
    "decode_packets",
    "describe_hex",
    "encode",
    "error_json",
    "frame_json",
    "frame_serial",
    "join_packets",
    "parse_frame",
    "readings_from",
    "status_flags",
    "status_word",
]
