"""A full disk is a state, not a crash: the outbox's reserve, loss accounting, the agent on a
small file system filled to the last byte (a real ENOSPC from a tmpfs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.check_settings import ChecksConfig
from agent.checks import AgentView, Status, system
from agent.checks.history import History
from agent.control import ControlError, NotRunning, request
from agent.losses import LossLedger
from agent.metrics import Snapshot, families
from agent.model import Quality, Reading
from agent.outbox import AsyncOutbox, Outbox, OutboxError, OutboxFull, Priority
from agent.signing import DeviceKey, read_envelope
from agent.writer import OutboxWriter
from tests.agentproc import Agent, short_socket_path, write_config
from tests.broker import Mosquitto, persistent
from tests.collector import Collector, verify
from tests.collector import telemetry as received_telemetry
from tests.conftest import make_config, tcp_terminal
from tests.faults.conftest import SmallFs
from tests.test_store_forward import keys_show

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


# -- the agent as a process on a full disk -----------------------------------------------------

PREFIX = "edge/gw-test"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto that keeps the collector's session across its own restart."""
    mosquitto = persistent(tmp_path / "broker").start()
    yield mosquitto
    mosquitto.stop()


def agent_config(tmp_path: Path, state: Path, port: int, broker: Mosquitto) -> Path:
    config = tmp_path / "config.yaml"
    write_config(
        config,
        state,
        [
            tcp_terminal(
                port,
                [
                    {"name": "level", "address": 0, "type": "float32", "unit": "m"},
                    {"name": "count", "address": 2, "type": "uint32"},
                ],
                period="100ms",
            )
        ],
        # Every reading taken, kept off the small file system: what was not stored is told
        # by comparing it with what arrived upstream.
        jsonl={"enabled": True, "path": str(tmp_path / "state" / "readings.jsonl")},
        uplink={"broker": broker.url, "backoff_min": "100ms", "backoff_max": "500ms"},
        outbox={"synchronous": "normal", "reserve_bytes": 2 * 1024 * 1024},
        checks={"system": {"interval": "1s"}},
        health={"min_gap": "1s"},
    )
    return config


async def status_of(config: Path) -> dict[str, Any]:
    answer: dict[str, Any] = await request(Path(short_socket_path(config)), "status")
    return answer


async def wait_status(
    config: Path, what: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ControlError, NotRunning):
            last = await status_of(config)
            if predicate(last):
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last status: {last.get('outbox')}")


def taken_by_terminal(readings: list[dict[str, Any]]) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set[tuple[str, str]]] = {}
    for r in readings:
        out.setdefault(r["terminal"], set()).add((r["point"], r["observed_at"]))
    return out


