"""The outbox on real files and real SQLite: order, seq, budget, age, damage, kill -9."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import OKPKey
from structlog.testing import capture_logs

from agent.outbox import AsyncOutbox, Outbox, OutboxError, Priority
from agent.signing import DeviceKey

ROOT = Path(__file__).resolve().parents[1]
GW = "gw-test"
T0 = datetime(2025, 6, 1, tzinfo=UTC).timestamp()

EVENT, HEALTH, TELEMETRY = Priority.EVENT, Priority.HEALTH, Priority.TELEMETRY


class Clock:
    """A wall clock the test moves by hand (for ages and timestamps)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def key() -> DeviceKey:
    return DeviceKey.generate()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.db"


@pytest.fixture
def outbox(db: Path, key: DeviceKey) -> Iterator[Outbox]:
    with Outbox(db, key, GW) as ob:
        yield ob


def telemetry(i: int, readings: int = 3) -> dict[str, Any]:
    return {"readings": [{"terminal": "t1", "point": f"p{n}", "value": i} for n in range(readings)]}


def seqs(ob: Outbox) -> list[int]:
    return [m.seq for m in ob.pending(1_000_000)]


def verify(token: str, jwk: dict[str, Any]) -> dict[str, Any]:
    with pytest.warns(SecurityWarning, match="RFC 9864"):  # EdDSA: see tests/test_signing.py
        result = jws.deserialize_compact(token, OKPKey.import_key(jwk), algorithms=["EdDSA"])
    payload: dict[str, Any] = json.loads(result.payload)
    return payload


# -- order, seq, envelopes -------------------------------------------------------------------


def test_pending_hands_out_events_then_health_then_telemetry_each_by_seq(outbox: Outbox) -> None:
    outbox.put("telemetry", telemetry(1), TELEMETRY)
    outbox.put("health", {"ok": True}, HEALTH)
    outbox.put_many([("events", {"alarm": "high"}, EVENT), ("telemetry", telemetry(2), TELEMETRY)])
    outbox.put("events", {"alarm": "low"}, EVENT)

    pending = outbox.pending(10)

    assert [(m.priority, m.seq) for m in pending] == [
        (EVENT, 3),
        (EVENT, 5),
        (HEALTH, 2),
        (TELEMETRY, 1),
        (TELEMETRY, 4),
    ]
    assert [m.kind for m in pending] == ["events", "events", "health", "telemetry", "telemetry"]
    assert all(m.id == m.seq and m.size == len(m.payload) for m in pending)
    assert [m.seq for m in outbox.pending(2)] == [3, 5]


def test_ack_removes_only_acknowledged_messages_and_unacked_ones_stay(outbox: Outbox) -> None:
    outbox.put_many([("telemetry", telemetry(i), TELEMETRY) for i in range(5)])
    handed_out = outbox.pending(3)

    assert outbox.ack([handed_out[0].id, handed_out[2].id, 999]) == 2

    assert seqs(outbox) == [2, 4, 5]
    assert outbox.stats().telemetry == 3


def test_pending_can_skip_messages_already_in_flight(outbox: Outbox) -> None:
    outbox.put_many([("telemetry", telemetry(i), TELEMETRY) for i in range(5)])

    assert [m.seq for m in outbox.pending(2, exclude={1, 2, 4})] == [3, 5]


def test_stored_payload_is_the_signed_envelope(outbox: Outbox, key: DeviceKey) -> None:
    body = telemetry(7)
    seq = outbox.put("telemetry", body, TELEMETRY)

    (message,) = outbox.pending(1)

    envelope = verify(message.payload, key.public_jwk())
    assert envelope["gw"] == GW
    assert envelope["seq"] == seq == message.seq
    assert envelope["kind"] == "telemetry"
    assert envelope["body"] == body
    ts = datetime.fromisoformat(envelope["ts"])
    assert envelope["ts"].endswith("Z")
    assert abs(ts.timestamp() - message.created_at) < 0.001


