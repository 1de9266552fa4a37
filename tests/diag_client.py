"""The gateway tests' support desk: an engineer's key, any request payload signed, a client.

Keys, signing, answer verification and the joining of chunks are the support desk's own
(`agent.diagnosis.engineer`: `EngineerKey`, `verify_envelope`, `Reassembler`); this module adds
only what the gateway's tests need beyond `edge-agent remote`: a key made in memory, a request
payload with any id, `iat` or lifetime (an expired one, one over 15 minutes, a replay), and a
client that keeps every answer and event it sees. Every message is also verified with joserfc
against the device key (tests.collector.verify): an implementation independent of ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

import aiomqtt

from agent.diagnosis import engineer
from agent.diagnosis.engineer import Reassembler, new_request_id, verify_envelope
from agent.signing import DeviceKey
from tests.collector import verify


class EngineerKey(engineer.EngineerKey):
    """The support desk's key, generated in memory; `sign` signs any payload (a test may need
    one `sign_request` would never make)."""

    def __init__(self) -> None:
        super().__init__(DeviceKey.generate())

    def sign(self, payload: dict[str, Any]) -> bytes:
        return self.sign_compact(json.dumps(payload, separators=(",", ":")).encode()).encode()


def request(
    gw: str,
    action: str,
    args: dict[str, Any] | None = None,
    *,
    id: str | None = None,
    iat: int | None = None,
    lifetime: int = 300,
) -> dict[str, Any]:
    """A request payload: a fresh id, issued now, valid for `lifetime` seconds (any lifetime:
    `sign_request` refuses one over 15 minutes, which a test of the gateway's refusal needs)."""
    now = int(time.time()) if iat is None else iat
    return {
        "id": id or new_request_id(),
        "gw": gw,
        "action": action,
        "args": args or {},
        "iat": now,
        "exp": now + lifetime,
    }


class DiagClient:
    """Publishes requests on `<prefix>/diag/req`; collects every answer and event it sees,
    each verified with the gateway's key (`device`: what `keys show --json` prints) twice:
    by joserfc and, for answers, by the support desk's `verify_envelope`."""

    def __init__(self, port: int, prefix: str, gateway: str, device: dict[str, Any]) -> None:
        self.port = port
        self.prefix = prefix
        self.gateway = gateway
        self.device = device
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
            envelope = verify(payload, self.device["jwk"])  # joserfc, the device key
            self.topics.append(str(message.topic))
            if str(message.topic).endswith("/diag/resp"):
                desk = verify_envelope(payload, self.device, gateway=self.gateway, kind="diag")
                assert desk == envelope
                self.answers.append(envelope["body"])
            else:
                self.events.append(envelope["body"])

    async def publish(self, token: bytes | str) -> None:
        assert self._client is not None
        await self._client.publish(f"{self.prefix}/diag/req", token, qos=1)

    async def answer(
        self, request_id: str, timeout: float = 15, nth: int = 1, whole: bool = False
    ) -> dict[str, Any]:
        """The `nth` whole answer to `request_id`, or (unless `whole`: a replay's refusal is
        awaited) the chunked one joined by `Reassembler`, with `chunks` its number of chunks."""
        deadline = time.monotonic() + timeout
        while True:
            mine = [a for a in self.answers if a["id"] == request_id]
            single = [a for a in mine if a["chunk"] is None]
            if len(single) >= nth:
                return single[nth - 1]
            if not whole:
                joiner = Reassembler(request_id)
                for chunk in (a for a in mine if a["chunk"] is not None):
                    joined = joiner.add(chunk)
                    if joined is not None:
                        return {**joined, "chunks": joiner.of}
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer to {request_id}; answers: {self.answers}")
            await asyncio.sleep(0.05)

    async def ask(
        self, key: EngineerKey, payload: dict[str, Any], timeout: float = 15
    ) -> dict[str, Any]:
        await self.publish(key.sign(payload))
        return await self.answer(payload["id"], timeout)
