"""`edge-agent fleet`: 200 simulated gateways' retained state and signed health on one mosquitto,
listed worst first, their reports verified with the known keys (tests/fleetsim.py)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.diagnosis.fleet import CONDITIONS, Fleet
from tests.broker import Mosquitto
from tests.fleetsim import SimGateway, known_gateways, publish_fleet, simulated_fleet


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    mosquitto = Mosquitto(tmp_path / "mosquitto").start()
    yield mosquitto
    mosquitto.stop()


async def fleet_cli(*args: str | Path) -> tuple[int, str, str, float]:
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "fleet", *map(str, args),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode(), time.monotonic() - started


async def test_200_gateways_listed_worst_first_with_the_forged_report_flagged(
    broker: Mosquitto, tmp_path: Path
) -> None:
    gateways = simulated_fleet(200)
    await publish_fleet(broker.port, gateways)
    known = tmp_path / "known.json"
    known.write_text(json.dumps(known_gateways(gateways)))

    code, out, err, elapsed = await fleet_cli(
        "--broker", broker.url, "--known", known, "--json", "--wait", "8"
    )
    print(f"\nfleet --json, 200 gateways, as a process: {elapsed:.2f} s wall")
    assert code == 1, err  # a forged report, offline and failing gateways are findings
    answer = json.loads(out)
    assert answer["schema"] == 1 and answer["prefix"] == "edge/+"
    rows = answer["gateways"]
    assert len(rows) == 200
    assert {r["gateway"] for r in rows} == {g.id for g in gateways}
    # Worst first: forged, offline, failing, warning, unknown, ok; by id within each.
    ranks = [(CONDITIONS.index(r["condition"]), r["gateway"]) for r in rows]
    assert ranks == sorted(ranks)
    assert Counter(r["condition"] for r in rows) == {
        "FORGED": 1, "offline": 8, "failing": 10, "warning": 20, "unknown": 1, "ok": 160,
    }  # fmt: skip

    by_id = {r["gateway"]: r for r in rows}
    forged = rows[0]
    assert forged["gateway"] == "gw-017" and forged["signature"] == "FORGED"
    assert "not by gw-017's" in forged["problem"]
    assert forged["version"] is None and forged["failing"] == []  # nothing of it is believed
    assert by_id["gw-018"]["signature"] == "unverified"  # not in the known file
    assert by_id["gw-018"]["condition"] == "ok"
    assert by_id["gw-019"]["signature"] is None and by_id["gw-019"]["condition"] == "unknown"
    assert by_id["gw-007"]["online"] is False and by_id["gw-007"]["condition"] == "offline"
    failing = by_id["gw-005"]
    assert failing["failing"] == ["terminals.freshness:dam-plc", "system.disk"]
    assert failing["signature"] == "verified" and failing["online"] is True
    assert by_id["gw-003"]["warning"] == ["network.backlog"]
    assert by_id["gw-021"]["update"] == "trial" and by_id["gw-021"]["version"] == "0.3.0"
    assert by_id["gw-006"]["backlog"] == 7 and by_id["gw-006"]["version"] == "0.2.0"
    assert 30 < by_id["gw-006"]["age"] < 600 and by_id["gw-006"]["last_seen"].endswith("Z")
    # It stops once the retained messages stopped coming, not after --wait.
    assert elapsed < 8


async def test_the_table_names_the_forged_gateway_first(broker: Mosquitto, tmp_path: Path) -> None:
    gateways = [SimGateway("gw-a"), SimGateway("gw-b", forged=True), SimGateway("gw-c")]
    gateways[2].status, gateways[2].failing = "fail", ["system.disk"]
    await publish_fleet(broker.port, gateways)
    known = tmp_path / "known.json"
    known.write_text(json.dumps(known_gateways(gateways)))
    code, out, err, _ = await fleet_cli("--broker", broker.url, "--known", known)
    assert code == 1, err
    lines = [line for line in out.splitlines() if "gw-" in line]
    assert [line.split()[1] for line in lines] == ["gw-b", "gw-c", "gw-a"]
    assert "FORGED" in lines[0] and "1 failing: system.disk" in lines[1] and "verified" in lines[2]
    assert "3 gateways under edge/+: 1 FORGED, 1 failing, 1 ok" in out


async def test_no_gateway_and_bad_usage(broker: Mosquitto) -> None:
    code, out, err, _ = await fleet_cli("--broker", broker.url, "--json")
    assert code == 1 and json.loads(out)["gateways"] == []
    assert "no gateway under edge/+" in err
    code, _, err, _ = await fleet_cli("--broker", broker.url, "--prefix", "edge/#")
    assert code == 2 and "exactly one +" in err
    code, _, err, _ = await fleet_cli("--broker", "http://example.net")
    assert code == 2 and "mqtt://" in err


def test_a_report_replayed_under_another_gateway_is_forged_and_a_cleared_one_gone() -> None:
    a, b = SimGateway("gw-a"), SimGateway("gw-b")
    fleet = Fleet("edge/{gateway_id}", {"gw-a": a.key.public_info(), "gw-b": b.key.public_info()})
    now = datetime.now(UTC)
    assert fleet.ingest("edge/gw-b/health", a.health_token(now).encode())  # gw-a's, under gw-b
    assert not fleet.ingest("other/gw-a/health", b"x")
    fleet.ingest("edge/gw-a/state", b"online")
    rows = {r["gateway"]: r for r in fleet.rows()}
    assert rows["gw-b"]["condition"] == "FORGED"
    assert rows["gw-a"]["condition"] == "unknown" and rows["gw-a"]["online"] is True
    fleet.ingest("edge/gw-b/health", b"")  # the retained report was cleared
    assert [r["gateway"] for r in fleet.rows()] == ["gw-a"]
