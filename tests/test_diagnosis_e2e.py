"""Remote diagnosis with both real sides: `edge-agent remote` asking a real agent process.

A real mosquitto, an agent polling a simulated Modbus TCP terminal, engineers' keys made by
`edge-agent remote keygen`, the gateway trusted with `edge-agent remote trust GW <(edge-agent
keys show --json)`, consent granted and revoked with `edge-agent diag`: every action of the
allow-list and every refusal the CLI can provoke go through the real command line. What the CLI
cannot make (an expired request, a replayed id, a forged answer) is made with the support
desk's own module (`agent.diagnosis.engineer`) or a stranger's key and published with aiomqtt.
Last, polling keeps its rate while a stream of heavy actions runs: polls counted, not timed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import re
import tarfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent import __version__
from agent.diagnosis.audit import tail
from agent.diagnosis.engineer import (
    EngineerKey,
    NotOurs,
    Reassembler,
    sign_request,
    verify_answer,
)
from agent.diagnosis.settings import ACTION_NAMES
from agent.signing import DeviceKey, envelope_payload
from agent.sim.modbus_device import SimulatedModbusDevice
from tests.agentproc import Agent, write_config
from tests.broker import Mosquitto, free_port
from tests.conftest import PYTHON, ROOT, tcp_terminal
from tests.update_repo import new_repo, serve

GW = "gw-test"
PREFIX = f"edge/{GW}"
SUPPORT = [
    "status", "checks", "logs", "poll", "read-point", "ping-upstream", "config", "outbox",
    "update-check", "support-bundle",
]  # fmt: skip
ADMIN = sorted(ACTION_NAMES)
UPLINK_PASSWORD = "s3cret-uplink"  # noqa: S105 -- a test config's, to find leaks


@dataclass(frozen=True)
class Done:
    code: int
    out: str
    err: str

    def body(self) -> dict[str, Any]:
        """The answer's body `remote --json` printed."""
        body: dict[str, Any] = json.loads(self.out)
        return body


async def run(*args: str | Path, timeout: float = 60) -> Done:
    process = await asyncio.create_subprocess_exec(
        *map(str, args),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Done(process.returncode, out.decode(), err.decode())


def peek_id(token: bytes) -> Any:
    """The `id` of a JWS's payload or body, unverified (to know what a message claims)."""
    part = token.split(b".")[1]
    payload = json.loads(base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4)))
    return payload["body"]["id"] if "body" in payload else payload["id"]


