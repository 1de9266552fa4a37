"""Durable file writes: the one helper for state files (DESIGN.md, rules of the house).

A file written here is either the old one or the new one after a power cut, never a mix:
temp file in the same folder, fsync, rename over the target, fsync of the folder.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make the folder's entries (a rename, a new or removed file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644, overwrite: bool = True) -> None:
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


def move_durably(source: Path, target: Path) -> None:
    """Rename `source` to `target` (same file system) and make the rename durable."""
    source.replace(target)
    fsync_dir(target.parent)
    if source.parent != target.parent:
        fsync_dir(source.parent)
