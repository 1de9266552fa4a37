"""Durable file writes: the one helper for state files (docs/architecture.md, rules of the house).

A file written here is either the old one or the new one after a power cut, never a mix:
temp file in the same folder, fsync, rename over the target, fsync of the folder. Files are
private by default (mode 0600, applied exactly, whatever the umask).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import IO

PRIVATE_FILE_MODE = 0o600  # read and written by the agent's user only


def fsync_dir(directory: Path) -> None:
    """Make the folder's entries (a rename, a new or removed file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path, data: bytes, *, mode: int = PRIVATE_FILE_MODE, overwrite: bool = True
) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one.

    `mode` is applied exactly (not filtered by the umask), before any byte is written. With
    `overwrite=False` an existing file is never replaced: FileExistsError is raised instead,
    also when another process creates it at the same time (the new file is hard-linked into
    place, which fails if the name exists).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            tmp.replace(path)
        else:
            os.link(tmp, path)
            tmp.unlink()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def remove_stale_temps(path: Path) -> int:
    """Remove temp files a crash left behind by `write_atomic(path, ...)`; how many."""
    path = Path(path)
    removed = 0
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed += 1
    return removed


def copy_atomic(
    source: Path, target: Path, *, mode: int = PRIVATE_FILE_MODE, sync_dir: bool = True
) -> None:
    """Copy `source` to `target` so that a crash leaves the old target or the whole copy: a
    temp file beside it (`mode`, exactly), its bytes synced, renamed over. `sync_dir=False`
    leaves the folder's fsync to a caller that copies several files."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with source.open("rb") as src:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            with os.fdopen(fd, "wb") as dst:
                os.fchmod(fd, mode)
                shutil.copyfileobj(src, dst, 1024 * 1024)
                dst.flush()
                os.fsync(fd)
        tmp.replace(target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if sync_dir:
        fsync_dir(target.parent)


def move_durably(source: Path, target: Path) -> None:
    """Rename `source` to `target` and make the rename durable. Across file systems (a bundle
    dropped into an inbox on another mount) the file is copied atomically (0600), then the
    source removed."""
    try:
        source.replace(target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy_atomic(source, target, sync_dir=False)
        source.unlink()
    fsync_dir(target.parent)
    if source.parent != target.parent:
        fsync_dir(source.parent)


# Bits a private file must not have: group write or execute, and anything for other users.
# Group read (0640) is allowed where an operator chose it; the agent itself creates 0600.
TOO_OPEN = 0o037
PRIVATE_DIR_MODE = 0o700  # folders the agent creates under state_dir (keys/, state/, ...)
STATE_DIR_MODE = 0o750  # state_dir itself, as the package lays it out (systemd StateDirectoryMode)


def is_ours(st: os.stat_result) -> bool:
    """Whether we may narrow the mode of a file: ours, or we are root. Another user's file (an
    operator's command reading the agent's) is left as it is."""
    return st.st_uid == os.geteuid() or os.geteuid() == 0


def open_private(path: Path, flags: int, mode: int = PRIVATE_FILE_MODE) -> int:
    """`os.open(path, flags | O_CREAT | O_CLOEXEC)` creating `mode`; an existing file that is
    too open (group-writable, or anything for others) is narrowed to `mode`. A file descriptor.

    The creation mode is filtered by the umask, which only ever removes bits: a permissive umask
    cannot widen it. SQLite creates a database's -wal and -shm with the database's mode, so a
    database file created here gives private journals too.
    """
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        st = os.fstat(fd)
        if st.st_mode & TOO_OPEN and is_ours(st):
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private(path: Path, mode: int = PRIVATE_FILE_MODE) -> None:
    """Create `path` empty with `mode` if missing, or narrow it to `mode` if too open."""
    os.close(open_private(path, os.O_RDONLY, mode))


def ensure_dir(
    path: Path,
    mode: int = PRIVATE_DIR_MODE,
    *,
    tighten: bool = True,
    parent_mode: int = STATE_DIR_MODE,
) -> None:
    """Create folder `path` with exactly `mode`; missing parents get `parent_mode`.

    Parents are made here, not by `mkdir(parents=True)`, whose parents follow the umask: the
    first folder the agent makes is usually state_dir itself. An existing folder is narrowed to
    `mode` when `tighten` and it has bits outside `mode`: for the agent's own folders (state/,
    keys/). Pass `tighten=False` for a folder that may be someone else's (the parent of a file a
    caller named): it keeps its mode. A folder of another user is never changed.
    """
    path = Path(path)
    if not path.parent.exists():
        ensure_dir(path.parent, parent_mode, tighten=False, parent_mode=parent_mode)
    try:
        path.mkdir(mode=mode)
    except FileExistsError:
        if not path.is_dir():
            raise
        st = path.stat()
        if not tighten or not st.st_mode & 0o777 & ~mode or not is_ours(st):
            return
    path.chmod(mode)  # mkdir's mode is filtered by the umask; an existing folder may be wider


def open_private_append(path: Path) -> IO[str]:
    """`path` opened for appending text (UTF-8), created 0600 (see `open_private`)."""
    fd = open_private(path, os.O_WRONLY | os.O_APPEND)
    try:
        return os.fdopen(fd, "a", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise
