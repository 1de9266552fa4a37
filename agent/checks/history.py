"""The bounded history behind the inspection report: `<state_dir>/history.db` (SQLite, WAL).

What is kept, by the hour: per terminal, polls seen and polls with a good reading; per point,
count, bad count, min, max, mean, last of the good values; per check, the worst status and how
many evaluations had each status. As events: check status changes, alarms, anomalies, agent
starts. The agent's runs: each from its start to its last mark of life, which every `flush`
moves on (so the time after a stop or a crash is known as time the agent did not run). And the
terminals' plans over time (interval, number of points) so that the report can tell what was
expected.

Rules: writes are buffered in memory (`observe`, `record_*` are cheap and safe on the event
loop) and written by `flush()` in one transaction (call it off the loop, every
`history.flush_interval` and at stop). Everything older than `retention` is pruned, and each
event table is capped at `max_events` rows, so the file stays bounded. The history is not the
data path: a damaged file is set aside and a fresh one started, and a full disk at start
leaves it unopened (logged) until a later `flush` can open it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import operator
import sqlite3
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from agent.checks.data import Anomaly, numeric
from agent.checks.framework import CheckResult, Scalar, Status
from agent.checks.runs import Runs
from agent.model import Layout, PollReadings, Quality, Reading, parse_timestamp
from agent.storage import sqlite as db
from agent.storage.atomic import STATE_DIR_MODE, ensure_dir

log = structlog.get_logger(__name__)

HOUR = 3600
DAY = 86400.0
PRUNE_EVERY = 3600.0
DEFAULT_RETENTION = 90 * DAY
DEFAULT_MAX_EVENTS = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS plans (
    terminal TEXT NOT NULL, interval REAL NOT NULL, points INTEGER,
    since REAL NOT NULL, until REAL
);
CREATE TABLE IF NOT EXISTS terminal_hours (
    terminal TEXT NOT NULL, hour INTEGER NOT NULL,
    polls INTEGER NOT NULL, good_polls INTEGER NOT NULL,
    PRIMARY KEY (terminal, hour)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS point_hours (
    terminal TEXT NOT NULL, point TEXT NOT NULL, hour INTEGER NOT NULL, unit TEXT NOT NULL,
    good INTEGER NOT NULL, bad INTEGER NOT NULL, numbers INTEGER NOT NULL,
    min REAL, max REAL, sum REAL, last REAL, last_at REAL,
    PRIMARY KEY (terminal, point, hour)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS check_hours (
    id TEXT NOT NULL, hour INTEGER NOT NULL, family TEXT NOT NULL, worst INTEGER NOT NULL,
    ok INTEGER NOT NULL, warn INTEGER NOT NULL, fail INTEGER NOT NULL, unknown INTEGER NOT NULL,
    PRIMARY KEY (id, hour)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    at REAL NOT NULL, id TEXT NOT NULL, family TEXT NOT NULL, status TEXT NOT NULL,
    value TEXT, message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alarms (
    at REAL NOT NULL, check_id TEXT NOT NULL, family TEXT NOT NULL, action TEXT NOT NULL,
    status TEXT NOT NULL, previous TEXT NOT NULL, message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS anomalies (
    at REAL NOT NULL, terminal TEXT NOT NULL, point TEXT NOT NULL, kind TEXT NOT NULL,
    value TEXT, detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS starts (at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS changes_at ON changes (at);
CREATE INDEX IF NOT EXISTS alarms_at ON alarms (at);
CREATE INDEX IF NOT EXISTS anomalies_at ON anomalies (at);
CREATE INDEX IF NOT EXISTS starts_at ON starts (at);
CREATE INDEX IF NOT EXISTS point_hours_hour ON point_hours (hour);
CREATE INDEX IF NOT EXISTS check_hours_hour ON check_hours (hour);
"""
# 2: the agent's runs (start, last mark of life), so that the time it did not run is known;
# the first good value's time in each point-hour (a chart starts where the data does); an
# alarm's value, unit and threshold (the report puts them in the reader's language).
_RUNS = """
CREATE TABLE IF NOT EXISTS runs (start REAL PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID;
ALTER TABLE point_hours ADD COLUMN first_at REAL;
ALTER TABLE alarms ADD COLUMN value TEXT;
ALTER TABLE alarms ADD COLUMN unit TEXT;
ALTER TABLE alarms ADD COLUMN threshold TEXT;
"""
# The schema's history, oldest first (agent.storage.sqlite.migrate): append, never edit.
MIGRATIONS: list[db.Migration] = [_SCHEMA, _RUNS]
SCHEMA_VERSION = len(MIGRATIONS)
EVENT_TABLES = ("changes", "alarms", "anomalies", "starts")
_SEVERITY_STATUS = {s.severity: s for s in Status}


