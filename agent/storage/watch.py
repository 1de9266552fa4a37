"""Which watchdog events can change a file, and the paths they name (config and update watches).

Reading a watched file raises 'opened' and 'closed without writing' events: they must not count
as changes (the config check reads the config; the update part reads its state file). What can
change a file is a write closed, a create, a rename onto it, a delete or a modification.
"""

from __future__ import annotations

from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
)

FILE_CHANGES: tuple[type[FileSystemEvent], ...] = (
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
)


def changed_paths(
    event: FileSystemEvent, also: tuple[type[FileSystemEvent], ...] = ()
) -> list[Path]:
    """The paths `event` may have changed (its source, and its destination for a move); none
    for an event that changes nothing (FILE_CHANGES, and `also`, are the ones that can)."""
    if not isinstance(event, FILE_CHANGES + also):
        return []
    return [Path(str(p)) for p in (event.src_path, getattr(event, "dest_path", "")) if p]