@contextlib.asynccontextmanager
async def listening(
    port: int, *topics: str
) -> AsyncIterator[tuple[aiomqtt.Client, list[tuple[str, bytes]]]]:
    """A client subscribed to `topics`: every message is kept as (topic, payload)."""
    seen: list[tuple[str, bytes]] = []
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"e2e-{uuid.uuid4().hex[:8]}", timeout=5
    ) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)

        async def receive() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                seen.append((str(message.topic), message.payload))

        task = asyncio.create_task(receive())
        try:
            yield client, seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def until(what: str, predicate: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Site:
    """The gateway (config, agent) and the support desk (key files, known gateways, the CLI)."""

    def __init__(self, tmp_path: Path, broker: Mosquitto) -> None:
        self.tmp = tmp_path
        self.broker = broker
        self.config = tmp_path / "config.yaml"
        self.state = tmp_path / "state"
        self.desk = tmp_path / "desk"
        self.desk.mkdir()
        self.known = self.desk / "known.json"
        self.kids: dict[str, str] = {}

    async def keygen(self, *names: str) -> dict[str, str]:
        """`remote keygen --json` for each name: the public key PEMs it printed."""
        done = await asyncio.gather(
            *(self.cli("remote", "keygen", "--out", self.key(n), "--json") for n in names)
        )
        pems = {}
        for name, result in zip(names, done, strict=True):
            assert result.code == 0, result.err
            assert oct(self.key(name).stat().st_mode & 0o777) == "0o600"
            info = json.loads(result.out)
            self.kids[name] = info["kid"]
            pems[name] = info["public_key_pem"]
        return pems

    def key(self, name: str) -> Path:
        return self.desk / f"{name}.pem"

    def write(self, terminals: list[dict[str, Any]], **extra: Any) -> None:
        write_config(
            self.config,
            self.state,
            terminals,
            uplink={
                "broker": self.broker.url,
                "backoff_min": "200ms",
                "backoff_max": "1s",
                "username": "gw",
                "password": UPLINK_PASSWORD,
            },
            **extra,
        )

    async def start(self, agent_factory: Any) -> Agent:
        agent: Agent = await agent_factory(self.config)
        await agent.wait_for("diagnosis", lambda: agent.events("diagnosis listening"), 15)
        await agent.wait_for("uplink", lambda: agent.events("uplink connected"), 15)
        await self.trust(GW)
        return agent

    async def trust(self, gateway: str) -> None:
        """`edge-agent remote trust GATEWAY <(edge-agent keys show --json)`, as a shell would."""
        script = (
            'exec "$0" -m agent remote trust "$1" '
            '<("$0" -m agent keys show --json --config "$2") --known "$3"'
        )
        done = await run("bash", "-c", script, PYTHON, gateway, self.config, self.known, timeout=30)
        assert done.code == 0, done.err
        assert done.out.startswith(f"trusted {gateway} (key ")

    def gateway_info(self) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(self.known.read_text())[GW]
        return info

    async def cli(self, *args: str | Path, timeout: float = 60) -> Done:
        return await run(PYTHON, "-m", "agent", *args, timeout=timeout)

    async def edge(self, *args: str) -> Done:
        """A gateway-side command (`diag …`) on this site's config."""
        return await self.cli(*args, "--config", self.config)

    async def remote(
        self, key: str, *words: str, gateway: str = GW, wait: float = 20, as_json: bool = True
    ) -> Done:
        return await self.cli(
            "remote",
            gateway,
            *words,
            "--broker",
            self.broker.url,
            "--key",
            self.key(key),
            "--known",
            self.known,
            "--prefix",
            PREFIX,
            "--timeout",
            str(wait),
            *(["--json"] if as_json else []),
            timeout=wait + 30,
        )


@pytest.fixture
def site(tmp_path: Path, broker: Mosquitto) -> Site:
    return Site(tmp_path, broker)


def points(port: int, **extra: Any) -> dict[str, Any]:
    return tcp_terminal(
        port,
        [
            {"name": "level", "address": 0, "type": "float32", "unit": "m"},
            {"name": "flow", "address": 2, "type": "float32", "unit": "m3/s"},
        ],
        **extra,
    )


async def test_every_action_answers_through_edge_agent_remote(
    site: Site,
    device: tuple[SimulatedModbusDevice, int],
    agent_factory: Any,
) -> None:
    sim, port = device
    sim.units[1].set_number("holding", 0, 3.25, "float32")
    sim.units[1].set_number("holding", 2, 0.5, "float32")
    pems = await site.keygen("support", "admin")
    vendor = new_repo(site.tmp / "vendor", "99.0.0")  # a newer release than the running one
    with serve(vendor) as (url, asked):
        site.write(
            [points(port, timeout="2s")],
            diagnosis={
                "consent": "grant",
                "engineers": [
                    {"name": "Li Wei", "role": "support", "public_key": pems["support"]},
                    {"name": "Admin Zhang", "role": "admin", "public_key": pems["admin"]},
                ],
                "roles": {"support": SUPPORT, "admin": ADMIN},
                "chunk_bytes": 1024,
            },
            update={
                "repository_url": url,
                "trusted_root": str(vendor / "metadata" / "1.root.json"),
            },
        )
        agent = await site.start(agent_factory)
        await agent.wait_for("a first reading", lambda: agent.readings(), 10)

        # Health needs no consent: status as the table people read.
        table = await site.remote("support", "status", as_json=False)
        assert table.code == 0, table.err
        assert f"{GW} · status · ok" in table.out and "plc" in table.out

        granted = await site.edge("diag", "grant", "--minutes", "10", "--by", "site owner")
        assert granted.code == 0, granted.err

        asked_for: set[str] = set()

        async def ok(key: str, action: str, *params: str) -> Any:
            asked_for.add(action)
            done = await site.remote(key, action, *params)
            assert done.code == 0, (action, done.err)
            body = done.body()
            assert (body["status"], body["reason"], body["chunk"]) == ("ok", None, None)
            return body["result"]

        # Everything that reads, four at a time (the gateway handles four at once).
        async with listening(site.broker.port, f"{PREFIX}/diag/resp") as (_, seen):
            (status, checks, logs, point, poll, ping, config, outbox) = await asyncio.gather(
                ok("support", "status"),
                ok("support", "checks", "run=true"),
                ok("support", "logs", "level=info", "since=600"),
                ok("support", "read-point", "terminal=plc", "point=flow"),
                ok("support", "poll", "terminal=plc"),
                ok("support", "ping-upstream"),
                ok("support", "config"),
                ok("support", "outbox", "limit=2"),
            )
        assert status["agent"]["gateway"] == GW and status["diagnosis"]["window"] is not None
        assert [t["name"] for t in status["terminals"]] == ["plc"]
        assert checks and all({"id", "status"} <= set(c) for c in checks)
        # The log ring came in 1 KiB chunks and was joined: more than one diag/resp message.
        assert any(e.get("event") == "diagnosis listening" for e in logs)
        log_answer = next(
            line["id"] for line in tail(site.state / "audit.log") if line["action"] == "logs"
        )
        chunks = [p for t, p in seen if peek_id(p) == log_answer]
        assert len(chunks) > 1, len(chunks)
        assert (point["terminal"], point["point"], point["value"]) == ("plc", "flow", 0.5)
        assert {r["point"]: r["value"] for r in poll["readings"]} == {"level": 3.25, "flow": 0.5}
        assert ping["connected"] is True and ping["round_trip_ms"] > 0
        assert config["gateway"]["id"] == GW and config["uplink"]["password"] == "<redacted>"  # noqa: S105
        assert UPLINK_PASSWORD not in json.dumps(config)
        assert set(outbox) == {"stats", "messages"}

        # The update check reads the vendor's repository with the agent's own metadata copy.
        assert await ok("support", "update-check") == {
            "schema": 1,
            "current": __version__,
            "available": "99.0.0",
        }
        assert "/metadata/timestamp.json" in asked
        assert (site.state / "update" / "metadata" / "timestamp.json").is_file()

        # The support bundle: base64 of a .tar.gz with the documented members.
        bundle = await ok("support", "support-bundle", "since=3600")
        data = base64.b64decode(bundle["base64"], validate=True)
        assert bundle["bytes"] == len(data)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            names = tar.getnames()
            member = tar.extractfile("config.yaml")
            assert member is not None
            bundled_config = member.read().decode()
        assert names[0] == "README.txt"
        assert set(names) == {
            "README.txt", "version.json", "config.yaml", "status.json", "checks.json",
            "logs.jsonl", "outbox.json", "update.json", "audit-tail.jsonl",
        }  # fmt: skip
        assert UPLINK_PASSWORD not in bundled_config and GW in bundled_config

        # Changes, as the admin: a terminal restarted, the level raised, a rollback asked for.
        restarted = await ok("admin", "restart-terminal", "terminal=plc")
        assert restarted == {"terminal": "plc", "restarted": True, "link": "tcp (reconnects)"}
        level = await ok("admin", "log-level", "level=debug", "minutes=1")
        assert (level["level"], level["reverts_to"]) == ("debug", "info")
        rollback = await ok("admin", "update-rollback", "reason=readings stopped")
        assert rollback == {
            "requested": "rollback",
            "reason": "remote: Admin Zhang: readings stopped",
        }
        pending = json.loads((site.state / "update" / "pending" / "request.json").read_text())
        assert pending == {"rollback": True, "reason": "remote: Admin Zhang: readings stopped"}
    assert asked_for == ACTION_NAMES  # every action of the allow-list, end to end

    # A forged answer (another key) arrives first; the CLI says so and waits for the real one.
    sim.delay = 0.4  # the terminal answers slowly: the gateway's answer takes a moment
    forger = DeviceKey.generate()
    async with listening(site.broker.port, f"{PREFIX}/diag/req") as (client, requests):
        asking = asyncio.create_task(
            site.remote("support", "read-point", "terminal=plc", "point=level")
        )
        await until("the request", lambda: requests)
        body = {"id": peek_id(requests[0][1]), "status": "ok", "reason": None,
                "result": {"value": 999}, "chunk": None}  # fmt: skip
        forged = forger.sign_compact(envelope_payload(GW, 1, "diag", datetime.now(UTC), body))
        await client.publish(f"{PREFIX}/diag/resp", forged, qos=1)
        done = await asking
    sim.delay = 0.0
    assert done.code == 0, done.err
    assert "forged or unverifiable answer ignored: signed by another key" in done.err
    assert done.body()["result"]["value"] == 3.25

    # Every request is in the audit log, chained; the agent's own record of this session.
    audited = tail(site.state / "audit.log")
    assert Counter(line["outcome"] for line in audited) == {"ok": len(audited)}
    assert {line["action"] for line in audited} == ACTION_NAMES
    assert (await site.edge("diag", "audit", "--verify")).code == 0
    assert await agent.stop() == 0


async def test_refusals_through_edge_agent_remote_and_a_tampered_audit_line(
    site: Site,
    device: tuple[SimulatedModbusDevice, int],
    silent_terminal: int,
    agent_factory: Any,
) -> None:
    _, port = device
    pems = await site.keygen("support", "stranger")
    site.write(
        [
            points(port),
            tcp_terminal(
                silent_terminal,
                [{"name": "gate", "address": 0, "type": "uint16"}],
                name="slow",
                period="60s",
                timeout="2s",
            ),
        ],
        diagnosis={
            "consent": "grant",
            "engineers": [{"name": "Li Wei", "role": "support", "public_key": pems["support"]}],
            "roles": {"support": SUPPORT},
        },
    )
    agent = await site.start(agent_factory)

    async def refused(key: str, action: str, *params: str, gateway: str = GW) -> str:
        done = await site.remote(key, action, *params, gateway=gateway)
        assert done.code == 1, done
        body = done.body()
        assert (body["status"], body["result"]) == ("refused", None)
        assert done.err == f"edge-agent: {GW} refused {action}: {body['reason']}\n"
        return str(body["reason"])

    # A key the gateway does not list; a role without the action; no consent.
    stranger = site.kids["stranger"]
    assert (
        await refused("stranger", "status") == f"unknown key '{stranger}': not a listed engineer's"
    )
    assert await refused("support", "restart-terminal", "terminal=plc") == (
        "role support may not ask for restart-terminal"
    )
    revoked = await site.edge("diag", "revoke")
    assert (revoked.code, revoked.out) == (0, "no consent window was open\n")
    assert await refused("support", "poll", "terminal=plc") == (
        "no consent: poll needs the site owner's grant (edge-agent diag grant)"
    )

    # The known file maps another gateway id to this gateway's key: the request names dam-99,
    # the gateway refuses it, and its signed refusal (for gw-test) is not dam-99's answer.
    await site.trust("dam-99")
    wrong = await site.remote("support", "status", gateway="dam-99", wait=4)
    assert wrong.code == 1 and wrong.out == ""
    assert (
        "forged or unverifiable answer ignored: signed by dam-99's key but for gateway "
        f"'{GW}'" in wrong.err
    )
    assert "no answer from dam-99 within 4 s" in wrong.err
    assert tail(site.state / "audit.log", 1)[0]["reason"] == (
        "wrong gateway: the request is for 'dam-99'"
    )

    # Consent revoked while a poll of the silent terminal takes its 2 s: the answer is refused.
    assert (await site.edge("diag", "grant", "--minutes", "1")).code == 0
    slow = asyncio.create_task(refused("support", "poll", "terminal=slow"))
    await agent.wait_for(
        "the poll accepted",
        lambda: [e for e in agent.events("diagnosis request accepted") if e["action"] == "poll"],
        15,
    )
    assert (await site.edge("diag", "revoke")).code == 0
    assert await slow == "consent expired"

    # What the CLI never sends: an expired request and the same request twice.
    key = EngineerKey.load(site.key("support"))
    info = site.gateway_info()
    _, expired = sign_request(key, gateway=GW, action="status", args={}, now=time.time() - 3600)
    replay_id, replayed = sign_request(key, gateway=GW, action="checks", args={})
    async with listening(site.broker.port, f"{PREFIX}/diag/resp") as (client, seen):
        for token in (expired, replayed, replayed):
            await client.publish(f"{PREFIX}/diag/req", token, qos=1)

        def answers(request_id: str) -> list[dict[str, Any]]:
            bodies = []
            for _, payload in seen:
                with contextlib.suppress(NotOurs):
                    bodies.append(verify_answer(payload, info, request_id, gateway=GW))
            return bodies

        expired_id = peek_id(expired.encode())
        await until("three answers", lambda: answers(expired_id) and len(answers(replay_id)) == 2)
    assert [(a["status"], a["reason"]) for a in answers(expired_id)] == [("refused", "expired")]
    # The two deliveries are handled at once: one runs, the other is refused (either first).
    assert sorted((a["status"], a["reason"] or "") for a in answers(replay_id)) == [
        ("ok", ""),
        ("refused", "replayed id"),
    ]
    assert await agent.stop() == 0

    # The audit: every refusal with its reason, the chain intact; then one line edited.
    audited = tail(site.state / "audit.log")
    assert [(line["outcome"], line["reason"]) for line in audited[:5]] == [
        ("refused", f"unknown key '{stranger}': not a listed engineer's"),
        ("refused", "role support may not ask for restart-terminal"),
        ("refused", "no consent: poll needs the site owner's grant (edge-agent diag grant)"),
        ("refused", "wrong gateway: the request is for 'dam-99'"),
        ("refused", "consent expired"),
    ]
    assert sorted((line["outcome"], line["reason"] or "") for line in audited[5:]) == [
        ("ok", ""),
        ("refused", "expired"),
        ("refused", "replayed id"),
    ]
    assert audited[0]["engineer"] is None and audited[0]["kid"] == stranger
    verified = await site.edge("diag", "audit", "--verify")
    assert verified.code == 0 and "audit chain intact" in verified.out, verified.err
    log = site.state / "audit.log"
    lines = log.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"outcome":"refused"', b'"outcome":"ok"')
    log.write_bytes(b"".join(lines))
    tampered = await site.edge("diag", "audit", "--verify")
    assert tampered.code == 1
    assert tampered.err == (
        "edge-agent diag audit: line 2 (n=2): changed (its hash is not the prev of line 3)\n"
    )


# -- polling keeps its rate while actions run ----------------------------------------------------

PERIOD = 0.2
WINDOW = 8.0
HEAVY = ("support-bundle", "logs", "config", "status")


class Desk:
    """Keeps `in_flight` requests going (support-bundle, logs, config, status in turn) over one
    connection; counts the whole answers that came back."""

    def __init__(self, port: int, key: EngineerKey, info: dict[str, Any]) -> None:
        self.port, self.key, self.info = port, key, info
        self.pending: dict[str, tuple[Reassembler, asyncio.Future[dict[str, Any]]]] = {}
        self.answered: Counter[str] = Counter()

    async def run(self, in_flight: int, stop: asyncio.Event) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", self.port, identifier=f"load-{uuid.uuid4().hex[:8]}", timeout=5
        ) as client:
            await client.subscribe(f"{PREFIX}/diag/resp", qos=1)
            answers = asyncio.create_task(self._answers(client))
            try:
                await asyncio.gather(*(self._worker(client, n, stop) for n in range(in_flight)))
            finally:
                answers.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await answers

    async def _answers(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            request_id = peek_id(message.payload)
            if request_id not in self.pending:
                continue
            joiner, whole = self.pending[request_id]
            body = verify_answer(message.payload, self.info, request_id, gateway=GW)
            joined = joiner.add(body)
            if joined is not None and not whole.done():
                whole.set_result(joined)

    async def _worker(self, client: aiomqtt.Client, n: int, stop: asyncio.Event) -> None:
        turn = n
        while not stop.is_set():
            action = HEAVY[turn % len(HEAVY)]
            turn += 1
            args = {"since": 3600} if action in ("support-bundle", "logs") else {}
            request_id, token = sign_request(self.key, gateway=GW, action=action, args=args)
            whole: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self.pending[request_id] = (Reassembler(request_id), whole)
            await client.publish(f"{PREFIX}/diag/req", token, qos=1)
            body = await asyncio.wait_for(whole, 30)
            del self.pending[request_id]
            assert body["status"] == "ok", body
            self.answered[action] += 1


def lateness_p99(metrics_port: int) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.search(r'^edge_agent_poll_lateness_seconds\{terminal="plc"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


def good_polls(agent: Agent, start: float, end: float) -> int:
    """Polls of plc that read its point, by the time the agent stamped on each reading."""
    count = 0
    for reading in agent.readings():
        at = datetime.fromisoformat(reading["observed_at"]).timestamp()
        if reading["terminal"] == "plc" and reading["quality"] == "good" and start <= at < end:
            count += 1
    return count


async def test_polling_keeps_its_rate_while_heavy_actions_run(
    site: Site,
    device: tuple[SimulatedModbusDevice, int],
    agent_factory: Any,
) -> None:
    _, port = device
    key = EngineerKey.generate()
    key.save(site.key("admin"))
    metrics_port = free_port()
    site.write(
        [tcp_terminal(port, [{"name": "level", "address": 0, "type": "uint16"}], period="200ms")],
        diagnosis={
            "consent": "always",
            "engineers": [{"name": "Admin", "role": "admin", "public_key": key.public_pem()}],
            "roles": {"admin": ADMIN},
        },
        metrics={"listen": f"127.0.0.1:{metrics_port}"},
    )
    agent = await site.start(agent_factory)
    await agent.wait_for("polling", lambda: len(agent.readings()) >= 5, 10)

    quiet_start = time.time()
    await asyncio.sleep(WINDOW)
    quiet_end = time.time()
    quiet_p99 = await asyncio.to_thread(lateness_p99, metrics_port)

    desk = Desk(site.broker.port, key, site.gateway_info())
    stop = asyncio.Event()
    load = asyncio.create_task(desk.run(4, stop))
    await until("the actions under way", lambda: sum(desk.answered.values()) >= 4, 30)
    busy_start = time.time()
    during = Counter(desk.answered)
    await asyncio.sleep(WINDOW)
    busy_end = time.time()
    during = desk.answered - during
    stop.set()
    await asyncio.wait_for(load, 40)
    busy_p99 = await asyncio.to_thread(lateness_p99, metrics_port)
    await asyncio.sleep(1.0)  # the last readings of the window reach readings.jsonl

    quiet = good_polls(agent, quiet_start, quiet_end)
    busy = good_polls(agent, busy_start, busy_end)
    expected = WINDOW / PERIOD
    print(
        f"\npolls of a 0.2 s terminal in {WINDOW:g} s: {quiet} without actions, {busy} with "
        f"{sum(during.values())} heavy actions answered meanwhile ({dict(during)}); "
        f"lateness p99 {quiet_p99} s quiet, {busy_p99} s after the load"
    )
    assert quiet >= 0.9 * expected  # the baseline itself keeps the rate
    assert sum(during.values()) >= 4 and during["support-bundle"] >= 1  # the load was real
    assert busy >= 0.9 * quiet, (busy, quiet)
    assert await agent.stop() == 0
