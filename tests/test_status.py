"""Local troubleshooting: `edge-agent status`, the control socket, `outbox`, and metrics,
against the agent as a real process."""

from __future__ import annotations

import asyncio
import io
import json
import re
import stat
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from agent.checks import AgentView
from agent.control import ControlError, request
from agent.sim.modbus_device import SimulatedModbusDevice
from agent.status import _outbox_line, status_dict, status_view
from agent.uplink import UplinkState
from tests.agentproc import Agent, short_socket_path, write_config
from tests.broker import free_port
from tests.conftest import PYTHON, ROOT, make_config, tcp_terminal

Device = tuple[SimulatedModbusDevice, int]


async def edge_agent(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "agent", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def site_config(tmp_path: Path, port: int, **extra: Any) -> Path:
    config = tmp_path / "config.yaml"
    write_config(
        config,
        tmp_path / "state",
        [
            tcp_terminal(port, [{"name": "level", "address": 0}], name="live", period="200ms"),
            tcp_terminal(
                free_port(),
                [{"name": "level", "address": 0}],
                name="dead",
                period="200ms",
                timeout="200ms",
            ),
        ],
        uplink={"broker": f"mqtt://127.0.0.1:{free_port()}", "backoff_min": "200ms"},
        checks={"terminals": {"interval": "500ms"}},
        **extra,
    )
    return config


async def status_json(config: Path) -> tuple[int, dict[str, Any]]:
    code, out, err = await edge_agent("status", "--json", "--config", str(config))
    assert out, err
    return code, json.loads(out)


async def test_status_json_shows_what_the_agent_is_doing(
    tmp_path: Path, device: Device, agent_factory: Any
) -> None:
    _sim, port = device
    config = site_config(tmp_path, port)
    agent: Agent = await agent_factory(config)
    await agent.wait_for("readings", lambda: len(agent.readings()) >= 10)
    await asyncio.sleep(1.0)
    code, first = await status_json(config)
    await asyncio.sleep(1.0)
    _, second = await status_json(config)
    assert await agent.stop() == 0

    assert code == 1  # the dead terminal is failing
    assert first["running"] is True
    assert first["status"] == "failing"
    assert first["agent"]["pid"] == agent.process.pid
    assert first["agent"]["config"] == str(config)
    assert first["agent"]["gateway"] == "gw-test"
    terminals = {t["name"]: t for t in first["terminals"]}
    assert terminals["live"]["state"] == "ok"
    assert terminals["live"]["last_good_age"] < 2
    assert terminals["dead"]["state"] == "failing"
    assert "connection refused" in terminals["dead"]["last_error"]
    uplink = first["uplink"]
    assert uplink["connected"] is False
    assert "connection refused" in uplink["last_error"]
    # The broker is down: the backlog grows between two looks.
    assert second["outbox"]["messages"]["telemetry"] > first["outbox"]["messages"]["telemetry"]
    assert first["outbox"]["oldest_age"] is not None
    assert first["outbox"]["source"] == "agent"


def test_the_screen_for_a_known_state() -> None:
    status = {
        "schema": 1, "running": True, "status": "failing",
        "agent": {"version": "0.1.0", "pid": 4242, "started_at": "2026-11-22T08:00:00.000Z",
                  "uptime": 3725.0, "config": "/etc/edge-agent/config.yaml", "gateway": "gw-001"},
        "update": None, "diagnosis": None,
        "uplink": {"broker": "mqtts://broker.example:8883", "connected": False,
                   "since": "2026-11-22T09:00:00.000Z", "last_ack_at": "2026-11-22T08:59:58.000Z",
                   "published": 12, "refused": 0,
                   "last_error": "cannot reach broker broker.example:8883: connection refused"},
        "outbox": {"messages": {"events": 1, "health": 1, "telemetry": 40}, "bytes": 81920,
                   "oldest_age": 125.0, "evicted": 0, "recovered_from": None},
        "terminals": [
            {"name": "dam-plc", "protocol": "modbus-tcp", "address": "10.0.0.5:502#1",
             "state": "ok", "last_good_age": 1.0, "success_ratio": 1.0, "latency_p95": 0.012,
             "last_error": None},
            {"name": "pump-3", "protocol": "modbus-rtu", "address": "/dev/ttyUSB0#3",
             "state": "failing", "last_good_age": None, "success_ratio": 0.0,
             "latency_p95": None, "last_error": "no reply within 1s"},
        ],
        "checks": {"summary": {"status": "fail", "counts": {"ok": 20, "warn": 0, "fail": 1,
                                                             "unknown": 0}},
                   "failing": [{"id": "terminals.freshness:pump-3", "status": "fail",
                                "message": "stale: no good reading yet"}],
                   "warning": []},
    }  # fmt: skip
    console = Console(width=200, color_system=None, record=True, file=io.StringIO())
    console.print(status_view(status, now=datetime(2026, 11, 22, 9, 2, 5, tzinfo=UTC)))
    text = console.export_text()
    # Times as ages in words, never timestamps (those are in --json).
    assert text.splitlines()[:4] == [
        "edge-agent 0.1.0 · gateway gw-001 · FAILING",
        "agent      running 1h02m (pid 4242) · config /etc/edge-agent/config.yaml",
        "uplink     down for 2m05s · mqtts://broker.example:8883 · last ack 2m07s ago · "
        "cannot reach broker broker.example:8883: connection refused",
        "outbox     42 waiting (1 events, 1 health, 40 telemetry), 80 KiB, oldest 2m05s",
    ]
    assert (
        "│ dam-plc │ modbus-tcp │ 10.0.0.5:502#1 │ ok      │ 1s ago    │ 100%    │ 12 ms │" in text
    )
    assert (
        "│ pump-3  │ modbus-rtu │ /dev/ttyUSB0#3 │ failing │ never     │ 0%      │ -     │ no reply within 1s │"
        in text
    )
    assert text.splitlines()[-2:] == [
        "checks",
        "  fail  terminals.freshness:pump-3: stale: no good reading yet",
    ]


async def test_status_without_an_agent_says_so_and_shows_what_is_on_disk(
    tmp_path: Path, device: Device, agent_factory: Any
) -> None:
    _sim, port = device
    config = site_config(tmp_path, port, health={"interval": "500ms", "min_gap": "0s"})
    agent: Agent = await agent_factory(config)
    health = tmp_path / "state" / "state" / "health.json"
    await agent.wait_for("a saved health report", health.exists)
    await agent.wait_for("readings", lambda: len(agent.readings()) >= 5)
    assert await agent.stop() == 0
    code, out, _ = await edge_agent("status", "--config", str(config))
    assert code == 3
    lines = out.splitlines()
    assert lines[0] == "edge-agent is not running."
    assert "systemctl status edge-agent" in lines[1]
    assert "journalctl -u edge-agent" in lines[1]
    assert lines[2].startswith("last health report ")
    assert re.match(r"last health report \S+ \((\d+s|\d+m\d\ds) ago\): ", lines[2]), lines[2]
    # The health line may wrap (its list of failing checks grows with the site's state).
    assert any(line.startswith("outbox     ") for line in lines[3:])
    code, status = await status_json(config)
    assert code == 3
    assert status["running"] is False
    assert status["last_health"]["gateway"] == "gw-test"
    assert status["outbox"]["messages"]["telemetry"] > 0
    assert (status["outbox"]["source"], status["outbox"]["state"]) == ("disk", "closed")


async def test_the_control_socket_is_0660_and_answers_requests(
    tmp_path: Path, device: Device, agent_factory: Any
) -> None:
    _sim, port = device
    config = site_config(tmp_path, port)
    socket = Path(short_socket_path(config))
    agent: Agent = await agent_factory(config)
    await agent.wait_for("socket", socket.exists)
    try:
        mode = socket.stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660
        poll = await request(socket, "poll", {"terminal": "live"})
        assert poll["terminal"] == "live"
        assert poll["readings"][0]["quality"] == "good"
        with pytest.raises(ControlError, match="no running terminal named 'nope'"):
            await request(socket, "poll", {"terminal": "nope"})
        with pytest.raises(ControlError, match="unknown command 'format-disk'"):
            await request(socket, "format-disk")
        assert await request(socket, "reload") == {"reloaded": True}
        terminals = await request(socket, "terminals")
        assert {t["name"] for t in terminals} == {"live", "dead"}
    finally:
        assert await agent.stop() == 0
    assert not socket.exists()  # removed on the way out


async def test_outbox_peek_decodes_the_waiting_envelopes(
    tmp_path: Path, device: Device, agent_factory: Any
) -> None:
    _sim, port = device
    config = site_config(tmp_path, port)
    agent: Agent = await agent_factory(config)
    await agent.wait_for("readings", lambda: len(agent.readings()) >= 10)
    await asyncio.sleep(0.5)
    code, out, _ = await edge_agent(
        "outbox", "peek", "--limit", "3", "--json", "--config", str(config)
    )
    _, screen, _ = await edge_agent("outbox", "--config", str(config))
    assert await agent.stop() == 0
    assert code == 0
    answer = json.loads(out)
    assert (answer["schema"], answer["source"], answer["stats"]["source"]) == (1, "agent", "agent")
    assert answer["stats"]["messages"]["telemetry"] > 0
    assert len(answer["messages"]) == 3
    first = answer["messages"][0]
    assert first["header"]["alg"] == "EdDSA"
    assert first["gw"] == "gw-test"
    assert {"seq", "kind", "age", "size"} <= set(first)
    # Without the agent, the same from the database file.
    code, out, _ = await edge_agent(
        "outbox", "peek", "--limit", "2", "--json", "--config", str(config)
    )
    assert code == 0
    from_disk = json.loads(out)
    # One shape whoever answers: the same keys, `source` saying where the figures came from.
    assert (from_disk["source"], from_disk["stats"]["source"]) == ("disk", "disk")
    assert set(from_disk) == set(answer)
    assert set(from_disk["stats"]) == set(answer["stats"])
    assert set(from_disk["stats"]["messages"]) == set(answer["stats"]["messages"])
    assert from_disk["stats"]["state"] == "closed"
    assert from_disk["stats"]["last_seq"] >= answer["stats"]["last_seq"] > 0
    assert from_disk["stats"]["messages"]["telemetry"] >= answer["stats"]["messages"]["telemetry"]
    offline = from_disk["messages"]
    assert len(offline) == 2
    for m in offline:  # decoded from the file as the agent decodes them
        assert m["header"]["alg"] == "EdDSA"
        assert m["header"]["kid"] == first["header"]["kid"]
        assert m["gw"] == "gw-test"
    assert offline[0]["seq"] != offline[1]["seq"]
    # For people: a table of figures, ages in words, never the JSON.
    code, offline_screen, _ = await edge_agent("outbox", "stats", "--config", str(config))
    assert code == 0
    for text, source in ((screen, "the running agent"), (offline_screen, "the database on disk")):
        assert f"outbox, from {source}" in text
        assert "{" not in text and '"' not in text
        assert re.search(
            r"│ messages +│ \d+ waiting \(\d+ events, \d+ health, \d+ telemetry\)", text
        )
        assert re.search(r"│ oldest +│ (\d+s|\d+m\d\ds) ago", text), text


async def test_metrics_are_scraped_and_parse_with_prometheus_client(
    tmp_path: Path, device: Device, agent_factory: Any
) -> None:
    _sim, port = device
    metrics_port = free_port()
    config = site_config(tmp_path, port, metrics={"listen": f"127.0.0.1:{metrics_port}"})
    agent: Agent = await agent_factory(config)
    await agent.wait_for("readings", lambda: len(agent.readings()) >= 10)
    await asyncio.sleep(1.0)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    text = await asyncio.to_thread(scrape)
    assert await agent.stop() == 0
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("edge_agent_readings_total", (("quality", "good"), ("terminal", "live")))] >= 10
    assert samples[("edge_agent_readings_total", (("quality", "bad"), ("terminal", "dead")))] >= 1
    assert samples[("edge_agent_terminal_up", (("terminal", "live"),))] == 1
    assert samples[("edge_agent_terminal_up", (("terminal", "dead"),))] == 0
    assert samples[("edge_agent_uplink_connected", ())] == 0
    assert samples[("edge_agent_outbox_messages", (("priority", "telemetry"),))] > 0
    assert families["edge_agent_poll_duration_seconds"].type == "histogram"
    assert samples[("edge_agent_poll_duration_seconds_count", (("terminal", "live"),))] >= 10
    assert any(name == "edge_agent_check_status" for name, _ in samples)