def test_seq_is_contiguous_and_continues_after_close_and_reopen(db: Path, key: DeviceKey) -> None:
    with Outbox(db, key, GW) as ob:
        first = [ob.put("telemetry", telemetry(i), TELEMETRY) for i in range(3)]
        first += ob.put_many([("events", {"n": i}, EVENT) for i in range(4)])
        ob.ack(first[:5])
    with Outbox(db, key, GW) as ob:
        again = ob.put_many([("health", {}, HEALTH), ("telemetry", telemetry(9), TELEMETRY)])
        assert ob.last_seq == 9

    assert first == list(range(1, 8))
    assert again == [8, 9]


def test_put_many_is_all_or_nothing_and_consumes_no_seq_on_refusal(outbox: Outbox) -> None:
    outbox.put("telemetry", telemetry(1), TELEMETRY)

    with pytest.raises(ValueError, match="JSON"):
        outbox.put_many(
            [("telemetry", telemetry(2), TELEMETRY), ("telemetry", {"v": float("nan")}, TELEMETRY)]
        )
    with pytest.raises(ValueError, match="topic suffix"):
        outbox.put("tele/#", {}, TELEMETRY)

    assert seqs(outbox) == [1]
    assert outbox.put("telemetry", telemetry(3), TELEMETRY) == 2


def test_synchronous_is_full_or_normal(db: Path, key: DeviceKey) -> None:
    with Outbox(db, key, GW, synchronous="normal") as ob:
        assert ob.put("events", {}, EVENT) == 1
    with pytest.raises(ValueError, match="synchronous"):
        Outbox(db, key, GW, synchronous="off")  # type: ignore[arg-type]


def test_a_second_owner_of_the_same_outbox_is_refused(outbox: Outbox, db: Path) -> None:
    with pytest.raises(OutboxError, match="in use"):
        Outbox(db, DeviceKey.generate(), GW).open()


