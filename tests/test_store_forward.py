"""Store and forward end to end: the agent as a process, a real mosquitto, an upstream collector.

Every message is verified with joserfc against the key `edge-agent keys show --json` prints;
"every reading arrives" is checked against the agent's own local copy (readings.jsonl) of what
it polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.sim.modbus_device import SimulatedModbusDevice
from tests.agentproc import Agent, write_config
from tests.broker import Mosquitto, persistent
from tests.collector import Collector, telemetry, verify
from tests.conftest import ROOT, tcp_terminal

Device = tuple[SimulatedModbusDevice, int]
PREFIX = "edge/gw-test"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    mosquitto = persistent(tmp_path / "broker").start()
    yield mosquitto
    mosquitto.stop()


def keys_show(config: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "agent", "keys", "show", "--json", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    info: dict[str, Any] = json.loads(out)
    return info


def start_config(tmp_path: Path, port: int, broker: Mosquitto, period: str = "100ms") -> Path:
    config = tmp_path / "config.yaml"
    write_config(
        config,
        tmp_path / "state",
        [
            tcp_terminal(
                port,
                [
                    {"name": "level", "address": 0, "type": "float32", "unit": "m"},
                    {"name": "count", "address": 2, "type": "uint32"},
                ],
                period=period,
            )
        ],
        uplink={"broker": broker.url, "backoff_min": "200ms", "backoff_max": "1s"},
        outbox={"synchronous": "normal"},
    )
    return config


def upstream(collector: Collector, jwk: dict[str, Any]) -> list[dict[str, Any]]:
    """The verified telemetry payloads, their bodies expanded to `{"readings": […]}`."""
    return telemetry(collector, jwk)


def signed(collector: Collector, jwk: dict[str, Any]) -> list[dict[str, Any]]:
    """Every verified signed payload (telemetry, health, events): seq runs across all kinds."""
    return [verify(m.payload, jwk) for m in collector.messages if not m.topic.endswith("/state")]


def reading_keys(readings: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(r["terminal"], r["point"], r["observed_at"]) for r in readings]


async def test_readings_arrive_signed_with_contiguous_seq(
    tmp_path: Path, device: Device, broker: Mosquitto, agent_factory: Any
) -> None:
    sim, port = device
    sim.units[1].set_number("holding", 0, 7.5, "float32")
    config = start_config(tmp_path, port, broker)
    async with Collector(broker.port, f"{PREFIX}/#") as collector:
        agent: Agent = await agent_factory(config)
        await collector.wait_for("telemetry", lambda: len(collector.on("telemetry")) >= 10)
        assert await agent.stop() == 0
        polled = agent.readings()
        jwk = keys_show(config)["jwk"]
        await collector.wait_for(
            "everything",
            lambda: (
                sum(len(p["body"]["readings"]) for p in upstream(collector, jwk)) >= len(polled)
            ),
        )
    everything = signed(collector, jwk)
    seqs = sorted(p["seq"] for p in everything)
    assert seqs == list(range(1, len(seqs) + 1))
    assert all(p["gw"] == "gw-test" for p in everything)
    assert all(p["ts"].endswith("Z") for p in everything)
    payloads = upstream(collector, jwk)
    assert all(p["kind"] == "telemetry" for p in payloads)
    received = [r for p in payloads for r in p["body"]["readings"]]
    assert received == polled  # exactly what was taken, in order
    assert received[0]["value"] == 7.5
    assert [m.payload for m in collector.on("state")] == [b"online", b"offline"]


async def test_a_broker_outage_loses_nothing_and_does_not_slow_polling(
    tmp_path: Path, device: Device, broker: Mosquitto, agent_factory: Any
) -> None:
    _sim, port = device
    config = start_config(tmp_path, port, broker)
    async with Collector(broker.port, f"{PREFIX}/#") as collector:
        agent: Agent = await agent_factory(config)
        await collector.wait_for("telemetry", lambda: len(collector.on("telemetry")) >= 5)
        await asyncio.sleep(1.2)  # the collector's session is on disk (autosave 1 s)
        broker.kill()
        outage_start = len(agent.readings())
        await asyncio.sleep(3)
        during = len(agent.readings()) - outage_start
        broker.start()
        await asyncio.sleep(2)
        assert await agent.stop() == 0
        polled = agent.readings()
        jwk = keys_show(config)["jwk"]
        await collector.wait_for(
            "everything",
            lambda: (
                set(
                    reading_keys(
                        [r for p in upstream(collector, jwk) for r in p["body"]["readings"]]
                    )
                )
                >= set(reading_keys(polled))
            ),
            timeout=30,
        )
    # Polling went on at full rate while the broker was away: 10 polls/s x 2 points x 3 s.
    assert during >= 50
    payloads = upstream(collector, jwk)
    received = [r for p in payloads for r in p["body"]["readings"]]
    assert set(reading_keys(received)) == set(reading_keys(polled))  # none lost
    # Order kept: by seq, the readings are in the order they were taken.
    by_seq = sorted(payloads, key=lambda p: p["seq"])
    in_seq_order = [r for p in by_seq for r in p["body"]["readings"]]
    deduplicated = list(dict.fromkeys(reading_keys(in_seq_order)))
    assert deduplicated == reading_keys(polled)


async def test_killing_the_agent_mid_publish_loses_nothing_and_repeats_only_by_seq(
    tmp_path: Path, device: Device, broker: Mosquitto, agent_factory: Any
) -> None:
    _sim, port = device
    config = start_config(tmp_path, port, broker, period="20ms")
    async with Collector(broker.port, f"{PREFIX}/#") as collector:
        # Build a backlog with the broker away, then let the agent drain it and kill it midway.
        await asyncio.sleep(1.2)  # the collector's session is on disk (autosave 1 s)
        broker.kill()
        first: Agent = await agent_factory(config)
        await first.wait_for("backlog", lambda: len(first.readings()) >= 400, timeout=20)
        broker.start()
        await collector.wait_for("draining", lambda: len(collector.on("telemetry")) >= 3)
        first.process.send_signal(signal.SIGKILL)
        killed_at = datetime.now(UTC)
        await first.process.wait()
        taken_before = len(first.readings())
        second: Agent = await agent_factory(config)
        await second.wait_for("more", lambda: len(second.readings()) >= taken_before + 40)
        assert await second.stop() == 0
        # The same file holds both runs' readings. Those taken within `outbox.linger` (200 ms)
        # before the kill were gathered in memory for their message and are lost with the
        # process (documented); everything older was durable and must arrive.
        margin = timedelta(seconds=0.5)
        polled = [
            r for r in second.readings()
            if not killed_at - margin <= datetime.fromisoformat(r["observed_at"]) <= killed_at
        ]  # fmt: skip
        jwk = keys_show(config)["jwk"]
        wanted = set(reading_keys(polled))

        def arrived() -> set[tuple[str, str, str]]:
            return {
                k for p in upstream(collector, jwk) for k in reading_keys(p["body"]["readings"])
            }

        with contextlib.suppress(AssertionError):  # what is missing is said below
            await collector.wait_for("everything", lambda: arrived() >= wanted, timeout=30)
    missing = sorted(wanted - arrived(), key=lambda key: key[2])

    def since_kill(key: tuple[str, str, str]) -> str:
        return f"{(datetime.fromisoformat(key[2]) - killed_at).total_seconds():+.3f} s"

    assert not missing, (
        f"{len(missing)} of {len(wanted)} readings did not arrive, observed from "
        f"{since_kill(missing[0])} to {since_kill(missing[-1])} after the kill; the seqs that "
        f"did: {sorted(p['seq'] for p in signed(collector, jwk))}"
    )
    # A repeated seq is a resend of the very same signed message; no seq is missing.
    by_seq: dict[int, dict[str, Any]] = {}
    for p in signed(collector, jwk):
        assert by_seq.setdefault(p["seq"], p) == p
    seqs = sorted(by_seq)
    assert seqs == list(range(seqs[0], seqs[-1] + 1))


async def test_a_corrupted_outbox_is_set_aside_and_the_agent_keeps_running(
    tmp_path: Path, device: Device, broker: Mosquitto, agent_factory: Any
) -> None:
    _sim, port = device
    config = start_config(tmp_path, port, broker)
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.db").write_bytes(
        b"this is not a database, it is what a dying SD card left" * 100
    )
    async with Collector(broker.port, f"{PREFIX}/#") as collector:
        agent: Agent = await agent_factory(config)
        await collector.wait_for("telemetry", lambda: len(collector.on("telemetry")) >= 3)
        assert agent.process.returncode is None
        assert await agent.stop() == 0
    [reported] = agent.events("outbox database damaged: set aside, starting a fresh outbox")
    kept = Path(reported["kept_as"])
    assert kept.exists()
    assert kept.read_bytes().startswith(b"this is not a database")
