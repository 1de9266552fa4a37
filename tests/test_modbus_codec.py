"""The register codec: known answers for every type and word order, and round-trip properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.protocols.modbus import codec as dt

WORD_ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]

# 0x11223344 as a uint32 and the registers each word order puts on the wire.
KNOWN_32 = {
    "ABCD": [0x1122, 0x3344],
    "CDAB": [0x3344, 0x1122],
    "BADC": [0x2211, 0x4433],
    "DCBA": [0x4433, 0x2211],
}
# 0x1122334455667788 as a uint64: ABCD most significant word first, CDAB least significant first.
KNOWN_64 = {
    "ABCD": [0x1122, 0x3344, 0x5566, 0x7788],
    "CDAB": [0x7788, 0x5566, 0x3344, 0x1122],
    "BADC": [0x2211, 0x4433, 0x6655, 0x8877],
    "DCBA": [0x8877, 0x6655, 0x4433, 0x2211],
}


@pytest.mark.parametrize("order", WORD_ORDERS)
def test_uint32_word_orders_decode_the_documented_layout(order: str) -> None:
    assert dt.decode_number(KNOWN_32[order], "uint32", order) == 0x11223344


@pytest.mark.parametrize("order", WORD_ORDERS)
def test_uint64_word_orders_decode_the_documented_layout(order: str) -> None:
    assert dt.decode_number(KNOWN_64[order], "uint64", order) == 0x1122334455667788


def test_float32_known_answer_big_endian_and_swapped_words() -> None:
    # 12.345 as IEEE-754 single is 0x41458520 (the classic "water level" example).
    assert dt.decode_number([0x4145, 0x851F], "float32", "ABCD") == pytest.approx(12.345, 1e-6)
    assert dt.decode_number([0x851F, 0x4145], "float32", "CDAB") == pytest.approx(12.345, 1e-6)


def test_signed_types_are_twos_complement() -> None:
    assert dt.decode_number([0xFFFF], "int16") == -1
    assert dt.decode_number([0xFFFF, 0xFFFE], "int32") == -2
    assert dt.decode_number([0xFFFF] * 4, "int64") == -1
    assert dt.decode_number([0x8000], "int16") == -32768


def test_int16_byte_swapped() -> None:
    assert dt.decode_number([0x3412], "uint16", "BADC") == 0x1234
    assert dt.decode_number([0x3412], "uint16", "CDAB") == 0x3412  # one word: nothing to swap


def test_float64_known_answer() -> None:
    # 1.0 is 0x3FF0000000000000
    assert dt.decode_number([0x3FF0, 0, 0, 0], "float64") == 1.0
    assert dt.decode_number([0, 0, 0, 0x3FF0], "float64", "CDAB") == 1.0


def test_wrong_register_count_is_a_codec_error() -> None:
    with pytest.raises(dt.CodecError, match="needs 2 registers"):
        dt.decode_number([1], "float32")


def test_out_of_range_value_cannot_be_encoded() -> None:
    with pytest.raises(dt.CodecError, match="does not fit uint16"):
        dt.encode_number(70000, "uint16")


def test_string_is_high_byte_first_and_padding_is_stripped() -> None:
    assert dt.decode_string([0x4142, 0x4300, 0x0000]) == "ABC"
    assert dt.decode_string([0x4241, 0x0043], "BADC") == "ABC"
    assert dt.decode_string([0x4142, 0x2020]) == "AB"


def test_string_keeps_non_ascii_bytes_instead_of_failing() -> None:
    assert dt.decode_string([0xC341]) == "\xc3A"


def test_register_bit() -> None:
    assert dt.decode_register_bit(0b1000, 3) is True
    assert dt.decode_register_bit(0b1000, 2) is False
    assert dt.decode_register_bit(5, None) is True
    assert dt.decode_register_bit(0, None) is False


INT_RANGES = {
    "uint16": (0, 2**16 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "uint32": (0, 2**32 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint64": (0, 2**64 - 1),
    "int64": (-(2**63), 2**63 - 1),
}


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[str, int | float]:
    type_ = draw(st.sampled_from([*INT_RANGES, "float32", "float64"]))
    if type_ in INT_RANGES:
        low, high = INT_RANGES[type_]
        return type_, draw(st.integers(low, high))
    width = 32 if type_ == "float32" else 64
    return type_, draw(st.floats(width=width, allow_nan=False))


@given(typed_values(), st.sampled_from(WORD_ORDERS))
def test_numbers_round_trip_through_registers(typed: tuple[str, int | float], order: str) -> None:
    type_, value = typed
    registers = dt.encode_number(value, type_, order)
    assert len(registers) == dt.WIDTH[type_]
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert dt.decode_number(registers, type_, order) == value


@given(st.floats(width=32, allow_nan=True), st.sampled_from(WORD_ORDERS))
def test_nan_float32_round_trips_as_nan(value: float, order: str) -> None:
    decoded = dt.decode_number(dt.encode_number(value, "float32", order), "float32", order)
    assert decoded == value or (math.isnan(decoded) and math.isnan(value))


@given(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=20),
    st.sampled_from(WORD_ORDERS),
)
def test_strings_round_trip(text: str, order: str) -> None:
    length = 10
    assert dt.decode_string(dt.encode_string(text, length, order), order) == text