async def test_agent_on_a_full_disk_polls_counts_losses_drains_restarts_and_reports_the_loss(
    tmp_path: Path, small_fs: SmallFs, device: Any, broker: Mosquitto, agent_factory: Any
) -> None:
    _sim, port = device
    config = agent_config(tmp_path, small_fs.path, port, broker)
    async with Collector(broker.port, f"{PREFIX}/#", client_id="disk-full") as collector:
        await asyncio.sleep(1.2)  # the collector's session is on the broker's disk
        broker.stop()
        agent: Agent = await agent_factory(config)
        await agent.wait_for("polling", lambda: len(agent.readings()) >= 10)
        # The disk fills up, the broker down: polling goes on, the loss is counted.
        small_fs.fill()
        full = await wait_status(
            config,
            "the disk full state with lost readings",
            lambda s: (
                s["outbox"]["state"] == "disk full"
                and s["outbox"]["lost"]["terminals"].get("plc", {}).get("readings", 0) >= 20
            ),
        )
        assert full["outbox"]["lost"]["reasons"].keys() == {"disk full"}
        polled_while_full = len(agent.readings())
        await asyncio.sleep(1.0)
        assert len(agent.readings()) - polled_while_full >= 10  # 2 points x 10 polls/s
        # The broker comes back with the disk still full: everything waiting is acknowledged.
        broker.start()
        drained = await wait_status(
            config,
            "the outbox drained on a full disk",
            lambda s: s["uplink"]["connected"] and sum(s["outbox"]["messages"].values()) == 0,
            timeout=15,
        )
        assert drained["outbox"]["state"] == "disk full"
        jwk = keys_show(config)["jwk"]
        # The alarm raised on the full disk reaches upstream; so does a health report that
        # shows the disk full state and the count of lost readings.
        await collector.wait_for(
            "the disk alarm",
            lambda: any(
                (b := verify(m.payload, jwk)["body"]).get("type") == "alarm"
                and b.get("check") in ("system.disk", "system.fs_writable")
                and b.get("status") == "fail"
                for m in collector.on("events")
            ),
        )
        await collector.wait_for(
            "a health report of the full disk",
            lambda: any(
                (h := verify(m.payload, jwk)["body"])["outbox"]["state"] == "disk full"
                and h["outbox"]["lost"]["terminals"].get("plc", {}).get("readings", 0) > 0
                for m in collector.on("health")
            ),
        )
        connects = agent.events("uplink connected") + agent.events("uplink connected again")
        assert len(connects) <= 2  # one connection (and a reconnect at most)
        assert await agent.stop() == 0
        # Restarted (as systemd would) with the disk still full: it starts and polls.
        agent = await agent_factory(config)
        await agent.wait_for("started", lambda: bool(agent.events("agent started")), timeout=10)
        before = len(agent.readings())
        await agent.wait_for("polling", lambda: len(agent.readings()) >= before + 10)
        assert agent.process.returncode is None
        restarted = await status_of(config)
        assert restarted["outbox"]["state"] == "disk full"
        assert restarted["outbox"]["lost"]["readings"] >= full["outbox"]["lost"]["readings"]
        # Space comes back: the agent recovers by itself and reports the loss, once.
        small_fs.release()
        await wait_status(
            config, "telemetry taken again", lambda s: s["outbox"]["state"] == "ok", timeout=10
        )
        await collector.wait_for(
            "the loss event",
            lambda: any(
                verify(m.payload, jwk)["body"].get("type") == "loss" for m in collector.on("events")
            ),
        )
        await asyncio.sleep(0.5)
        assert await agent.stop() == 0
        taken = agent.readings()
        await collector.wait_for(
            "every stored reading",
            lambda: (
                {
                    (r["terminal"], r["point"], r["observed_at"])
                    for p in upstream(collector, jwk)
                    for r in p["body"]["readings"]
                }
                >= {(r["terminal"], r["point"], r["observed_at"]) for r in taken[-4:]}
            ),
        )
    everything = [
        verify(m.payload, jwk) for m in collector.messages if not m.topic.endswith("/state")
    ]
    seqs = [p["seq"] for p in everything]
    assert sorted(set(seqs)) == list(range(1, max(seqs) + 1))  # gap-free
    repeats = max(Counter(seqs).values())
    assert repeats <= 2, f"a message arrived {repeats} times"
    losses = [
        p["body"] for p in everything if p["kind"] == "event" and p["body"].get("type") == "loss"
    ]
    # One loss event (the disk stayed full from the fill to the release), though its message
    # may arrive twice (a resend, same seq): the readings not stored are counted once.
    assert len({json.dumps(b, sort_keys=True) for b in losses}) == 1
    loss = losses[0]
    received = taken_by_terminal(
        [r for p in upstream(collector, jwk) for r in p["body"]["readings"]]
    )
    not_stored = {
        name: keys - received.get(name, set()) for name, keys in taken_by_terminal(taken).items()
    }
    assert {name: len(keys) for name, keys in not_stored.items() if keys} == {
        name: t["readings"] for name, t in loss["terminals"].items()
    }
    for name, keys in not_stored.items():
        if not keys:
            continue
        stamps = sorted(at for _, at in keys)
        assert loss["terminals"][name]["from"] == stamps[0]
        assert loss["terminals"][name]["to"] == stamps[-1]
    assert loss["reason"] == "disk full"


def upstream(collector: Collector, jwk: dict[str, Any]) -> list[dict[str, Any]]:
    """The telemetry received, each body expanded to readings by the reference decoder."""
    return received_telemetry(collector, jwk)


# -- what the checks and the metrics say ---------------------------------------------------------


def test_the_disk_and_write_checks_say_disk_full_in_words(small_fs: SmallFs) -> None:
    config = make_config([], state_dir=str(small_fs.path))
    view = AgentView(config)
    settings = ChecksConfig()
    small_fs.fill()
    outcome = system.disk(view, settings)
    assert outcome.status is Status.FAIL
    assert outcome.message.startswith("disk full: ")
    written = system.writable(view, settings)
    assert written.status is Status.FAIL
    assert written.message.endswith("disk full (no space left)")
    small_fs.release()
    assert not system.disk(view, settings).message.startswith("disk full")


def test_metrics_count_lost_readings_per_terminal_and_the_disk_full_state(
    small_fs: SmallFs, key: DeviceKey
) -> None:
    with make_outbox(small_fs, key) as box:
        fill_until_telemetry_refused(small_fs, box)
        ledger = LossLedger()
        ledger.add("plc", "2026-03-01T00:00:00.000Z", "disk full", 7)
        box.note_lost(ledger)
        stats = box.stats()
    view = AgentView(make_config([], state_dir=str(small_fs.path)), outbox=stats)
    samples = {
        (s.name, tuple(s.labels.values())): s.value
        for family in families(Snapshot(view, []))
        for s in family.samples
    }
    assert samples[("edge_agent_readings_lost_total", ("plc",))] == 7
    assert samples[("edge_agent_readings_lost_unreported", ())] == 7
    assert samples[("edge_agent_outbox_disk_full", ())] == 1


def test_the_history_opens_on_a_full_disk_and_writes_once_there_is_room(small_fs: SmallFs) -> None:
    path = small_fs.path / "history.db"
    with History(path):
        pass  # made and closed: its -wal and -shm are gone, as after a clean stop
    small_fs.fill()
    history = History(path)
    history.open()  # a WAL database cannot even be read without room for its -shm
    history.set_meta("gateway", "gw-test")
    history.record_start()
    with pytest.raises(sqlite3.Error):
        history.flush()
    small_fs.release()
    history.set_meta("gateway", "gw-test")
    history.record_start()
    history.flush()
    assert history.meta("gateway") == "gw-test"
    assert len(history.starts(T0 - timedelta(days=3650), T0 + timedelta(days=3650))) == 1
    history.close()
