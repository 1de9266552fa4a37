"""Remote diagnosis end to end: a real mosquitto, a real agent process, signed requests.

Requests are signed with test engineers' keys (tests/diag_client.py) and published on
`<prefix>/diag/req`; the answers on `<prefix>/diag/resp` are verified with the device key by
joserfc. Consent is granted and revoked through the real CLI.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from agent.control import request as control_request
from agent.diagnosis.audit import tail
from agent.signing import load_key
from agent.sim.modbus_device import SimulatedModbusDevice
from tests.agentproc import Agent, write_config
from tests.broker import Mosquitto
from tests.conftest import PYTHON, ROOT, tcp_terminal
from tests.diag_client import DiagClient, EngineerKey, request

GW = "gw-test"
PREFIX = f"edge/{GW}"
SUPPORT = ["status", "checks", "logs", "poll", "read-point", "ping-upstream", "config", "outbox"]
ADMIN = [*SUPPORT, "restart-terminal", "log-level", "update-rollback", "update-check"]


class Site:
    """The gateway under test: its config, its engineers, the agent, the support desk."""

    def __init__(self, tmp_path: Path, broker: Mosquitto, port: int, silent: int) -> None:
        self.tmp = tmp_path
        self.config = tmp_path / "config.yaml"
        self.state = tmp_path / "state"
        self.support, self.admin, self.stranger = EngineerKey(), EngineerKey(), EngineerKey()
        admin_pem = tmp_path / "admin.pem"
        admin_pem.write_text(self.admin.public_pem())
        write_config(
            self.config,
            self.state,
            [
                tcp_terminal(
                    port,
                    [
                        {"name": "level", "address": 0, "type": "float32", "unit": "m"},
                        {"name": "flow", "address": 2, "type": "float32", "unit": "m3/s"},
                    ],
                ),
                tcp_terminal(
                    silent,
                    [{"name": "gate", "address": 0, "type": "uint16"}],
                    name="slow",
                    period="60s",
                    timeout="2s",
                ),
            ],
            uplink={
                "broker": broker.url,
                "backoff_min": "200ms",
                "backoff_max": "1s",
                "password": "s3cret-uplink",
                "username": "gw",
            },
            diagnosis={
                "consent": "grant",
                "engineers": [
                    {"name": "Li Wei", "role": "support", "public_key": self.support.public_pem()},
                    {"name": "Admin Zhang", "role": "admin", "public_key": str(admin_pem)},
                    {"name": "Ghost", "role": "support", "public_key": str(tmp_path / "no.pem")},
                ],
                "roles": {"support": SUPPORT, "admin": ADMIN},
                "chunk_bytes": 1024,
            },
        )
        self.broker = broker

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-m", "agent", *args, "--config", str(self.config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )

    async def start(self, agent_factory: Any) -> Agent:
        agent: Agent = await agent_factory(self.config)
        await agent.wait_for("diagnosis", lambda: agent.events("diagnosis listening"), 15)
        await agent.wait_for("uplink", lambda: agent.events("uplink connected"), 15)
        await asyncio.sleep(0.5)  # the subscription follows the connect
        return agent

    def client(self) -> DiagClient:
        return DiagClient(self.broker.port, PREFIX, GW, load_key(self.state).public_info())

    async def status(self) -> dict[str, Any]:
        socket = Path(self.control_socket())
        answer: dict[str, Any] = await control_request(socket, "status")
        return answer

    def control_socket(self) -> str:
        import yaml

        return str(yaml.safe_load(self.config.read_text())["control"]["socket"])


@pytest.fixture
async def site(
    tmp_path: Path,
    broker: Mosquitto,
    device: tuple[SimulatedModbusDevice, int],
    silent_terminal: int,
) -> Site:
    sim, port = device
    sim.units[1].set_number("holding", 0, 3.25, "float32")
    sim.units[1].set_number("holding", 2, 0.5, "float32")
    return Site(tmp_path, broker, port, silent_terminal)


async def test_requests_answered_refused_audited_and_replays_refused_after_a_restart(
    site: Site, agent_factory: Any
) -> None:
    agent = await site.start(agent_factory)
    assert agent.events("diagnosis: engineer key unusable")  # Ghost's file: logged, left out
    async with site.client() as desk:
        # Health without consent: status (large: chunked at 1024 bytes and joined) and checks.
        status_request = request(GW, "status")
        status = await desk.ask(site.support, status_request)
        assert status["status"] == "ok" and status["chunks"] > 1
        assert status["result"]["agent"]["gateway"] == GW
        assert status["result"]["diagnosis"] == {"consent": "grant", "window": None}
        checks = await desk.ask(site.support, request(GW, "checks"))
        assert checks["status"] == "ok" and isinstance(checks["result"], list)
        ping = await desk.ask(site.admin, request(GW, "ping-upstream"))
        assert ping["status"] == "refused"  # not in without_consent: consent needed
        # Site data without consent: refused, nothing run.
        poll = await desk.ask(site.support, request(GW, "poll", {"terminal": "plc"}))
        assert poll == {
            "id": poll["id"],
            "status": "refused",
            "reason": "no consent: poll needs the site owner's grant (edge-agent diag grant)",
            "result": None,
            "chunk": None,
        }

        # The owner grants through the CLI: the file, an event upstream, status shows it.
        granted = site.cli("diag", "grant", "--minutes", "5", "--by", "site owner")
        assert granted.returncode == 0, granted.stderr
        assert "consent granted until" in granted.stdout
        consent = json.loads((site.state / "diagnosis" / "consent.json").read_text())
        assert consent["granted_by"] == "site owner" and consent["actions"] is None
        shown = site.cli("diag", "status", "--json")
        assert json.loads(shown.stdout)["window"]["granted_by"] == "site owner"
        assert (await site.status())["diagnosis"]["window"]["until"] == consent["until"]

        poll = await desk.ask(site.support, request(GW, "poll", {"terminal": "plc"}))
        assert poll["status"] == "ok", poll
        values = {r["point"]: r["value"] for r in poll["result"]["readings"]}
        assert values == {"level": 3.25, "flow": 0.5}
        point = await desk.ask(
            site.support, request(GW, "read-point", {"terminal": "plc", "point": "flow"})
        )
        assert point["status"] == "ok" and point["result"]["value"] == 0.5
        missing = await desk.ask(
            site.support, request(GW, "read-point", {"terminal": "plc", "point": "nope"})
        )
        assert missing["status"] == "failed" and "has no point 'nope'" in missing["reason"]
        outbox = await desk.ask(site.support, request(GW, "outbox", {"limit": 2}))
        assert outbox["status"] == "ok" and set(outbox["result"]) == {"stats", "messages"}
        ping = await desk.ask(site.admin, request(GW, "ping-upstream"))
        assert ping["status"] == "ok" and ping["result"]["connected"] is True
        assert ping["result"]["round_trip_ms"] > 0
        bad_args = await desk.ask(site.support, request(GW, "outbox", {"limit": "all"}))
        assert bad_args["status"] == "failed"
        assert bad_args["reason"] == "limit: a whole number from 0 to 1000 is required"

        # Changes: restart one terminal (the other keeps going), ask root for a rollback.
        restarted = await desk.ask(site.admin, request(GW, "restart-terminal", {"terminal": "plc"}))
        assert restarted["status"] == "ok"
        assert restarted["result"] == {
            "terminal": "plc",
            "restarted": True,
            "link": "tcp (reconnects)",
        }
        before = len(agent.readings())
        await agent.wait_for("readings after the restart", lambda: len(agent.readings()) > before)
        unknown = await desk.ask(site.admin, request(GW, "restart-terminal", {"terminal": "x"}))
        assert (
            unknown["status"] == "failed" and "no running terminal named 'x'" in unknown["reason"]
        )
        rollback = await desk.ask(
            site.admin, request(GW, "update-rollback", {"reason": "readings stopped"})
        )
        assert rollback["status"] == "ok", rollback
        pending = json.loads((site.state / "update" / "pending" / "request.json").read_text())
        assert pending == {"rollback": True, "reason": "remote: Admin Zhang: readings stopped"}

        # Refusals, each with its reason.
        async def refused(key: EngineerKey, payload: dict[str, Any]) -> str:
            answer = await desk.ask(key, payload)
            assert answer["status"] == "refused" and answer["result"] is None, answer
            return str(answer["reason"])

        assert (await refused(site.stranger, request(GW, "status"))).startswith("unknown key")
        assert await refused(site.support, request("dam-99", "status")) == (
            "wrong gateway: the request is for 'dam-99'"
        )
        old = request(GW, "status", iat=int(time.time()) - 3600)
        assert await refused(site.support, old) == "expired"
        assert await refused(site.support, request(GW, "status", lifetime=3600)) == (
            "lifetime over 15 minutes (exp - iat)"
        )
        assert await refused(
            site.support, request(GW, "restart-terminal", {"terminal": "plc"})
        ) == ("role support may not ask for restart-terminal")
        forged = request(GW, "status")
        token = site.support.sign(forged)
        head, body, _signature = token.split(b".")
        other = site.stranger.sign(forged).split(b".")[2]
        await desk.publish(b".".join([head, body, other]))
        answer = await desk.answer(forged["id"])
        assert (answer["status"], answer["reason"]) == ("refused", "bad signature")
        # The same request again: replayed.
        await desk.publish(site.support.sign(status_request))
        again = await desk.answer(status_request["id"], whole=True)
        assert (again["status"], again["reason"]) == ("refused", "replayed id")

        revoked = site.cli("diag", "revoke", "--by", "site owner")
        assert revoked.returncode == 0 and "consent revoked" in revoked.stdout
        assert not (site.state / "diagnosis" / "consent.json").exists()
        await desk.ask(site.support, request(GW, "checks"))  # the events are in by then
        consent_events = [e for e in desk.events if e.get("type") == "consent"]
        assert [(e["change"], e["by"]) for e in consent_events] == [
            ("granted", "site owner"),
            ("revoked", "site owner"),
        ]
        assert consent_events[0]["until"] == consent["until"]

    # The audit: one line per request, chained, each also sent upstream.
    verified = site.cli("diag", "audit", "--verify")
    assert verified.returncode == 0, verified.stderr
    lines = tail(site.state / "audit.log")
    audit_events = [e for e in desk.events if e.get("type") == "audit"]
    assert [e["n"] for e in audit_events] == [line["n"] for line in lines]
    assert {"type": "audit", **lines[0]} == audit_events[0]
    assert lines[0]["engineer"] == "Li Wei" and lines[0]["action"] == "status"
    outcomes = [(line["action"], line["outcome"]) for line in lines]
    assert ("poll", "refused") in outcomes and ("poll", "ok") in outcomes
    assert ("read-point", "failed") in outcomes
    assert (site.state / "audit.log").stat().st_mode & 0o777 == 0o600

    # After a restart the replay cache remembers: the same id is still refused.
    assert await agent.stop() == 0
    agent = await site.start(agent_factory)
    async with site.client() as desk:
        await desk.publish(site.support.sign(status_request))
        answer = await desk.answer(status_request["id"])
        assert (answer["status"], answer["reason"]) == ("refused", "replayed id")
    assert await agent.stop() == 0
    assert len(tail(site.state / "audit.log")) == len(lines) + 1
    assert site.cli("diag", "audit", "--verify").returncode == 0


async def test_consent_revoked_while_an_action_runs_refuses_its_answer(
    site: Site, agent_factory: Any
) -> None:
    agent = await site.start(agent_factory)
    assert site.cli("diag", "grant", "--minutes", "1", "--actions", "poll").returncode == 0
    async with site.client() as desk:
        # The grant covers poll only.
        other = await desk.ask(site.support, request(GW, "outbox"))
        assert other["reason"] == "no consent: the grant does not cover outbox"
        # A poll of the silent terminal takes its 2 s timeout; consent goes meanwhile.
        slow = request(GW, "poll", {"terminal": "slow"})
        await desk.publish(site.support.sign(slow))
        await agent.wait_for(
            "the request accepted", lambda: agent.events("diagnosis request accepted")
        )
        assert site.cli("diag", "revoke").returncode == 0
        answer = await desk.answer(slow["id"])
        assert (answer["status"], answer["reason"], answer["result"]) == (
            "refused",
            "consent expired",
            None,
        )
    last = tail(site.state / "audit.log", 1)[0]
    assert (last["id"], last["outcome"], last["reason"]) == (
        slow["id"],
        "refused",
        "consent expired",
    )
    assert await agent.stop() == 0


async def test_config_is_redacted_logs_come_in_chunks_and_the_log_level_is_set_for_a_while(
    site: Site, agent_factory: Any
) -> None:
    agent = await site.start(agent_factory)
    assert site.cli("diag", "grant", "--minutes", "5").returncode == 0
    async with site.client() as desk:
        config = await desk.ask(site.support, request(GW, "config"))
        assert config["status"] == "ok"
        text = json.dumps(config["result"])
        assert "s3cret-uplink" not in text and "<redacted>" in text
        assert config["result"]["gateway"]["id"] == GW
        level = await desk.ask(
            site.admin, request(GW, "log-level", {"level": "debug", "minutes": 1})
        )
        assert level["status"] == "ok" and level["result"]["reverts_to"] == "info"
        assert any(e.get("event") == "log level changed" and e.get("to") == "debug"
                   for e in agent.log_lines)  # fmt: skip
        agent.process.send_signal(signal.SIGHUP)  # a reload logs "config reload requested" at debug
        await agent.wait_for(
            "a debug line", lambda: any(e.get("level") == "debug" for e in agent.log_lines)
        )
        logs = await desk.ask(site.support, request(GW, "logs", {"level": "info", "since": 600}))
        assert logs["status"] == "ok" and logs["chunks"] > 1
        assert any(e.get("event") == "diagnosis listening" for e in logs["result"])
        bad = await desk.ask(
            site.admin, request(GW, "log-level", {"level": "debug", "minutes": 500})
        )
        assert bad["reason"] == "minutes: a number from 1 to 120 is required"
    assert await agent.stop() == 0
