"""Whether and when this gateway acts on a fleet announcement: rollout share and maintenance window.

Pure functions (docs/updates.md, "Online, announcements"): a gateway is in a rollout of
`percent` when `int(sha256(gateway id), 16) % 100 < percent` (stable: the same gateways are
first every time); the maintenance window is "HH:MM-HH:MM" in local time, may wrap midnight
("22:00-04:00"), and includes its start but not its end; no window means any time.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, time, timedelta


def rollout_slot(gateway_id: str) -> int:
    """This gateway's place in every rollout, 0..99."""
    return int(hashlib.sha256(gateway_id.encode()).hexdigest(), 16) % 100


def in_rollout(gateway_id: str, percent: int) -> bool:
    return rollout_slot(gateway_id) < percent


def parse_window(window: str) -> tuple[time, time]:
    """'02:00-05:00' → (02:00, 05:00); ValueError for anything else."""
    try:
        start_text, end_text = window.split("-")
        start, end = time.fromisoformat(start_text), time.fromisoformat(end_text)
    except ValueError:
        raise ValueError(f"window {window!r}: expected HH:MM-HH:MM") from None
    return start, end


def in_window(window: str | None, now: datetime) -> bool:
    """Whether local time `now` is inside the window (start included, end excluded)."""
    if window is None:
        return True
    start, end = parse_window(window)
    at = now.time().replace(tzinfo=None)
    if start == end:
        return True  # "00:00-00:00": the whole day
    if start < end:
        return start <= at < end
    return at >= start or at < end  # wraps midnight


def seconds_until_open(window: str | None, now: datetime) -> float:
    """0 inside the window; else the seconds from `now` (local) until it next opens."""
    if in_window(window, now):
        return 0.0
    assert window is not None
    start, _ = parse_window(window)
    opening = now.replace(hour=start.hour, minute=start.minute, second=0, microsecond=0)
    if opening <= now:
        opening += timedelta(days=1)
    return (opening - now).total_seconds()
