"""SL651 message → agent readings (the shared vocabulary of agent.model).

One Reading per value: `point` is the standard's ASCII identifier ("Z", "PJ", "DRP"; the hex
key for unlisted identifiers, e.g. "FF11"), `source` the identifier key ("39", "F4", "FF11"),
`unit` from Table C.1. Block slots and series steps are separate readings, each at its own
time. Missing data is quality bad with error "missing (FF)" / "missing (AA)" / "missing (M)";
a value that is not BCD is bad with the reason; an all-nines value (a no-sensor sentinel on
some devices) is uncertain. The status word 45H becomes one boolean per named bit,
"ZT.<name>" (`elements.STATUS_BITS`), true in the state the name says, inversion of bits 7 and
10 applied: ZT.ac_power_cut, ZT.battery_low, ZT.level_limit_alarm, ZT.flow_limit_alarm,
ZT.quality_limit_alarm, ZT.flow_meter_fault, ZT.level_meter_fault, ZT.door_open,
ZT.memory_fault, ZT.ic_card_valid, ZT.pump_running, ZT.remaining_water_alarm. Manual data
(F2) is one text reading "RGZS"; pictures and bulk data are not readings.

Times: SL651 sends station-local wall clock without a zone. `tz` says which zone the station
keeps (default UTC+8, China Standard Time, what SL651 stations run on); readings carry UTC.
An element's time is its observation time (F0F0), else the message's send time, else
`received_at` (an aware datetime).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Final

from agent.model import Quality, Reading
from agent.protocols.sl651.message import (
    BlockElement,
    Message,
    NumberElement,
    SeriesElement,
    StatusElement,
    TextElement,
)

CHINA_STANDARD_TIME: Final = timezone(timedelta(hours=8), "CST")
SENTINEL_NOTE: Final = "all-nines value: a no-sensor sentinel on some devices"


def readings_from(
    message: Message,
    terminal: str,
    received_at: datetime,
    tz: tzinfo = CHINA_STANDARD_TIME,
) -> list[Reading]:
    """Every reading a message carries, in the order of its elements."""
    fixed = tz.utcoffset(None) if isinstance(tz, timezone) else None  # CST: one subtraction

    def utc(at: datetime) -> datetime:
        if fixed is not None:
            return (at - fixed).replace(tzinfo=UTC)
        return at.replace(tzinfo=tz).astimezone(UTC)

    default = received_at if message.sent_at is None else utc(message.sent_at)
    good, bad = Quality.GOOD, Quality.BAD
    out: list[Reading] = []
    append = out.append
    for e in message.elements:
        spec = e.spec
        point, source, unit = spec.ascii_id, e.key, spec.unit
        if isinstance(e, BlockElement | SeriesElement):
            samples = e.samples
            if fixed is not None:  # the common case, inline: blocks make a dozen readings each
                whens = [(s.observed_at - fixed).replace(tzinfo=UTC) for s in samples]
            else:
                whens = [utc(s.observed_at) for s in samples]
            for s, when in zip(samples, whens, strict=True):
                if s.value is None:
                    error = f"missing ({s.missing})" if s.missing else s.error
                    append(Reading(terminal, point, None, unit, bad, when, source, error))
                else:
                    append(Reading(terminal, point, s.value, unit, good, when, source))
            continue
        when = default if e.observed_at is None else utc(e.observed_at)
        if isinstance(e, NumberElement):
            if e.value is None:
                error = f"missing ({e.missing})" if e.missing else e.error
                append(Reading(terminal, point, None, unit, bad, when, source, error))
            elif e.sentinel:
                append(
                    Reading(
                        terminal,
                        point,
                        e.value,
                        unit,
                        Quality.UNCERTAIN,
                        when,
                        source,
                        SENTINEL_NOTE,
                    )
                )
            else:
                append(Reading(terminal, point, e.value, unit, good, when, source))
        elif isinstance(e, StatusElement):
            for name, value in e.flags.items():  # named, inversions applied (elements.py)
                append(Reading(terminal, f"ZT.{name}", value, "", good, when, source))
        elif isinstance(e, TextElement):
            append(Reading(terminal, point, e.text, unit, good, when, source))
    return out
