"""The tests' support desk: an engineer's key, a signed request, a client that asks a gateway.

Requests are signed with `cryptography` directly (not the agent's code), answers verified with
joserfc against the device key (tests.collector.verify). The real `edge-agent remote` is the
support desk's own module; this is only what the gateway's tests need.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.signing import jwk_thumbprint
from tests.collector import verify


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class EngineerKey:
    """An engineer's Ed25519 key: its public PEM for the gateway's config, and signing."""

    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.kid = jwk_thumbprint(_b64(raw))

    def public_pem(self) -> str:
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def sign(self, payload: dict[str, Any], kid: str | None = None) -> bytes:
        header = {"alg": "EdDSA", "kid": kid or self.kid}
        signing_input = (
            _b64(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64(json.dumps(payload, separators=(",", ":")).encode())
        )
        signature = self.private.sign(signing_input.encode("ascii"))
        return f"{signing_input}.{_b64(signature)}".encode("ascii")


def request(
    gw: str,
    action: str,
    args: dict[str, Any] | None = None,
    *,
    id: str | None = None,
    iat: int | None = None,
    lifetime: int = 300,
) -> dict[str, Any]:
    """A request payload: a fresh id, issued now, valid for `lifetime` seconds."""
    now = int(time.time()) if iat is None else iat
    return {
        "id": id or uuid.uuid4().hex,
        "gw": gw,
        "action": action,
        "args": args or {},
        "iat": now,
        "exp": now + lifetime,
    }


class DiagClient:
    """Publishes requests on `<prefix>/diag/req`; collects every answer and event it sees."""

    def __init__(self, port: int, prefix: str, device_jwk: dict[str, Any] | None = None) -> None:
        self.port = port
        self.prefix = prefix
        self.device_jwk = device_jwk
        self.answers: list[dict[str, Any]] = []  # verified bodies from diag/resp
        self.events: list[dict[str, Any]] = []  # verified bodies from events
        self.topics: list[str] = []
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> DiagClient:
        client = aiomqtt.Client(
            "127.0.0.1", self.port, identifier=f"desk-{uuid.uuid4().hex[:8]}", timeout=5
        )
        self._client = await self._stack.enter_async_context(client)
        await client.subscribe(f"{self.prefix}/diag/resp", qos=1)
        await client.subscribe(f"{self.prefix}/events", qos=1)
        self._task = asyncio.create_task(self._receive(client))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._stack.aclose()

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            assert isinstance(payload, bytes)
            assert self.device_jwk is not None, "set device_jwk before asking"
            envelope = verify(payload, self.device_jwk)  # joserfc, the device key
            self.topics.append(str(message.topic))
            if str(message.topic).endswith("/diag/resp"):
                assert envelope["kind"] == "diag"
                self.answers.append(envelope["body"])
            else:
                self.events.append(envelope["body"])

    async def publish(self, token: bytes) -> None:
        assert self._client is not None
        await self._client.publish(f"{self.prefix}/diag/req", token, qos=1)

    async def answer(
        self, request_id: str, timeout: float = 15, nth: int = 1, whole: bool = False
    ) -> dict[str, Any]:
        """The `nth` whole answer to `request_id`, or (unless `whole`: a replay's refusal is
        awaited) the chunked one with its chunks joined."""
        deadline = time.monotonic() + timeout
        while True:
            mine = [a for a in self.answers if a["id"] == request_id]
            single = [a for a in mine if a["chunk"] is None]
            if len(single) >= nth:
                return single[nth - 1]
            mine = [a for a in mine if a["chunk"] is not None]
            if not whole and mine and len(mine) >= mine[0]["chunk"]["of"]:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer to {request_id}; answers: {self.answers}")
            await asyncio.sleep(0.05)
        if mine[0]["chunk"] is None:
            return mine[0]
        chunks = sorted(mine, key=lambda a: a["chunk"]["n"])
        assert [c["chunk"]["n"] for c in chunks] == list(range(1, chunks[0]["chunk"]["of"] + 1))
        joined = "".join(c["result"] for c in chunks)
        return {**chunks[0], "result": json.loads(joined), "chunk": None, "chunks": len(chunks)}

    async def ask(
        self, key: EngineerKey, payload: dict[str, Any], timeout: float = 15
    ) -> dict[str, Any]:
        await self.publish(key.sign(payload))
        return await self.answer(payload["id"], timeout)
