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
kind "event" at EVENT priority. A status is *said* once its event is made (the hysteresis works
on what was said, so a change is never proposed twice) and *announced* only once that event is
stored (`stored`): only announced statuses are kept in the state file (atomically), so that a
restart neither repeats alarms nor forgets to clear them — and an alarm whose event never got
stored (a full disk, an agent stopped first) is raised again rather than forgotten. An event the
outbox gave up (`not_stored`) is handed out again, unchanged (its original time), by the next
`update`.
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


@dataclass(slots=True)  # one per check: three a terminal
class _Track:
    family: str
    announced: Status = Status.OK  # the last status whose event is stored (what upstream knows)
    said: Status = Status.OK  # the last status an event was made for (stored or on its way)
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
        self._unsent: list[dict[str, Any]] = []  # events the outbox gave up: handed out again
        self.held_back = 0  # confirmed changes that waited for min_interval
        self.dirty = False  # announced statuses changed since the last save

    @property
    def announced(self) -> dict[str, Status]:
        """Each check's status whose event is stored."""
        return {i: t.announced for i, t in self._tracks.items()}

    def update(
        self, results: Iterable[CheckResult], now: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Feed one round of results; returns the alarm events to store now (events given up
        before come first, unchanged). Report each one's fate with `stored` or `not_stored`."""
        events, self._unsent = self._unsent, []
        for r in results:
            event = self._update_one(r, now or r.checked_at)
            if event is not None:
                events.append(event)
        return events

    def stored(self, event: dict[str, Any]) -> None:
        """`event` is durable in the outbox: its status is announced (`save` keeps it)."""
        track = self._tracks.get(str(event["check"]))
        if track is not None:
            track.announced = Status(event["status"])
            self.dirty = True

    def not_stored(self, event: dict[str, Any]) -> None:
        """The outbox gave `event` up: the next `update` hands it out again, as it is."""
        self._unsent.append(event)

    def _update_one(self, r: CheckResult, now: datetime) -> dict[str, Any] | None:
        track = self._tracks.setdefault(r.id, _Track(r.family))
        s, cfg = r.status, self.settings
        if s is Status.UNKNOWN:
            return None
        if s is track.said:
            track.candidate, track.streak, track.candidate_since = None, 0, None
            return None
        if s is track.candidate:
            track.streak += 1
        else:
            track.candidate, track.streak, track.candidate_since = s, 1, r.checked_at
        worse = s.severity > track.said.severity
        confirmed = track.streak >= (cfg.raise_after if worse else cfg.clear_after)
        if not confirmed and cfg.confirm_after is not None and track.candidate_since is not None:
            confirmed = r.checked_at - track.candidate_since >= timedelta(seconds=cfg.confirm_after)
        if not confirmed:
            return None
        last = track.last_alarm_at
        if not worse and last is not None and now - last < timedelta(seconds=cfg.min_interval):
            self.held_back += 1
            return None
        event = alarm_event(r, track.said, s, now)
        track.said, track.last_alarm_at = s, now
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
            self.dirty = True
            if track.said is not Status.OK:
                gone = CheckResult(check_id, track.family, Status.OK, None, "", None, "", now, now)
                events.append(
                    alarm_event(gone, track.said, Status.OK, now, "the check was removed")
                )
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
        """Write the non-ok announced statuses now (only they matter after a restart)."""
        self.write_state(self.take_state())

    def take_state(self) -> bytes:
        """The state file's content as of now (on the loop: the tracks are the loop's), and
        `dirty` cleared; if writing it fails, set `dirty` again so a later save retries."""
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
        self.dirty = False
        return json.dumps(body, indent=1).encode()

    def write_state(self, data: bytes) -> None:
        """Write what `take_state` gave (any thread); OSError if it cannot (a full disk)."""
        if self.state_path is None:
            return
        # Normally state/ (StateLayout.alarms), made 0700 at start by record_start; a folder a
        # caller named keeps its mode.
        ensure_dir(self.state_path.parent, PRIVATE_DIR_MODE, tighten=False)
        write_atomic(self.state_path, data)