def test_the_screen_says_disk_full_and_the_readings_lost_per_terminal() -> None:
    outbox = {
        "messages": {"events": 2, "health": 1, "telemetry": 0}, "bytes": 4096,
        "oldest_age": 3.0, "evicted": 0, "recovered_from": None, "state": "disk full",
        "full_since": "2026-11-22T09:00:00.000Z",
        "lost": {"readings": 120, "reasons": {"disk full": 120},
                 "terminals": {"dam-plc": {"readings": 120, "from": "2026-11-22T09:00:00.100Z",
                                           "to": "2026-11-22T09:00:59.900Z"}}},
    }  # fmt: skip
    console = Console(width=200, color_system=None, record=True, file=io.StringIO())
    console.print(_outbox_line(outbox, datetime(2026, 11, 22, 10, 1, 0, tzinfo=UTC)))
    lines = console.export_text().splitlines()
    assert lines[1].strip().startswith("DISK FULL for 1h01m: read-only")
    assert lines[2].strip() == (
        "120 readings lost, not reported yet: dam-plc 120 "
        "(2026-11-22T09:00:00.100Z … 2026-11-22T09:00:59.900Z)"
    )


def test_a_broker_that_does_not_acknowledge_is_named_on_the_uplink_line() -> None:
    """Connected, no PUBACK for longer than `checks.network.ack_warn`; acks the outbox could
    not save are said too."""
    config = make_config([], state_dir="/tmp/unused", uplink={"broker": "mqtt://b.example:1883"})
    now = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
    state = UplinkState(
        broker="mqtt://b.example:1883", connected=True, connected_since=now.timestamp() - 60,
        inflight=33, unacked_since=now.timestamp() - 42.4, resent=64,
        acks_unsaved=3, ack_error="database or disk is full",
    )  # fmt: skip
    status = status_dict(AgentView(config, uplink=state, started_at=now), [], now)
    uplink = status["uplink"]
    assert (uplink["no_ack_for"], uplink["ack_late"], uplink["inflight"]) == (42.4, True, 33)
    assert (uplink["resent"], uplink["acks_unsaved"]) == (64, 3)
    console = Console(width=250, color_system=None, record=True, file=io.StringIO())
    console.print(status_view(status, now))
    line = next(x for x in console.export_text().splitlines() if x.startswith("uplink"))
    assert line.startswith(
        "uplink     connected for 1m00s, no acknowledgement for 42s · mqtt://b.example:1883 · "
        "no ack yet · "
    )
    assert line.endswith(
        " · 3 delivered messages not yet removed from the outbox (database or disk is full)"
    )
    state.unacked_since = now.timestamp() - 5  # under the default ack_warn (20 s)
    uplink = status_dict(AgentView(config, uplink=state, started_at=now), [], now)["uplink"]
    assert (uplink["no_ack_for"], uplink["ack_late"]) == (5.0, False)


