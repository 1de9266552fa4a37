"""A full disk is a state, not a crash: the outbox's reserve, loss accounting, the agent on a
small file system filled to the last byte (a real ENOSPC from a tmpfs)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.model import Quality, Reading
from agent.outbox import AsyncOutbox, Outbox, OutboxError, OutboxFull, Priority
from agent.signing import DeviceKey, read_envelope
from agent.writer import OutboxWriter
from tests.faults.conftest import SmallFs

EVENT, HEALTH, TELEMETRY = Priority.EVENT, Priority.HEALTH, Priority.TELEMETRY
RESERVE = 1024 * 1024
T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def key() -> DeviceKey:
    return DeviceKey.generate()


def make_outbox(fs: SmallFs, key: DeviceKey, **extra: Any) -> Outbox:
    options: dict[str, Any] = {"reserve_bytes": RESERVE, "probe_interval": 0.0, **extra}
    return Outbox(fs.path / "outbox.db", key, "gw-test", **options)


def telemetry(i: int) -> dict[str, Any]:
    return {"readings": [{"terminal": "plc", "point": f"p{i}", "value": "x" * 2000}]}


def fill_until_telemetry_refused(fs: SmallFs, box: Outbox) -> int:
    """Fill the disk; telemetry goes on until the outbox refuses it (the WAL's last page may
    hold one more). How many telemetry messages were still taken."""
    fs.fill()
    for taken in range(200):
        try:
            box.put("telemetry", telemetry(taken), TELEMETRY)
        except OutboxFull:
            return taken
    raise AssertionError("a full disk never refused telemetry")


def bodies(box: Outbox) -> list[tuple[int, str, Any]]:
    out = []
    for m in box.pending(10_000):
        _, envelope = read_envelope(m.payload)
        out.append((m.seq, m.kind, envelope["body"]))
    return out


def reading(terminal: str, at: datetime, point: str = "level") -> Reading:
    return Reading(terminal, point, 1.5, "m", Quality.GOOD, at, "holding:0")


# -- the outbox's reserve ----------------------------------------------------------------------


def test_full_disk_refuses_telemetry_but_events_health_and_acks_use_the_reserve(
    small_fs: SmallFs, key: DeviceKey
) -> None:
    with make_outbox(small_fs, key, seq_block=3) as box:
        assert box.reserve_path.stat().st_size == RESERVE
        queued = [box.put("telemetry", telemetry(i), TELEMETRY) for i in range(20)]
        fill_until_telemetry_refused(small_fs, box)
        assert box.disk_full
        assert box.stats().state == "disk full"
        # Events and health past the seq reservation (seq_block 3): the reservation file
        # needs the disk too, and gets it from the reserve.
        seqs = [box.put("event", {"alarm": i}, EVENT) for i in range(12)]
        seqs.append(box.put("health", {"ok": True}, HEALTH))
        assert seqs == list(range(seqs[0], seqs[0] + 13))
        reserved = json.loads(box.seq_path.read_bytes())["reserved"]
        assert reserved >= seqs[-1]
        assert box.ack(queued) == len(queued)
        with pytest.raises(OutboxFull):
            box.put("telemetry", telemetry(0), TELEMETRY)
        assert box.reserve_path.stat().st_size < RESERVE  # the reserve paid for them
        small_fs.release()
        after = box.put("telemetry", telemetry(1), TELEMETRY)
        assert after == seqs[-1] + 1  # nothing refused took a seq: no gap
        assert not box.disk_full
        assert box.reserve_path.stat().st_size == RESERVE  # re-made once there was room


def test_ack_on_a_full_disk_never_raises_anything_but_outbox_error(
    small_fs: SmallFs, key: DeviceKey
) -> None:
    with make_outbox(small_fs, key) as box:
        queued = [box.put("telemetry", telemetry(i), TELEMETRY) for i in range(200)]
        small_fs.fill()
        # Acknowledging all of them in many transactions: each needs WAL space.
        acked = 0
        for seq in queued:
            try:
                acked += box.ack([seq])
            except OutboxError:
                break
        assert acked == len(queued)


def test_start_on_a_full_disk_opens_with_the_reserve_and_drains(
    small_fs: SmallFs, key: DeviceKey
) -> None:
    with make_outbox(small_fs, key) as box:
        queued = [box.put("telemetry", telemetry(i), TELEMETRY) for i in range(30)]
    small_fs.fill()
    with make_outbox(small_fs, key) as box:
        assert box.disk_full
        assert [m.seq for m in box.pending(100)] == queued
        assert box.ack(queued[:10]) == 10
        with pytest.raises(OutboxFull):
            box.put("telemetry", telemetry(0), TELEMETRY)
        assert box.put("event", {"alarm": "x"}, EVENT) == queued[-1] + 1


def test_start_on_a_full_disk_without_a_reserve_runs_unopened_and_opens_when_room_returns(
    small_fs: SmallFs, key: DeviceKey
) -> None:
    with make_outbox(small_fs, key) as box:
        queued = [box.put("telemetry", telemetry(i), TELEMETRY) for i in range(5)]
    (small_fs.path / "outbox.db.reserve").unlink()
    small_fs.fill()
    with make_outbox(small_fs, key) as box:
        assert box.stats().state == "unavailable"
        with pytest.raises(OutboxFull):
            box.put("telemetry", telemetry(0), TELEMETRY)
        with pytest.raises(OutboxError):
            box.put("event", {"alarm": "x"}, EVENT)
        with pytest.raises(OutboxError):
            box.ack(queued)
        small_fs.release()
        assert box.put("event", {"alarm": "x"}, EVENT) == queued[-1] + 1
        assert box.stats().state == "ok"


# -- loss accounting ---------------------------------------------------------------------------


async def test_readings_not_stored_are_counted_per_terminal_and_reported_once(
    small_fs: SmallFs, key: DeviceKey
) -> None:
    box = make_outbox(small_fs, key)
    box.open()
    async with OutboxWriter(AsyncOutbox(box), linger=0.01, retry=0.05) as writer:
        writer.submit([reading("plc", T0)])
        await writer.cut()
        small_fs.fill()
        lost: dict[str, list[datetime]] = {"plc": [], "gauge": []}
        for i in range(40):  # until telemetry is refused, then 30 more polls
            at = T0 + timedelta(seconds=i + 1)
            batch = [reading("plc", at, "a"), reading("plc", at, "b"), reading("gauge", at)]
            writer.submit(batch)
            done = writer.cut()
            await asyncio.wait({done})
            if done.exception() is not None:
                lost["plc"] += [at, at]
                lost["gauge"].append(at)
        assert lost["gauge"], "the full disk never refused telemetry"
        stats = box.stats()
        counted = stats.lost.to_dict()["terminals"]
        assert counted == {
            name: {"readings": len(ats), "from": _stamp(min(ats)), "to": _stamp(max(ats))}
            for name, ats in lost.items()
        }
        assert stats.lost.reasons == {"disk full": len(lost["plc"]) + len(lost["gauge"])}
        # An alarm on the full disk is stored (the reserve), the loss not reported yet.
        await writer.put("event", {"alarm": "disk"}, EVENT)
        assert not [b for _, _, b in bodies(box) if b.get("type") == "loss"]
        small_fs.release()
        writer.submit([reading("plc", T0 + timedelta(minutes=5))])
        await writer.cut()
    box.close()
    with make_outbox(small_fs, key) as box:  # reopened: reported once, count reset
        messages = bodies(box)
        losses = [b for _, _, b in messages if b.get("type") == "loss"]
        assert losses == [
            {
                "type": "loss",
                "reason": "disk full",
                "readings": stats.lost.readings,
                "reasons": {"disk full": stats.lost.readings},
                "terminals": counted,
            }
        ]
        seqs = sorted(seq for seq, _, _ in messages)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # gap-free
        assert box.stats().lost.readings == 0
        assert box.stats().lost_reported == stats.lost.readings


def _stamp(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


