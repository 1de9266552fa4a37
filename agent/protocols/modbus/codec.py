"""Modbus register codec: registers <-> typed values, for every type and word order.

Sans-IO: takes and returns plain ints, no sockets, no config objects. Word orders name the byte
order of a value's big-endian bytes A B C D on the wire (for 64-bit types, ABCD means most
significant word first and CDAB least significant word first):

    ABCD  big-endian                 CDAB  words swapped (common "little-endian word" devices)
    BADC  bytes swapped in each word DCBA  little-endian
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

WIDTH = {
    "uint16": 1,
    "int16": 1,
    "uint32": 2,
    "int32": 2,
    "float32": 2,
    "uint64": 4,
    "int64": 4,
    "float64": 4,
}
_STRUCT = {
    "uint16": ">H",
    "int16": ">h",
    "uint32": ">I",
    "int32": ">i",
    "float32": ">f",
    "uint64": ">Q",
    "int64": ">q",
    "float64": ">d",
}
_SWAPS_BYTES = frozenset({"BADC", "DCBA"})
_SWAPS_WORDS = frozenset({"CDAB", "DCBA"})


class CodecError(ValueError):
    """Registers that cannot hold the value asked for (wrong count, out of range)."""


def _swap_bytes(raw: bytes) -> bytes:
    swapped = bytearray(raw)
    swapped[0::2], swapped[1::2] = raw[1::2], raw[0::2]
    return bytes(swapped)


def _to_bytes(registers: Sequence[int], word_order: str) -> bytes:
    words = list(registers)
    if word_order in _SWAPS_WORDS:
        words.reverse()
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    if word_order in _SWAPS_BYTES:
        raw = _swap_bytes(raw)
    return raw


def _from_bytes(raw: bytes, word_order: str) -> list[int]:
    if word_order in _SWAPS_BYTES:
        raw = _swap_bytes(raw)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if word_order in _SWAPS_WORDS:
        words.reverse()
    return words


def decode_number(registers: Sequence[int], type_: str, word_order: str = "ABCD") -> int | float:
    """The value of a numeric type held in `registers` (exactly its width)."""
    width = WIDTH[type_]
    if len(registers) != width:
        raise CodecError(f"{type_} needs {width} registers, got {len(registers)}")
    value: int | float = struct.unpack(_STRUCT[type_], _to_bytes(registers, word_order))[0]
    return value


def encode_number(value: int | float, type_: str, word_order: str = "ABCD") -> list[int]:
    """The registers that hold `value` as `type_` (the inverse of decode_number)."""
    try:
        raw = struct.pack(_STRUCT[type_], value)
    except struct.error as exc:
        raise CodecError(f"{value!r} does not fit {type_}: {exc}") from exc
    return _from_bytes(raw, word_order)


def decode_string(registers: Sequence[int], word_order: str = "ABCD") -> str:
    """Two characters per register, first character in the high byte (swapped for BADC/DCBA).

    Trailing NULs and spaces are padding; bytes outside ASCII are kept as latin-1 so that nothing a
    device sends is lost or raises.
    """
    raw = b"".join(w.to_bytes(2, "big") for w in registers)
    if word_order in _SWAPS_BYTES:
        raw = _swap_bytes(raw)
    return raw.rstrip(b"\x00 ").decode("latin-1")


def encode_string(text: str, length: int, word_order: str = "ABCD") -> list[int]:
    """`text` in `length` registers, NUL-padded; raises CodecError when it does not fit."""
    try:
        raw = text.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise CodecError(f"{text!r} has characters a register string cannot hold") from exc
    if len(raw) > 2 * length:
        raise CodecError(f"{text!r} needs more than {length} registers")
    raw = raw.ljust(2 * length, b"\x00")
    if word_order in _SWAPS_BYTES:
        raw = _swap_bytes(raw)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def decode_register_bit(register: int, bit: int | None) -> bool:
    """A flag kept in a register: one bit of it, or the whole register being non-zero."""
    if bit is None:
        return register != 0
    return bool((register >> bit) & 1)