def test_an_outbox_not_created_yet_has_the_same_shape_and_says_so(tmp_path: Path) -> None:
    from agent.status import outbox_on_disk, outbox_stats_table

    stats = outbox_on_disk(tmp_path / "outbox.db", 256 * 1024 * 1024, 4 * 1024 * 1024)
    assert stats["source"] == "disk" and stats["state"] == "absent"
    assert stats["messages"] == {"events": 0, "health": 0, "telemetry": 0}
    assert (stats["max_bytes"], stats["reserve"]["target"]) == (256 * 1024 * 1024, 4 * 1024 * 1024)
    console = Console(width=120, color_system=None, record=True, file=io.StringIO())
    console.print(outbox_stats_table(stats, tmp_path / "outbox.db"))
    assert "no outbox database yet: nothing was queued" in console.export_text()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    unreadable = outbox_on_disk(garbage, 1, 1)
    assert unreadable["state"] == "unreadable" and unreadable["error"]
    assert set(unreadable) == set(stats) | {"error"}


def test_status_json_has_one_shape_whether_the_agent_runs_or_not(tmp_path: Path) -> None:
    """The same keys from the running agent, from the disk, and with an invalid config;
    `source` says which it was."""
    from agent.status import offline_status, unconfigured_status
    from tests.conftest import make_config

    config = make_config([], state_dir=str(tmp_path / "state"))
    running = status_dict(AgentView(config, started_at=datetime.now(UTC)), [])
    offline = offline_status(config, tmp_path / "config.yaml")
    broken = unconfigured_status(tmp_path / "config.yaml", ["config.yaml: log: …"])
    assert set(running) == set(offline) == set(broken)
    assert [running["source"], offline["source"], broken["source"]] == ["agent", "disk", "none"]
    assert offline["running"] is False and offline["terminals"] == []
    assert broken["config_errors"] == ["config.yaml: log: …"]


def test_polls_started_late_are_counted_in_status_the_health_report_and_the_metrics() -> None:
    """`late_starts` (a poll that started over a quarter period late) as each shape shows it."""
    from agent.checks.health import build_health
    from agent.metrics import Snapshot, families
    from agent.model import TerminalStats, TerminalView
    from tests.conftest import make_config, tcp_terminal

    config = make_config([tcp_terminal(1502, [{"name": "a", "address": 0}], name="plc")])
    [t] = config.terminals
    view = AgentView(config, terminals={"plc": TerminalView(t.info, TerminalStats(late_starts=3))})
    [listed] = status_dict(view, [])["terminals"]
    assert listed["late_starts"] == 3
    health = build_health([], view)
    assert health["terminals"][0]["late_starts"] == 3
    assert health["terminals_summary"]["late_starts"] == 3
    samples = {
        (s.name, tuple(s.labels.values())): s.value
        for family in families(Snapshot(view, []))
        for s in family.samples
    }
    assert samples[("edge_agent_poll_late_starts_total", ("plc",))] == 3
