"""The one way the agent opens an SQLite database (the outbox, the history): check, set aside,
migrate.

Rules: a database is looked at through a read-only connection first (`PRAGMA quick_check` and
its schema version), so that looking at a damaged file changes nothing. A file that is damaged,
not SQLite, or of a schema newer than the code knows is set aside with its -wal and -shm (never
deleted) and a fresh one started. The schema grows only by migrations: a list of SQL scripts or
callables, the one at index i taking the database from version i to i + 1 in one transaction
(`PRAGMA user_version` is bumped in it). Every database file is created 0600 before SQLite
touches it, so its -wal and -shm are private too; an existing file that is too open is narrowed.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.storage.atomic import (
    PRIVATE_FILE_MODE,
    TOO_OPEN,
    is_ours,
    make_private,
    move_durably,
)

Synchronous = Literal["full", "normal"]
# One step of a schema: SQL (one script, may hold several statements) or a callable that gets
# the connection inside the step's transaction.
Migration = str | Callable[[sqlite3.Connection], None]
SIDE_FILES = ("-wal", "-shm")
# Pages a connection keeps in memory (SQLite's default is 2 MB a connection, reached once a
# file outgrows it: an outbox filling during an outage, a history of weeks). The agent's
# writes go to a B-tree's end and its reads are recent or sequential; the OS page cache holds
# the rest of the file, so a small cache costs no disk reads.
CACHE_KIB = 512


class StorageError(sqlite3.DatabaseError):
    """The database cannot be opened or used for a reason other than damage (disk, rights).

    A sqlite3.DatabaseError, so that callers that handled SQLite's own errors still do.
    """


class UnusableDatabase(Exception):
    """The file must be set aside: not SQLite, damaged, or of a newer schema. `str()` is why."""


@dataclass(frozen=True, slots=True)
class Opened:
    """What `open_database` found and did."""

    conn: sqlite3.Connection
    previous_version: int  # user_version before migrating: 0 for a new (or fresh) database
    version: int  # user_version now (= len(migrations))
    set_aside: Path | None  # where a damaged file was moved, with its -wal and -shm
    reason: str | None  # why it was set aside


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """The error says the file is damaged or not a database (not a disk or locking problem)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return False
    return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


