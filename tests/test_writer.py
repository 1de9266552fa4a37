"""The outbox writer against a real outbox (SQLite in tmp_path): durable before acknowledged,
group commits, gathered readings, one error policy for every kind of message."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.model import NotStored, Quality, Reading
from agent.outbox import AsyncOutbox, Outbox, OutboxError, Priority
from agent.signing import DeviceKey, init_key
from agent.telemetry import expand
from agent.writer import OutboxWriter

EVENT, HEALTH, TELEMETRY = Priority.EVENT, Priority.HEALTH, Priority.TELEMETRY
FAILING_LOG = "outbox cannot take messages now; keeping them and trying again"


@pytest.fixture
def key(tmp_path: Path) -> DeviceKey:
    return init_key(tmp_path / "state")


@pytest.fixture
def box(tmp_path: Path, key: DeviceKey) -> Iterator[Outbox]:
    outbox = Outbox(tmp_path / "state" / "outbox.db", key, "gw-test", synchronous="normal")
    outbox.open()
    yield outbox
    outbox.close()


class CountingAsyncOutbox(AsyncOutbox):
    """The real AsyncOutbox; counts the transactions the writer asks for."""

    def __init__(self, outbox: Outbox) -> None:
        super().__init__(outbox)
        self.calls: list[int] = []  # the number of messages of each put_batch

    async def put_batch(self, items: Any) -> list[int]:
        self.calls.append(len(items))
        return await super().put_batch(items)


def reading(i: int, terminal: str = "t1") -> Reading:
    return Reading(
        terminal, f"p{i}", float(i), "m", Quality.GOOD, datetime(2026, 1, 1, tzinfo=UTC), f"h:{i}"
    )


def body(payload: str) -> Any:
    """The body of a stored message (a JWS) without verifying it (tests/test_signing.py does)."""
    part = payload.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))["body"]


def stored(box: Outbox) -> list[tuple[int, str, Any]]:
    """Every message waiting in the outbox, by seq: (seq, kind, body)."""
    return sorted((m.seq, m.kind, body(m.payload)) for m in box.pending(10_000))


@contextmanager
def reopened_at_the_end(box: Outbox) -> Iterator[None]:
    """Reopen a closed outbox when the block ends, also on a failed assertion: the writer only
    leaves once everything is stored, so a test that fails with it closed would hang."""
    try:
        yield
    finally:
        with suppress(OutboxError):  # already open
            box.open()


async def until(predicate: Any, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


# -- acknowledged once durable ---------------------------------------------------------------


async def test_put_future_is_pending_until_the_commit_and_then_gives_the_seq_of_a_stored_message(
    box: Outbox,
) -> None:
    in_outbox_when_done: list[list[int]] = []
    async with OutboxWriter(AsyncOutbox(box)) as writer:
        future = writer.put("event", {"type": "alarm"}, EVENT)
        # What the outbox holds at the very moment the future completes.
        future.add_done_callback(
            lambda _: in_outbox_when_done.append([m.seq for m in box.pending(10)])
        )
        assert not future.done()
        assert box.pending(10) == []
        seq = await asyncio.wait_for(future, 3)

    assert in_outbox_when_done == [[seq]]
    assert stored(box) == [(seq, "event", {"type": "alarm"})]
    assert writer.stats.stored == 1


async def test_many_puts_at_once_are_stored_in_few_transactions_in_put_order(box: Outbox) -> None:
    outbox = CountingAsyncOutbox(box)
    async with OutboxWriter(outbox) as writer:
        futures = [writer.put("telemetry", {"n": i}, TELEMETRY) for i in range(200)]
        seqs = await asyncio.wait_for(asyncio.gather(*futures), 3)

    assert len(outbox.calls) <= 2 and sum(outbox.calls) == 200
    assert seqs == list(range(seqs[0], seqs[0] + 200))
    assert [(s, b["n"]) for s, _, b in stored(box)] == list(zip(seqs, range(200), strict=True))
    assert writer.stats.stored == 200


# -- gathering readings ----------------------------------------------------------------------


async def test_submitted_readings_are_stored_as_one_telemetry_message_after_linger_not_before(
    box: Outbox,
) -> None:
    async with OutboxWriter(AsyncOutbox(box), batch=100, linger=0.5) as writer:
        writer.submit([reading(1), reading(2)])
        await asyncio.sleep(0.05)
        writer.submit([reading(3)])
        await asyncio.sleep(0.15)
        assert box.pending(10) == [] and writer.waiting == 0  # still gathering
        await until(lambda: box.pending(10))
        await asyncio.sleep(0.55)  # no second message: one cut, one message

    [(_, kind, telemetry)] = stored(box)
    assert kind == "telemetry"
    assert [r["point"] for r in expand(telemetry, {})] == ["p1", "p2", "p3"]


async def test_batch_readings_are_cut_at_once_without_waiting_for_linger(box: Outbox) -> None:
    async with OutboxWriter(AsyncOutbox(box), batch=3, linger=30) as writer:
        writer.submit([reading(1), reading(2)])
        assert writer.waiting == 0  # under batch: gathering
        writer.submit([reading(3), reading(4)])  # 4 gathered: all cut, in messages of 3 at most
        assert writer.waiting == 2
        await until(lambda: len(box.pending(10)) == 2)
        messages = stored(box)
        assert [k for _, k, _ in messages] == ["telemetry", "telemetry"]
        # A poll's readings stay together in one message when it fits.
        assert [[r["point"] for r in expand(b, {})] for _, _, b in messages] == [
            ["p1", "p2"],
            ["p3", "p4"],
        ]


async def test_a_poll_larger_than_batch_is_split_into_messages_of_batch_readings(
    box: Outbox,
) -> None:
    async with OutboxWriter(AsyncOutbox(box), batch=3, linger=30) as writer:
        writer.submit([reading(i) for i in range(1, 8)])
        await until(lambda: len(box.pending(10)) == 3)
        sizes = [len(expand(b, {})) for _, _, b in stored(box)]
        assert sizes == [3, 3, 1]


async def test_cut_stores_the_gathered_readings_now_and_its_future_completes_at_the_commit(
    box: Outbox,
) -> None:
    async with OutboxWriter(AsyncOutbox(box), batch=100, linger=30) as writer:
        writer.submit([reading(1)])
        done = writer.cut()
        assert not done.done() and writer.waiting == 1
        await asyncio.wait_for(done, 3)
        [(_, kind, telemetry)] = stored(box)
        assert kind == "telemetry" and expand(telemetry, {})[0]["point"] == "p1"
        assert writer.waiting == 0


async def test_the_outbox_changed_event_is_set_after_a_commit_of_every_kind(box: Outbox) -> None:
    outbox = AsyncOutbox(box)
    async with OutboxWriter(outbox, linger=30) as writer:
        for kind, priority in (("event", EVENT), ("health", HEALTH)):
            outbox.changed.clear()
            future = writer.put(kind, {"kind": kind}, priority)
            assert not outbox.changed.is_set()
            await asyncio.wait_for(future, 3)
            assert outbox.changed.is_set(), kind
        outbox.changed.clear()
        writer.submit([reading(1)])
        await asyncio.wait_for(writer.cut(), 3)
        assert outbox.changed.is_set(), "telemetry"
    assert [k for _, k, _ in stored(box)] == ["event", "health", "telemetry"]


# -- a failing outbox ------------------------------------------------------------------------


async def test_a_failing_outbox_keeps_the_order_across_retries_counts_failures_and_logs_once(
    box: Outbox,
) -> None:
    box.close()  # every put fails: "outbox is not open"
    with capture_logs() as logs:
        async with OutboxWriter(AsyncOutbox(box), retry=0.05, linger=30) as writer:
            with reopened_at_the_end(box):
                first = writer.put("event", {"n": 1}, EVENT)
                writer.submit([reading(2)])
                cut = writer.cut()
                third = writer.put("health", {"n": 3}, HEALTH)
                await until(lambda: writer.stats.failures >= 3)
                assert writer.waiting == 3
                assert not first.done() and not cut.done() and not third.done()
                assert writer.stats.stored == 0 and writer.stats.lost == {}
                box.open()
                one, _, three = await asyncio.wait_for(asyncio.gather(first, cut, third), 3)

    failing = [e for e in logs if e["event"] == FAILING_LOG]
    assert len(failing) == 1  # logged once, not once per retry
    assert "not open" in failing[0]["error"] and failing[0]["waiting"] == 3
    seqs = {k: s for s, k, _ in stored(box)}
    assert one == seqs["event"] < seqs["telemetry"] < seqs["health"] == three  # put order kept


async def test_a_message_that_can_never_be_stored_fails_alone_and_the_rest_of_its_batch_is_stored(
    tmp_path: Path, key: DeviceKey
) -> None:
    box = Outbox(
        tmp_path / "small.db", key, "gw-test", synchronous="normal", max_message_bytes=2000
    )
    box.open()
    try:
        outbox = CountingAsyncOutbox(box)
        with capture_logs() as logs:
            async with OutboxWriter(outbox) as writer:
                futures = [
                    writer.put("event", {"n": 1}, EVENT),
                    writer.put("event", {"n": 2, "what": object()}, EVENT),  # not JSON
                    writer.put("telemetry", {"n": 3}, TELEMETRY),
                    writer.put("telemetry", {"n": 4, "big": "x" * 5000}, TELEMETRY),  # too large
                    writer.put("health", {"n": 5}, HEALTH),
                ]
                results = await asyncio.wait_for(
                    asyncio.gather(*futures, return_exceptions=True), 3
                )
        assert outbox.calls[0] == 5  # they were one batch
        assert isinstance(results[1], NotStored) and isinstance(results[3], NotStored)
        assert "over the limit" in str(results[3])
        good = [results[0], results[2], results[4]]
        assert [(s, b["n"]) for s, _, b in stored(box)] == list(zip(good, [1, 3, 5], strict=True))
        assert writer.stats.lost == {"event": 1, "telemetry": 1}
        assert writer.stats.stored == 3 and writer.stats.failures == 0  # refused: not stored
        dropped = [e for e in logs if e["event"] == "a message cannot be stored and is dropped"]
        assert [e["kind"] for e in dropped] == ["event", "telemetry"]
    finally:
        box.close()


async def test_over_max_waiting_the_oldest_telemetry_is_given_up_first_and_events_are_kept(
    box: Outbox,
) -> None:
    box.close()
    async with OutboxWriter(AsyncOutbox(box), max_waiting=3, retry=0.05) as writer:
        with reopened_at_the_end(box):
            e1 = writer.put("event", {"n": "e1"}, EVENT)
            t1 = writer.put("telemetry", {"n": "t1"}, TELEMETRY)
            t2 = writer.put("telemetry", {"n": "t2"}, TELEMETRY)
            e2 = writer.put("event", {"n": "e2"}, EVENT)  # 4th: t1 goes
            assert t1.done() and not t2.done() and not e1.done()
            e3 = writer.put("event", {"n": "e3"}, EVENT)  # 5th: t2 goes
            assert t2.done() and writer.waiting == 3
            with pytest.raises(NotStored, match="given up"):
                t1.result()
            with pytest.raises(NotStored):
                t2.result()
            assert writer.stats.lost == {"telemetry": 2}
            await until(lambda: writer.stats.failures >= 1)
            box.open()
            await asyncio.wait_for(asyncio.gather(e1, e2, e3), 3)

    assert [b["n"] for _, _, b in stored(box)] == ["e1", "e2", "e3"]


async def test_over_max_waiting_with_no_telemetry_left_the_oldest_event_is_given_up(
    box: Outbox,
) -> None:
    box.close()
    async with OutboxWriter(AsyncOutbox(box), max_waiting=2, retry=0.05) as writer:
        with reopened_at_the_end(box):
            e1 = writer.put("event", {"n": "e1"}, EVENT)
            h1 = writer.put("health", {"n": "h1"}, HEALTH)
            e2 = writer.put("event", {"n": "e2"}, EVENT)
            assert e1.done() and not h1.done() and not e2.done()
            with pytest.raises(NotStored):
                e1.result()
            assert writer.stats.lost == {"event": 1}
            box.open()
            await asyncio.wait_for(asyncio.gather(h1, e2), 3)

    assert [b["n"] for _, _, b in stored(box)] == ["h1", "e2"]


# -- leaving and giving up waiting -----------------------------------------------------------


async def test_leaving_the_context_stores_readings_still_gathering(box: Outbox) -> None:
    async with OutboxWriter(AsyncOutbox(box), batch=100, linger=30) as writer:
        writer.submit([reading(1), reading(2)])
        assert box.pending(10) == []

    [(_, kind, telemetry)] = stored(box)
    assert kind == "telemetry" and len(expand(telemetry, {})) == 2
    assert writer.waiting == 0 and writer.stats.stored == 1


async def test_a_caller_that_stops_waiting_does_not_stop_its_message_from_being_stored(
    box: Outbox,
) -> None:
    async with asyncio.timeout(5):  # a writer that died would never let its context end
        async with OutboxWriter(AsyncOutbox(box)) as writer:
            future = writer.put("event", {"type": "alarm"}, EVENT)
            waiter = asyncio.create_task(asyncio.wait_for(future, 10))
            await asyncio.sleep(0)
            waiter.cancel()  # the caller gives up: awaiting a future and cancelled cancels it
            await asyncio.wait({waiter})
            assert future.cancelled()
            after = writer.put("event", {"type": "after"}, EVENT)
            await asyncio.wait_for(after, 3)

    assert [b["type"] for _, _, b in stored(box)] == ["alarm", "after"]
    assert writer.stats.lost == {} and writer.stats.stored == 2


async def test_a_message_whose_caller_timed_out_while_the_outbox_failed_is_stored_once_it_is_back(
    box: Outbox,
) -> None:
    box.close()
    async with OutboxWriter(AsyncOutbox(box), retry=0.05) as writer:
        with reopened_at_the_end(box):
            future = writer.put("event", {"type": "alarm"}, EVENT)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(future, 0.1)  # the caller gives up: the future is cancelled
            assert future.cancelled() and writer.waiting == 1
            box.open()
            await until(lambda: writer.waiting == 0)

    assert [b["type"] for _, _, b in stored(box)] == ["alarm"]
    assert writer.stats.lost == {}


async def test_stopping_on_a_failing_disk_takes_at_most_stop_timeout_and_fails_the_waiters(
    box: Outbox,
) -> None:
    box.close()  # every put fails
    loop = asyncio.get_running_loop()
    with capture_logs() as logs:
        writer = OutboxWriter(AsyncOutbox(box), retry=0.05, stop_timeout=0.3)
        async with writer:
            event = writer.put("event", {"n": 1}, EVENT)
            report = writer.commit_readings([reading(2)])
            started = loop.time()
        took = loop.time() - started
    assert took < 1.0  # not held by the failing disk
    for waiter in (event, report):
        with pytest.raises(NotStored):
            waiter.result()
    assert writer.stats.lost == {"event": 1, "telemetry": 1}
    assert any(e["event"].startswith("stopped before these messages were stored") for e in logs)
    # Stopped: what comes later is refused at once, counted, never left waiting.
    late = writer.put("event", {"n": 3}, EVENT)
    with pytest.raises(NotStored):
        late.result()
    writer.submit([reading(4)])  # a poller's last readings: counted, no exception
    assert writer.stats.lost == {"event": 2, "telemetry": 2}


# -- backpressure: what was polled is never given up to make room --------------------------


async def test_a_writer_behind_holds_the_pollers_back_and_gives_up_nothing_polled(
    box: Outbox,
) -> None:
    """Over `max_backlog` bytes the writer is `congested` (the pollers skip their slots); the
    readings already taken all wait, none is given up, and once the outbox takes writes
    again every one is stored and the pressure is off."""
    box.close()  # the outbox cannot take writes: everything waits in the writer
    async with OutboxWriter(
        AsyncOutbox(box), batch=10, linger=30, retry=0.05, max_backlog=4096
    ) as writer:
        with reopened_at_the_end(box):
            taken = 0
            while not writer.congested:
                writer.submit([reading(taken + i) for i in range(10)])  # a full batch: cut
                taken += 10
                assert taken < 1000, "the writer never said it was behind"
            assert writer.backlog >= 4096
            for _ in range(5):  # polls under way when it filled: still taken, none refused
                writer.submit([reading(taken + i) for i in range(10)])
                taken += 10
            await until(lambda: writer.stats.failures >= 1)
            assert writer.congested and writer.stats.lost == {} and writer.stats.lost_readings == 0
            box.open()
            await until(lambda: writer.waiting == 0)
            assert not writer.congested and writer.backlog == 0

    values = [
        r["value"] for _, kind, b in stored(box) if kind == "telemetry" for r in expand(b, {})
    ]
    assert sorted(values) == list(range(taken))


async def test_over_max_waiting_polled_telemetry_waits_and_the_writer_says_it_is_behind(
    box: Outbox,
) -> None:
    """Past `max_waiting` messages with only polled telemetry queued, nothing is given up:
    the writer is congested instead (the pollers hold back) and everything is stored later."""
    box.close()
    async with OutboxWriter(AsyncOutbox(box), batch=1, retry=0.05, max_waiting=3) as writer:
        with reopened_at_the_end(box):
            for i in range(5):
                writer.submit([reading(i)])
            assert writer.waiting == 5 and writer.congested
            assert writer.stats.lost == {}
            box.open()
            await until(lambda: writer.waiting == 0)
            assert not writer.congested

    assert len(stored(box)) == 5