def hour_of(posix: float) -> int:
    return int(posix // HOUR * HOUR)


def _ts(at: datetime) -> float:
    return at.timestamp()


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _scalar(text: str | None) -> Scalar:
    return None if text is None else json.loads(text)


@dataclass(frozen=True, slots=True)
class TerminalPlan:
    """What is expected of a terminal: a reading of each of `points` points every `interval`.

    `points` is None for terminals that report what they have (SL651): each report is then
    expected to carry every point the terminal reported in the period.
    """

    interval: float
    points: int | None


@dataclass(frozen=True, slots=True)
class TerminalFigures:
    """A terminal over a period: what was expected and what arrived."""

    name: str
    expected_polls: float
    polls: int
    good_polls: int
    expected_readings: float
    good_readings: int
    bad_readings: int
    planned: float = 0.0  # seconds of the period the terminal was configured for

    @property
    def missing_seconds(self) -> float:
        """How long, in all, the terminal did not answer: the share of unanswered polls of the
        time it was planned for (an over-reporting terminal misses nothing)."""
        availability = self.availability
        return 0.0 if availability is None else self.planned * (1.0 - availability)

    @property
    def availability(self) -> float | None:
        """Share of the expected polls the terminal answered."""
        if self.expected_polls <= 0:
            return None
        return min(1.0, self.good_polls / self.expected_polls)

    @property
    def completeness(self) -> float | None:
        """Share of the expected readings that arrived good."""
        if self.expected_readings <= 0:
            return None
        return min(1.0, self.good_readings / self.expected_readings)


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    at: datetime
    check: str
    family: str
    action: str  # raised | cleared | changed
    status: str
    previous: str
    message: str
    value: Scalar = None  # what the check measured, in `unit`, against `threshold`
    unit: str = ""
    threshold: Scalar = None


@dataclass(frozen=True, slots=True)
class HourStats:
    hour: datetime
    count: int
    min: float | None
    max: float | None
    mean: float | None
    last: float | None
    first_at: datetime | None = None  # the hour's first good value (None: not recorded)


@dataclass(frozen=True, slots=True)
class CheckFigures:
    id: str
    family: str
    worst: Status
    ok: int
    warn: int
    fail: int
    unknown: int
    fail_hours: int
    warn_hours: int
    last_seen: datetime | None = None  # the end of the last hour the check was evaluated in


@dataclass(slots=True)  # one per point and hour when polls come reading by reading
class _PointAcc:
    unit: str
    good: int = 0
    bad: int = 0
    numbers: int = 0
    min: float | None = None
    max: float | None = None
    sum: float = 0.0
    last: float | None = None
    last_at: float | None = None
    first_at: float | None = None


def _point_row(terminal: str, point: str, hour: int, a: _PointAcc) -> tuple[Any, ...]:
    """A `point_hours` row of a point's accumulated hour."""
    total = a.sum if a.numbers else None
    return (
        terminal,
        point,
        hour,
        a.unit,
        a.good,
        a.bad,
        a.numbers,
        a.min,
        a.max,
        total,
        a.last,
        a.last_at,
        a.first_at,
    )


_NO_DOUBLES = array("d")  # min, max and sum before the first fold (never changed in place)
FOLD_POLLS = 16  # polls a _PollAcc keeps as raw values before folding them into statistics


class _PollAcc:
    """One terminal's polls in one hour whose readings were all good numbers of the same points
    (names and units, in this order). A poll's values are appended to a flat array of doubles;
    every FOLD_POLLS polls its columns are folded into min, max and sum by position, arrays of
    doubles too (a terminal holds one of these for the hour: 24 bytes a point, where lists of
    float objects took 96). Both run in C (array, min, max, sum over a column), where a loop
    over the readings would run Python for each of them; the array holds at most
    FOLD_POLLS x points doubles (16 x 20 x 8 bytes).
    """

    __slots__ = (
        "first_at",
        "last",
        "last_at",
        "max",
        "min",
        "pending",
        "points",
        "polls",
        "sum",
        "units",
    )

    def __init__(
        self, points: tuple[str, ...], units: tuple[str, ...], values: list[float], at: float
    ) -> None:
        self.points, self.units = points, units
        self.polls = 0  # folded into min, max, sum
        self.min = self.max = self.sum = _NO_DOUBLES
        self.pending = array("d", values)
        self.last, self.last_at, self.first_at = values, at, at

    def add(self, values: list[float], at: float) -> None:
        self.pending.extend(values)
        if at >= self.last_at:
            self.last, self.last_at = values, at
        elif at < self.first_at:
            self.first_at = at
        if len(self.pending) >= FOLD_POLLS * len(self.points):
            self.fold()

    def fold(self) -> None:
        n = len(self.points)
        buf = self.pending
        if not buf:
            return
        columns = [buf[i::n] for i in range(n)]
        lows, highs, sums = map(min, columns), map(max, columns), map(sum, columns)
        if self.polls:
            lows = map(min, self.min, lows)
            highs = map(max, self.max, highs)
            sums = map(operator.add, self.sum, sums)
        self.min, self.max, self.sum = array("d", lows), array("d", highs), array("d", sums)
        self.polls += len(buf) // n
        self.pending = array("d")

    def merge_into(
        self, points: dict[tuple[str, str, int], _PointAcc], terminal: str, hour: int
    ) -> None:
        """Fold these statistics into the per-point ones."""
        self.fold()
        for i, name in enumerate(self.points):
            acc = points.get((terminal, name, hour))
            if acc is None:
                acc = points[(terminal, name, hour)] = _PointAcc(self.units[i])
            self._merge_point(i, acc)

    def rows(
        self, points: dict[tuple[str, str, int], _PointAcc], terminal: str, hour: int
    ) -> Iterator[tuple[Any, ...]]:
        """The `point_hours` rows of these statistics, as `merge_into` then `_point_row` would
        give them, one at a time (a thousand terminals' hour is 20,000 rows, not to be held
        at once); a point also accumulated reading by reading this hour is merged into
        `points` instead (written from there)."""
        self.fold()
        for i, name in enumerate(self.points):
            acc = points.get((terminal, name, hour))
            if acc is not None:
                self._merge_point(i, acc)
                continue
            acc = _PointAcc(self.units[i])  # one row's, gone once it is written
            self._merge_point(i, acc)
            yield _point_row(terminal, name, hour, acc)

    def _merge_point(self, i: int, acc: _PointAcc) -> None:
        lo, hi, total, last = self.min[i], self.max[i], self.sum[i], float(self.last[i])
        acc.good += self.polls
        acc.numbers += self.polls
        acc.sum += total
        acc.min = lo if acc.min is None else min(acc.min, lo)
        acc.max = hi if acc.max is None else max(acc.max, hi)
        if acc.last_at is None or self.last_at >= acc.last_at:
            acc.last, acc.last_at = last, self.last_at
        if acc.first_at is None or self.first_at < acc.first_at:
            acc.first_at = self.first_at


MAX_LAYOUTS = 100_000  # bulk polls' layouts remembered (one per polled read plan)
_NUMBERS = frozenset((int, float))  # not bool: a bool is not a number here (checks.data.numeric)
_terminal = operator.attrgetter("terminal")
_point = operator.attrgetter("point")
_unit = operator.attrgetter("unit")
_value = operator.attrgetter("value")
_quality = operator.attrgetter("quality")
_observed_at = operator.attrgetter("observed_at")


@dataclass(slots=True)  # one per check and hour: three a terminal
class _CheckAcc:
    family: str
    worst: int = 0
    ok: int = 0
    warn: int = 0
    fail: int = 0
    unknown: int = 0


class History:
    """The history database. `open()` before use; every method may be called from any thread."""

    def __init__(
        self,
        path: Path,
        retention: float = DEFAULT_RETENTION,
        max_events: int = DEFAULT_MAX_EVENTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.retention = retention
        self.max_events = max_events
        self.clock = clock
        self.recovered_from: Path | None = None
        self._conn: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()
        self._buf_lock = threading.Lock()
        self._pruned_at = 0.0
        self._deferred = False  # the disk was full at open: opened by a later flush
        self._meta_pending: dict[str, str] = {}  # meta not written yet (a full disk)
        self._run: float | None = None  # the start of this agent's run (record_start)
        self._reset_buffers()

    def _reset_buffers(self) -> None:
        self._terminals: dict[tuple[str, int], list[int]] = {}
        # id(layout) -> (the layout, its point names, its units): bulk polls' names, once each.
        self._layouts: dict[int, tuple[Layout, tuple[str, ...], tuple[str, ...]]] = {}
        self._points: dict[tuple[str, str, int], _PointAcc] = {}
        self._polls: dict[tuple[str, int], _PollAcc] = {}
        self._checks: dict[tuple[str, int], _CheckAcc] = {}
        self._events: dict[str, list[tuple[Any, ...]]] = {t: [] for t in EVENT_TABLES}
        self._plans: tuple[dict[str, TerminalPlan], float] | None = None
        self._runs: dict[float, float] = {}  # start -> last mark, to write

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the database; on a full disk, run without it: each `flush` tries to
        open it (what it cannot write is dropped: the history is not the data path)."""
        with self._db_lock:
            if self._conn is not None:
                return
            try:
                self._open_locked()
            except db.StorageError as exc:
                if not db.is_disk_full(exc):
                    raise
                self._deferred = True
                log.warning("disk full: the history is kept in memory until there is room")

    def _open_locked(self) -> None:
        # state_dir as the package lays it out; an existing folder keeps its mode.
        ensure_dir(self.path.parent, STATE_DIR_MODE, tighten=False)
        opened = db.open_database(
            self.path,
            MIGRATIONS,
            aside_label=f"damaged-{int(self.clock())}",
            synchronous="normal",  # history is not the data path
        )
        self._conn = opened.conn
        self._deferred = False
        if opened.set_aside is not None:
            self.recovered_from = opened.set_aside
            self._conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('recovered', ?)",
                (f"{opened.set_aside}: {opened.reason}",),
            )

    def close(self) -> None:
        if self._conn is None:
            return
        self.flush()
        with self._db_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> History:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._db_lock:
            if self._conn is None and self._deferred:
                self._open_locked()  # StorageError (a sqlite3 error) while the disk is full
            if self._conn is None:
                raise RuntimeError(f"{self.path}: history used before open()")
            yield self._conn

    # -- writes (buffered) -----------------------------------------------------------------

    def submit(self, readings: Sequence[Reading]) -> None:
        """A reading sink: accumulate the hourly statistics of a batch."""
        self.observe(readings)

    def observe(self, readings: Sequence[Reading]) -> None:
        """Accumulate a batch: a poll (one terminal, one time) of good numbers costs a few list
        operations in C; any other batch goes reading by reading (`_observe_each`)."""
        if not readings:
            return
        if isinstance(readings, PollReadings) and readings.values is not None:
            # A poll in bulk: its values and their layout, no Reading made for them.
            bulk = readings.values
            if set(map(type, bulk)) <= _NUMBERS and readings.observed_at is not None:
                points, units = self._names(readings.layout)
                at = _ts(readings.observed_at)
                self._observe_poll(readings.terminal, at, points, units, bulk)  # type: ignore[arg-type]
                return
        first = readings[0]
        n = len(readings)
        values = list(map(_value, readings))
        if (
            set(map(type, values)) <= _NUMBERS
            and list(map(_quality, readings)).count(Quality.GOOD) == n
            and list(map(_observed_at, readings)).count(first.observed_at) == n
            and list(map(_terminal, readings)).count(first.terminal) == n
        ):
            points, units = tuple(map(_point, readings)), tuple(map(_unit, readings))
            self._observe_poll(first.terminal, _ts(first.observed_at), points, units, values)
        else:
            self._observe_each(readings)

    def _names(self, layout: Layout | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The point names and units of a bulk poll's layout (the same tuple poll after poll:
        worked out once per layout)."""
        assert layout is not None
        known = self._layouts.get(id(layout))
        if known is None or known[0] is not layout:
            known = (layout, tuple(p[0] for p in layout), tuple(p[1] for p in layout))
            if len(self._layouts) >= MAX_LAYOUTS:
                self._layouts.clear()  # reloads made new layouts: forget the old ones
            self._layouts[id(layout)] = known
        return known[1], known[2]

    def _observe_poll(
        self,
        terminal: str,
        at: float,
        points: tuple[str, ...],
        units: tuple[str, ...],
        values: list[float],
    ) -> None:
        hour = hour_of(at)
        with self._buf_lock:
            acc = self._polls.get((terminal, hour))
            if acc is not None:
                if acc.points != points or acc.units != units:
                    # Other points than this hour's earlier polls (a reload): keep those apart.
                    acc.merge_into(self._points, terminal, hour)
                    acc = None
                else:
                    acc.add(values, at)
            if acc is None:
                self._polls[(terminal, hour)] = _PollAcc(points, units, values, at)
            counts = self._terminals.setdefault((terminal, hour), [0, 0])
            counts[0] += 1
            counts[1] += 1

    def _observe_each(self, readings: Sequence[Reading]) -> None:
        polls: dict[tuple[str, float], bool] = {}
        times: dict[datetime, tuple[float, int]] = {}  # a poll's readings share one time
        with self._buf_lock:
            for r in readings:
                known = times.get(r.observed_at)
                if known is None:
                    at = _ts(r.observed_at)
                    known = times[r.observed_at] = (at, hour_of(at))
                at, hour = known
                good = r.quality is Quality.GOOD
                poll = (r.terminal, at)
                polls[poll] = polls.get(poll, False) or good
                if self._polls:
                    # Whole polls of this terminal and hour so far come first (a point's unit is
                    # the first one seen; its last value the last one).
                    whole = self._polls.pop((r.terminal, hour), None)
                    if whole is not None:
                        whole.merge_into(self._points, r.terminal, hour)
                acc = self._points.get((r.terminal, r.point, hour))
                if acc is None:
                    acc = self._points[(r.terminal, r.point, hour)] = _PointAcc(r.unit)
                if not good:
                    acc.bad += 1
                    continue
                acc.good += 1
                value = numeric(r.value)
                if value is None:
                    continue
                acc.numbers += 1
                acc.sum += value
                acc.min = value if acc.min is None else min(acc.min, value)
                acc.max = value if acc.max is None else max(acc.max, value)
                if acc.last_at is None or at >= acc.last_at:
                    acc.last, acc.last_at = value, at
                if acc.first_at is None or at < acc.first_at:
                    acc.first_at = at
            for (terminal, at), good in polls.items():
                counts = self._terminals.setdefault((terminal, hour_of(at)), [0, 0])
                counts[0] += 1
                counts[1] += int(good)

    def set_terminals(self, plans: Mapping[str, TerminalPlan], at: datetime | None = None) -> None:
        """The terminals now configured (at start and after each reload)."""
        with self._buf_lock:
            self._plans = (dict(plans), _ts(at) if at else self.clock())

    def record_results(
        self, results: Iterable[CheckResult], changed: Iterable[CheckResult] = ()
    ) -> None:
        """A round of check results; `changed` are those whose status changed (Round.changed)."""
        with self._buf_lock:
            for r in results:
                key = (r.id, hour_of(_ts(r.checked_at)))
                acc = self._checks.get(key)
                if acc is None:
                    acc = self._checks[key] = _CheckAcc(r.family)
                acc.worst = max(acc.worst, r.status.severity)
                setattr(acc, r.status.value, getattr(acc, r.status.value) + 1)
            for r in changed:
                self._events["changes"].append(
                    (_ts(r.checked_at), r.id, r.family, r.status.value, _json(r.value), r.message)
                )

    def record_alarms(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Alarm events as AlarmTracker made them."""
        with self._buf_lock:
            for e in events:
                at = parse_timestamp(str(e["at"]))
                self._events["alarms"].append(
                    (
                        _ts(at),
                        e["check"],
                        e["family"],
                        e["action"],
                        e["status"],
                        e["previous"],
                        e.get("message") or "",
                        _json(e.get("value")),
                        e.get("unit") or "",
                        _json(e.get("threshold")),
                    )
                )

    def record_anomalies(self, anomalies: Iterable[Anomaly]) -> None:
        with self._buf_lock:
            for a in anomalies:
                self._events["anomalies"].append(
                    (_ts(a.at), a.terminal, a.point, a.kind, _json(a.value), a.detail)
                )

    def record_start(self, at: datetime | None = None) -> None:
        """The agent started: a new run begins, which each `flush` marks alive until then."""
        start = _ts(at) if at else self.clock()
        with self._buf_lock:
            self._events["starts"].append((start,))
            self._runs.setdefault(start, start)
            self._run = start

    def flush(self) -> None:
        """Write what was buffered, in one transaction; prune now and then. Blocks: off the loop."""
        with self._buf_lock:
            terminals, points, checks = self._terminals, self._points, self._checks
            events, plans, poll_accs, runs = self._events, self._plans, self._polls, self._runs
            meta = dict(self._meta_pending)
            self._reset_buffers()
            if self._run is not None:  # the agent runs: it is alive now
                runs[self._run] = max(runs.get(self._run, self._run), self.clock())
        if not (
            terminals
            or points
            or poll_accs
            or checks
            or plans
            or meta
            or runs
            or any(events.values())
        ):
            return  # nothing to write: no transaction (a report reader must not lock the file)
        with self._db() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
                self._write_plans(conn, plans)
                conn.executemany(
                    "INSERT INTO terminal_hours VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                    "polls = polls + excluded.polls, good_polls = good_polls + excluded.good_polls",
                    ((t, h, c[0], c[1]) for (t, h), c in terminals.items()),
                )
                conn.executemany(
                    "INSERT INTO runs VALUES (?, ?) "
                    "ON CONFLICT DO UPDATE SET until = max(until, excluded.until)",
                    runs.items(),
                )
                conn.executemany(
                    "INSERT INTO point_hours (terminal, point, hour, unit, good, bad, numbers, "
                    "min, max, sum, last, last_at, first_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT DO UPDATE SET unit = excluded.unit, "
                    "good = good + excluded.good, bad = bad + excluded.bad, "
                    "numbers = numbers + excluded.numbers, "
                    "min = min(coalesce(min, excluded.min), coalesce(excluded.min, min)), "
                    "max = max(coalesce(max, excluded.max), coalesce(excluded.max, max)), "
                    "sum = coalesce(sum, 0) + coalesce(excluded.sum, 0), "
                    "last = CASE WHEN last_at IS NULL OR excluded.last_at >= last_at "
                    "THEN coalesce(excluded.last, last) ELSE last END, "
                    "last_at = max(coalesce(last_at, excluded.last_at), "
                    "coalesce(excluded.last_at, last_at)), "
                    "first_at = min(coalesce(first_at, excluded.first_at), "
                    "coalesce(excluded.first_at, first_at))",
                    # Row by row (generators): the whole polls first, which merge into
                    # `points` what was also seen reading by reading, then `points`.
                    itertools.chain(
                        itertools.chain.from_iterable(
                            acc.rows(points, terminal, hour)
                            for (terminal, hour), acc in poll_accs.items()
                        ),
                        (_point_row(t, p, h, a) for (t, p, h), a in points.items()),
                    ),
                )
                conn.executemany(
                    "INSERT INTO check_hours VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE "
                    "SET worst = max(worst, excluded.worst), ok = ok + excluded.ok, "
                    "warn = warn + excluded.warn, fail = fail + excluded.fail, "
                    "unknown = unknown + excluded.unknown",
                    (
                        (i, h, a.family, a.worst, a.ok, a.warn, a.fail, a.unknown)
                        for (i, h), a in checks.items()
                    ),
                )
                for table, rows in events.items():
                    if rows:
                        marks = ", ".join("?" * len(rows[0]))
                        conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)  # noqa: S608 -- table names are ours
                now = self.clock()
                if now - self._pruned_at >= PRUNE_EVERY:
                    self._prune(conn, now)
                    self._pruned_at = now
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        with self._buf_lock:
            for key, value in meta.items():
                if self._meta_pending.get(key) == value:
                    del self._meta_pending[key]

    def _write_plans(
        self, conn: sqlite3.Connection, plans: tuple[dict[str, TerminalPlan], float] | None
    ) -> None:
        if plans is None:
            return
        wanted, at = plans
        open_rows = conn.execute(
            "SELECT rowid, terminal, interval, points FROM plans WHERE until IS NULL"
        ).fetchall()
        current = {}
        for rowid, terminal, interval, points in open_rows:
            if terminal not in current and wanted.get(terminal) == TerminalPlan(interval, points):
                current[terminal] = rowid
            else:
                conn.execute("UPDATE plans SET until = ? WHERE rowid = ?", (at, rowid))
        for terminal, plan in wanted.items():
            if terminal not in current:
                conn.execute(
                    "INSERT INTO plans VALUES (?, ?, ?, ?, NULL)",
                    (terminal, plan.interval, plan.points, at),
                )

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        cutoff = now - self.retention
        for table in ("terminal_hours", "point_hours", "check_hours"):
            conn.execute(f"DELETE FROM {table} WHERE hour < ?", (hour_of(cutoff),))  # noqa: S608 -- table names are ours
        for table in EVENT_TABLES:
            conn.execute(f"DELETE FROM {table} WHERE at < ?", (cutoff,))  # noqa: S608
            conn.execute(
                f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "  # noqa: S608
                "ORDER BY at DESC LIMIT -1 OFFSET ?)",
                (self.max_events,),
            )
        conn.execute("DELETE FROM plans WHERE until IS NOT NULL AND until < ?", (cutoff,))
        conn.execute("DELETE FROM runs WHERE until < ?", (cutoff,))
        conn.execute(
            "DELETE FROM runs WHERE start IN (SELECT start FROM runs "
            "ORDER BY start DESC LIMIT -1 OFFSET ?)",
            (self.max_events,),
        )

    # -- reads (for the report) ------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        with self._db() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Written now; on a full disk (or before the database could be opened), with the
        next flush."""
        with self._buf_lock:
            self._meta_pending[key] = value
        try:
            with self._db() as conn:
                if conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone() != (
                    value,
                ):
                    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        except sqlite3.Error as exc:
            if not db.is_disk_full(exc):
                raise
            return
        with self._buf_lock:
            if self._meta_pending.get(key) == value:
                del self._meta_pending[key]

    def terminals(self, since: datetime, until: datetime) -> list[TerminalFigures]:
        """Every terminal planned or seen in the period, with expected and received figures:
        expected while it was planned and the agent ran (`runs`)."""
        a, b = _ts(since), _ts(until)
        end_of_open = min(b, self.clock())
        runs = self.runs(since, until)
        with self._db() as conn:
            plans = conn.execute(
                "SELECT terminal, interval, points, since, until FROM plans "
                "WHERE since < ? AND (until IS NULL OR until > ?)",
                (b, a),
            ).fetchall()
            polls = conn.execute(
                "SELECT terminal, sum(polls), sum(good_polls) FROM terminal_hours "
                "WHERE hour >= ? AND hour < ? GROUP BY terminal",
                (hour_of(a), b),
            ).fetchall()
            readings = conn.execute(
                "SELECT terminal, sum(good), sum(bad), count(DISTINCT point) FROM point_hours "
                "WHERE hour >= ? AND hour < ? GROUP BY terminal",
                (hour_of(a), b),
            ).fetchall()
        seen_points = {t: int(n) for t, _, _, n in readings}
        expected: dict[str, list[float]] = {}
        for terminal, interval, points, start, stop in plans:
            end = min(b, stop if stop is not None else end_of_open)
            span = runs.running(max(a, start), end)
            e = expected.setdefault(terminal, [0.0, 0.0, 0.0])
            e[0] += span / interval
            e[2] += span
            e[1] += (
                span / interval * (points if points is not None else seen_points.get(terminal, 0))
            )
        seen_polls = {t: (int(p), int(g)) for t, p, g in polls}
        seen_readings = {t: (int(g), int(b_)) for t, g, b_, _ in readings}
        names = sorted(set(expected) | set(seen_polls) | set(seen_readings))
        none = [0.0, 0.0, 0.0]
        return [
            TerminalFigures(
                name,
                round(expected.get(name, none)[0], 3),
                seen_polls.get(name, (0, 0))[0],
                seen_polls.get(name, (0, 0))[1],
                round(expected.get(name, none)[1], 3),
                seen_readings.get(name, (0, 0))[0],
                seen_readings.get(name, (0, 0))[1],
                round(expected.get(name, none)[2], 3),
            )
            for name in names
        ]

    def numeric_points(self, since: datetime, until: datetime) -> list[tuple[str, str, str]]:
        """(terminal, point, unit) of every point with numeric values in the period."""
        with self._db() as conn:
            rows = conn.execute(
                "SELECT terminal, point, max(unit) FROM point_hours WHERE hour >= ? AND hour < ? "
                "AND numbers > 0 GROUP BY terminal, point ORDER BY terminal, point",
                (hour_of(_ts(since)), _ts(until)),
            ).fetchall()
        return [(str(t), str(p), str(u)) for t, p, u in rows]

    def point_series(
        self, terminal: str, point: str, since: datetime, until: datetime
    ) -> list[HourStats]:
        """The hourly statistics of one point's good numeric values."""
        with self._db() as conn:
            rows = conn.execute(
                "SELECT hour, numbers, min, max, sum, last, first_at FROM point_hours "
                "WHERE terminal = ? AND point = ? AND hour >= ? AND hour < ? AND numbers > 0 "
                "ORDER BY hour",
                (terminal, point, hour_of(_ts(since)), _ts(until)),
            ).fetchall()
        return [
            HourStats(
                datetime.fromtimestamp(h, UTC),
                n,
                lo,
                hi,
                (s / n) if s is not None else None,
                last,
                None if first is None else datetime.fromtimestamp(first, UTC),
            )
            for h, n, lo, hi, s, last, first in rows
        ]

    def checks(self, since: datetime, until: datetime) -> list[CheckFigures]:
        with self._db() as conn:
            rows = conn.execute(
                "SELECT id, family, max(worst), sum(ok), sum(warn), sum(fail), sum(unknown), "
                "sum(worst = 3), sum(worst = 2), max(hour) FROM check_hours "
                "WHERE hour >= ? AND hour < ? GROUP BY id ORDER BY id",
                (hour_of(_ts(since)), _ts(until)),
            ).fetchall()
        return [
            CheckFigures(
                i,
                f,
                _SEVERITY_STATUS[w],
                ok,
                warn,
                fail,
                unk,
                fh,
                wh,
                datetime.fromtimestamp(last + HOUR, UTC),
            )
            for i, f, w, ok, warn, fail, unk, fh, wh, last in rows
        ]

    def _events_between(
        self, table: str, columns: str, since: datetime, until: datetime
    ) -> list[tuple[Any, ...]]:
        with self._db() as conn:
            return conn.execute(
                f"SELECT {columns} FROM {table} WHERE at >= ? AND at < ? ORDER BY at",  # noqa: S608 -- our names
                (_ts(since), _ts(until)),
            ).fetchall()

    def alarms(self, since: datetime, until: datetime) -> list[AlarmRecord]:
        rows = self._events_between(
            "alarms",
            "at, check_id, family, action, status, previous, message, value, unit, threshold",
            since,
            until,
        )
        return [
            AlarmRecord(
                datetime.fromtimestamp(at, UTC), c, f, a, s, p, m, _scalar(v), u or "", _scalar(t)
            )
            for at, c, f, a, s, p, m, v, u, t in rows
        ]

    def anomalies(self, since: datetime, until: datetime) -> list[Anomaly]:
        rows = self._events_between(
            "anomalies", "at, terminal, point, kind, value, detail", since, until
        )
        return [
            Anomaly(t, p, k, datetime.fromtimestamp(at, UTC), json.loads(v) if v else None, d)
            for at, t, p, k, v, d in rows
        ]

    def changes(self, since: datetime, until: datetime) -> list[dict[str, Any]]:
        rows = self._events_between("changes", "at, id, family, status, message", since, until)
        return [
            {"at": datetime.fromtimestamp(at, UTC), "id": i, "family": f, "status": s, "message": m}
            for at, i, f, s, m in rows
        ]

    def begins(self) -> datetime | None:
        """When the history begins (None: it is empty): the earliest time the agent itself
        wrote down on its clock (the terminals' first plan, the first start, the first check
        change or alarm). Not the time of an observation: a station's report carries values
        from before the agent heard it. Only a history holding none of these begins with the
        earliest anomaly or hour of statistics."""
        with self._db() as conn:
            begins = conn.execute(
                "SELECT min(t) FROM (SELECT min(since) AS t FROM plans UNION ALL "
                "SELECT min(at) FROM starts UNION ALL SELECT min(start) FROM runs UNION ALL "
                "SELECT min(at) FROM changes UNION ALL SELECT min(at) FROM alarms)"
            ).fetchone()[0]
            if begins is None:
                begins = conn.execute(
                    "SELECT min(t) FROM (SELECT min(at) AS t FROM anomalies UNION ALL "
                    "SELECT min(hour) FROM terminal_hours UNION ALL "
                    "SELECT min(hour) FROM point_hours UNION ALL "
                    "SELECT min(hour) FROM check_hours)"
                ).fetchone()[0]
        return None if begins is None else datetime.fromtimestamp(begins, UTC)

    def runs(self, since: datetime, until: datetime) -> Runs:
        """The agent's runs that overlap [since, until), and where its recorded runs begin."""
        with self._db() as conn:
            spans = conn.execute(
                "SELECT start, until FROM runs WHERE start < ? AND until >= ? ORDER BY start",
                (_ts(until), _ts(since)),
            ).fetchall()
            first = conn.execute("SELECT min(start) FROM runs").fetchone()[0]
        return Runs(tuple((float(a), float(b)) for a, b in spans), first)

    def starts(self, since: datetime, until: datetime) -> list[datetime]:
        return [
            datetime.fromtimestamp(r[0], UTC)
            for r in self._events_between("starts", "at", since, until)
        ]

    def counts(self) -> dict[str, int]:
        """Rows per table (to see the bounds at work)."""
        tables = ("plans", "runs", "terminal_hours", "point_hours", "check_hours", *EVENT_TABLES)
        with self._db() as conn:
            return {
                t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # noqa: S608
                for t in tables
            }


def terminal_plans(config: Any) -> dict[str, TerminalPlan]:
    """The plans of a config's terminals: poll period and number of points, or the expected
    report interval (points unknown) for terminals that report on their own."""
    plans = {}
    for t in config.terminals:
        info = t.info
        points = len(info.points) if info.points is not None else None
        plans[t.name] = TerminalPlan(float(info.interval), points)
    return plans
