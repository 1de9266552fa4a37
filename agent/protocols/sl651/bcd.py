"""Packed-BCD values and times of SL651-2014 (§6.6.3): decode and encode, pure functions.

Numbers: the decimal point is dropped, the data-definition byte gives width and decimals; a
leading `FF` byte means negative and is counted in the width ("FF0d…" for odd digit counts,
docs/sl651-notes.md §8 and §14.3). All-`FF` and all-`AA` data is missing (the standard's fill
and a vendor's); any other non-BCD nibble is invalid. Times are station-local wall clock, years
2000-2099. NOTES §n below means section n of docs/sl651-notes.md.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Final, Literal, NamedTuple

Fill = Literal["FF", "AA", "M"]  # M: the ASCII encoding's missing marker (§6.6.4.4 d)
Number = int | float

_POW10: Final = tuple(10**d for d in range(8))
MAX_WIDTH: Final = 31  # 5 bits of the data-definition byte
MAX_DECIMALS: Final = 7


class BcdError(ValueError):
    """Bytes that are not the BCD they should be, or a value that does not fit."""


class Decoded(NamedTuple):
    """A decoded number: `value` None when `missing` (fill) or `error` (not BCD) is set;
    `sentinel` when it is all nines (e.g. Z = 09999999, a "no sensor" value, NOTES §8)."""

    value: Number | None
    missing: Fill | None = None
    error: str | None = None
    sentinel: bool = False


def fill_of(data: bytes) -> Fill | None:
    """ "FF" or "AA" when every byte is that fill, else None."""
    if not data:
        return None
    first = data[0]
    if first in (0xFF, 0xAA) and data.count(first) == len(data):
        return "FF" if first == 0xFF else "AA"
    return None


def decode_number(data: bytes, decimals: int) -> Decoded:
    """The value of BCD `data` with `decimals` places; never raises."""
    text = data.hex()
    if text.isdigit():
        n = int(text)
        value = n / _POW10[decimals] if decimals else n
        if n < 9999:
            return Decoded(value)
        return Decoded(value, None, None, _nines(text))
    fill = fill_of(data)
    if fill is not None:
        return Decoded(None, fill)
    if len(data) > 1 and data[0] == 0xFF and text[2:].isdigit():
        n = -int(text[2:])
        return Decoded(n / _POW10[decimals] if decimals else n)
    return Decoded(None, None, f"not BCD: {text.upper()}")


def _nines(text: str) -> bool:
    digits = text.lstrip("0")
    return len(digits) >= 4 and digits.count("9") == len(digits)


def is_sentinel(data: bytes) -> bool:
    """All nines (e.g. Z = 09999999 → 9999.999): a "no sensor" value some devices send (NOTES §8)."""
    return _nines(data.hex())


def digits_of(data: bytes) -> str:
    """BCD digits of a digit string (phone numbers, IP addresses); a leading `A` pad nibble of an
    odd-length string is dropped (§6.6.3.3 b). Raises BcdError on other non-digits."""
    text = data.hex().upper()
    if text[:1] == "A":
        text = text[1:]
    if not text.isdigit() and text:
        raise BcdError(f"not BCD digits: {data.hex().upper()}")
    return text


def decode_uint(data: bytes) -> int:
    """An unsigned BCD integer. Raises BcdError."""
    text = data.hex()
    if not text.isdigit():
        raise BcdError(f"not BCD: {text.upper()}")
    return int(text)


_BCD_BYTE: Final = tuple(
    (b >> 4) * 10 + (b & 0xF) if b >> 4 < 10 and b & 0xF < 10 else -1 for b in range(256)
)


def decode_time(data: bytes) -> datetime:
    """YYMMDDHH[mm[SS]] (4, 5 or 6 BCD bytes) → naive datetime. Raises BcdError."""
    fields = [_BCD_BYTE[b] for b in data]
    if not 4 <= len(fields) <= 6 or -1 in fields:
        raise BcdError(f"time {data.hex().upper()} is not 4-6 BCD bytes")
    fields += [0] * (6 - len(fields))
    try:
        return datetime(2000 + fields[0], fields[1], fields[2], fields[3], fields[4], fields[5])
    except ValueError as exc:
        raise BcdError(f"time {data.hex().upper()} is not a date: {exc}") from exc


def encode_time(at: datetime, size: int = 6) -> bytes:
    """The first `size` BCD bytes of YYMMDDHHmmSS (the wall-clock fields of `at`)."""
    if not 2000 <= at.year <= 2099:
        raise BcdError(f"year {at.year} does not fit YY (2000-2099)")
    text = at.strftime("%y%m%d%H%M%S")[: 2 * size]
    return bytes.fromhex(text)


def encode_uint(value: int, width: int) -> bytes:
    """An unsigned integer in `width` BCD bytes. Raises BcdError when it does not fit."""
    if value < 0 or len(str(value)) > 2 * width:
        raise BcdError(f"{value} does not fit {width} BCD bytes")
    return bytes.fromhex(f"{value:0{2 * width}d}")


def scaled(value: Number | Decimal, decimals: int) -> int:
    """`value` × 10^decimals as an integer, rounded half-even on the decimal value (so 0.1 with
    one decimal is exactly 1, whatever the float)."""
    try:
        exact = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
        return int(exact.scaleb(decimals).to_integral_value(ROUND_HALF_EVEN))
    except (InvalidOperation, ValueError, OverflowError) as exc:
        raise BcdError(f"{value!r} is not a finite number") from exc


def encode_number(
    value: Number | Decimal,
    decimals: int,
    *,
    digits: int | None = None,
    width: int | None = None,
) -> tuple[int, bytes]:
    """(data-definition byte, BCD data) for `value` with `decimals` places.

    The width is `width` bytes if given (sign byte included), else ceil(digits/2) plus one byte
    for a negative value, else the fewest bytes that hold the value. Raises BcdError when the
    value does not fit.
    """
    if not 0 <= decimals <= MAX_DECIMALS:
        raise BcdError(f"{decimals} decimals: the data-definition byte holds 0-7")
    n = scaled(value, decimals)
    negative = n < 0
    text = str(abs(n))
    if width is None:
        body = (digits + 1) // 2 if digits is not None else (len(text) + 1) // 2
        width = body + (1 if negative else 0)
    body_width = width - (1 if negative else 0)
    if not 1 <= width <= MAX_WIDTH or len(text) > 2 * body_width:
        raise BcdError(f"{value} with {decimals} decimals does not fit {width} bytes")
    data = bytes.fromhex(text.rjust(2 * body_width, "0"))
    if negative:
        data = b"\xff" + data
    return (width << 3) | decimals, data


def encode_missing(width: int, decimals: int, fill: Fill = "FF") -> tuple[int, bytes]:
    """(data-definition byte, fill bytes) for a missing value."""
    if not 1 <= width <= MAX_WIDTH or not 0 <= decimals <= MAX_DECIMALS:
        raise BcdError(f"width {width} / decimals {decimals} out of range")
    if fill == "M":
        raise BcdError("'M' is the ASCII missing marker; HEX frames fill with FF or AA")
    return (width << 3) | decimals, bytes([0xFF if fill == "FF" else 0xAA]) * width
