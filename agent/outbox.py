"""The durable store-and-forward queue: signed messages wait here until the broker acks them.

Rules: a message is signed and given its `seq` in the transaction that stores it, so what is
stored is exactly what is sent, and `put` returns only once that transaction is durable. A
message leaves only through `ack` (the broker's PUBACK) or, for telemetry only, eviction by
the byte budget or the age limit, which is counted persistently and logged. Alarms/events and
health are never evicted.

Compression (`compression`, per kind: telemetry and meta as `telemetry.compression` says) is
applied to the envelope before it is signed, in the same worker thread (agent/signing.py).

Durability (`synchronous`): the database runs in WAL mode. With ``"full"`` (the default) every
commit fsyncs the WAL, so a message acknowledged by `put` survives a power cut. ``"normal"``
fsyncs only at checkpoints: still safe against a crash or kill -9 of the agent, but a power cut
may lose the last transactions (never corrupts). Batching (`put_many`, or `AsyncOutbox`, which
joins concurrent puts into one transaction) pays one fsync for many messages.

`seq` never goes back and never repeats for a different message. It is kept in the database and
updated in the transaction that uses it (contiguous across restarts and crashes). It is also
*reserved* in blocks in a small state file ``<db>.seq`` (written atomically) before any seq past
the reservation is used; if the database is lost or corrupt, the fresh one continues after the
reservation, so upstream sees a gap (a loss, reported) and never a repeat. Only if the state file
is gone too does seq restart from a clock floor (milliseconds since the epoch), a last resort.

A full disk is a state, not a crash. The outbox keeps a reserve: a file ``<db>.reserve`` of
`reserve_bytes` (4 MiB by default) allocated on the disk (posix_fallocate) while there is room.
When a write finds the disk full, the outbox enters the *disk full* state: telemetry is refused
(`OutboxFull`; the writer counts its readings as lost, never the reserve's space), while
acknowledgements, events, health reports and the loss record release the reserve a quarter at
a time and are tried again, so they are still written. The database is opened the same way:
a start on a full disk uses the reserve (or, with none left, runs without the database and
opens it once there is room). Every call checks, at most once per `probe_interval`, whether
the disk has room again (the reserve and as much again free); then the reserve is re-made and
telemetry accepted. Readings given up anywhere (the writer tells `note_lost`) are counted per
terminal (agent/losses.py), kept with the counters, and reported upstream as one loss event in
the first transaction that stores messages outside the disk full state: the event and the reset
of the count commit together, so a loss is reported exactly once.

Threads: one SQLite connection guarded by a lock; every method may be called from any thread
(`asyncio.to_thread`). `AsyncOutbox` is the face for the event loop. One process owns an
outbox at a time (an exclusive lock on ``<db>.lock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import fcntl
import json
import math
import os
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import structlog

from agent.losses import LossLedger, loss_event
from agent.model import format_timestamp
from agent.signing import encode_body, envelope_from_encoded, utc_stamp
from agent.storage import sqlite as db
from agent.storage.atomic import (
    STATE_DIR_MODE,
    ensure_dir,
    open_private,
    remove_stale_temps,
    write_atomic,
)

log = structlog.get_logger(__name__)

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Room kept on the disk for acknowledgements, events, health and the loss record.
DEFAULT_RESERVE_BYTES = 4 * 1024 * 1024
RESERVE_SUFFIX = ".reserve"  # the reserve file beside the database: outbox.db.reserve
MIN_RESERVE_BYTES = 256 * 1024
PROBE_INTERVAL = 1.0  # while the disk is full, look for room again at most this often
LOSS_SAVE_INTERVAL = 30.0  # losses counted while nothing else is stored are saved this often
# seq values reserved in the state file at a time: one atomic file write per this many
# messages, and at most this big a jump of seq after the database is lost.
SEQ_BLOCK = 10_000
WARN_INTERVAL = 60.0  # at most one eviction warning per this many seconds
# Messages stamped before this are not aged out: the gateway's clock was not set yet (no RTC),
# and an NTP step would otherwise make them all look ancient at once.
CLOCK_SANE_AFTER = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
_KIND = re.compile(r"^[a-z][a-z0-9_-]*(?:/[a-z][a-z0-9_-]*)*$")

Synchronous = Literal["full", "normal"]
T = TypeVar("T")
Item = tuple[str, Any, "Priority"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    priority INTEGER NOT NULL,
    created_at REAL NOT NULL,
    size INTEGER NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL
);
-- entries are (priority, rowid=seq): the order of pending() and of eviction
CREATE INDEX IF NOT EXISTS messages_by_priority ON messages (priority);
CREATE INDEX IF NOT EXISTS messages_by_age ON messages (priority, created_at);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
INSERT OR IGNORE INTO counters (name, value)
    VALUES ('seq', 0), ('evicted', 0), ('evicted_bytes', 0), ('last_evicted_at', NULL);
"""
# The schema's history, oldest first (agent.storage.sqlite.migrate): append, never edit.
# Readings given up and not reported yet (agent/losses.py, as JSON), and how many were reported.
_LOSSES = """
INSERT OR IGNORE INTO counters (name, value) VALUES ('lost', NULL), ('lost_reported', 0);
"""
MIGRATIONS: list[db.Migration] = [_SCHEMA, _LOSSES]
SCHEMA_VERSION = len(MIGRATIONS)


