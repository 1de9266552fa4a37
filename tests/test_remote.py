"""`edge-agent remote`: keys, trust, and requests answered over a real mosquitto by a test peer.

The peer answers like a gateway (docs/diagnosis.md, "An answer"): it verifies the request with
joserfc (not our code) against the engineer's public key, then publishes envelopes signed by a
real device key (`agent.signing`) on `<prefix>/diag/resp`. The CLI runs as a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives import serialization

from agent.diagnosis.engineer import (
    ChunkError,
    EngineerKey,
    KnownGateways,
    NotOurs,
    Reassembler,
    Unverifiable,
    sign_request,
    verify_answer,
)
from agent.diagnosis.remote import parse_params
from agent.signing import DeviceKey, envelope_payload, jwk_thumbprint
from tests.broker import Mosquitto
from tests.collector import verify

GATEWAY = "dam-01"
Respond = Callable[[dict[str, Any]], list[str]]


def answer(key: DeviceKey, body: dict[str, Any], *, gateway: str = GATEWAY, seq: int = 1) -> str:
    """A gateway's signed answer: its usual envelope, kind diag."""
    return key.sign_compact(envelope_payload(gateway, seq, "diag", datetime.now(UTC), body))


def ok(request: dict[str, Any], result: Any) -> dict[str, Any]:
    return {"id": request["id"], "status": "ok", "reason": None, "result": result, "chunk": None}


class GatewayPeer:
    """Subscribes to `<prefix>/diag/req`, checks each request, publishes what `respond` gives."""

    def __init__(self, port: int, gateway: str, engineer_jwk: dict[str, Any], respond: Respond):
        self.port = port
        self.prefix = f"edge/{gateway}"
        self.gateway = gateway
        self.engineer_jwk = engineer_jwk
        self.respond = respond
        self.requests: list[dict[str, Any]] = []
        self.ready = asyncio.Event()

    async def run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="peer-" + self.gateway) as c:
            await c.subscribe(f"{self.prefix}/diag/req", qos=1)
            self.ready.set()
            async for message in c.messages:
                assert isinstance(message.payload, bytes)
                request = verify(message.payload, self.engineer_jwk)  # joserfc, the engineer's key
                assert set(request) == {"id", "gw", "action", "args", "iat", "exp"}
                assert request["gw"] == self.gateway
                assert 0 < request["exp"] - request["iat"] <= 900
                assert abs(request["iat"] - time.time()) < 5
                assert isinstance(request["id"], str) and 0 < len(request["id"]) <= 128
                self.requests.append(request)
                for token in self.respond(request):
                    await c.publish(f"{self.prefix}/diag/resp", token, qos=1)


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    mosquitto = Mosquitto(tmp_path / "mosquitto").start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def desk(tmp_path: Path) -> dict[str, Any]:
    """An engineer's key file, a gateway key, and a known-gateways file that trusts it."""
    engineer = EngineerKey.generate()
    engineer.save(tmp_path / "engineer.pem")
    gateway_key = DeviceKey.generate()
    known = tmp_path / "known.json"
    KnownGateways(known).add(GATEWAY, gateway_key.public_info())
    return {"engineer": engineer, "gateway_key": gateway_key, "known": known, "tmp": tmp_path}


