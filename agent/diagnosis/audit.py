"""The audit trail of remote diagnosis: `state_dir/audit.log`, one JSON object a line, chained.

Every request — accepted, refused or failed — is one line (`AuditLog.append`): the entry with
`n` (1, 2, …), `at` (UTC) and `prev`, the SHA-256 (hex) of the previous line's bytes (64 zeros
for the first). A line is flushed and fsynced before `append` returns, so it is on disk before
the answer goes out. `verify(path)` walks the chain and names the first line that was changed,
removed or moved. The file is created 0600.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.model import format_timestamp
from agent.storage.atomic import ensure_dir, open_private

GENESIS = "0" * 64


def _now() -> str:
    return format_timestamp(datetime.now(UTC))


def _digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _last_line(path: Path) -> bytes | None:
    """The file's last complete line (with its newline), or None for an empty/missing file."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return None
            block, data = 4096, b""
            pos = size
            while pos > 0:
                step = min(block, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
                body = data[:-1] if data.endswith(b"\n") else data
                if b"\n" in body:
                    return body.rsplit(b"\n", 1)[1] + b"\n"
            return data if data.endswith(b"\n") else data + b"\n"
    except FileNotFoundError:
        return None


class AuditLog:
    """Appends chained lines to one audit file; one append at a time (a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._n: int | None = None
        self._prev = GENESIS

    def _resume(self) -> None:
        ensure_dir(self.path.parent, tighten=False)
        last = _last_line(self.path)
        if last is None:
            self._n, self._prev = 0, GENESIS
            return
        self._prev = _digest(last)
        try:
            n = json.loads(last).get("n")
        except ValueError:
            n = None
        if isinstance(n, bool) or not isinstance(n, int):
            # A damaged end: carry on from a count of the lines, the chain shows the damage.
            with self.path.open("rb") as f:
                n = sum(1 for _ in f)
        self._n = n

    def append(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Write `entry` as the next line (flushed and fsynced); the line as written."""
        with self._lock:
            if self._n is None:
                self._resume()
            assert self._n is not None
            line = {"n": self._n + 1, "at": _now(), **entry, "prev": self._prev}
            data = (json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
            fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._n += 1
            self._prev = _digest(data)
            return line


def read_lines(path: Path) -> list[bytes]:
    """The file's lines, each with its newline (a last line without one is kept as it is)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return data.splitlines(keepends=True)


def verify(path: Path) -> list[str]:
    """Problems with the chain (empty: intact); it stops at the first, which names the line
    (its number in the file and its `n`) that was changed, removed or moved.

    A line is protected by the `prev` of the line after it: the last line of the file is
    protected once the next request is logged (and by its copy sent upstream as an event).
    """
    lines = read_lines(path)
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return [f"line {number}: not an audit entry ({exc}): changed"]
        entries.append(entry)
    numbers = [e.get("n") for e in entries]
    prev = GENESIS
    for index, (line, entry) in enumerate(zip(lines, entries, strict=True)):
        number, expected = index + 1, index + 1
        n = entry.get("n")
        if n != expected:
            if expected in numbers[index + 1 :]:
                return [f"line {number}: n={n} where n={expected} belongs: lines moved"]
            if isinstance(n, int) and not isinstance(n, bool) and n > expected:
                gone = f"n={expected}" if n == expected + 1 else f"n={expected}..{n - 1}"
                return [f"line {number} (n={n}): the line(s) before it ({gone}) removed"]
            return [f"line {number}: n={n} where n={expected} belongs: changed or moved"]
        if entry.get("prev") != prev:
            if index == 0:
                return ["line 1 (n=1): changed (prev is not 64 zeros)"]
            return [
                f"line {number - 1} (n={expected - 1}): changed (its hash is not the prev "
                f"of line {number})"
            ]
        if not line.endswith(b"\n"):
            return [f"line {number} (n={n}): incomplete (no newline: a cut write?)"]
        prev = _digest(line)
    return []


def tail(path: Path, count: int | None = None) -> list[dict[str, Any]]:
    """The last `count` entries (all when None), oldest first; unreadable lines skipped."""
    lines = read_lines(path)
    if count is not None:
        lines = lines[-count:] if count > 0 else []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries
