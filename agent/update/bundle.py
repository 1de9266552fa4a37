"""Reading an update bundle safely: the tar's shape checked before one byte of it is trusted.

A bundle (docs/updates.md, "Bundles") is an uncompressed POSIX tar. `open_bundle` checks the
whole file is within `max_bytes`, every member is a regular file (directories are skipped, as
`tar` makes them), its name is relative, without `..`, and one of `bundle.json`,
`metadata/<role>.json`, `metadata/<N>.root.json`, `targets/…`; no name twice; no member past
the end of the file (a truncated tar); metadata within python-tuf's maximum lengths. Nothing is
extracted: members are read in place from the open file (`BundleContents.read`), by offset, so
a 500 MiB bundle costs no memory and no disk. What the members *contain* is for TUF to judge
(`agent.update.trust`): nothing here is trusted, not even `bundle.json`.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from tuf.ngclient import UpdaterConfig

LABEL = "bundle.json"
MAX_LABEL_BYTES = 64 * 1024
CHUNK = 1 << 20

_ROOT_VERSION = re.compile(r"^metadata/[1-9]\d{0,8}\.root\.json$")
_TARGET = re.compile(r"^targets/[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)*$")


class BundleError(Exception):
    """The bundle is not a bundle we read: a one-line reason naming the file."""


def member_cap(name: str, max_bytes: int) -> int | None:
    """The largest a member of this name may be; None: the name has no place in a bundle."""
    tuf = UpdaterConfig()
    if name == LABEL:
        return MAX_LABEL_BYTES
    if _ROOT_VERSION.match(name) or name == "metadata/root.json":
        return tuf.root_max_length
    caps = {
        "metadata/timestamp.json": tuf.timestamp_max_length,
        "metadata/snapshot.json": tuf.snapshot_max_length,
        "metadata/targets.json": tuf.targets_max_length,
    }
    if name in caps:
        return caps[name]
    if _TARGET.match(name) and ".." not in name.split("/"):
        return max_bytes  # the real length check is the target's TUF length
    return None


@dataclass
class BundleContents:
    """The members of an open bundle: name → (offset, size) in the file, read on demand."""

    path: Path
    fd: int
    members: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __enter__(self) -> BundleContents:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __contains__(self, name: object) -> bool:
        return name in self.members

    def size(self, name: str) -> int:
        return self.members[name][1]

    def chunks(self, name: str) -> Iterator[bytes]:
        """The member's bytes in chunks of at most 1 MiB (KeyError: no such member)."""
        offset, size = self.members[name]
        end = offset + size
        while offset < end:
            data = os.pread(self.fd, min(CHUNK, end - offset), offset)
            if not data:
                raise BundleError(f"{self.path}: {name} ends early (the file was truncated)")
            offset += len(data)
            yield data

    def read(self, name: str) -> bytes:
        return b"".join(self.chunks(name))

    def label(self) -> dict[str, Any]:
        """bundle.json, for people and for choosing (never trusted); {} when absent or bad."""
        if LABEL not in self.members:
            return {}
        try:
            data = json.loads(self.read(LABEL))
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}


def _name(raw: str, bundle: Path) -> str:
    """The member's name, refused if absolute or climbing out; a leading ./ dropped."""
    if raw.startswith("/") or "\\" in raw or "\0" in raw:
        raise BundleError(f"{bundle}: member {raw!r} has an absolute or odd name")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BundleError(f"{bundle}: member {raw!r} climbs out with '..'")
    return "/".join(parts)


def open_bundle(path: Path, max_bytes: int) -> BundleContents:
    """Open and check a bundle; the caller closes it (a context manager). Raises BundleError."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BundleError(f"cannot read the bundle {path}: {exc.strerror or exc}") from exc
    contents = BundleContents(path, fd)
    try:
        _scan(contents, max_bytes)
    except BaseException:
        contents.close()
        raise
    return contents


def _scan(contents: BundleContents, max_bytes: int) -> None:
    path = contents.path
    st = os.fstat(contents.fd)
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{path} is not a regular file")
    if st.st_size > max_bytes:
        raise BundleError(
            f"{path} is {st.st_size} bytes, more than update.max_bundle_bytes ({max_bytes})"
        )
    with os.fdopen(os.dup(contents.fd), "rb") as stream:
        try:
            with tarfile.open(fileobj=stream, mode="r:") as tar:
                for member in tar:
                    _admit(contents, member, st.st_size, max_bytes)
        except tarfile.TarError as exc:
            raise BundleError(f"{path} is not a readable tar: {exc}") from exc
    if not contents.members:
        raise BundleError(f"{path} holds no files: not a bundle")


def _admit(contents: BundleContents, member: tarfile.TarInfo, file_size: int, cap: int) -> None:
    path = contents.path
    name = _name(member.name, path)
    if member.isdir():
        return
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.issparse():
        kind = "a link" if member.issym() or member.islnk() else "not a regular file"
        raise BundleError(f"{path}: member {member.name!r} is {kind}")
    limit = member_cap(name, cap)
    if limit is None:
        raise BundleError(f"{path}: member {member.name!r} has no place in a bundle")
    if member.size > limit:
        raise BundleError(f"{path}: member {name} is {member.size} bytes, more than {limit}")
    if member.offset_data + member.size > file_size:
        raise BundleError(f"{path}: member {name} ends past the end of the file (truncated)")
    if name in contents.members:
        raise BundleError(f"{path}: member {name} is there twice")
    contents.members[name] = (member.offset_data, member.size)
