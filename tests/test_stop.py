"""Leaving the parts within the stop deadline (`agent.daemon.leave_by`), with real tasks and
real time: past the deadline every part still leaving is cut, not only the one leaving then."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import pytest

from agent.daemon import CUT_GRACE, leave_by


def slow_part(
    name: str, seconds: float, started: list[str], ended: list[str]
) -> Callable[[], Awaitable[None]]:
    """A part's exit that takes `seconds`, noting when it begins and whether it ends."""

    async def leave() -> None:
        started.append(name)
        await asyncio.sleep(seconds)
        ended.append(name)

    return leave


async def test_past_the_deadline_every_part_still_leaving_is_cut_in_turn() -> None:
    started: list[str] = []
    ended: list[str] = []
    stack = AsyncExitStack()
    for name in ("outbox", "uplink", "writer", "drivers"):  # left in reverse: drivers first
        stack.push_async_callback(slow_part(name, 1.0, started, ended))
    loop = asyncio.get_running_loop()
    began = time.monotonic()
    cut = await leave_by(stack, loop.time() + 0.3)
    took = time.monotonic() - began
    assert cut
    assert started == ["drivers", "writer", "uplink", "outbox"]  # every part was asked to leave
    assert ended == []  # and each was cut (a single cancellation cut only the first: 3.3 s)
    assert took < 0.3 + 4 * CUT_GRACE + 0.5


async def test_parts_that_leave_in_time_are_not_cut_and_their_own_error_is_raised() -> None:
    started: list[str] = []
    ended: list[str] = []
    stack = AsyncExitStack()
    stack.push_async_callback(slow_part("outbox", 0.05, started, ended))
    loop = asyncio.get_running_loop()
    assert await leave_by(stack, loop.time() + 2) is False
    assert ended == ["outbox"]

    async def broken() -> None:
        raise OSError("disk gone")

    stack = AsyncExitStack()
    stack.push_async_callback(slow_part("outbox", 0.05, started, ended))
    stack.push_async_callback(broken)
    with pytest.raises(OSError, match="disk gone"):
        await leave_by(stack, loop.time() + 2)
    assert ended == ["outbox", "outbox"]  # the part after the broken one was still left