def test_puts_acks_and_reads_from_many_threads_keep_seq_unique_and_gap_free(
    outbox: Outbox,
) -> None:
    got: list[int] = []
    lock = threading.Lock()

    def producer(n: int) -> None:
        for i in range(25):
            s = outbox.put_many([("telemetry", telemetry(i), TELEMETRY)] * (1 + (n + i) % 3))
            with lock:
                got.extend(s)

    def consumer() -> None:
        for _ in range(50):
            outbox.ack([m.id for m in outbox.pending(3)])

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(4)]
    threads.append(threading.Thread(target=consumer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(got) == list(range(1, len(got) + 1))
    stats = outbox.stats()
    assert stats.telemetry == len(seqs(outbox))
    assert stats.bytes == sum(m.size for m in outbox.pending(1_000_000))


# -- the byte budget and the age limit ---------------------------------------------------------


def test_over_budget_the_oldest_telemetry_goes_first_and_events_and_health_stay(
    db: Path, key: DeviceKey
) -> None:
    with Outbox(db, key, GW) as ob:
        ob.put("events", {"alarm": "high"}, EVENT)
        ob.put_many([("telemetry", telemetry(i), TELEMETRY) for i in range(4)])  # seq 2..5
        ob.put("health", {"ok": True}, HEALTH)
        budget = ob.stats().bytes
    clock = Clock()
    with capture_logs() as logs, Outbox(db, key, GW, max_bytes=budget, clock=clock) as ob:
        ob.put("telemetry", telemetry(10), TELEMETRY)  # seq 7: the same size as one evicted
        ob.put("events", {"alarm": "again"}, EVENT)  # seq 8

        assert seqs(ob) == [1, 8, 6, 4, 5, 7]
        stats = ob.stats()
        assert (stats.events, stats.health, stats.telemetry) == (2, 1, 3)
        assert stats.bytes <= budget
        assert stats.evicted == 2
        assert stats.last_evicted_at == datetime.fromtimestamp(T0, UTC)
    warnings = [e for e in logs if e["event"] == "outbox evicted oldest telemetry"]
    assert warnings and warnings[0]["log_level"] == "warning"
    assert warnings[0]["reason"] == "max_bytes"
    # Counted persistently: the count survives a restart.
    with Outbox(db, key, GW) as ob:
        assert ob.stats().evicted == 2
        assert ob.stats().evicted_bytes > 0


def test_only_events_and_health_left_over_budget_are_accepted_and_reported(
    db: Path, key: DeviceKey
) -> None:
    with capture_logs() as logs, Outbox(db, key, GW, max_bytes=1000) as ob:
        sent = [ob.put("events", {"alarm": i}, EVENT) for i in range(6)]
        sent.append(ob.put("health", {"ok": False}, HEALTH))

        assert seqs(ob) == sent
        stats = ob.stats()
        assert stats.over_budget
        assert stats.bytes > stats.max_bytes
        assert stats.evicted == 0
        assert any("over its byte budget" in e["event"] for e in logs)

        ob.ack(sent)
        assert not ob.stats().over_budget


def test_eviction_warnings_are_rate_limited_but_every_eviction_is_counted(
    db: Path, key: DeviceKey
) -> None:
    with capture_logs() as logs, Outbox(db, key, GW, max_bytes=2000, warn_interval=3600) as ob:
        for i in range(40):
            ob.put("telemetry", telemetry(i), TELEMETRY)
        evicted = ob.stats().evicted

    assert evicted >= 30
    warnings = [e for e in logs if e["event"] == "outbox evicted oldest telemetry"]
    # one when it started, one on close for the rest: never silent, never a flood
    assert len(warnings) == 2
    assert sum(w["evicted"] for w in warnings) == evicted


def test_telemetry_older_than_max_age_is_evicted_and_events_are_not(
    db: Path, key: DeviceKey
) -> None:
    clock = Clock()
    with Outbox(db, key, GW, max_age=3600, clock=clock) as ob:
        ob.put("telemetry", telemetry(1), TELEMETRY)  # 1
        ob.put("events", {"alarm": 1}, EVENT)  # 2
        clock.now += 1800
        ob.put("telemetry", telemetry(2), TELEMETRY)  # 3
        clock.now += 1801
        ob.put("health", {}, HEALTH)  # 4: seq 1 is now 3601 s old

        assert seqs(ob) == [2, 4, 3]
        clock.now += 1800
        ob.expire()  # without a put
        assert seqs(ob) == [2, 4]
        stats = ob.stats()
        assert stats.evicted == 2
        assert stats.oldest_age == pytest.approx(5401)


def test_telemetry_stamped_before_the_clock_was_set_is_not_aged_out(
    db: Path, key: DeviceKey
) -> None:
    clock = Clock(now=86_400.0)  # 1970: no RTC, no NTP yet
    with Outbox(db, key, GW, max_age=60, clock=clock) as ob:
        ob.put("telemetry", telemetry(1), TELEMETRY)
        clock.now = T0  # NTP steps the clock by decades
        ob.expire()

        assert seqs(ob) == [1]


# -- damage and loss ---------------------------------------------------------------------------


def fill(db: Path, key: DeviceKey, n: int, **kwargs: Any) -> list[int]:
    with Outbox(db, key, GW, **kwargs) as ob:
        return ob.put_many([("telemetry", telemetry(i, 20), TELEMETRY) for i in range(n)])


def test_a_file_that_is_not_a_database_is_set_aside_and_seq_never_repeats(
    db: Path, key: DeviceKey
) -> None:
    sent = fill(db, key, 5)
    garbage = random.randbytes(20_000)
    db.write_bytes(garbage)
    clock = Clock()

    with capture_logs() as logs, Outbox(db, key, GW, clock=clock) as ob:
        aside = ob.recovered_from
        assert aside == db.with_name("outbox.db.corrupt-20250601T000000Z")
        assert aside.read_bytes() == garbage
        assert ob.stats().recovered_from == aside
        assert seqs(ob) == []
        new = ob.put("events", {"alarm": "after recovery"}, EVENT)

    assert new > max(sent)
    assert any(e["log_level"] == "error" and "set aside" in e["event"] for e in logs)


def test_damaged_pages_fail_the_check_at_open_and_are_set_aside(db: Path, key: DeviceKey) -> None:
    sent = fill(db, key, 200)
    with db.open("r+b") as f:
        f.seek(4096 * 5)
        f.write(b"\xff" * 4096 * 3)

    with Outbox(db, key, GW) as ob:
        assert ob.recovered_from is not None
        assert ob.put("telemetry", telemetry(1), TELEMETRY) > max(sent)

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


def test_a_damaged_database_is_set_aside_with_its_wal(
    tmp_path: Path, db: Path, key: DeviceKey
) -> None:
    """A copy taken while the outbox is open has a WAL beside it, as after a power cut."""
    sent = fill(db, key, 200)
    copy = tmp_path / "copy" / "outbox.db"
    copy.parent.mkdir()
    with Outbox(db, key, GW) as ob:
        sent += ob.put_many([("events", {"n": i}, EVENT) for i in range(3)])
        for name in ("outbox.db", "outbox.db-wal", "outbox.db.seq"):
            (copy.parent / name).write_bytes((db.parent / name).read_bytes())
    wal = copy.with_name("outbox.db-wal").read_bytes()
    with copy.open("r+b") as f:
        f.seek(4096 * 5)
        f.write(b"\xff" * 4096 * 3)

    with Outbox(copy, key, GW) as ob:
        aside = ob.recovered_from
        assert aside is not None
        assert aside.with_name(aside.name + "-wal").read_bytes() == wal
        assert not copy.with_name("outbox.db-wal").exists() or seqs(ob) == []
        assert ob.put("events", {}, EVENT) > max(sent)


def test_seq_reservation_keeps_seq_ahead_of_a_lost_database(db: Path, key: DeviceKey) -> None:
    sent = fill(db, key, 25, seq_block=10)  # reservations move in steps of 10
    db.unlink()
    db.with_name("outbox.db-wal").unlink(missing_ok=True)

    with Outbox(db, key, GW, seq_block=10) as ob:
        new = ob.put("telemetry", telemetry(1), TELEMETRY)

    assert max(sent) < new <= max(sent) + 10 + 1


@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_with_database_and_reservation_both_lost_seq_restarts_above_the_clock_floor(
    db: Path, key: DeviceKey, damage: str
) -> None:
    sent = fill(db, key, 5)
    db.write_bytes(b"\0" * 8192)
    seq_file = db.with_name("outbox.db.seq")
    if damage == "deleted":
        seq_file.unlink()
    else:
        seq_file.write_bytes(b"\x00garbage")

    with Outbox(db, key, GW, clock=Clock()) as ob:
        new = ob.put("events", {}, EVENT)

    assert new == int(T0 * 1000) + 1 > max(sent)


# -- async face ----------------------------------------------------------------------------------


class CountingOutbox(Outbox):
    """An Outbox that counts its transactions."""

    calls = 0

    def put_many(self, items: Any) -> list[int]:
        self.calls += 1
        return super().put_many(items)


async def test_concurrent_async_puts_share_one_transaction_and_each_gets_its_seqs(
    db: Path, key: DeviceKey
) -> None:
    ob = CountingOutbox(db, key, GW)
    async with AsyncOutbox(ob) as aob:
        singles, pair = await asyncio.gather(
            asyncio.gather(*(aob.put("telemetry", telemetry(i), TELEMETRY) for i in range(40))),
            aob.put_many([("events", {"a": 1}, EVENT), ("health", {}, HEALTH)]),
        )
        stored = {m.seq: json.loads(verify_free_payload(m.payload)) for m in ob.pending(100)}

    assert ob.calls == 1
    assert sorted([*singles, *pair]) == list(range(1, 43))
    for i, s in enumerate(singles):
        assert stored[s]["body"] == telemetry(i)


def verify_free_payload(token: str) -> bytes:
    """The payload of a JWS without verifying (the signature is tested elsewhere)."""
    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


async def test_one_callers_bad_message_fails_only_that_caller(db: Path, key: DeviceKey) -> None:
    async with AsyncOutbox(Outbox(db, key, GW)) as aob:
        good_a = aob.put("telemetry", telemetry(1), TELEMETRY)
        bad = aob.put("telemetry", {"v": float("nan")}, TELEMETRY)
        good_b = aob.put("events", {}, EVENT)
        results = await asyncio.gather(good_a, bad, good_b, return_exceptions=True)
        stats = await aob.stats()
        pending = await aob.pending(10)
        acked = await aob.ack(m.id for m in pending)

    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], ValueError)
    assert stats.messages == 2
    assert [m.seq for m in pending] == [2, 1]
    assert acked == 2


