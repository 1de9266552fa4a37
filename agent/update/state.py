"""The update state machine's record: `state_dir/update/state.json`, one writer at a time.

Every side reads and writes the record through `UpdateStore` (docs/updates.md, "The installer"):
root's `update apply` / `rollback` and the unit hooks, and the unprivileged agent (its gate
commits; it marks outcomes reported). Each change is a transaction: `with store.edit() as
record:` takes the flock, reads the record, lets the caller change it, then writes it atomically
(temp file, fsync, rename, folder fsync). Root's writes keep the agent as the file's owner (the
folder's owner), so the agent can always read and edit what root wrote.

The `active` marker file exists while an update is under way (staging or trial, or a switch or
rollback whose links are not all made yet: `step` set) and holds the version of the known-good
release whose `edge-agent update hook …` the unit hooks run; the `starts` file holds one boot
id per start on trial. Both are derived from the record by `UpdateStore.edit` itself, so they
never disagree with it.

Stdlib only (the hooks run it on every start of a release on trial; it must start fast).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from agent.model import format_timestamp, parse_timestamp
from agent.storage.atomic import fsync_dir, write_atomic
from agent.storage.layout import StateLayout

SCHEMA = 1
MAX_OUTCOMES = 50  # the oldest reported outcomes go first; unreported ones are never dropped
MAX_REFUSED = 20
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")

State = Literal["idle", "staging", "trial", "committed", "rolled_back"]
Step = Literal["verify", "stage", "switch", "restart", "trial"]
Outcome = Literal["installed", "committed", "rolled_back", "rejected"]
STATES: tuple[State, ...] = ("idle", "staging", "trial", "committed", "rolled_back")
UNDER_WAY: tuple[State, ...] = ("staging", "trial")


def now_iso(at: datetime | None = None) -> str:
    """UTC, RFC 3339 with a Z, to the second (what the record and the events carry)."""
    return format_timestamp(at or datetime.now(UTC), "seconds")


def ends_at(start: datetime, seconds: float) -> str:
    """`start + seconds` as the record writes it, rounded *up* to the second: a window is never
    shorter than it was given (cut to the second, a 5 s probation lasted 4.2 s)."""
    end = start + timedelta(seconds=seconds)
    if end.microsecond:
        end += timedelta(microseconds=1_000_000 - end.microsecond)
    return now_iso(end)


def boot_id(path: Path = BOOT_ID_FILE) -> str:
    """The kernel's id of this boot: a new one after every reboot (a power cut among them)."""
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return "unknown"


def empty_record() -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "state": "idle",
        "step": None,
        "current": None,
        "previous": None,
        "target": None,
        "trial_ends_at": None,
        "trial_boot_id": None,
        "baseline": None,
        "gate_failed": None,
        "watchdog": None,
        "last": None,
        "outcomes": [],
        "refused": [],
    }


class StateError(Exception):
    """The record cannot be read (corrupt JSON, another schema): a one-line reason."""


@dataclass(frozen=True, slots=True)
class UpdateStore:
    """The record and its two marker files under `layout.update_dir`."""

    layout: StateLayout

    # -- reading ------------------------------------------------------------------------------

    def read(self) -> dict[str, Any]:
        """The record as it is now (no lock: one atomic file); an empty one if none yet."""
        path = self.layout.update_state
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return empty_record()
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            record = json.loads(data)
        except ValueError as exc:
            raise StateError(f"{path} is not JSON ({exc}); move it aside to start over") from exc
        if not isinstance(record, dict) or record.get("schema") != SCHEMA:
            raise StateError(f"{path}: not an update record of schema {SCHEMA}")
        merged = empty_record()
        merged.update(record)
        return merged

    def summary(self) -> dict[str, Any]:
        """What `update status --json`, `status` and the health report show."""
        return summarise(self.read())

    def starts_this_boot(self, boot: str | None = None) -> int:
        """Starts on trial recorded in this boot (pre-start adds one line per start)."""
        boot = boot or boot_id()
        try:
            lines = self.layout.update_starts.read_text(encoding="ascii").split()
        except OSError:
            return 0
        return sum(1 for line in lines if line == boot)

    # -- changing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The flock every writer of the record holds (blocking: the holders are quick)."""
        folder = self.layout.update_dir
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.layout.update_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            _give_to_folder_owner(self.layout.update_lock)
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        """Read, change (the caller), write: all under the lock; nothing written on an error."""
        with self.lock():
            record = self.read()
            before = copy.deepcopy(record)
            yield record
            if record != before:
                self._write(record)

    def add_starts(self, boot: str | None = None) -> int:
        """Record a start on trial; the starts in this boot, this one included."""
        boot = boot or boot_id()
        with self.lock():
            path = self.layout.update_starts
            with path.open("a", encoding="ascii") as stream:
                stream.write(boot + "\n")
                stream.flush()
                os.fsync(stream.fileno())
            _give_to_folder_owner(path)
            return self.starts_this_boot(boot)

    def _write(self, record: dict[str, Any]) -> None:
        record["outcomes"] = _bounded(record["outcomes"])
        record["refused"] = record["refused"][-MAX_REFUSED:]
        path = self.layout.update_state
        data = json.dumps(record, indent=2, sort_keys=True).encode() + b"\n"
        write_atomic(path, data)
        _give_to_folder_owner(path)
        self._sync_markers(record)

    def _sync_markers(self, record: dict[str, Any]) -> None:
        """`active` holds the good version while an update is under way; `starts` is trial's."""
        active = self.layout.update_active
        if record["state"] in UNDER_WAY or record["step"] is not None:
            good = record["previous"] if record["state"] == "trial" else record["current"]
            wanted = f"{good or ''}\n".encode()
            try:
                same = active.read_bytes() == wanted
            except OSError:
                same = False
            if not same:
                write_atomic(active, wanted)
                _give_to_folder_owner(active)
        else:
            for path in (active, self.layout.update_starts):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            fsync_dir(self.layout.update_dir)
        if record["state"] != "trial":
            with contextlib.suppress(FileNotFoundError):
                self.layout.update_starts.unlink()


