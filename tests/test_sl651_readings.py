"""SL651 messages become agent readings: one per value, each at its own time in UTC, missing
data bad with which fill, the status word as named booleans with bits 7 and 10 inverted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from agent.model import Quality, Reading
from agent.protocols.sl651 import (
    CHINA_STANDARD_TIME,
    STATUS_BITS,
    BlockValues,
    Group,
    LinkAddress,
    ManualText,
    SeriesValues,
    StatusValue,
    TimeStep,
    Value,
    decode_body,
    encode,
    parse_frame,
    readings_from,
)
from agent.protocols.sl651.items import RawElement

LINK = LinkAddress(1, "0012345678", "1234")
SENT = datetime(2017, 7, 18, 11, 0, 14)
RECEIVED = datetime(2017, 7, 18, 3, 0, 20, tzinfo=UTC)
FIRST_SLOT, HOUR = datetime(2017, 7, 18, 10, 5), datetime(2017, 7, 18, 11)


def readings(*groups: Group, function: int = 0x34) -> list[Reading]:
    raw = encode.report(LINK, function, 51, SENT, category=0x48, groups=list(groups))
    return readings_from(decode_body(parse_frame(raw)), "rtu-1", RECEIVED)


def cst(at: datetime) -> datetime:
    return at.replace(tzinfo=CHINA_STANDARD_TIME).astimezone(UTC)


def test_default_zone_is_china_standard_time() -> None:
    assert CHINA_STANDARD_TIME.utcoffset(None) == timedelta(hours=8)


def test_values_carry_identifier_unit_source_and_utc_time() -> None:
    (z, pj) = readings(Group(HOUR, [Value("Z", 10.49), Value("PJ", 4.0)]))
    assert z == Reading(
        "rtu-1", "Z", 10.49, "m", Quality.GOOD, datetime(2017, 7, 18, 3, 0, tzinfo=UTC), "39"
    )
    assert (pj.point, pj.unit, pj.source) == ("PJ", "mm", "20")


def test_each_block_slot_is_a_reading_at_its_own_time() -> None:
    out = readings(
        Group(
            FIRST_SLOT, [BlockValues("F4", [0.5, 0, 0, 0, 2.0, None, None, None, None, None, 0, 0])]
        )
    )
    assert len(out) == 12
    assert [r.observed_at for r in out] == [
        cst(FIRST_SLOT) + timedelta(minutes=5 * i) for i in range(12)
    ]
    assert (
        {r.point for r in out} == {"DRP"}
        and {r.source for r in out} == {"F4"}
        and {r.unit for r in out} == {"mm"}
    )
    assert out[4].value == 2.0 and out[4].quality is Quality.GOOD
    assert out[5].value is None and out[5].quality is Quality.BAD and out[5].error == "missing (FF)"


def test_each_series_step_is_a_reading_at_its_own_time() -> None:
    out = readings(
        Group(FIRST_SLOT, [SeriesValues("Z", TimeStep(minutes=30), [1.0, 1.5, None])]),
        function=0x31,
    )
    assert [(r.point, r.value) for r in out] == [("Z", 1.0), ("Z", 1.5), ("Z", None)]
    assert (
        out[2].observed_at == cst(FIRST_SLOT) + timedelta(hours=1)
        and out[2].error == "missing (FF)"
    )


def test_missing_says_which_fill_and_invalid_says_why() -> None:
    out = readings(
        Group(HOUR, [Value("Z", None, fill="AA"), RawElement("VT", 0x12, bytes.fromhex("12AB"))])
    )
    assert (out[0].quality, out[0].error, out[0].value) == (Quality.BAD, "missing (AA)", None)
    assert (out[1].quality, out[1].error) == (Quality.BAD, "not BCD: 12AB")


def test_nines_sentinel_is_uncertain() -> None:
    (z,) = readings(Group(HOUR, [RawElement("Z", 0x23, bytes.fromhex("09999999"))]))
    assert (
        z.value == 9999.999 and z.quality is Quality.UNCERTAIN and z.error and "sentinel" in z.error
    )


def test_extension_and_reserved_identifiers_keep_their_hex() -> None:
    ext, reserved = readings(
        Group(HOUR, [Value("FF11", 0.008, 3, width=4), Value("76", -1.72, 2, width=5)])
    )
    assert (ext.point, ext.source, ext.value) == ("FF11", "FF11", 0.008)
    assert (reserved.point, reserved.source, reserved.value) == ("76", "76", -1.72)


def test_status_word_is_one_named_boolean_per_bit() -> None:
    out = readings(Group(HOUR, [StatusValue(0x400)]), function=0x32)
    flags = {r.point: r.value for r in out}
    assert list(flags) == [f"ZT.{b.name}" for b in STATUS_BITS]
    assert {"ZT.battery_low", "ZT.ac_power_cut", "ZT.door_open"} <= set(flags)
    assert flags["ZT.door_open"] is True  # bit 7 = 0: door open (inverted)
    assert flags["ZT.pump_running"] is False  # bit 10 = 1: pump stopped (inverted)
    assert sum(bool(v) for v in flags.values()) == 1
    assert {r.source for r in out} == {"45"} and all(r.quality is Quality.GOOD for r in out)


def test_status_bits_7_and_10_set_mean_door_closed_pump_stopped() -> None:
    out = readings(Group(HOUR, [StatusValue((1 << 7) | (1 << 10) | 0b11)]), function=0x32)
    flags = {r.point: r.value for r in out}
    assert flags["ZT.door_open"] is False and flags["ZT.pump_running"] is False
    assert flags["ZT.ac_power_cut"] is True and flags["ZT.battery_low"] is True


def test_manual_data_is_a_text_reading() -> None:
    (text,) = readings(Group(HOUR, [ManualText("Q 1.234")]), function=0x35)
    assert (text.point, text.value, text.source) == ("RGZS", "Q 1.234", "F2")


def test_without_an_observation_time_the_send_time_then_received_at_apply() -> None:
    status = encode.status_reply(LINK, 3, SENT, 0)
    out = readings_from(decode_body(parse_frame(status)), "rtu-1", RECEIVED)
    assert {r.observed_at for r in out} == {cst(SENT)}
    keepalive = decode_body(parse_frame(encode.keepalive(LINK, 3, SENT)))
    assert readings_from(keepalive, "rtu-1", RECEIVED) == []


def test_the_station_zone_is_a_parameter() -> None:
    raw = encode.report(LINK, 0x32, 1, SENT, category=0x48, groups=[Group(HOUR, [Value("Z", 1.0)])])
    message = decode_body(parse_frame(raw))
    (utc,) = readings_from(message, "rtu-1", RECEIVED, tz=UTC)
    (plus2,) = readings_from(message, "rtu-1", RECEIVED, tz=timezone(timedelta(hours=2)))
    assert utc.observed_at == HOUR.replace(tzinfo=UTC)
    assert plus2.observed_at == datetime(2017, 7, 18, 9, tzinfo=UTC)
