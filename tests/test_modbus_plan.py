"""Read planning (coalescing) and decoding, without IO."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agent.config import PointConfig
from agent.model import Quality
from agent.protocols.modbus import codec
from agent.protocols.modbus.planner import decode_read, plain_values, plan_reads

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def point(name: str, address: int, **kw: Any) -> PointConfig:
    return PointConfig(name=name, address=address, **kw)


def spans(points: list[PointConfig], max_gap: int = 0) -> list[tuple[str, int, int]]:
    return [(r.table, r.address, r.count) for r in plan_reads(points, max_gap)]


def test_adjacent_points_of_one_table_become_one_read() -> None:
    points = [point("a", 0, type="float32"), point("b", 2), point("c", 3, type="uint32")]
    assert spans(points) == [("holding", 0, 5)]


def test_gaps_up_to_max_gap_are_merged_and_larger_ones_split() -> None:
    points = [point("a", 0), point("b", 5), point("c", 20)]
    assert spans(points, max_gap=4) == [("holding", 0, 6), ("holding", 20, 1)]
    assert spans(points, max_gap=0) == [("holding", 0, 1), ("holding", 5, 1), ("holding", 20, 1)]


def test_a_read_never_exceeds_125_registers() -> None:
    points = [point(f"p{i}", i) for i in range(300)]
    reads = plan_reads(points, 8)
    assert [r.count for r in reads] == [125, 125, 50]
    assert sum(len(r.points) for r in reads) == 300


def test_bit_tables_read_up_to_2000_bits_and_merge_gaps_in_bits() -> None:
    coils = [point(f"c{i}", i * 100, table="coil", type="bool") for i in range(30)]
    reads = plan_reads(coils, max_gap=8)  # 8 registers = 128 bits of gap allowed
    assert [(r.address, r.count) for r in reads] == [(0, 1901), (2000, 901)]


def test_tables_are_never_mixed() -> None:
    points = [point("h", 0), point("i", 0, table="input"), point("c", 0, table="coil", type="bool")]
    assert sorted(spans(points, 8)) == [("coil", 0, 1), ("holding", 0, 1), ("input", 0, 1)]


def test_overlapping_points_share_a_read() -> None:
    points = [point("word", 10), point("flag", 10, type="bool", bit=2)]
    assert spans(points) == [("holding", 10, 1)]


@given(
    st.lists(
        st.tuples(st.integers(0, 3000), st.sampled_from(["uint16", "float32", "float64"])),
        min_size=1,
        max_size=80,
    ),
    st.integers(0, 30),
)
def test_every_point_is_covered_by_exactly_one_read_within_limits(
    specs: list[tuple[int, str]], gap: int
) -> None:
    points = [point(f"p{i}", a, type=t) for i, (a, t) in enumerate(specs)]
    reads = plan_reads(points, gap)
    assert sorted(p.name for r in reads for p in r.points) == sorted(p.name for p in points)
    for r in reads:
        assert 1 <= r.count <= 125
        for p in r.points:
            assert r.address <= p.address and p.address + p.width <= r.address + r.count


def test_decode_applies_scale_and_offset_and_keeps_raw_integers() -> None:
    points = [
        point("raw", 0),
        point("volts", 1, scale=0.001, unit="V"),
        point("temp", 2, type="int16", scale=0.1, offset=-40.0),
    ]
    [read] = plan_reads(points, 0)
    readings = decode_read("t", read, [7, 12600, 0xFFFF], NOW)
    by = {r.point: r for r in readings}
    assert by["raw"].value == 7 and isinstance(by["raw"].value, int)
    assert by["volts"].value == 12.6 and by["volts"].unit == "V"
    assert by["temp"].value == -40.1
    assert all(r.quality is Quality.GOOD and r.observed_at == NOW for r in readings)
    assert by["volts"].source == "holding:1"


def test_nan_from_the_device_is_a_bad_reading_with_a_reason() -> None:
    [read] = plan_reads([point("level", 0, type="float32")], 0)
    [reading] = decode_read("t", read, codec.encode_number(float("nan"), "float32"), NOW)
    assert reading.quality is Quality.BAD
    assert reading.value is None
    assert reading.error is not None and "nan" in reading.error


def test_a_short_reply_marks_the_points_it_does_not_cover_bad() -> None:
    [read] = plan_reads([point("a", 0), point("b", 1, type="uint32")], 0)
    a, b = decode_read("t", read, [1, 2], NOW)
    assert a.quality is Quality.GOOD
    assert b.quality is Quality.BAD and b.error is not None and "short reply" in b.error


def test_plain_reads_decode_each_point_as_its_word_or_bit() -> None:
    # Unscaled one-word integers and bits take the one-pass path: same readings as point by point.
    points = [point("a", 0, unit="mm"), point("b", 1, word_order="CDAB"), point("c", 3)]
    [read] = plan_reads(points, 2)
    assert read.plain is not None
    readings = decode_read("t", read, [5, 65535, 9, 40000], NOW)
    assert [(r.point, r.value, r.unit, r.source) for r in readings] == [
        ("a", 5, "mm", "holding:0"),
        ("b", 65535, "", "holding:1"),
        ("c", 40000, "", "holding:3"),
    ]
    assert all(r.quality is Quality.GOOD and r.error is None for r in readings)
    coils = [point("x", 0, table="coil", type="bool"), point("y", 2, table="coil", type="bool")]
    [bits] = plan_reads(coils, 2)
    assert [r.value for r in decode_read("t", bits, [True, False, False], NOW)] == [True, False]


def test_a_scaled_point_or_a_short_reply_takes_the_point_by_point_path() -> None:
    [mixed] = plan_reads([point("a", 0), point("b", 1, scale=0.5)], 0)
    assert mixed.plain is None
    assert [r.value for r in decode_read("t", mixed, [4, 4], NOW)] == [4, 2.0]
    [read] = plan_reads([point("a", 0), point("b", 1)], 0)
    a, b = decode_read("t", read, [1], NOW)
    assert a.value == 1 and a.quality is Quality.GOOD
    assert b.quality is Quality.BAD and b.error is not None and "short reply" in b.error


@given(
    st.lists(st.integers(0, 60), min_size=1, max_size=40, unique=True),
    st.integers(0, 5),
    st.lists(st.integers(0, 0xFFFF), min_size=125, max_size=125),
)
def test_plain_values_are_each_points_word_whether_the_read_is_dense_or_not(
    addresses: list[int], gap: int, words: list[int]
) -> None:
    """A read of one plain point a register from its first (`dense`) hands the reply's words
    as they are: the same values as taking each point's word."""
    points = [point(f"p{a}", a) for a in addresses]
    for read in plan_reads(points, gap):
        values = words[: read.count]
        assert read.plain is not None
        expected = [values[offset] for offset, *_ in read.plain]
        assert plain_values(read, values) == expected
        offsets = [offset for offset, *_ in read.plain]
        assert read.dense == (offsets == list(range(read.count)))
