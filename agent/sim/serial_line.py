"""A virtual serial line: two pseudo-terminals joined back to back, optionally at line speed.

`a_path` and `b_path` are real tty devices (/dev/pts/N) that pyserial opens like a USB adapter.
With `baudrate` set, bytes take the time they would on the wire (10 bits a character by
default), in both directions, one direction at a time being independent (full duplex, as an
RS-485 adapter pair looks to software).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from pathlib import Path


class _Direction:
    def __init__(self, loop: asyncio.AbstractEventLoop, src: int, dst: int, char_time: float):
        self.loop, self.src, self.dst, self.char_time = loop, src, dst, char_time
        self.free_at = 0.0
        self.bytes = 0

    def on_readable(self) -> None:
        try:
            data = os.read(self.src, 4096)
        except OSError:
            return
        self.bytes += len(data)
        if not self.char_time:
            self._write(data)
            return
        start = max(self.loop.time(), self.free_at)
        self.free_at = start + len(data) * self.char_time
        self.loop.call_at(self.free_at, self._write, data)

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self.dst, data)


class VirtualSerialLine:
    def __init__(self, baudrate: int | None = None, bits_per_char: int = 10) -> None:
        self.char_time = bits_per_char / baudrate if baudrate else 0.0
        self._fds: list[int] = []
        self.a_path = ""
        self.b_path = ""
        self._directions: list[_Direction] = []
        self._links: list[Path] = []

    def open(self) -> VirtualSerialLine:
        loop = asyncio.get_running_loop()
        master_a, slave_a = os.openpty()
        master_b, slave_b = os.openpty()
        for fd in (slave_a, slave_b):
            tty.setraw(fd)  # no echo, no line editing: bytes pass as they are
        for fd in (master_a, master_b):
            os.set_blocking(fd, False)
        self._fds = [master_a, slave_a, master_b, slave_b]
        self.a_path, self.b_path = os.ttyname(slave_a), os.ttyname(slave_b)
        a_to_b = _Direction(loop, master_a, master_b, self.char_time)
        b_to_a = _Direction(loop, master_b, master_a, self.char_time)
        loop.add_reader(master_a, a_to_b.on_readable)
        loop.add_reader(master_b, b_to_a.on_readable)
        self._directions = [a_to_b, b_to_a]
        return self

    def link(self, a: Path | None = None, b: Path | None = None) -> None:
        """Give the ends stable names (symlinks), as udev rules do for real adapters."""
        for target, path in ((self.a_path, a), (self.b_path, b)):
            if path is None:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            path.symlink_to(target)
            self._links.append(path)

    @property
    def bytes_carried(self) -> int:
        return sum(d.bytes for d in self._directions)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for d in self._directions:
            loop.remove_reader(d.src)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for path in self._links:
            path.unlink(missing_ok=True)
        self._fds, self._directions, self._links = [], [], []
