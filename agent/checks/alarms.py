"""Alarms: a check's status change becomes an event for the outbox, with hysteresis.

The rule (per check; `checks.alarms` in the config):
1. Every check starts as announced `ok`. `unknown` results are no information: they neither
   raise nor clear an alarm, and do not break a streak.
2. A status different from the announced one is a candidate. It is confirmed once it has been
   seen in `raise_after` consecutive evaluations when it is worse than the announced status
   (default 2), `clear_after` when it is better (default 3) — or, if `confirm_after` is set, once
   it has lasted that long, whichever comes first. Seeing the announced status again drops the
   candidate; a third status starts a new one.
3. A confirmed change is announced at once if it is worse than the announced status. A change
   for the better waits until `min_interval` (default 10 min) has passed since the check's
   last alarm, and is announced then if still confirmed.
So a value flapping faster than the confirmation never alarms, and one flapping slower gives at
most one raise and one clear per `min_interval` per check — while a real worsening is never held
back and the last announced status always catches up with a lasting one.

Events are plain dicts (see HEALTH.md, "Alarm events") that the daemon puts into the outbox with
kind "event" at EVENT priority. The announced statuses can be kept in a state file (atomically)
so that a restart neither repeats alarms nor forgets to clear them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from agent.check_settings import AlarmSettings
from agent.checks.framework import CheckResult, Status, utc_now
from agent.model import format_timestamp, parse_timestamp
from agent.storage.atomic import PRIVATE_DIR_MODE, ensure_dir, write_atomic


@dataclass
class _Track:
    family: str
    announced: Status = Status.OK
    candidate: Status | None = None
    streak: int = 0
    candidate_since: datetime | None = None
    last_alarm_at: datetime | None = None


def alarm_event(
    result: CheckResult, previous: Status, status: Status, at: datetime, reason: str | None = None
) -> dict[str, Any]:
    if status is Status.OK:
        action = "cleared"
    elif previous is Status.OK:
        action = "raised"
    else:
        action = "changed"
    return {
        "type": "alarm",
        "action": action,
        "check": result.id,
        "family": result.family,
        "status": status.value,
        "previous": previous.value,
        "value": result.value,
        "unit": result.unit,
        "threshold": result.threshold,
        "message": reason or result.message,
        "since": format_timestamp(result.since),
        "at": format_timestamp(at),
    }


class AlarmTracker:
    """Turns check results into alarm events, following the rule above."""

    def __init__(self, settings: AlarmSettings | None = None, state_path: Path | None = None):
        self.settings = settings or AlarmSettings()
        self.state_path = state_path
        self._tracks: dict[str, _Track] = {}
        self.held_back = 0  # confirmed changes that waited for min_interval

    @property
    def announced(self) -> dict[str, Status]:
        return {i: t.announced for i, t in self._tracks.items()}

    def update(
        self, results: Iterable[CheckResult], now: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Feed one round of results; returns the alarm events to publish now."""
        events = []
        for r in results:
            event = self._update_one(r, now or r.checked_at)
            if event is not None:
                events.append(event)
        if events:
            self.save()
        return events

    def _update_one(self, r: CheckResult, now: datetime) -> dict[str, Any] | None:
        track = self._tracks.setdefault(r.id, _Track(r.family))
        s, cfg = r.status, self.settings
        if s is Status.UNKNOWN:
            return None
        if s is track.announced:
            track.candidate, track.streak, track.candidate_since = None, 0, None
            return None
        if s is track.candidate:
            track.streak += 1
        else:
            track.candidate, track.streak, track.candidate_since = s, 1, r.checked_at
        worse = s.severity > track.announced.severity
        confirmed = track.streak >= (cfg.raise_after if worse else cfg.clear_after)
        if not confirmed and cfg.confirm_after is not None and track.candidate_since is not None:
            confirmed = r.checked_at - track.candidate_since >= timedelta(seconds=cfg.confirm_after)
        if not confirmed:
            return None
        last = track.last_alarm_at
        if not worse and last is not None and now - last < timedelta(seconds=cfg.min_interval):
            self.held_back += 1
            return None
        event = alarm_event(r, track.announced, s, now)
        track.announced, track.last_alarm_at = s, now
        track.candidate, track.streak, track.candidate_since = None, 0, None
        return event

    def retire(
        self, current_ids: Iterable[str], now: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Forget checks that no longer exist (after a reload); clears their standing alarms."""
        now = now or utc_now()
        keep = set(current_ids)
        events = []
        for check_id in [i for i in self._tracks if i not in keep]:
            track = self._tracks.pop(check_id)
            if track.announced is not Status.OK:
                gone = CheckResult(check_id, track.family, Status.OK, None, "", None, "", now, now)
                events.append(
                    alarm_event(gone, track.announced, Status.OK, now, "the check was removed")
                )
        if events:
            self.save()
        return events

    # -- persistence -----------------------------------------------------------------------

    def load(self) -> None:
        """Take the announced statuses of the last run (absent or damaged file: start clean)."""
        if self.state_path is None:
            return
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
            tracks = {
                check_id: _Track(
                    str(entry["family"]),
                    Status(entry["announced"]),
                    last_alarm_at=parse_timestamp(entry["last_alarm_at"])
                    if entry.get("last_alarm_at")
                    else None,
                )
                for check_id, entry in data["checks"].items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return
        self._tracks = tracks

    def save(self) -> None:
        """Write the non-ok announced statuses (only they matter after a restart)."""
        if self.state_path is None:
            return
        body = {
            "checks": {
                check_id: {
                    "family": t.family,
                    "announced": t.announced.value,
                    "last_alarm_at": format_timestamp(t.last_alarm_at) if t.last_alarm_at else None,
                }
                for check_id, t in self._tracks.items()
                if t.announced is not Status.OK
            }
        }
        # Normally state/ (StateLayout.alarms), made 0700 at start by record_start; a folder a
        # caller named keeps its mode.
        ensure_dir(self.state_path.parent, PRIVATE_DIR_MODE, tighten=False)
        write_atomic(self.state_path, json.dumps(body, indent=1).encode())
