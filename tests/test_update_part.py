"""The agent's part of signed updates: the trial gate, reporting, the inbox, media, announcements.

Real agents (`edge-agent run` processes), a real mosquitto, a simulated Modbus device on
loopback, real files in the update folders; in-process `UpdatePart`s where the test must hold
the writer's answer back (reported only once durable) or shorten the 30 s media scan.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import tarfile
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent import __version__
from agent.control import NotRunning, request
from agent.model import NotStored
from agent.sim.modbus_device import SimulatedModbusDevice
from agent.storage.layout import StateLayout
from agent.update.gate import Observation
from agent.update.part import Timing, UpdatePart
from agent.update.requests import Rejected, bundle_label, precheck_bundle
from agent.update.rollout import rollout_slot
from agent.update.settings import UpdateConfig
from agent.update.state import UpdateStore, add_outcome, now_iso
from tests.agentproc import Agent, short_socket_path, write_config
from tests.broker import Mosquitto, free_port
from tests.collector import Collector
from tests.conftest import tcp_terminal

Device = tuple[SimulatedModbusDevice, int]
POINTS = [{"name": "level", "address": 0, "type": "float32", "unit": "m"}]
PREFIX = "edge/gw-test"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path / "broker").start()
    yield mosquitto
    mosquitto.stop()


def put_on_trial(state: Path, ends_in: float, baseline: dict[str, Any] | None) -> UpdateStore:
    """The record as root's `update apply` leaves it after the switch to this release."""
    store = UpdateStore(StateLayout(state))
    with store.edit() as record:
        record.update(
            state="trial",
            step="trial",
            current=__version__,
            previous="0.0.9",
            target={
                "version": __version__,
                "from": "0.0.9",
                "source": "bundle:/t",
                "started_at": now_iso(),
            },
            trial_ends_at=now_iso(datetime.now(UTC) + timedelta(seconds=ends_in)),
            baseline=baseline,
        )
        add_outcome(record, "installed", __version__, "installed from a bundle", running="0.0.9")
    return store