@contextlib.asynccontextmanager
async def peer(
    broker: Mosquitto, desk: dict[str, Any], respond: Respond
) -> AsyncIterator[GatewayPeer]:
    p = GatewayPeer(broker.port, GATEWAY, desk["engineer"].public_info()["jwk"], respond)
    task = asyncio.create_task(p.run())
    await asyncio.wait_for(p.ready.wait(), 10)
    try:
        yield p
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def cli(*args: str | Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        *map(str, args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def remote(broker: Mosquitto, desk: dict[str, Any], *words: str, timeout: float = 10) -> Any:
    return cli(
        "remote",
        *words,
        "--broker",
        broker.url,
        "--key",
        desk["tmp"] / "engineer.pem",
        "--known",
        desk["known"],
        "--timeout",
        str(timeout),
    )


# -- keys and trust -------------------------------------------------------------------------------


async def test_keygen_writes_a_private_key_0600_and_prints_the_public_one(tmp_path: Path) -> None:
    out_file = tmp_path / "li-wei.key"
    code, out, err = await cli("remote", "keygen", "--out", out_file, "--json")
    assert code == 0, err
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    info = json.loads(out)
    assert set(info) == {"schema", "kid", "public_key_pem", "jwk"}
    assert info["schema"] == 1
    key = EngineerKey.load(out_file)
    assert info["kid"] == key.kid == jwk_thumbprint(info["jwk"]["x"])
    assert info["public_key_pem"] == key.public_pem()
    # The PEM form is what a gateway's diagnosis.engineers[].public_key takes, as it is.
    code, out, err = await cli("remote", "keygen", "--out", tmp_path / "other.key")
    assert code == 0
    assert out.startswith("-----BEGIN PUBLIC KEY-----")
    assert serialization.load_pem_public_key(out.encode())
    # An existing key is never replaced without --force; a key others can read is refused.
    code, _, err = await cli("remote", "keygen", "--out", out_file)
    assert code == 2 and "exists" in err
    assert EngineerKey.load(out_file).kid == key.kid
    out_file.chmod(0o644)
    known = tmp_path / "known.json"
    KnownGateways(known).add(GATEWAY, DeviceKey.generate().public_info())
    code, _, err = await cli(
        "remote", GATEWAY, "status", "--broker", "mqtt://127.0.0.1:1", "--key", out_file,
        "--known", known,
    )  # fmt: skip
    assert code == 2 and "mode 0644 lets others read it" in err


async def test_trust_adds_a_gateway_and_refuses_a_key_whose_kid_lies(tmp_path: Path) -> None:
    gateway_key = DeviceKey.generate()
    shown = tmp_path / "dam-01.json"
    shown.write_text(json.dumps(gateway_key.public_info(), indent=2))
    known = tmp_path / "known.json"
    code, out, err = await cli("remote", "trust", GATEWAY, shown, "--known", known)
    assert code == 0, err
    assert gateway_key.kid in out
    stored = json.loads(known.read_text())
    assert stored[GATEWAY]["kid"] == gateway_key.kid
    assert stored[GATEWAY]["public_key_pem"] == gateway_key.public_pem()
    # A second gateway joins the first; a file whose kid is not its key's thumbprint is refused.
    other = DeviceKey.generate()
    lying = {**other.public_info(), "kid": gateway_key.kid}
    shown.write_text(json.dumps(lying))
    code, _, err = await cli("remote", "trust", "dam-02", shown, "--known", known)
    assert code == 2 and "thumbprint" in err
    shown.write_text(json.dumps(other.public_info()))
    code, _, _ = await cli("remote", "trust", "dam-02", shown, "--known", known)
    assert code == 0
    assert set(json.loads(known.read_text())) == {GATEWAY, "dam-02"}


# -- requests and answers -------------------------------------------------------------------------


async def test_an_ok_answer_is_verified_and_printed(
    broker: Mosquitto, desk: dict[str, Any]
) -> None:
    result = {"points": [{"name": "level", "value": 12.5, "unit": "m"}], "terminal": "dam-plc"}

    async with peer(broker, desk, lambda r: [answer(desk["gateway_key"], ok(r, result))]) as p:
        code, out, err = await remote(broker, desk, GATEWAY, "poll", "terminal=dam-plc", "limit=5")
        assert code == 0, err
        assert "dam-plc" in out and "12.5" in out and "level" in out
        request = p.requests[-1]
        assert request["action"] == "poll"
        assert request["args"] == {"terminal": "dam-plc", "limit": 5}
        assert request["exp"] - request["iat"] == 300

        code, out, err = await cli(
            "remote", GATEWAY, "poll", "terminal=dam-plc", "--json", "--broker", broker.url,
            "--key", desk["tmp"] / "engineer.pem", "--known", desk["known"],
        )  # fmt: skip
        assert code == 0, err
        body = json.loads(out)
        assert body == {"schema": 1, **ok(p.requests[-1], result)}


async def test_a_refusal_prints_its_reason_and_exits_1(
    broker: Mosquitto, desk: dict[str, Any]
) -> None:
    def refuse(r: dict[str, Any]) -> list[str]:
        body = {"id": r["id"], "status": "refused", "reason": "no consent for poll", "result": None,
                "chunk": None}  # fmt: skip
        return [answer(desk["gateway_key"], body)]

    async with peer(broker, desk, refuse):
        code, out, err = await remote(broker, desk, GATEWAY, "poll", "terminal=dam-plc")
    assert code == 1
    assert "refused" in err and "no consent for poll" in err
    assert out == ""


async def test_a_large_answer_in_chunks_out_of_order_and_duplicated_is_joined(
    broker: Mosquitto, desk: dict[str, Any]
) -> None:
    result = {"lines": [f"event {i}: " + "x" * 50 for i in range(400)]}
    text = json.dumps(result)
    size = -(-len(text) // 5)
    slices = [text[i * size : (i + 1) * size] for i in range(5)]

    def chunked(r: dict[str, Any]) -> list[str]:
        def part(n: int) -> str:
            body = {"id": r["id"], "status": "ok", "reason": None, "result": slices[n - 1],
                    "chunk": {"n": n, "of": 5}}  # fmt: skip
            return answer(desk["gateway_key"], body, seq=n)

        return [part(n) for n in (3, 1, 5, 1, 2, 4)]  # out of order, chunk 1 twice

    async with peer(broker, desk, chunked):
        code, out, err = await cli(
            "remote", GATEWAY, "logs", "--json", "--broker", broker.url,
            "--key", desk["tmp"] / "engineer.pem", "--known", desk["known"],
        )  # fmt: skip
    assert code == 0, err
    body = json.loads(out)
    assert body["result"] == result
    assert body["chunk"] is None


async def test_a_forged_answer_is_ignored_and_the_real_one_accepted(
    broker: Mosquitto, desk: dict[str, Any]
) -> None:
    forger = DeviceKey.generate()

    def forged_first(r: dict[str, Any]) -> list[str]:
        fake = {"id": r["id"], "status": "ok", "reason": None, "result": {"level": 999},
                "chunk": None}  # fmt: skip
        return [
            answer(forger, fake),
            "not a JWS at all",
            answer(desk["gateway_key"], ok(r, {"level": 12.5})),
        ]

    async with peer(broker, desk, forged_first):
        code, out, err = await cli(
            "remote", GATEWAY, "read-point", "terminal=dam-plc", "point=level", "--json",
            "--broker", broker.url, "--key", desk["tmp"] / "engineer.pem", "--known", desk["known"],
        )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["result"] == {"level": 12.5}
    assert err.count("forged or unverifiable answer ignored") == 2


async def test_no_answer_exits_1_within_the_timeout(
    broker: Mosquitto, desk: dict[str, Any]
) -> None:
    async with peer(broker, desk, lambda r: []) as p:
        started = time.monotonic()
        code, out, err = await remote(broker, desk, GATEWAY, "status", timeout=1.5)
        elapsed = time.monotonic() - started
    assert code == 1 and out == ""
    assert f"no answer from {GATEWAY} within 1.5 s" in err
    assert len(p.requests) == 1  # it was asked
    assert elapsed < 6


async def test_bad_usage_exits_2(broker: Mosquitto, desk: dict[str, Any]) -> None:
    code, _, err = await remote(broker, desk, "dam-99", "status")
    assert code == 2 and "dam-99 is not in" in err
    code, _, err = await remote(broker, desk, GATEWAY, "poll", "terminal")
    assert code == 2 and "NAME=VALUE" in err
    (desk["tmp"] / "bad.pem").write_text("not a key")
    (desk["tmp"] / "bad.pem").chmod(0o600)
    code, _, err = await cli(
        "remote", GATEWAY, "status", "--broker", broker.url, "--key", desk["tmp"] / "bad.pem",
        "--known", desk["known"],
    )  # fmt: skip
    assert code == 2 and "bad.pem" in err


# -- the codec, without a broker ------------------------------------------------------------------


def test_params_are_json_when_they_parse() -> None:
    assert parse_params(["terminal=dam-plc", "limit=5", "run=true", "level=1.5", "x=[1,2]"]) == {
        "terminal": "dam-plc", "limit": 5, "run": True, "level": 1.5, "x": [1, 2],
    }  # fmt: skip
    assert parse_params(["reason=bad update"]) == {"reason": "bad update"}


def test_verify_answer_checks_gateway_kind_and_id() -> None:
    engineer = EngineerKey.generate()
    key = DeviceKey.generate()
    info = key.public_info()
    request_id, token = sign_request(engineer, gateway=GATEWAY, action="status", args={})
    assert verify(token.encode(), engineer.public_info()["jwk"])["id"] == request_id
    body = {"id": request_id, "status": "ok", "reason": None, "result": 1, "chunk": None}
    assert verify_answer(answer(key, body), info, request_id, gateway=GATEWAY) == body
    with pytest.raises(NotOurs):
        verify_answer(answer(key, {**body, "id": "other"}), info, request_id, gateway=GATEWAY)
    with pytest.raises(Unverifiable, match="for gateway"):
        verify_answer(answer(key, body, gateway="dam-02"), info, request_id, gateway=GATEWAY)
    health = key.sign_compact(envelope_payload(GATEWAY, 1, "health", datetime.now(UTC), body))
    with pytest.raises(Unverifiable, match="health"):
        verify_answer(health, info, request_id, gateway=GATEWAY)
    tampered = answer(key, body).split(".")
    tampered[2] = tampered[2][:-4] + ("AAAA" if tampered[2][-4:] != "AAAA" else "BBBB")
    with pytest.raises(Unverifiable, match="signature"):
        verify_answer(".".join(tampered), info, request_id, gateway=GATEWAY)
    with pytest.raises(ValueError, match="lives"):
        sign_request(engineer, gateway=GATEWAY, action="status", args={}, lifetime=901)


def test_reassembler_refuses_a_chunk_of_another_count() -> None:
    joiner = Reassembler("r1")

    def chunk(n: int, of: int, text: str) -> dict[str, Any]:
        return {"id": "r1", "status": "ok", "reason": None, "result": text,
                "chunk": {"n": n, "of": of}}  # fmt: skip

    assert joiner.add(chunk(2, 2, "2]")) is None
    with pytest.raises(ChunkError, match="of 2"):
        joiner.add(chunk(1, 3, "[1,"))
    assert joiner.add(chunk(2, 2, "2]")) is None  # a duplicate
    whole = joiner.add(chunk(1, 2, "[1,"))
    assert whole is not None and whole["result"] == [1, 2] and whole["chunk"] is None
