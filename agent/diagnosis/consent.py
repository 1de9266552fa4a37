"""The site owner's consent: a time-boxed window, `state_dir/diagnosis/consent.json`.

`edge-agent diag grant --minutes N [--by NAME] [--actions A,B]` (through the running agent:
`Operations.diag_grant`) opens a window; `diag revoke` closes it; `diag status` shows it. The
file is `{"granted_by", "granted_at", "until", "actions": null | [...]}` (times in RFC 3339
UTC), written atomically and privately; a revoke removes it. A file that cannot be read, or a
window that has ended, is no consent. docs/diagnosis.md, "Consent".
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from agent.diagnosis.settings import ACTION_NAMES
from agent.model import format_timestamp, parse_timestamp
from agent.storage.atomic import ensure_dir, fsync_dir, write_atomic
from agent.storage.layout import StateLayout

log = structlog.get_logger(__name__)

MIN_MINUTES, MAX_MINUTES = 1, 24 * 60


def _stamp(unix: float) -> str:
    return format_timestamp(datetime.fromtimestamp(unix, UTC), "seconds")


def _unix(text: object) -> float:
    if not isinstance(text, str):
        raise ValueError("a time in RFC 3339 is required")
    return parse_timestamp(text).timestamp()


@dataclass(frozen=True, slots=True)
class Consent:
    """One window: who opened it, when, until when, for which actions (None: all)."""

    granted_by: str
    granted_at: float
    until: float
    actions: tuple[str, ...] | None

    def open_at(self, now: float) -> bool:
        return self.granted_at - 300 <= now < self.until  # 5 min slack for a clock step

    def covers(self, action: str) -> bool:
        return self.actions is None or action in self.actions

    def to_dict(self) -> dict[str, Any]:
        return {
            "granted_by": self.granted_by,
            "granted_at": _stamp(self.granted_at),
            "until": _stamp(self.until),
            "actions": list(self.actions) if self.actions is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Consent:
        by = data.get("granted_by")
        if not isinstance(by, str):
            raise ValueError("granted_by: a string is required")
        actions = data.get("actions")
        if actions is not None and (
            not isinstance(actions, list) or not all(isinstance(a, str) for a in actions)
        ):
            raise ValueError("actions: null or a list of action names is required")
        return cls(
            by,
            _unix(data.get("granted_at")),
            _unix(data.get("until")),
            tuple(actions) if actions is not None else None,
        )


def consent_event(change: str, consent: Consent | None, by: str) -> dict[str, Any]:
    """The event that goes upstream for a grant or a revoke."""
    return {
        "type": "consent",
        "change": change,
        "by": by,
        "until": _stamp(consent.until) if consent is not None else None,
        "actions": list(consent.actions) if consent and consent.actions is not None else None,
    }


def parse_actions(names: Iterable[str] | None) -> tuple[str, ...] | None:
    """The actions a grant covers (None: all), checked against the allow-list; ValueError."""
    if names is None:
        return None
    chosen = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
    unknown = sorted(set(chosen) - ACTION_NAMES)
    if unknown:
        raise ValueError(
            f"unknown actions {', '.join(unknown)} (known: {', '.join(sorted(ACTION_NAMES))})"
        )
    if not chosen:
        raise ValueError("actions: name at least one action, or leave it out for all")
    return chosen


class ConsentStore:
    """Reads and writes the consent file of one state folder."""

    def __init__(self, layout: StateLayout) -> None:
        self.layout = layout
        self.path = layout.diagnosis_consent
        self._complained: str | None = None

    def read_any(self) -> Consent | None:
        """The window on file, open or not; None when there is none or it cannot be read."""
        try:
            data = json.loads(self.path.read_bytes())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            consent = Consent.from_dict(data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            if self._complained != str(exc):
                self._complained = str(exc)
                log.warning(
                    "consent file unreadable: no consent", path=str(self.path), error=str(exc)
                )
            return None
        self._complained = None
        return consent

    def read(self, now: float | None = None) -> Consent | None:
        """The open window, or None."""
        consent = self.read_any()
        if consent is None or not consent.open_at(time.time() if now is None else now):
            return None
        return consent

    def allows(self, action: str, now: float | None = None) -> bool:
        consent = self.read(now)
        return consent is not None and consent.covers(action)

    def grant(
        self,
        minutes: int,
        by: str,
        actions: Iterable[str] | None = None,
        now: float | None = None,
    ) -> Consent:
        """Open a window of `minutes` (1 to 1440) from now; replaces any window. ValueError."""
        if isinstance(minutes, bool) or not isinstance(minutes, int):
            raise ValueError("minutes: a whole number is required")
        if not MIN_MINUTES <= minutes <= MAX_MINUTES:
            raise ValueError(f"minutes: {MIN_MINUTES} to {MAX_MINUTES} (24 hours)")
        by = by.strip()
        if not by or len(by) > 64 or not by.isprintable():
            raise ValueError("by: a name of 1 to 64 printable characters is required")
        start = time.time() if now is None else now
        consent = Consent(by, start, start + minutes * 60, parse_actions(actions))
        ensure_dir(self.layout.diagnosis_dir)
        body = json.dumps(consent.to_dict(), indent=2) + "\n"
        write_atomic(self.path, body.encode())
        return consent

    def revoke(self, now: float | None = None) -> Consent | None:
        """Close the window; the one that was open (None: there was none)."""
        consent = self.read(now)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
            fsync_dir(self.path.parent)
        return consent


def consent_state(mode: str, consent: Consent | None) -> dict[str, Any]:
    """What status shows: `{"consent": mode, "window": {...} | null}`."""
    return {"consent": mode, "window": consent.to_dict() if consent is not None else None}
