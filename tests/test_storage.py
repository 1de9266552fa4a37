"""agent.storage on real files and real SQLite: set aside, migrations, file modes, the layout."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.checks.view import record_start, restarts_path
from agent.config import Config, GatewayConfig
from agent.inspection import history_path
from agent.model import Quality, Reading
from agent.outbox import Outbox
from agent.signing import DeviceKey, init_key, key_path
from agent.sinks import JsonlSink
from agent.status import health_path
from agent.storage import sqlite as db
from agent.storage.atomic import copy_atomic, ensure_dir, move_durably, write_atomic
from agent.storage.layout import StateLayout
from tests.agentproc import write_config
from tests.conftest import tcp_terminal

MIGRATIONS: list[db.Migration] = [
    "CREATE TABLE notes (n INTEGER PRIMARY KEY, text TEXT NOT NULL);"
    "INSERT INTO notes (text) VALUES ('v1');",
]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: any mode the agent leaves to it would show."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def notes(conn: sqlite3.Connection) -> list[str]:
    return [t for (t,) in conn.execute("SELECT text FROM notes ORDER BY n")]


def test_a_damaged_database_is_set_aside_with_its_wal_and_a_fresh_one_opened(
    tmp_path: Path,
) -> None:
    live = tmp_path / "live" / "store.db"
    live.parent.mkdir()
    opened = db.open_database(live, MIGRATIONS, aside_label="damaged-1")
    opened.conn.executemany("INSERT INTO notes (text) VALUES (?)", [("x" * 500,)] * 200)
    opened.conn.close()  # checkpointed: the rows are in the main file now
    opened = db.open_database(live, MIGRATIONS, aside_label="damaged-1")
    opened.conn.execute("INSERT INTO notes (text) VALUES ('only in the WAL')")
    # A copy taken while the database is open has its WAL beside it, as after a power cut.
    path = tmp_path / "copy" / "store.db"
    path.parent.mkdir()
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{live}{suffix}", f"{path}{suffix}")
    opened.conn.close()
    wal = Path(f"{path}-wal").read_bytes()
    assert wal
    with path.open("r+b") as f:  # pages of the table in the main file
        f.seek(4096 * 5)
        f.write(b"\xff" * 4096 * 3)
    damaged = path.read_bytes()

    again = db.open_database(path, MIGRATIONS, aside_label="damaged-1")

    assert again.set_aside == path.with_name("store.db.damaged-1")
    assert again.set_aside.read_bytes() == damaged
    # Looking at it changed nothing: the WAL went along untouched, not checkpointed into it.
    assert Path(f"{again.set_aside}-wal").read_bytes() == wal
    assert again.reason
    assert (again.previous_version, again.version) == (0, 1)
    assert notes(again.conn) == ["v1"]  # fresh: only what the migration wrote
    again.conn.close()


def test_a_second_set_aside_does_not_overwrite_the_first(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    for n in range(2):
        path.write_bytes(b"not a database %d" % n * 100)
        db.open_database(path, MIGRATIONS, aside_label="damaged-1").conn.close()
    assert path.with_name("store.db.damaged-1").read_bytes().startswith(b"not a database 0")
    assert path.with_name("store.db.damaged-1.1").read_bytes().startswith(b"not a database 1")


def test_a_newer_schema_version_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE future (x)")
    conn.execute("PRAGMA user_version=7")
    conn.commit()
    conn.close()

    opened = db.open_database(path, MIGRATIONS, aside_label="newer")

    assert opened.set_aside == path.with_name("store.db.newer")
    assert opened.reason is not None and "newer" in opened.reason
    kept = sqlite3.connect(opened.set_aside)
    assert kept.execute("PRAGMA user_version").fetchone() == (7,)
    kept.close()
    assert opened.conn.execute("PRAGMA user_version").fetchone() == (1,)
    opened.conn.close()


def test_migrations_run_in_order_once_and_not_again_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    calls: list[int] = []

    def second(conn: sqlite3.Connection) -> None:
        calls.append(len(notes(conn)))
        conn.execute("INSERT INTO notes (text) VALUES ('v2')")

    steps: list[db.Migration] = [*MIGRATIONS, second]
    first = db.open_database(path, steps, aside_label="x")
    assert (first.previous_version, first.version, first.set_aside) == (0, 2, None)
    assert notes(first.conn) == ["v1", "v2"]
    first.conn.close()
    assert calls == [1]  # the SQL step had run before the callable

    reopened = db.open_database(path, steps, aside_label="x")
    assert reopened.previous_version == 2
    assert notes(reopened.conn) == ["v1", "v2"]
    reopened.conn.close()
    assert calls == [1]

    grown = db.open_database(
        path, [*steps, "INSERT INTO notes (text) VALUES ('v3');"], aside_label="x"
    )
    assert (grown.previous_version, grown.version) == (2, 3)
    assert notes(grown.conn) == ["v1", "v2", "v3"]
    assert grown.conn.execute("PRAGMA user_version").fetchone() == (3,)
    grown.conn.close()


def test_a_large_database_is_worked_through_a_bounded_page_cache(tmp_path: Path) -> None:
    """SQLite keeps 2 MB of pages a connection by default; the agent's stay at CACHE_KIB
    however large the file grows (an outbox during an outage, a history of weeks)."""
    sqlite_lib = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
    sqlite_lib.sqlite3_memory_used.restype = ctypes.c_int64
    conn = db.connect(tmp_path / "big.db")
    try:
        before = sqlite_lib.sqlite3_memory_used()
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO t VALUES (?, ?)", ((i, os.urandom(200)) for i in range(50_000))
        )
        conn.execute("COMMIT")
        assert sum(len(v) for (v,) in conn.execute("SELECT v FROM t")) == 50_000 * 200  # 10 MB
        used = sqlite_lib.sqlite3_memory_used() - before
    finally:
        conn.close()
    assert used < (db.CACHE_KIB + 128) * 1024, f"{used} bytes of SQLite memory"


def test_a_failing_migration_leaves_the_database_at_the_last_good_version(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    broken = "CREATE TABLE half (x); INSERT INTO no_such_table VALUES (1);"
    with pytest.raises(db.StorageError, match="no_such_table"):
        db.open_database(path, [*MIGRATIONS, broken], aside_label="x")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (1,)
    tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"notes"}  # the step's first statement was rolled back with it
    conn.close()
    assert not path.with_name("store.db.x").exists()  # an error, not damage: nothing moved

    def failing(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE other (x)")
        raise ValueError("bad step")

    with pytest.raises(ValueError, match="bad step"):
        db.open_database(path, [*MIGRATIONS, failing], aside_label="x")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (1,)
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'other'").fetchone() == (
        0,
    )
    conn.close()


@pytest.mark.usefixtures("open_umask")
def test_a_database_and_its_wal_and_shm_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "new" / "store.db"
    ensure_dir(path.parent)
    opened = db.open_database(path, MIGRATIONS, aside_label="x")
    opened.conn.execute("INSERT INTO notes (text) VALUES ('w')")
    files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    assert [mode(f) for f in files] == [0o600] * 3
    opened.conn.close()


def test_an_existing_database_that_is_too_open_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    db.open_database(path, MIGRATIONS, aside_label="x").conn.close()
    path.chmod(0o644)
    opened = db.open_database(path, MIGRATIONS, aside_label="x")
    opened.conn.execute("INSERT INTO notes (text) VALUES ('w')")
    assert mode(path) == 0o600
    assert mode(Path(f"{path}-wal")) == 0o600
    opened.conn.close()
    path.chmod(0o640)  # group read, where an operator chose it, is kept
    db.open_database(path, MIGRATIONS, aside_label="x").conn.close()
    assert mode(path) == 0o640


@pytest.mark.usefixtures("open_umask")
def test_folders_are_made_without_access_for_others(tmp_path: Path) -> None:
    leaf = tmp_path / "state_dir" / "state"
    ensure_dir(leaf)
    assert (mode(leaf.parent), mode(leaf)) == (0o750, 0o700)
    leaf.chmod(0o755)
    ensure_dir(leaf)
    assert mode(leaf) == 0o700
    leaf.chmod(0o755)
    ensure_dir(leaf, tighten=False)
    assert mode(leaf) == 0o755


@pytest.mark.usefixtures("open_umask")
def test_atomic_writes_are_0600_unless_told(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a.json", b"{}")
    write_atomic(tmp_path / "b.json", b"{}", mode=0o640)
    assert (mode(tmp_path / "a.json"), mode(tmp_path / "b.json")) == (0o600, 0o640)


@pytest.mark.usefixtures("open_umask")
def test_the_jsonl_copy_is_0600_also_after_rotation(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    sink = JsonlSink(tmp_path / "readings.jsonl", max_bytes=300)
    sink.open()
    reading = Reading("plc", "level", 1.5, "m", Quality.GOOD, datetime.now(UTC), "holding:0")
    for _ in range(5):
        sink.submit([reading])
    sink.close()
    assert tmp_path.joinpath("readings.jsonl.1").exists()
    assert mode(tmp_path / "readings.jsonl") == mode(tmp_path / "readings.jsonl.1") == 0o600


def test_the_layout_names_the_files_the_modules_use(tmp_path: Path) -> None:
    config = Config(gateway=GatewayConfig(id="gw"), state_dir=tmp_path / "s")
    layout = config.layout
    assert layout == StateLayout(
        tmp_path / "s", config.control.socket.parent, config.control.socket
    )
    assert config.outbox_path == layout.outbox_db == tmp_path / "s" / "outbox.db"
    assert config.jsonl_path == layout.readings_jsonl
    ob = Outbox(config.outbox_path, DeviceKey.generate(), "gw")
    assert (ob.seq_path, ob.lock_path) == (layout.outbox_seq, layout.outbox_lock)
    assert history_path(config) == layout.history_db
    assert restarts_path(config.state_dir) == layout.restarts
    assert health_path(config.state_dir) == layout.health
    assert key_path(config.state_dir) == layout.device_key
    assert layout.keys_dir == layout.device_key.parent
    assert {layout.restarts.parent, layout.alarms.parent, layout.health.parent} == {
        layout.state_subdir
    }
    assert layout.runtime_dir == Path("/run/edge-agent")


@pytest.mark.usefixtures("open_umask")
def test_state_files_and_folders_written_by_the_helpers_are_private(tmp_path: Path) -> None:
    state = tmp_path / "state_dir"
    init_key(state)
    record_start(state)
    layout = StateLayout(state)
    assert mode(state) == 0o750
    assert (mode(layout.keys_dir), mode(layout.device_key)) == (0o700, 0o600)
    assert (mode(layout.state_subdir), mode(layout.restarts)) == (0o700, 0o600)


def walk_modes(root: Path) -> dict[str, int]:
    found = {".": mode(root)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = mode(path)
    return found


def not_private(modes: dict[str, int], root: Path) -> dict[str, str]:
    bad = {}
    for name, bits in modes.items():
        path = root / name
        # a folder: nothing for others; a file: owner read-write, group read at most
        ok = (bits & 0o007 == 0) if path.is_dir() else bits in (0o600, 0o640)
        if not ok:
            bad[name] = f"{bits:04o}"
    return bad


async def test_the_running_agent_leaves_no_file_readable_by_others(
    tmp_path: Path, device: tuple[Any, int], agent_factory: Any
) -> None:
    """The real agent under a permissive umask: every file 0600/0640, no folder open to others."""
    sim, port = device
    sim.units[1].set_number("holding", 0, 2.5, "float32")
    config = tmp_path / "config.yaml"
    state = tmp_path / "state"
    write_config(
        config,
        state,
        [
            tcp_terminal(
                port,
                [{"name": "level", "address": 0, "type": "float32", "unit": "m"}],
                period="200ms",
            )
        ],
    )
    old = os.umask(0o002)  # inherited by the agent: group- and world-readable by default
    try:
        agent = await agent_factory(config)
    finally:
        os.umask(old)
    layout = StateLayout(state)
    expected = [
        layout.outbox_db,
        layout.outbox_seq,
        layout.outbox_lock,
        layout.history_db,
        layout.device_key,
        layout.restarts,
        layout.health,
        layout.readings_jsonl,
    ]
    await agent.wait_for("the state files", lambda: all(p.exists() for p in expected), timeout=20.0)
    await agent.wait_for("readings", lambda: len(agent.readings()) >= 3)
    running = walk_modes(state)
    assert f"{layout.outbox_db.name}-wal" in running  # the journals are looked at too
    assert await agent.stop() == 0
    stopped = walk_modes(state)

    assert not_private(running, state) == {}
    assert not_private(stopped, state) == {}
    assert running["."] == 0o750
    assert running["keys"] == running["state"] == 0o700


def test_copy_atomic_gives_the_whole_file_with_exactly_its_mode(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    target = tmp_path / "copy"
    target.write_bytes(b"old")
    old_umask = os.umask(0o077)
    try:
        copy_atomic(source, target, mode=0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "source"]  # no temp left


def test_move_durably_crosses_file_systems(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the temp folder")
    source = Path(tempfile.mkdtemp(dir=shm)) / "bundle"
    try:
        source.write_bytes(b"a bundle dropped on another mount")
        target = tmp_path / "pending" / "bundle"
        target.parent.mkdir()
        move_durably(source, target)
        assert target.read_bytes() == b"a bundle dropped on another mount"
        assert target.stat().st_mode & 0o777 == 0o600
        assert not source.exists()
    finally:
        shutil.rmtree(source.parent, ignore_errors=True)
