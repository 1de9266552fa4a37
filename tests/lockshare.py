"""A thread that shares the interpreter's lock the way the Modbus TCP engine's thread does.

The engine gives the lock up at every socket call and waits to take it again; while code on
the event loop computes, a waiting thread gets it back only every switch interval (5 ms).
Tests of work that pauses for the engine's sake count this thread's steps while it runs."""

from __future__ import annotations

import threading
import time


class LockSharingThread:
    """`with LockSharingThread() as thread:` ... `thread.steps`: how often it took the lock
    (gave it up with a zero sleep and got it back) while the block ran."""

    def __init__(self) -> None:
        self.steps = 0
        self._counting = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            time.sleep(0)  # lets the lock go, as a socket call does
            if self._counting.is_set():
                self.steps += 1

    def __enter__(self) -> LockSharingThread:
        self._thread.start()
        self._counting.set()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._counting.clear()
        self._done.set()
        self._thread.join(5)