class Priority(enum.IntEnum):
    """Lower goes first. Only TELEMETRY is ever evicted."""

    EVENT = 0  # alarms, update results, audit events, diagnosis answers
    HEALTH = 1
    TELEMETRY = 2


# The name of each priority's queue where counts are shown (status, health, metrics).
QUEUE_NAMES: dict[Priority, str] = {
    Priority.EVENT: "events",
    Priority.HEALTH: "health",
    Priority.TELEMETRY: "telemetry",
}


class Signer(Protocol):
    def sign_compact(self, payload: bytes, compress: str | None = None) -> str: ...


class OutboxError(Exception):
    """The outbox cannot be opened or written (disk, permissions, another owner)."""


class OutboxFull(OutboxError):
    """The disk is full: telemetry is refused (acks, events and health still use the reserve)."""


class OutboxCorruptError(OutboxError):
    """The database turned out damaged while open: `close()` and `open()` set it aside."""


@dataclass(frozen=True, slots=True)
class Message:
    """One stored message. `payload` is the JWS to publish on ``{topic_prefix}/{kind}``."""

    id: int  # what to pass to `ack`; equal to seq
    seq: int
    kind: str
    priority: Priority
    payload: str
    size: int  # bytes of payload
    created_at: float  # POSIX time it entered the outbox


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """The outbox at a glance (status, health report)."""

    events: int
    health: int
    telemetry: int
    bytes: int  # of stored payloads (the database file is larger: pages, indexes, WAL)
    max_bytes: int
    oldest_age: float | None  # seconds since the oldest waiting message entered
    evicted: int  # telemetry messages evicted, counted in the database (kept across restarts)
    evicted_bytes: int
    last_evicted_at: datetime | None
    over_budget: bool  # over max_bytes with no telemetry left to evict
    last_seq: int
    recovered_from: Path | None  # where a damaged database was set aside at open
    disk_full: bool = False  # telemetry refused; acks, events, health use the reserve
    opened: bool = True  # False: the disk was full at start, the database opens once there is room
    full_since: datetime | None = None
    reserve_bytes: int = 0  # allocated now
    reserve_target: int = 0  # what it is re-made to
    lost: LossLedger = field(default_factory=LossLedger)  # given up, not reported yet
    lost_reported: int = 0  # readings reported lost upstream (loss events), ever
    lost_counted: Mapping[str, int] = field(default_factory=dict)  # per terminal, since open

    @property
    def state(self) -> str:
        """ok · disk full (read-only: draining, telemetry refused) · unavailable (not open)."""
        if not self.opened:
            return "unavailable"
        return "disk full" if self.disk_full else "ok"

    @property
    def messages(self) -> int:
        return self.events + self.health + self.telemetry

    @property
    def per_priority(self) -> tuple[int, int, int]:
        """Counts in Priority order (events, health, telemetry)."""
        return (self.events, self.health, self.telemetry)

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": dict(zip(QUEUE_NAMES.values(), self.per_priority, strict=True)),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "oldest_age": self.oldest_age,
            "evicted": self.evicted,
            "evicted_bytes": self.evicted_bytes,
            "last_evicted_at": (
                format_timestamp(self.last_evicted_at) if self.last_evicted_at else None
            ),
            "over_budget": self.over_budget,
            "last_seq": self.last_seq,
            "recovered_from": str(self.recovered_from) if self.recovered_from else None,
            "state": self.state,
            "full_since": format_timestamp(self.full_since) if self.full_since else None,
            "reserve": {"bytes": self.reserve_bytes, "target": self.reserve_target},
            "lost": self.lost.to_dict(),
            "lost_reported": self.lost_reported,
        }


def read_stats(
    path: Path, max_bytes: int, reserve_target: int = 0, now: float | None = None
) -> OutboxStats | None:
    """The statistics of an outbox nobody need own, read-only (`edge-agent check` with no agent
    running, `status` and `outbox` when none answers): what waits, since when, the eviction
    counters, the readings lost and not reported yet; None when there is no database. What only
    a running agent knows (the disk-full state) is left at its default. Raises OutboxError when
    it cannot be read (damaged, not ours to read)."""
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=1.0)
        try:
            waiting = {
                priority: (count, size or 0, oldest)
                for priority, count, size, oldest in conn.execute(
                    "SELECT priority, count(*), sum(size), min(created_at) FROM messages "
                    "GROUP BY priority"
                )
            }
            counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        finally:
            conn.close()
        lost = LossLedger.from_dict(json.loads(counters["lost"])) if counters.get("lost") else None
    except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
        raise OutboxError(f"cannot read {path}: {exc}") from exc
    count = {p: waiting.get(int(p), (0, 0, None))[0] for p in Priority}
    total = sum(size for _, size, _ in waiting.values())
    oldest = min((t for _, _, t in waiting.values() if t is not None), default=None)
    evicted_at = counters.get("last_evicted_at")
    clock = time.time() if now is None else now
    reserve = path.with_name(path.name + RESERVE_SUFFIX)
    return OutboxStats(
        events=count[Priority.EVENT],
        health=count[Priority.HEALTH],
        telemetry=count[Priority.TELEMETRY],
        bytes=total,
        max_bytes=max_bytes,
        oldest_age=max(0.0, clock - oldest) if oldest is not None else None,
        evicted=int(counters.get("evicted") or 0),
        evicted_bytes=int(counters.get("evicted_bytes") or 0),
        last_evicted_at=(
            datetime.fromtimestamp(float(evicted_at), UTC) if evicted_at is not None else None
        ),
        over_budget=total > max_bytes and not count[Priority.TELEMETRY],
        last_seq=int(counters.get("seq") or 0),
        recovered_from=None,
        reserve_bytes=reserve.stat().st_size if reserve.exists() else 0,
        reserve_target=reserve_target,
        lost=lost or LossLedger(),
        lost_reported=int(counters.get("lost_reported") or 0),
    )