def summarise(record: dict[str, Any]) -> dict[str, Any]:
    """The summary of a record (`UpdateStore.summary`) when the record is already read."""
    return {
        "schema": SCHEMA,
        "state": record["state"],
        "current": record["current"],
        "previous": record["previous"],
        "trial_ends_at": record["trial_ends_at"] if record["state"] == "trial" else None,
        "last": record["last"],
    }


def add_outcome(
    record: dict[str, Any],
    outcome: Outcome,
    version: str | None,
    reason: str,
    *,
    running: str | None = None,
    check: str | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Append an outcome (unreported) and make it `last`; returns it.

    `version` is the release the outcome is about (the one installed, committed, rolled back or
    rejected); `running` the version running once it happened (default: the record's current).
    """
    entry = {
        "id": max((o.get("id", 0) for o in record["outcomes"]), default=0) + 1,
        "outcome": outcome,
        "version": version,
        "running": running if running is not None else record.get("current"),
        "reason": reason,
        "at": now_iso(),
        "check": check,
        "timings": timings or {},
        "reported": False,
    }
    record["outcomes"].append(entry)
    record["last"] = {k: entry[k] for k in ("outcome", "version", "reason", "at")}
    return entry


def unreported(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in record["outcomes"] if not o.get("reported")]


def _bounded(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most MAX_OUTCOMES, dropping the oldest *reported* ones first."""
    excess = len(outcomes) - MAX_OUTCOMES
    if excess <= 0:
        return outcomes
    kept = []
    for entry in outcomes:
        if excess > 0 and entry.get("reported"):
            excess -= 1
            continue
        kept.append(entry)
    return kept


def _give_to_folder_owner(path: Path) -> None:
    """Root writing in the agent's folder: the file goes to the folder's owner (no-op otherwise)."""
    if os.geteuid() != 0:
        return
    folder = path.parent.stat()
    with contextlib.suppress(FileNotFoundError):
        st = path.stat()
        if (st.st_uid, st.st_gid) != (folder.st_uid, folder.st_gid):
            os.chown(path, folder.st_uid, folder.st_gid)


def describe(summary: dict[str, Any], now: datetime | None = None) -> str:
    """The state for people: "committed 0.2.0", "on trial 0.3.0, 7m12s left", "rolled back …".

    `update status` prints it; `status` colours it by state.
    """
    state, current, last = summary["state"], summary.get("current"), summary.get("last") or {}
    if state == "trial":
        ends = summary.get("trial_ends_at")
        left = (parse_timestamp(ends) - (now or datetime.now(UTC))).total_seconds() if ends else 0.0
        return (
            f"on trial {current}, {_left(left)} left"
            if left > 0
            else f"on trial {current}, probation over"
        )
    if state == "committed":
        return f"committed {current}"
    if state == "rolled_back":
        return f"rolled back {last.get('version')}: {last.get('reason')}"
    if state == "staging":
        return f"staging an update (running {current})"
    return f"no update yet (running {current})" if current else "no update yet"


def _left(seconds: float) -> str:
    seconds_left = max(0, int(seconds))
    hours, rest = divmod(seconds_left, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
