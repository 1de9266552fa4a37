"""What every fault test shares: the `faults` marker and a small file system to fill.

Every test under tests/faults/ is marked `faults` (select with `-m faults`, leave out with
`-m "not faults"`); `make test` runs them. A small file system is a tmpfs of a few MiB mounted
for the test (root only: elsewhere the tests that need one are skipped, saying why), so that a
full disk is a real ENOSPC from the kernel, not a simulated error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)


class SmallFs:
    """A tmpfs of `size` bytes at `path`; `fill()` takes its free space, `release()` gives it back."""

    FILLER = ".filler"

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    @property
    def filler(self) -> Path:
        return self.path / self.FILLER

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> int:
        """Take all free space but `leave` bytes (rounded to pages); returns bytes taken."""
        taken = 0
        with self.filler.open("ab") as f:
            for size in (65536, 4096):
                chunk = b"\0" * size
                while self.free_bytes() - size >= leave:
                    try:
                        f.write(chunk)
                        f.flush()
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
                    taken += size
        return taken

    def release(self) -> None:
        """Free what `fill` took."""
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()


def _can_mount() -> str | None:
    """Why a tmpfs cannot be mounted here, or None."""
    if os.geteuid() != 0:
        return "a small file system needs root (a tmpfs mount); run make test as root"
    if shutil.which("mount") is None:
        return "no mount command"
    return None


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFs]:
    """A 16 MiB tmpfs of its own (use `small_fs_of(size)` for another size)."""
    with mounted_tmpfs(tmp_path / "small", 16 * 1024 * 1024) as fs:
        yield fs


@pytest.fixture
def small_fs_of(tmp_path: Path) -> Iterator[object]:
    """A factory: `small_fs_of(size_bytes, name="small")` mounts a tmpfs of that size."""
    stack = contextlib.ExitStack()

    def make(size: int, name: str = "small") -> SmallFs:
        return stack.enter_context(mounted_tmpfs(tmp_path / name, size))

    with stack:
        yield make


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: int) -> Iterator[SmallFs]:
    why = _can_mount()
    if why is not None:
        pytest.skip(why)
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield SmallFs(path, size)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