@dataclass
class _Eviction:
    count: int = 0
    bytes: int = 0


class Outbox:
    """Durable, bounded, prioritized queue of signed messages. `open()` before use."""

    def __init__(
        self,
        path: Path,
        signer: Signer,
        gateway_id: str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age: float | None = None,
        synchronous: Synchronous = "full",
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        seq_block: int = SEQ_BLOCK,
        warn_interval: float = WARN_INTERVAL,
        clock: Callable[[], float] = time.time,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        probe_interval: float = PROBE_INTERVAL,
        compression: Mapping[str, str] | None = None,
    ) -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        if reserve_bytes < MIN_RESERVE_BYTES:
            raise ValueError(f"reserve_bytes must be at least {MIN_RESERVE_BYTES}")
        self.path = Path(path)
        self.seq_path = self.path.with_name(self.path.name + ".seq")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.reserve_path = self.path.with_name(self.path.name + RESERVE_SUFFIX)
        self.reserve_bytes = reserve_bytes
        self.probe_interval = probe_interval
        # kind -> how its payloads are compressed before signing (signing.COMPRESSIONS).
        self.compression = dict(compression or {})
        self.signer = signer
        self.gateway_id = gateway_id
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.synchronous = synchronous
        self.max_message_bytes = max_message_bytes
        self.seq_block = seq_block
        self.warn_interval = warn_interval
        self.clock = clock
        self.recovered_from: Path | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._lock = threading.Lock()
        self._last_seq = 0
        self._reserved = 0
        self._count = [0, 0, 0]
        self._bytes = [0, 0, 0]
        self._evicted = 0
        self._evicted_bytes = 0
        self._last_evicted_at: float | None = None
        self._over_budget = False
        self._warned_at: dict[str, float] = {}
        self._unwarned = _Eviction()
        # The disk full state (module docstring); `_deferred`: not open for want of room.
        self._full = False
        self._full_since: float | None = None
        self._deferred = False
        self._probed_at = -math.inf
        # Losses: counted (from any thread) and not saved yet · saved in the counters.
        self._loss_lock = threading.Lock()
        self._lost_new = LossLedger()
        self._lost_stored = LossLedger()
        self._lost_reported = 0
        self._lost_counted: Counter[str] = Counter()

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the database; a damaged one is set aside and a fresh one started."""
        with self._lock:
            if self._conn is not None:
                raise OutboxError(f"{self.path}: already open")
            # The folder may be state_dir (created 0750 as the package does) or one a caller
            # named: an existing one keeps its mode.
            ensure_dir(self.path.parent, STATE_DIR_MODE, tighten=False)
            self._take_ownership()
            try:
                remove_stale_temps(self.seq_path)
                self._open_or_defer()
            except BaseException:
                self._release_ownership()
                raise

    def _open_or_defer(self) -> None:
        """Open, using the reserve if the disk is full; with none left, run unopened (the
        disk full state) and open once there is room. Then make the reserve if missing."""
        try:
            self._with_reserve(self._open_locked, privileged=True)
        except OutboxError as exc:
            if not db.is_disk_full(exc):
                raise
            self._deferred = True
            log.error(
                "disk full: the outbox cannot be opened yet; running on, telemetry counted as "
                "lost, opening it once there is room",
                path=str(self.path),
                error=str(exc),
            )
            return
        self._deferred = False
        # At start, as when leaving the state: room for the reserve and as much again, or
        # the disk counts as full (no flapping on a disk that is full but for a WAL's worth).
        if not self._full and (not self._make_reserve() or self._free_bytes() < self.reserve_bytes):
            self._enter_full(None)

    def _open_locked(self) -> None:
        reserved, had_reservation = self._read_reservation()
        stamp = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y%m%dT%H%M%SZ")
        try:
            opened = db.open_database(
                self.path,
                MIGRATIONS,
                aside_label=f"corrupt-{stamp}",
                synchronous=self.synchronous,
                journal_size_limit=64 * 1024 * 1024,  # truncate the WAL after use
            )
        except db.StorageError as exc:
            raise OutboxError(str(exc)) from exc
        conn, fresh = opened.conn, opened.previous_version == 0
        recovered = opened.set_aside is not None
        if opened.set_aside is not None:
            self.recovered_from = opened.set_aside
            log.error(
                "outbox database damaged: set aside, starting a fresh outbox",
                path=str(self.path),
                kept_as=str(opened.set_aside),
                reason=opened.reason,
            )
        self._conn = conn
        try:
            with self._sqlite_errors():
                self._load_state(conn, fresh and (had_reservation or recovered), reserved)
        except BaseException:
            self._conn = None
            conn.close()
            raise
        log.info("outbox open", path=str(self.path), last_seq=self._last_seq, **self._summary())

    def _load_state(
        self, conn: sqlite3.Connection, seq_was_used: bool, reserved: int | None
    ) -> None:
        """Counters from the database; a new database where seq was in use continues it."""
        self._count = [0, 0, 0]
        self._bytes = [0, 0, 0]
        counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        last_seq = int(counters["seq"])
        if seq_was_used:
            last_seq = self._restart_seq(reserved)
            conn.execute("UPDATE counters SET value = ? WHERE name = 'seq'", (last_seq,))
        self._last_seq = last_seq
        self._evicted = int(counters["evicted"])
        self._evicted_bytes = int(counters["evicted_bytes"])
        self._lost_reported = int(counters.get("lost_reported") or 0)
        self._lost_stored = LossLedger()
        if counters.get("lost"):
            try:
                self._lost_stored = LossLedger.from_dict(json.loads(counters["lost"]))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("outbox loss record unreadable; its count is lost", error=str(exc))
        at = counters["last_evicted_at"]
        self._last_evicted_at = float(at) if at is not None else None
        self._reserved = reserved if reserved is not None else -1
        if self._reserved < last_seq:
            self._reserve(last_seq)
        for priority, count, size in conn.execute(
            "SELECT priority, count(*), coalesce(sum(size), 0) FROM messages GROUP BY priority"
        ):
            self._count[priority] = count
            self._bytes[priority] = size
        if self.max_age is not None:
            self._transaction(lambda: None, [], self.clock())

    def _restart_seq(self, reserved: int | None) -> int:
        if reserved is not None:
            log.warning(
                "outbox database is new but seq was in use: continuing after the reservation",
                path=str(self.path),
                seq_after=reserved,
            )
            return reserved
        floor = int(self.clock() * 1000)
        log.error(
            "outbox database and seq reservation both lost: seq restarts from the clock floor",
            path=str(self.path),
            seq_after=floor,
        )
        return floor

    def close(self) -> None:
        """Save the losses counted since the last save (the reserve may pay for it), close."""
        with self._lock:
            if self._conn is not None:
                try:
                    self._save_losses_locked()
                except OutboxError as exc:
                    log.error("losses not saved on the way out", error=str(exc))
            self._close_locked()
            self._release_ownership()

    def _close_locked(self) -> None:
        self._deferred = False
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            self._warn_leftover()

    def recover(self) -> Path | None:
        """After an OutboxCorruptError: set the damaged database aside and start a fresh one.

        Close and open happen under one hold of the lock (and ownership is kept), so a put from
        another thread waits for the fresh database instead of finding none. Returns where the
        damaged file was kept (None if it turned out sound; opening logs it). Messages
        only in the damaged file are lost with it; seq continues past the reservation.
        """
        with self._lock:
            self._close_locked()
            self.recovered_from = None
            self._open_locked()
            return self.recovered_from

    def __enter__(self) -> Outbox:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _take_ownership(self) -> None:
        try:
            fd = open_private(self.lock_path, os.O_RDWR)
        except OSError as exc:
            raise OutboxError(f"{self.lock_path}: cannot open: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutboxError(f"{self.path}: in use by another process or Outbox") from None
        self._lock_fd = fd

    def _release_ownership(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- seq reservation -------------------------------------------------------------------

    def _read_reservation(self) -> tuple[int | None, bool]:
        """The reserved seq ceiling, and whether a reservation file was there at all."""
        try:
            data = json.loads(self.seq_path.read_bytes())
            return int(data["reserved"]), True
        except FileNotFoundError:
            return None, False
        except (ValueError, KeyError, TypeError) as exc:
            # Written atomically, so this is damage from outside: the database decides, and
            # if the database is new too, seq continuity is lost.
            log.warning("seq reservation file unreadable", path=str(self.seq_path), error=str(exc))
            return None, True

    def _reserve(self, at_least: int) -> None:
        reserved = at_least + self.seq_block
        try:
            write_atomic(self.seq_path, json.dumps({"reserved": reserved}).encode(), mode=0o600)
        except OSError as exc:
            raise OutboxError(
                f"{self.seq_path}: cannot reserve seq: {exc.strerror or exc}"
            ) from exc
        self._reserved = reserved

    # -- the reserve and the disk full state ------------------------------------------------

    def _reserve_size(self) -> int:
        try:
            return self.reserve_path.stat().st_size
        except OSError:
            return 0

    def _free_bytes(self) -> int:
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize

    def _make_reserve(self) -> bool:
        """Allocate the reserve file to `reserve_bytes` (blocks on the disk, not a sparse
        file); False if the disk has no room for it."""
        if self._reserve_size() >= self.reserve_bytes:
            return True
        try:
            fd = open_private(self.reserve_path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.error(
                    "cannot make the outbox reserve", path=str(self.reserve_path), error=str(exc)
                )
            return False
        return True

    def _release_reserve_step(self) -> bool:
        """Give a quarter of the reserve back to the file system; False if none is left."""
        size = self._reserve_size()
        if size == 0:
            return False
        step = max(self.reserve_bytes // 4, 64 * 1024)
        left = max(0, size - step)
        try:
            os.truncate(self.reserve_path, left)
        except OSError as exc:
            log.error("cannot release the outbox reserve", error=str(exc))
            return False
        log.warning(
            "disk full: released part of the outbox reserve for a write that must be made",
            released=size - left,
            reserve_left=left,
        )
        return True

    def _enter_full(self, exc: BaseException | None) -> None:
        if self._full:
            return
        self._full = True
        self._full_since = self.clock()
        self._probed_at = time.monotonic()
        log.error(
            "disk full: the outbox refuses telemetry (counted as lost) and keeps acknowledging, "
            "storing events and health with its reserve",
            path=str(self.path),
            free_bytes=self._free_bytes(),
            reserve_bytes=self._reserve_size(),
            error=str(exc) if exc is not None else "less free than the reserve at start",
        )

    def _probe(self) -> None:
        """In the disk full state, at most once per `probe_interval`: if there is room again
        (the missing reserve and as much again), re-make the reserve, open a database that
        could not be opened, and take telemetry again."""
        if not self._full:
            return
        now = time.monotonic()
        if now - self._probed_at < self.probe_interval:
            return
        self._probed_at = now
        missing = self.reserve_bytes - self._reserve_size()
        if self._free_bytes() < missing + self.reserve_bytes or not self._make_reserve():
            return
        if self._conn is None and self._deferred:
            try:
                self._with_reserve(self._open_locked, privileged=True)
            except OutboxError as exc:
                log.error("outbox still cannot be opened", path=str(self.path), error=str(exc))
                return
            self._deferred = False
        full_for = self.clock() - (self._full_since or self.clock())
        self._full = False
        self._full_since = None
        log.warning(
            "the disk has room again: outbox reserve re-made, telemetry accepted",
            path=str(self.path),
            full_for=round(full_for, 1),
            free_bytes=self._free_bytes(),
        )

    def _with_reserve(self, write: Callable[[], T], *, privileged: bool) -> T:
        """`write()`; if the disk is full: the disk full state, and OutboxFull unless
        `privileged`, else the reserve released a step at a time and `write` tried again."""
        while True:
            try:
                return write()
            except OutboxError as exc:
                if not db.is_disk_full(exc):
                    raise
                self._enter_full(exc)
                if not privileged:
                    raise OutboxFull(f"{self.path}: disk full: telemetry not stored") from exc
                if not self._release_reserve_step():
                    raise OutboxError(
                        f"{self.path}: disk full and the outbox reserve is used up: {exc}"
                    ) from exc

    @property
    def disk_full(self) -> bool:
        return self._full

    # -- losses ------------------------------------------------------------------------------

    def note_lost(self, ledger: LossLedger) -> None:
        """Readings given up elsewhere (the writer): kept in memory now (any thread, never
        waits for a write), saved with the next transaction, reported once writes are taken."""
        if not ledger:
            return
        with self._loss_lock:
            self._lost_new.merge(ledger)
            for name, loss in ledger.terminals.items():
                self._lost_counted[name] += loss.readings

    def _take_losses(self) -> LossLedger:
        with self._loss_lock:
            taken, self._lost_new = self._lost_new, LossLedger()
        return taken

    def _give_back_losses(self, taken: LossLedger) -> None:
        """A transaction that carried `taken` failed: they wait for the next one."""
        if taken:
            with self._loss_lock:
                taken.merge(self._lost_new)
                self._lost_new = taken

    def save_losses(self) -> None:
        """Save the losses counted since the last save (the reserve pays if the disk is
        full): a restart keeps counting from there. Does nothing when there are none."""
        with self._lock:
            self._probe()
            self._save_losses_locked()

    def _save_losses_locked(self) -> None:
        if self._conn is None:
            return
        taken = self._take_losses()
        if not taken:
            return
        losses = self._lost_stored.copy()
        losses.merge(taken)
        text = json.dumps(losses.to_dict())

        def write() -> None:
            conn = self._open_conn()
            with self._write_transaction(conn):
                conn.execute("UPDATE counters SET value = ? WHERE name = 'lost'", (text,))

        try:
            self._with_reserve(write, privileged=True)
        except BaseException:
            self._give_back_losses(taken)
            raise
        self._lost_stored = losses

    # -- writing ---------------------------------------------------------------------------

    def put(self, kind: str, body: Any, priority: Priority) -> int:
        """Sign and store one message; its seq. Durable when this returns."""
        return self.put_many([(kind, body, priority)])[0]

    def put_many(self, items: Sequence[tuple[str, Any, Priority]]) -> list[int]:
        """Sign and store messages in one transaction; their seqs, in order.

        All or nothing: ValueError/TypeError for a bad kind or a body that is not JSON (NaN
        included) stores none of them.
        """
        if not items:
            return []
        # Validate and encode outside the lock: the costly part, and it touches no state.
        prepared: list[tuple[str, Priority, str]] = []
        for kind, body, priority in items:
            if not _KIND.match(kind):
                raise ValueError(f"kind {kind!r} is not a topic suffix like 'telemetry'")
            prepared.append((kind, Priority(priority), encode_body(body)))
        telemetry = any(priority is Priority.TELEMETRY for _, priority, _ in prepared)
        with self._lock:
            self._probe()
            if telemetry and self._full:
                raise OutboxFull(f"{self.path}: disk full: telemetry not stored")
            # Telemetry never eats the reserve: only messages without it may use it.
            return self._with_reserve(lambda: self._put_locked(prepared), privileged=not telemetry)

    def _put_locked(self, prepared: list[tuple[str, Priority, str]]) -> list[int]:
        conn = self._open_conn()
        now = self.clock()
        ts = utc_stamp(now)
        first = self._last_seq + 1
        rows = []
        for seq, (kind, priority, body_json) in enumerate(prepared, start=first):
            envelope = envelope_from_encoded(self.gateway_id, seq, kind, ts, body_json)
            payload = self.signer.sign_compact(envelope, self.compression.get(kind))
            if len(payload) > self.max_message_bytes:
                raise ValueError(
                    f"a {kind} message of {len(payload)} bytes is over the limit of "
                    f"{self.max_message_bytes}: send smaller batches"
                )
            rows.append((seq, int(priority), now, len(payload), kind, payload))
        taken = self._take_losses()
        try:
            losses = self._lost_stored.copy()
            losses.merge(taken)
            # Writes are taken again: the losses go upstream in this transaction, once.
            report = bool(losses) and not self._full
            if report:
                seq = first + len(rows)
                body = encode_body(loss_event(losses))
                envelope = envelope_from_encoded(self.gateway_id, seq, "event", ts, body)
                payload = self.signer.sign_compact(envelope)
                rows.append((seq, int(Priority.EVENT), now, len(payload), "event", payload))
            last = first + len(rows) - 1
            if last > self._reserved:
                self._reserve(last)  # durable before any seq past the old reservation is
            saved = None if report or not losses else json.dumps(losses.to_dict())

            def insert() -> None:
                conn.executemany(
                    "INSERT INTO messages (seq, priority, created_at, size, kind, payload) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                conn.execute("UPDATE counters SET value = ? WHERE name = 'seq'", (last,))
                if taken or report:
                    conn.execute("UPDATE counters SET value = ? WHERE name = 'lost'", (saved,))
                if report:
                    conn.execute(
                        "UPDATE counters SET value = ? WHERE name = 'lost_reported'",
                        (self._lost_reported + losses.readings,),
                    )

            self._transaction(insert, rows, now)
        except BaseException:
            self._give_back_losses(taken)
            raise
        self._last_seq = last
        if report:
            self._lost_stored = LossLedger()
            self._lost_reported += losses.readings
            log.warning(
                "readings lost were reported upstream",
                seq=last,
                readings=losses.readings,
                reasons=losses.reasons,
                terminals=len(losses.terminals),
            )
        else:
            self._lost_stored = losses
        return list(range(first, first + len(prepared)))

    def _transaction(
        self,
        write: Callable[[], None],
        rows: list[tuple[int, int, float, int, str, str]],
        now: float,
    ) -> None:
        """Make room for `rows` (age, then budget), run `write`, commit; then update counters."""
        conn = self._open_conn()
        incoming = sum(r[3] for r in rows)
        with self._write_transaction(conn):
            aged = self._evict_aged(conn, now)
            budget = self._evict_for_budget(conn, incoming - aged.bytes)
            evicted = _Eviction(aged.count + budget.count, aged.bytes + budget.bytes)
            if evicted.count:
                conn.executemany(
                    "UPDATE counters SET value = ? WHERE name = ?",
                    [
                        (self._evicted + evicted.count, "evicted"),
                        (self._evicted_bytes + evicted.bytes, "evicted_bytes"),
                        (now, "last_evicted_at"),
                    ],
                )
            write()
        tele = Priority.TELEMETRY
        self._count[tele] -= evicted.count
        self._bytes[tele] -= evicted.bytes
        for r in rows:
            self._count[r[1]] += 1
            self._bytes[r[1]] += r[3]
        was_over = self._over_budget
        self._over_budget = sum(self._bytes) > self.max_bytes
        if evicted.count:
            self._evicted += evicted.count
            self._evicted_bytes += evicted.bytes
            self._last_evicted_at = now
            self._unwarned.count += evicted.count
            self._unwarned.bytes += evicted.bytes
            reason = "max_bytes" if budget.count else "max_age"
            if self._may_warn("evicted"):
                log.warning(
                    "outbox evicted oldest telemetry",
                    reason=reason,
                    evicted=self._unwarned.count,
                    evicted_bytes=self._unwarned.bytes,
                    evicted_total=self._evicted,
                    **self._summary(),
                )
                self._unwarned = _Eviction()
        if self._over_budget and (not was_over or self._may_warn("over_budget")):
            self._warned_at["over_budget"] = time.monotonic()
            log.warning(
                "outbox over its byte budget with only events and health left: accepting, "
                "nothing is dropped",
                **self._summary(),
            )

    def _evict_aged(self, conn: sqlite3.Connection, now: float) -> _Eviction:
        if self.max_age is None:
            return _Eviction()
        sizes = conn.execute(
            "DELETE FROM messages WHERE priority = ? AND created_at >= ? AND created_at < ? "
            "RETURNING size",
            (int(Priority.TELEMETRY), CLOCK_SANE_AFTER, now - self.max_age),
        ).fetchall()
        return _Eviction(len(sizes), sum(s for (s,) in sizes))

    def _evict_for_budget(self, conn: sqlite3.Connection, incoming: int) -> _Eviction:
        need = sum(self._bytes) + incoming - self.max_bytes
        freed = _Eviction()
        if need <= 0:
            return freed
        # Oldest telemetry first, in pages, until enough is freed or none is left.
        after = 0
        while freed.bytes < need:
            page = conn.execute(
                "SELECT seq, size FROM messages WHERE priority = ? AND seq > ? ORDER BY seq "
                "LIMIT 256",
                (int(Priority.TELEMETRY), after),
            ).fetchall()
            if not page:
                break
            for seq, size in page:
                freed.count += 1
                freed.bytes += size
                after = seq
                if freed.bytes >= need:
                    break
        if freed.count:
            conn.execute(
                "DELETE FROM messages WHERE priority = ? AND seq <= ?",
                (int(Priority.TELEMETRY), after),
            )
        return freed

    def _may_warn(self, what: str) -> bool:
        now = time.monotonic()
        last = self._warned_at.get(what)
        if last is not None and now - last < self.warn_interval:
            return False
        self._warned_at[what] = now
        return True

    def _warn_leftover(self) -> None:
        if self._unwarned.count:
            log.warning(
                "outbox evicted oldest telemetry",
                evicted=self._unwarned.count,
                evicted_bytes=self._unwarned.bytes,
                evicted_total=self._evicted,
            )
            self._unwarned = _Eviction()

    def expire(self) -> None:
        """Evict telemetry older than max_age now (puts do it too; for a quiet outbox)."""
        if self.max_age is None:
            return
        with self._lock:
            self._probe()
            self._with_reserve(
                lambda: self._transaction(lambda: None, [], self.clock()), privileged=True
            )

    # -- reading and acknowledging ----------------------------------------------------------

    def pending(self, limit: int, exclude: Collection[int] = ()) -> list[Message]:
        """Up to `limit` messages to send: highest priority first, then by seq.

        `exclude` skips ids already in flight. Messages stay until `ack`ed: after a restart
        they are handed out again (a duplicate upstream, recognisable by its seq).
        """
        with self._lock, self._sqlite_errors():
            self._probe()
            conn = self._open_conn()
            if exclude:
                cursor = conn.execute(
                    "SELECT seq, priority, created_at, size, kind, payload FROM messages "
                    "WHERE seq NOT IN (SELECT value FROM json_each(?)) "
                    "ORDER BY priority, seq LIMIT ?",
                    (json.dumps(list(exclude)), limit),
                )
            else:
                cursor = conn.execute(
                    "SELECT seq, priority, created_at, size, kind, payload FROM messages "
                    "ORDER BY priority, seq LIMIT ?",
                    (limit,),
                )
            return [
                Message(seq, seq, kind, Priority(priority), payload, size, created_at)
                for seq, priority, created_at, size, kind, payload in cursor
            ]

    def ack(self, ids: Iterable[int]) -> int:
        """Delete acknowledged messages; how many were still there (evicted ones are not)."""
        id_list = [int(i) for i in ids]
        if not id_list:
            return 0
        with self._lock:
            self._probe()
            # An acknowledgement frees space but needs some first (the WAL): the reserve's.
            return self._with_reserve(lambda: self._ack_locked(id_list), privileged=True)

    def _ack_locked(self, id_list: list[int]) -> int:
        conn = self._open_conn()
        with self._write_transaction(conn):
            removed = conn.execute(
                "DELETE FROM messages WHERE seq IN (SELECT value FROM json_each(?)) "
                "RETURNING priority, size",
                (json.dumps(id_list),),
            ).fetchall()
        for priority, size in removed:
            self._count[priority] -= 1
            self._bytes[priority] -= size
        self._over_budget = sum(self._bytes) > self.max_bytes
        return len(removed)

    # -- reporting -------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def stats(self) -> OutboxStats:
        with self._lock, self._sqlite_errors():
            self._probe()  # the check loop asks every round: the periodic look for room
            conn = self._conn
            oldest: float | None = None
            for priority in Priority:
                if self._count[priority] and conn is not None:
                    row = conn.execute(
                        "SELECT created_at FROM messages WHERE priority = ? ORDER BY seq LIMIT 1",
                        (int(priority),),
                    ).fetchone()
                    if row is not None and (oldest is None or row[0] < oldest):
                        oldest = row[0]
            return OutboxStats(
                events=self._count[Priority.EVENT],
                health=self._count[Priority.HEALTH],
                telemetry=self._count[Priority.TELEMETRY],
                bytes=sum(self._bytes),
                max_bytes=self.max_bytes,
                oldest_age=max(0.0, self.clock() - oldest) if oldest is not None else None,
                evicted=self._evicted,
                evicted_bytes=self._evicted_bytes,
                last_evicted_at=(
                    datetime.fromtimestamp(self._last_evicted_at, UTC)
                    if self._last_evicted_at is not None
                    else None
                ),
                over_budget=self._over_budget,
                last_seq=self._last_seq,
                recovered_from=self.recovered_from,
                disk_full=self._full,
                opened=self._conn is not None,
                full_since=(
                    datetime.fromtimestamp(self._full_since, UTC)
                    if self._full_since is not None
                    else None
                ),
                reserve_bytes=self._reserve_size(),
                reserve_target=self.reserve_bytes,
                lost=self.unreported_losses(),
                lost_reported=self._lost_reported,
                lost_counted=dict(self._lost_counted),
            )

    def unreported_losses(self) -> LossLedger:
        """Readings given up and not reported upstream yet (saved or not)."""
        with self._loss_lock:
            out = self._lost_stored.copy()
            out.merge(self._lost_new)
        return out

    def _summary(self) -> dict[str, int]:
        return {
            "events": self._count[Priority.EVENT],
            "health": self._count[Priority.HEALTH],
            "telemetry": self._count[Priority.TELEMETRY],
            "bytes": sum(self._bytes),
            "max_bytes": self.max_bytes,
        }

    @contextlib.contextmanager
    def _write_transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; SQLite errors become ours."""
        with self._sqlite_errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if db.is_corruption(exc):
                raise OutboxCorruptError(
                    f"{self.path}: database damaged ({exc}); close and open the outbox to set "
                    "it aside and start a fresh one"
                ) from exc
            raise OutboxError(f"{self.path}: {exc}") from exc

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            if self._deferred:
                raise OutboxError(f"{self.path}: disk full: the outbox is not open yet")
            raise OutboxError(f"{self.path}: outbox is not open")
        return self._conn