# -- kill -9 -----------------------------------------------------------------------------------

CHILD = r"""
import sys
from pathlib import Path

import structlog

from agent.outbox import Outbox, Priority
from agent.signing import DeviceKey

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
outbox = Outbox(Path(sys.argv[1]), DeviceKey.generate(), "gw-kill")
outbox.open()
print("open", outbox.last_seq, flush=True)
i = 0
while True:
    i += 1
    body = {"readings": [{"point": f"p{n}", "value": i} for n in range(1 + i % 50)]}
    batch = [("telemetry", body, Priority.TELEMETRY)] * (1 + i % 4)
    if i % 7 == 0:
        batch.append(("events", {"alarm": i}, Priority.EVENT))
    print("put", *outbox.put_many(batch), flush=True)
    if i % 3 == 0:
        ids = [m.id for m in outbox.pending(3)]
        print("acking", *ids, flush=True)
        outbox.ack(ids)
"""


def run_and_kill(db: Path, lines_before_kill: int) -> list[str]:
    """Run the child until it has printed that many lines, SIGKILL it, return complete lines."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    out = b""
    while out.count(b"\n") < lines_before_kill:
        chunk = os.read(proc.stdout.fileno(), 65536)
        assert chunk, f"child ended early: {proc.communicate()[1].decode()}"
        out += chunk
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    out += rest
    complete = out[: out.rfind(b"\n") + 1]  # a line cut by the kill was never acknowledged
    return complete.decode().splitlines()


def test_kill_9_at_any_instant_loses_nothing_put_returned_and_corrupts_nothing(
    db: Path, key: DeviceKey
) -> None:
    put: set[int] = set()
    acking: set[int] = set()
    last_put = 0
    for _ in range(6):
        lines = run_and_kill(db, random.randint(100, 400))
        opened = int(lines[0].split()[1])
        assert opened >= last_put  # no seq goes back after a crash
        expected = opened + 1
        for line in lines[1:]:
            word, *numbers = line.split()
            values = [int(n) for n in numbers]
            if word == "put":
                assert values == list(range(expected, expected + len(values)))  # contiguous
                put.update(values)
                last_put = values[-1]
                expected = last_put + 1
            else:
                acking.update(values)

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    with Outbox(db, key, "gw-kill") as ob:
        assert ob.recovered_from is None
        stored = set(seqs(ob))
        last = ob.last_seq
        assert ob.put("events", {}, EVENT) == last + 1

    assert put - acking <= stored  # every durable put is still there
    assert set(range(1, last + 1)) <= stored | acking  # gap-free: missing only if acked
    assert last >= max(put)


def test_recover_while_open_sets_a_damaged_file_aside_and_seq_goes_on(
    db: Path, key: DeviceKey
) -> None:
    box = Outbox(db, key, "gw-1", synchronous="normal")
    box.open()
    try:
        box.put_many([("telemetry", {"n": i}, Priority.TELEMETRY) for i in range(20)])
        last = box.last_seq
        assert box.recover() is None  # a sound database is kept as it is
        assert box.stats().telemetry == 20
        db.write_bytes(os.urandom(8192))  # what a failing card may leave under a running agent
        kept = box.recover()
        assert kept is not None
        assert kept.exists()
        assert box.stats().messages == 0
        assert box.put("event", {"after": "recovery"}, Priority.EVENT) > last
    finally:
        box.close()


async def test_events_that_cannot_be_stored_wait_and_are_stored_once_the_outbox_is_back(
    db: Path, key: DeviceKey
) -> None:
    from agent.writer import OutboxWriter

    box = Outbox(db, key, "gw-1", synchronous="normal")
    box.open()
    box.close()  # the outbox fails every put: "not open"
    async with OutboxWriter(AsyncOutbox(box), retry=0.1) as writer:
        first = writer.put("event", {"type": "alarm", "n": 1}, Priority.EVENT)
        second = writer.put("event", {"type": "alarm", "n": 2}, Priority.EVENT)
        await asyncio.sleep(0.3)
        assert writer.waiting == 2 and not first.done()  # kept, not dropped, not acknowledged
        box.open()
        try:
            seqs = await asyncio.wait_for(asyncio.gather(first, second), 5)
            assert writer.waiting == 0 and seqs[0] < seqs[1]
            assert [m.kind for m in box.pending(10)] == ["event", "event"]
        finally:
            box.close()