async def ask(
    socket: Path, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10
) -> Any:
    """Ask the agent over its control socket, waiting for it to listen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await request(socket, cmd, args)
        except NotRunning:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def until(what: str, predicate: Any, timeout: float = 15) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text: str = answer.read().decode()
    return text


def jws_body(token: bytes) -> dict[str, Any]:
    """The payload of a signed message (the signature itself is tested in test_store_forward)."""
    part = token.split(b".")[1]
    body: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4)))
    return body


# -- the trial gate, with a real agent --------------------------------------------------------------


@pytest.mark.slow
async def test_the_gate_commits_once_terminals_answered_and_a_publish_was_acknowledged(
    tmp_path: Path, device: Device, broker: Mosquitto, agent_factory: Any
) -> None:
    sim, port = device
    sim.units[1].set_number("holding", 0, 2.5, "float32")
    metrics_port = free_port()
    config = tmp_path / "config.yaml"
    write_config(
        config,
        tmp_path / "state",
        [tcp_terminal(port, POINTS, period="200ms")],
        uplink={"broker": broker.url, "backoff_min": "200ms", "backoff_max": "1s"},
        metrics={"listen": f"127.0.0.1:{metrics_port}"},
    )
    socket = Path(short_socket_path(config))

    # The release before: `update apply` asks it for the baseline over the control socket.
    old: Agent = await agent_factory(config)
    baseline: dict[str, Any] = {}

    async def answered() -> bool:
        nonlocal baseline
        baseline = await ask(socket, "update-baseline")
        return bool(baseline["terminals"] == ["plc"] and baseline["uplink_connected"])

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while not await answered():
        assert loop.time() < deadline, f"baseline never complete: {baseline}"
        await asyncio.sleep(0.2)
    assert set(baseline) == {"terminals", "uplink_connected", "failing_checks"}
    assert await old.stop() == 0

    store = put_on_trial(tmp_path / "state", ends_in=60, baseline=baseline)
    async with Collector(broker.port, f"{PREFIX}/events") as collector:
        agent: Agent = await agent_factory(config)
        await agent.wait_for("the commit", lambda: store.read()["state"] == "committed", 30)
        record = store.read()
        assert record["gate_failed"] is None
        committed = record["outcomes"][-1]
        assert committed["outcome"] == "committed"
        assert committed["version"] == __version__
        assert committed["reason"].startswith("gate passed: 1 terminals answered")

        def updates() -> list[dict[str, Any]]:
            bodies = [jws_body(m.payload)["body"] for m in collector.on("events")]
            return [b for b in bodies if b.get("type") == "update"]

        await collector.wait_for("both outcomes upstream", lambda: len(updates()) >= 2)
        assert {(u["id"], u["outcome"]) for u in updates()} == {(1, "installed"), (2, "committed")}
        assert next(u for u in updates() if u["id"] == 1)["running"] == "0.0.9"
        await agent.wait_for(
            "outcomes marked reported",
            lambda: all(o["reported"] for o in store.read()["outcomes"]),
        )

        status = await ask(socket, "status")
        assert status["update"]["state"] == "committed"
        assert status["update"]["current"] == __version__
        assert status["update"]["last"]["outcome"] == "committed"
        text = await asyncio.to_thread(metrics, metrics_port)
        assert f'edge_agent_update_info{{state="committed",version="{__version__}"}} 1.0' in text
        assert (
            f'edge_agent_update_last_outcome{{outcome="committed",version="{__version__}"}} 1.0'
            in text
        )
        assert await agent.stop() == 0


async def test_a_gate_not_met_in_the_window_records_why_and_exits_4(
    tmp_path: Path, agent_factory: Any
) -> None:
    dead = free_port()  # the baseline's terminal no longer answers
    config = tmp_path / "config.yaml"
    write_config(config, tmp_path / "state", [tcp_terminal(dead, POINTS, period="200ms")])
    # The window counts from now, so it includes the agent's start: 2.5 s was too short on a
    # slow spell of the CI machine ("the agent did not finish starting").
    store = put_on_trial(
        tmp_path / "state",
        ends_in=8,
        baseline={"terminals": ["plc"], "uplink_connected": False, "failing_checks": []},
    )
    agent: Agent = await agent_factory(config)
    code = await asyncio.wait_for(agent.process.wait(), 30)
    await agent.stop()
    assert code == 4, agent.log_lines[-5:]
    record = store.read()
    assert record["state"] == "trial"  # the pre-start hook rolls back, not the agent
    assert "terminals not polled successfully: plc" in record["gate_failed"]
    assert [o["outcome"] for o in record["outcomes"]] == ["installed"]
    (failed,) = agent.events(
        "update gate not met in the probation window; stopping for the rollback"
    )
    assert failed["exit_status"] == 4


async def test_an_agent_not_on_trial_has_no_gate_and_exits_0(
    tmp_path: Path, agent_factory: Any
) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, tmp_path / "state", [tcp_terminal(free_port(), POINTS)])
    socket = Path(short_socket_path(config))
    agent: Agent = await agent_factory(config)
    baseline = await ask(socket, "update-baseline")
    assert baseline["terminals"] == [] and baseline["uplink_connected"] is False
    status = await ask(socket, "status")
    assert status["update"]["state"] == "idle"
    assert await agent.stop() == 0


# -- the inbox, with a real agent -----------------------------------------------------------------


async def test_a_garbage_file_in_the_inbox_is_rejected_recorded_and_reported(
    tmp_path: Path, agent_factory: Any
) -> None:
    config = tmp_path / "config.yaml"
    state = tmp_path / "state"
    write_config(config, state, [tcp_terminal(free_port(), POINTS)])
    socket = Path(short_socket_path(config))
    agent: Agent = await agent_factory(config)
    await ask(socket, "status")
    layout = StateLayout(state)
    assert layout.update_inbox.stat().st_mode & 0o777 == 0o700
    (layout.update_inbox / "garbage.bundle").write_bytes(b"\x00not a tar at all" * 1000)
    rejected = layout.update_inbox / "rejected" / "garbage.bundle"
    await agent.wait_for("the bundle moved to rejected/", rejected.exists, 15)
    assert not (layout.update_inbox / "garbage.bundle").exists()
    assert not layout.update_request.exists()
    store = UpdateStore(layout)
    # The bundle is moved aside first, then the outcome is recorded, then reported.
    await agent.wait_for(
        "the outcome reported",
        lambda: any(o["reported"] for o in store.read()["outcomes"]),
    )
    (outcome,) = store.read()["outcomes"]
    assert outcome["outcome"] == "rejected"
    assert outcome["check"] == "bundle"
    assert outcome["reason"].startswith("garbage.bundle: not an update bundle")
    # Reported = stored in the outbox (no uplink here: it waits there, signed).
    waiting = await ask(socket, "outbox", {"limit": 50})
    assert "event" in {m["kind"] for m in waiting["messages"]}
    status = await ask(socket, "status")
    assert status["update"]["last"]["outcome"] == "rejected"
    assert await agent.stop() == 0


# -- reporting: marked only once durable ------------------------------------------------------------


def no_gate() -> Any:
    async def observe() -> Observation:
        raise AssertionError("no trial: the gate must not look")

    return observe


async def test_an_outcome_is_marked_reported_only_once_the_writer_stored_it(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path / "state")
    store = UpdateStore(layout)
    with store.edit() as record:
        add_outcome(record, "rejected", "0.9.0", "x.bundle: bad", check="bundle", running="0.1.0")
    loop = asyncio.get_running_loop()
    sent: list[tuple[dict[str, Any], asyncio.Future[int]]] = []

    def report(body: dict[str, Any]) -> asyncio.Future[int]:
        future: asyncio.Future[int] = loop.create_future()
        sent.append((body, future))
        return future

    stops: list[int] = []
    part = UpdatePart(
        UpdateConfig(),
        layout,
        "gw-test",
        report=report,
        observe=no_gate(),
        started=asyncio.Event(),
        stop=stops.append,
        timing=Timing(resync=0.2, settle=0.05),
    )
    async with part:
        await until("the event put", lambda: len(sent) == 1)
        body, future = sent[0]
        assert body == {
            "type": "update",
            "id": 1,
            "outcome": "rejected",
            "version": "0.9.0",
            "running": "0.1.0",
            "reason": "x.bundle: bad",
            "at": body["at"],
            "check": "bundle",
            "timings": {},
        }
        await asyncio.sleep(0.4)  # past a resync: still waiting for the writer
        assert store.read()["outcomes"][0]["reported"] is False
        future.set_exception(NotStored("the outbox writer is stopped"))
        await until("the event put again", lambda: len(sent) == 2)
        assert store.read()["outcomes"][0]["reported"] is False
        sent[1][1].set_result(17)
        await until("marked reported", lambda: store.read()["outcomes"][0]["reported"])
        await asyncio.sleep(0.4)
        assert len(sent) == 2  # never again once reported
    assert stops == []


# -- removable media and the bundle's own checks ----------------------------------------------------


async def test_a_bundle_on_removable_media_is_copied_once_and_its_stick_left_alone(
    tmp_path: Path,
) -> None:
    stick = tmp_path / "media" / "usb0" / "edge-agent"
    stick.mkdir(parents=True)
    bundle = stick / "update.bundle"
    bundle.write_bytes(b"definitely not a tar" * 100)
    layout = StateLayout(tmp_path / "state")
    settings = UpdateConfig(
        removable_media=[str(tmp_path / "media" / "*" / "edge-agent" / "*.bundle")]
    )

    async def report(body: dict[str, Any]) -> int:
        return 1

    part = UpdatePart(
        settings,
        layout,
        "gw-test",
        report=report,
        observe=no_gate(),
        started=asyncio.Event(),
        stop=lambda code: None,
        timing=Timing(resync=0.3, media_interval=0.2, settle=0.05),
    )
    rejected = layout.update_inbox / "rejected"
    async with part:
        await until("the copy rejected", lambda: (rejected / "update.bundle").exists())
        await asyncio.sleep(1.0)  # several scans of the stick later
    assert bundle.read_bytes() == b"definitely not a tar" * 100  # the stick is untouched
    assert sorted(p.name for p in rejected.iterdir()) == ["update.bundle"]
    outcomes = UpdateStore(layout).read()["outcomes"]
    assert [(o["outcome"], o["check"]) for o in outcomes] == [("rejected", "bundle")]
    assert all(o["reported"] for o in outcomes)
    assert len(json.loads(layout.update_media.read_text())["taken"]) == 1


def tar_with(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_the_bundle_checks_before_verification(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path / "state")
    settings = UpdateConfig(max_bundle_bytes=1024 * 1024)
    no_label = tmp_path / "no-label.bundle"
    no_label.write_bytes(tar_with({"metadata/root.json": b"{}"}))
    verdict = precheck_bundle(no_label, settings, layout)
    assert (verdict.ok, verdict.check) == (False, "bundle")
    assert verdict.reason == "no bundle.json: not an update bundle"
    big = tmp_path / "big.bundle"
    with big.open("wb") as stream:
        stream.truncate(1024 * 1024 + 1)
    verdict = precheck_bundle(big, settings, layout)
    assert (verdict.ok, verdict.check) == (False, "bundle")
    assert "over update.max_bundle_bytes" in verdict.reason
    gz = tmp_path / "compressed.bundle"
    with tarfile.open(gz, "w:gz") as tar:
        tar.add(no_label, "bundle.json")
    with pytest.raises(Rejected, match="not an uncompressed tar"):
        bundle_label(gz, settings.max_bundle_bytes)
    labelled = tmp_path / "labelled.bundle"
    labelled.write_bytes(tar_with({"bundle.json": b'{"schema": 1, "version": "0.2.0"}'}))
    assert bundle_label(labelled, settings.max_bundle_bytes)["version"] == "0.2.0"


# -- announcements over a real mosquitto ------------------------------------------------------------


async def test_an_announcement_to_a_gateway_outside_the_rollout_does_nothing(
    tmp_path: Path, broker: Mosquitto, agent_factory: Any
) -> None:
    metrics_port = free_port()
    config = tmp_path / "config.yaml"
    write_config(
        config,
        tmp_path / "state",
        [tcp_terminal(free_port(), POINTS)],
        uplink={"broker": broker.url, "backoff_min": "200ms", "backoff_max": "1s"},
        metrics={"listen": f"127.0.0.1:{metrics_port}"},
        update={
            "rollout_percent": rollout_slot("gw-test"),
            "repository_url": "http://127.0.0.1:1/",
        },
    )
    topic = "edge/fleet/update/stable"
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.publish(topic, b"{not json", qos=1, retain=True)
    agent: Agent = await agent_factory(config)

    def counted(result: str) -> bool:
        return f'edge_agent_update_announcements_total{{result="{result}"}} 1.0' in metrics(
            metrics_port
        )

    await until("the malformed one counted", lambda: _quiet(counted, "malformed"))
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.publish(topic, json.dumps({"version": "9.9.9"}).encode(), qos=1, retain=True)
    await until("the announcement counted", lambda: _quiet(counted, "not_in_rollout"))
    await asyncio.sleep(0.5)
    layout = StateLayout(tmp_path / "state")
    assert not layout.update_request.exists()
    assert UpdateStore(layout).read()["outcomes"] == []
    assert agent.events("update announcement: this gateway is not in the rollout")
    assert await agent.stop() == 0


def _quiet(check: Any, *args: Any) -> bool:
    """A probe that is False while the agent's metrics endpoint is not up yet."""
    try:
        return bool(check(*args))
    except OSError:
        return False