# What SQLite says when the file system has no room: SQLITE_FULL, or, for the shared-memory
# file a WAL database needs even to be read, SQLITE_IOERR_SHMSIZE.
_FULL_CODES = frozenset({sqlite3.SQLITE_FULL, getattr(sqlite3, "SQLITE_IOERR_SHMSIZE", 4874)})
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """The error (or one it was raised from) says the file system is full: SQLite's
    SQLITE_FULL or SQLITE_IOERR_SHMSIZE, an OSError ENOSPC or EDQUOT."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain of `raise ... from`; bounded
        if seen is None:
            return False
        if isinstance(seen, sqlite3.Error):
            code = getattr(seen, "sqlite_errorcode", None)
            if code is not None and (code in _FULL_CODES or code & 0xFF == sqlite3.SQLITE_FULL):
                return True
        if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def make_private_files(path: Path) -> None:
    """Create the database file 0600 if missing; narrow it and its -wal/-shm if too open."""
    make_private(path, PRIVATE_FILE_MODE)
    for suffix in SIDE_FILES:
        side = side_file(path, suffix)
        with contextlib.suppress(FileNotFoundError):
            st = side.stat()
            if st.st_mode & TOO_OPEN and is_ours(st):
                side.chmod(PRIVATE_FILE_MODE)


def side_file(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def check(path: Path, known_version: int) -> None:
    """`PRAGMA quick_check` and the schema version through a read-only connection.

    Read-only, so that looking at a damaged database changes nothing: a read-write connection
    would checkpoint the WAL into it, and delete the WAL, when it closes. UnusableDatabase if the
    file must be set aside, StorageError if it cannot be looked at. A missing file is fine.
    """
    if not path.exists():
        return
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StorageError(f"{path}: cannot open: {exc}") from exc
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise UnusableDatabase("quick_check: " + "; ".join(problems))
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > known_version:
            raise UnusableDatabase(f"schema version {version} is newer than this agent's")
    except sqlite3.DatabaseError as exc:
        if is_corruption(exc):
            raise UnusableDatabase(str(exc)) from exc
        raise StorageError(f"{path}: {exc}") from exc
    finally:
        conn.close()


def connect(
    path: Path, *, synchronous: Synchronous = "full", journal_size_limit: int | None = None
) -> sqlite3.Connection:
    """A read-write connection in WAL mode, autocommit (callers BEGIN themselves), any thread.

    The file is created 0600 first. UnusableDatabase if SQLite finds it damaged on the way.
    """
    try:
        make_private_files(path)
    except OSError as exc:
        raise StorageError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StorageError(f"{path}: cannot open: {exc}") from exc
    with _closed_on_error(conn, path):
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StorageError(f"{path}: cannot use WAL mode (got {mode})")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")  # negative: in KiB
        if journal_size_limit is not None:
            conn.execute(f"PRAGMA journal_size_limit={int(journal_size_limit)}")
    return conn


@contextlib.contextmanager
def _closed_on_error(conn: sqlite3.Connection, path: Path) -> Iterator[None]:
    """Close `conn` on any error; damage becomes UnusableDatabase, other SQLite errors ours."""
    try:
        yield
    except StorageError:
        conn.close()
        raise
    except sqlite3.DatabaseError as exc:
        conn.close()
        if is_corruption(exc):
            raise UnusableDatabase(str(exc)) from exc
        raise StorageError(f"{path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> int:
    """Apply the migrations the database has not had yet; the version it had before.

    Each runs in its own transaction together with its bump of `user_version`: a crash or an
    error leaves the database at the last completed version. UnusableDatabase for a version
    newer than `len(migrations)`; sqlite3 errors otherwise propagate (the caller classifies).
    """
    (found,) = conn.execute("PRAGMA user_version").fetchone()
    if found > len(migrations):
        raise UnusableDatabase(f"schema version {found} is newer than this agent's")
    for version in range(found, len(migrations)):
        step = migrations[version]
        bump = f"PRAGMA user_version={version + 1}"
        try:
            if isinstance(step, str):
                # One script with its own BEGIN/COMMIT: executescript commits any transaction
                # opened by execute() before it runs, so the step could not be inside one.
                conn.executescript(f"BEGIN IMMEDIATE;\n{step}\n;{bump};\nCOMMIT;")
            else:
                conn.execute("BEGIN IMMEDIATE")
                step(conn)
                conn.execute(bump)
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
    return int(found)


def set_aside(path: Path, label: str) -> Path:
    """Move the database and its -wal/-shm to ``<name>.<label>`` (``.1``, ``.2``... if taken).

    The -wal and -shm are renamed along so that SQLite would find them beside the kept copy.
    Every rename is durable. Where the database was kept.
    """
    target = path.with_name(f"{path.name}.{label}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.{label}.{n}")
        n += 1
    for suffix in SIDE_FILES:
        side = side_file(path, suffix)
        if side.exists():
            move_durably(side, side_file(target, suffix))
    if path.exists():
        move_durably(path, target)
    return target


def _open_once(
    path: Path,
    migrations: Sequence[Migration],
    synchronous: Synchronous,
    journal_size_limit: int | None,
) -> tuple[sqlite3.Connection, int]:
    check(path, len(migrations))
    conn = connect(path, synchronous=synchronous, journal_size_limit=journal_size_limit)
    with _closed_on_error(conn, path):
        previous = migrate(conn, migrations)
    return conn, previous


def open_database(
    path: Path,
    migrations: Sequence[Migration],
    *,
    aside_label: str,
    synchronous: Synchronous = "full",
    journal_size_limit: int | None = None,
) -> Opened:
    """Check, connect and migrate `path`; a file that must be set aside is, and a fresh one made.

    `aside_label` names the kept copy (``<name>.<aside_label>``). StorageError when the
    database cannot be opened for another reason (then nothing was moved).
    """
    path = Path(path)
    try:
        conn, previous = _open_once(path, migrations, synchronous, journal_size_limit)
    except UnusableDatabase as exc:
        try:
            kept = set_aside(path, aside_label)
        except OSError as move_exc:
            raise StorageError(
                f"{path}: damaged ({exc}) and cannot be set aside: {move_exc.strerror or move_exc}"
            ) from move_exc
        conn, previous = _open_once(path, migrations, synchronous, journal_size_limit)
        return Opened(conn, previous, len(migrations), kept, str(exc))
    return Opened(conn, previous, len(migrations), None, None)
