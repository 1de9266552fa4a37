"""The request ids already seen: persistent and bounded, so a request is never served twice.

One SQLite table in `state_dir/diagnosis/replay.db` (opened by agent.storage.sqlite: a damaged
file is set aside and a fresh one started). `seen_or_add(id, exp)` records an id and says
whether it was there, in one transaction, so two deliveries of one request cannot both pass.
An id is kept until its `exp` plus the clock tolerance has passed (a request is refused as
expired after that anyway), and at most `limit` ids are kept, the ones expiring first dropped
first. It survives restarts: a request replayed after one is still refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.storage.atomic import ensure_dir
from agent.storage.sqlite import open_database

MIGRATIONS = [
    "CREATE TABLE seen (id TEXT PRIMARY KEY, exp REAL NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX seen_exp ON seen (exp);",
]


class ReplayCache:
    """Ids seen, with their expiry; thread-safe (the part checks requests in worker threads)."""

    def __init__(
        self,
        path: Path,
        *,
        limit: int,
        tolerance: float,
        now: Callable[[], float] = time.time,
    ) -> None:
        ensure_dir(Path(path).parent)
        opened = open_database(Path(path), MIGRATIONS, aside_label=f"damaged-{int(time.time())}")
        self.path = Path(path)
        self.set_aside = opened.set_aside
        self.limit = limit
        self.tolerance = tolerance
        self._now = now
        self._conn = opened.conn
        self._lock = threading.Lock()

    def seen_or_add(self, request_id: str, exp: float) -> bool:
        """True if `request_id` was seen already; otherwise it is recorded (durably)."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM seen WHERE exp < ?", (self._now() - self.tolerance,))
                if conn.execute("SELECT 1 FROM seen WHERE id = ?", (request_id,)).fetchone():
                    conn.execute("COMMIT")
                    return True
                conn.execute("INSERT INTO seen (id, exp) VALUES (?, ?)", (request_id, exp))
                (count,) = conn.execute("SELECT COUNT(*) FROM seen").fetchone()
                if count > self.limit:
                    conn.execute(
                        "DELETE FROM seen WHERE id IN "
                        "(SELECT id FROM seen WHERE id != ? ORDER BY exp, id LIMIT ?)",
                        (request_id, count - self.limit),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return False

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._conn.execute("SELECT COUNT(*) FROM seen").fetchone()
            return int(count)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
