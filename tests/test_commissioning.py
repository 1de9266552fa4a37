"""`edge-agent check` with no agent running: it probes what it can (each terminal polled once
through its driver, a real MQTT session with the config's broker settings, the outbox read
from disk) and says in one line what needs the running agent; its JSON has the same shape
whether the agent runs or not."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from agent.commissioning import probe
from agent.config import load_config
from agent.outbox import Outbox, Priority
from agent.signing import init_key
from agent.sim.modbus_device import RegisterMap, SimulatedModbusDevice
from agent.sim.serial_line import VirtualSerialLine
from tests.agentproc import write_config
from tests.broker import Mosquitto, free_port, tls_listener
from tests.certs import TestCA
from tests.conftest import tcp_terminal
from tests.test_cli import edge_agent

Device = tuple[SimulatedModbusDevice, int]
GAUGE = {
    "name": "gauge",
    "protocol": "sl651",
    "station": "0012345678",
    "password": "1234",
    "expected_interval": "1h",
}


def by_id(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in results}


async def test_check_without_the_agent_probes_terminals_broker_and_outbox(
    tmp_path: Path, device: Device, broker: Mosquitto
) -> None:
    _sim, port = device
    dead = free_port()  # nothing listens there
    state = tmp_path / "state"
    config = tmp_path / "config.yaml"
    write_config(
        config,
        state,
        [
            tcp_terminal(port, [{"name": "a", "address": 0}, {"name": "b", "address": 1}]),
            tcp_terminal(dead, [{"name": "a", "address": 0}], name="dead"),
            GAUGE,
        ],
        sl651={"listen": ["127.0.0.1:0"]},
        uplink={"broker": broker.url},
    )
    box = Outbox(state / "outbox.db", init_key(state), "gw-test")
    box.open()
    box.put("telemetry", {"n": 1}, Priority.TELEMETRY)
    box.put("event", {"n": 2}, Priority.EVENT)
    box.close()

    code, out, err = await edge_agent("check", "--json", "--config", str(config))
    assert code == 1, err  # the dead terminal fails
    answer = json.loads(out)
    assert set(answer) == {"schema", "source", "summary", "checks"}
    assert (answer["schema"], answer["source"]) == (1, "probe")
    counts = Counter(r["status"] for r in answer["checks"])
    assert answer["summary"] == {
        "ok": counts["ok"],
        "warn": counts["warn"],
        "fail": counts["fail"],
        "unknown": counts["unknown"],
        "status": "fail",
    }
    checks = by_id(answer["checks"])
    live = checks["terminals.reachable:plc"]
    assert (live["status"], live["value"]) == ("ok", 2)
    gone = checks["terminals.reachable:dead"]
    assert gone["status"] == "fail"
    assert gone["message"].startswith(f"not answering: cannot connect to 127.0.0.1:{dead}")
    assert "connection refused" in gone["message"]
    reporting = checks["terminals.reporting"]
    assert reporting["status"] == "unknown"
    assert "gauge" in reporting["message"]
    assert "cannot be probed without the agent: stations call in" in reporting["message"]
    mqtt = checks["network.broker_mqtt"]
    assert mqtt["status"] == "ok", mqtt
    assert f"127.0.0.1:{broker.port} accepted an MQTT session" in mqtt["message"]
    backlog = checks["network.backlog"]
    assert (backlog["status"], backlog["value"]) == ("ok", 2)
    assert backlog["message"].startswith("2 messages waiting, the oldest for")
    # What needs the running agent is one line, not a row per check.
    agent = checks["software.agent"]
    assert agent["status"] == "unknown"
    assert "terminals.freshness" in agent["message"] and "network.acks" in agent["message"]
    assert [r["id"] for r in answer["checks"] if "not running" in r["message"]] == [agent["id"]]
    assert not any(i.startswith(("terminals.success", "terminals.freshness")) for i in checks)

    code, out, _ = await edge_agent("check", "--config", str(config))
    assert code == 1
    assert "terminals.reachable:dead" in out
    assert "the agent is not running: the terminals, the broker and the outbox were probed" in out


async def test_terminals_are_probed_at_once_each_within_its_own_timeout(
    tmp_path: Path, silent_terminal: int
) -> None:
    """Eight terminals that never answer cost one timeout, not eight."""
    terminals = [
        tcp_terminal(silent_terminal, [{"name": "a", "address": 0}], name=f"t{i}", timeout="600ms")
        for i in range(8)
    ]
    path = tmp_path / "config.yaml"
    write_config(path, tmp_path / "state", terminals)
    started = time.monotonic()
    results = {r.id: r for r in await probe(load_config(path), path)}
    took = time.monotonic() - started
    for i in range(8):
        found = results[f"terminals.reachable:t{i}"]
        assert found.status.value == "fail"
        assert found.message == "not answering: no reply within 0.6s", found.message
    assert 0.6 <= took < 2.4, took  # one after the other: 4.8 s


async def test_terminals_on_one_serial_line_take_turns_on_it(
    tmp_path: Path, serial_line: VirtualSerialLine
) -> None:
    sim = SimulatedModbusDevice({3: RegisterMap(), 4: RegisterMap()})
    sim.units[3].set_registers("holding", 0, [33])
    sim.units[4].set_registers("holding", 0, [44])
    await sim.serve_serial(serial_line.b_path, 19200)
    rtu = {
        "protocol": "modbus-rtu",
        "device": serial_line.a_path,
        "baudrate": 19200,
        "timeout": "500ms",
        "points": [{"name": "a", "address": 0}],
    }
    path = tmp_path / "config.yaml"
    write_config(
        path,
        tmp_path / "state",
        [{**rtu, "name": "u3", "unit": 3}, {**rtu, "name": "u4", "unit": 4}],
    )
    try:
        results = {r.id: r for r in await probe(load_config(path), path)}
    finally:
        await sim.stop()
    for name in ("u3", "u4"):
        assert results[f"terminals.reachable:{name}"].status.value == "ok"
    assert sorted(r.unit for r in sim.requests) == [3, 4]  # each asked once, on one bus


def broker_config(tmp_path: Path, uplink: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    write_config(path, tmp_path / "state", [], uplink=uplink)
    return path


async def mqtt_row(path: Path) -> Any:
    return {r.id: r for r in await probe(load_config(path), path)}["network.broker_mqtt"]


async def test_the_broker_is_tried_with_the_configs_credentials_and_tls(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    other = TestCA(tmp_path / "other", name="someone-else")
    server_cert, server_key = ca.issue("localhost", server=True)
    client_cert, client_key = ca.issue("gw-test")
    tls_port, closed_port = free_port(), free_port()
    mosquitto = Mosquitto(
        tmp_path / "broker",
        port=tls_port,
        extra=(
            "per_listener_settings true\n"
            + tls_listener(tls_port, ca.cert_path, server_cert, server_key)
            + f"listener {closed_port} 127.0.0.1\nallow_anonymous false\n"
        ),
    ).start()
    tls = {"ca": str(ca.cert_path), "cert": str(client_cert), "key": str(client_key)}
    try:
        good = await mqtt_row(
            broker_config(tmp_path, {"broker": f"mqtts://127.0.0.1:{tls_port}", "tls": tls})
        )
        assert good.status.value == "ok", good
        assert "(TLS, without a username)" in good.message

        untrusted = {**tls, "ca": str(other.cert_path)}
        bad_ca = await mqtt_row(
            broker_config(tmp_path, {"broker": f"mqtts://127.0.0.1:{tls_port}", "tls": untrusted})
        )
        assert bad_ca.status.value == "fail"
        assert bad_ca.message.startswith("TLS: the certificate of broker 127.0.0.1")

        refused = await mqtt_row(
            broker_config(
                tmp_path,
                {"broker": f"mqtt://127.0.0.1:{closed_port}", "username": "gw", "password": "x"},
            )
        )
        assert refused.status.value == "fail"
        assert "refused the connection: Not authorized" in refused.message
    finally:
        mosquitto.stop()


async def test_a_broker_that_takes_no_connection_is_one_finding(tmp_path: Path) -> None:
    """The TCP check fails; the MQTT session is not tried, so it does not fail a second time."""
    port = free_port()
    path = broker_config(tmp_path, {"broker": f"mqtt://127.0.0.1:{port}"})
    results = {r.id: r for r in await probe(load_config(path), path)}
    assert results["network.broker_tcp"].status.value == "fail"
    mqtt = results["network.broker_mqtt"]
    assert (mqtt.status.value, mqtt.message) == (
        "unknown",
        f"not tried: 127.0.0.1:{port} takes no TCP connection (see network.broker_tcp)",
    )
    findings = [r.id for r in results.values() if r.status.value in ("warn", "fail")]
    assert [f for f in findings if f.startswith("network.")] == ["network.broker_tcp"]


async def test_check_json_has_the_same_shape_from_a_running_agent(
    tmp_path: Path, device: Device, agent_factory: Any
) -> None:
    _sim, port = device
    config = tmp_path / "config.yaml"
    write_config(config, tmp_path / "state", [tcp_terminal(port, [{"name": "a", "address": 0}])])
    agent = await agent_factory(config)
    await agent.wait_for("readings", lambda: len(agent.readings()) >= 2)
    code, out, err = await edge_agent("check", "--json", "--config", str(config))
    assert await agent.stop() == 0
    assert code in (0, 1), err
    answer = json.loads(out)
    assert (answer["schema"], answer["source"]) == (1, "agent")
    assert set(answer["summary"]) == {"ok", "warn", "fail", "unknown", "status"}
    checks = by_id(answer["checks"])
    assert checks["terminals.freshness:plc"]["status"] == "ok"
    assert "terminals.reachable:plc" not in checks  # the agent's own figures, not a probe
    assert sum(answer["summary"][s] for s in ("ok", "warn", "fail", "unknown")) == len(checks)