class AsyncOutbox:
    """The outbox for the event loop: every call runs in a worker thread, never on the loop.

    Concurrent `put`/`put_many` calls are joined into one transaction (group commit): while one
    batch is being made durable, the next ones gather, so many pollers pay one fsync. Each
    caller gets its own seqs once its messages are durable. A caller cancelled before its turn
    stores nothing; one cancelled while its batch is being written may still have stored it.

    `changed` is set after every commit that stored messages, whatever their kind: the one
    consumer (the uplink) clears it before it reads `pending` and waits on it when idle, so
    anything stored is published at once, never on a timer.
    """

    def __init__(self, outbox: Outbox, max_batch: int = 512) -> None:
        self.outbox = outbox
        self.max_batch = max_batch
        self._waiting: list[tuple[list[Item], asyncio.Future[list[int]]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.changed = asyncio.Event()

    async def open(self) -> None:
        await asyncio.to_thread(self.outbox.open)

    async def close(self) -> None:
        """Wait for the puts already made, then close."""
        await self._idle.wait()
        await asyncio.to_thread(self.outbox.close)

    async def __aenter__(self) -> AsyncOutbox:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def put(self, kind: str, body: Any, priority: Priority) -> int:
        return (await self.put_many([(kind, body, priority)]))[0]

    async def _guarded(self, call: Callable[..., T], *args: Any) -> T:
        """`call` in a worker thread; a database found damaged is recovered and `call` tried
        once more — the one place that recovers, whoever hits the damage first."""
        try:
            return await asyncio.to_thread(call, *args)
        except OutboxCorruptError:
            await asyncio.to_thread(self.outbox.recover)
            return await asyncio.to_thread(call, *args)

    async def pending(self, limit: int, exclude: Collection[int] = ()) -> list[Message]:
        return await self._guarded(self.outbox.pending, limit, exclude)

    async def ack(self, ids: Iterable[int]) -> int:
        return await self._guarded(self.outbox.ack, list(ids))

    async def stats(self) -> OutboxStats:
        return await asyncio.to_thread(self.outbox.stats)

    def note_lost(self, ledger: LossLedger) -> None:
        """Readings given up (`Outbox.note_lost`): in memory at once, never waits on the disk."""
        self.outbox.note_lost(ledger)

    async def save_losses(self) -> None:
        await asyncio.to_thread(self.outbox.save_losses)

    @property
    def disk_full(self) -> bool:
        return self.outbox.disk_full

    async def expire(self) -> None:
        await asyncio.to_thread(self.outbox.expire)

    async def put_batch(self, items: Sequence[Item]) -> list[int]:
        """Store `items` in one transaction, now (for a caller that batches itself: the
        writer); sets `changed`. Raises as `Outbox.put_many` does."""
        seqs = await self._guarded(self.outbox.put_many, list(items))
        self.changed.set()
        return seqs

    async def put_many(self, items: Sequence[Item]) -> list[int]:
        if not items:
            return []
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._waiting.append((list(items), future))
        if self._writer is None:
            self._idle.clear()
            self._writer = asyncio.create_task(self._write(), name="outbox group commit")
        return await future

    async def _write(self) -> None:
        try:
            while self._waiting:
                batch: list[tuple[list[Item], asyncio.Future[list[int]]]] = []
                size = 0
                while self._waiting and (
                    not batch or size + len(self._waiting[0][0]) <= self.max_batch
                ):
                    items, future = self._waiting.pop(0)
                    if not future.done():  # cancelled before its turn: store nothing
                        batch.append((items, future))
                        size += len(items)
                if batch:
                    await self._write_batch(batch)
        finally:
            self._writer = None
            for _, future in self._waiting:
                future.cancel()
            self._waiting.clear()
            self._idle.set()

    async def _write_batch(self, batch: list[tuple[list[Item], asyncio.Future[list[int]]]]) -> None:
        all_items = [item for items, _ in batch for item in items]
        try:
            seqs = await self._guarded(self.outbox.put_many, all_items)
        except (ValueError, TypeError) as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            # One caller's bad message must not fail the others: write each request alone.
            for items, future in batch:
                try:
                    result = await asyncio.to_thread(self.outbox.put_many, items)
                except (ValueError, TypeError, OutboxError, sqlite3.Error, OSError) as exc:
                    _settle(future, exc)
                else:
                    self.changed.set()
                    _settle(future, result)
            return
        except (OutboxError, sqlite3.Error, OSError) as exc:
            for _, future in batch:
                _settle(future, exc)
            return
        self.changed.set()
        start = 0
        for items, future in batch:
            _settle(future, seqs[start : start + len(items)])
            start += len(items)


def _settle(future: asyncio.Future[list[int]], outcome: list[int] | BaseException) -> None:
    if future.done():  # its caller was cancelled meanwhile
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
