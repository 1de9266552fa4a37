"""Watches the config file and says when it changed; the daemon decides what to do.

watchdog runs the handler on its own thread: it only sets an asyncio event on the loop. Only
events that can change the file count (a write closed, a create, a rename onto it, a delete):
reading the file (the config check does, and so does the reload itself) raises 'opened' and
'closed without writing' events, which must not start a reload. Where the file cannot be
watched (inotify limits), SIGHUP still reloads: that is logged, not fatal.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from agent.storage.watch import changed_paths

log = structlog.get_logger(__name__)


class _Handler(FileSystemEventHandler):
    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop, changed: asyncio.Event):
        self.path = path
        self.loop = loop
        self.changed = changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        if self.path in changed_paths(event):
            self.loop.call_soon_threadsafe(self.changed.set)


class ConfigWatcher:
    """Sets `changed` when the file at `path` may have changed; a context manager."""

    def __init__(self, path: Path, changed: asyncio.Event) -> None:
        self.path = path
        self.changed = changed
        self._observer: Observer | None = None  # type: ignore[valid-type]

    def __enter__(self) -> ConfigWatcher:
        handler = _Handler(self.path, asyncio.get_running_loop(), self.changed)
        observer = Observer()
        try:
            observer.schedule(handler, str(self.path.parent), recursive=False)
            observer.start()
        except OSError as exc:  # e.g. inotify limits: SIGHUP still works
            log.warning("cannot watch the config file; reload with SIGHUP", error=str(exc))
        else:
            self._observer = observer
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=1)
            self._observer = None
