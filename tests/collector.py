"""An upstream subscriber for the tests: collects what the agent publishes, across outages.

It keeps a persistent session (fixed client id, clean session off, QoS 1), so a broker started
with `autosave_interval 1` queues the agent's messages for it while it reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import warnings
import zlib
from dataclasses import dataclass
from typing import Any

import aiomqtt
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import OKPKey

from agent.telemetry import Receiver


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


class Collector:
    def __init__(self, port: int, topic: str, client_id: str = "test-collector") -> None:
        self.port = port
        self.topic = topic
        self.client_id = client_id
        self.messages: list[Received] = []
        self.subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    self.port,
                    identifier=self.client_id,
                    clean_session=False,
                    protocol=aiomqtt.ProtocolVersion.V311,
                    timeout=2,
                ) as client:
                    await client.subscribe(self.topic, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        payload = message.payload
                        assert isinstance(payload, bytes)
                        self.messages.append(Received(str(message.topic), payload, message.retain))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)

    def on(self, suffix: str) -> list[Received]:
        return [m for m in self.messages if m.topic.endswith("/" + suffix)]

    async def wait_for(self, what: str, predicate: Any, timeout: float = 20) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}; got {len(self.messages)}")
            await asyncio.sleep(0.05)


def verify(token: bytes, jwk: dict[str, Any]) -> dict[str, Any]:
    """Verify a JWS with joserfc (not the agent's code) and return its JSON payload, inflated
    first if the protected header says it is compressed (docs/telemetry.md)."""
    key = OKPKey.import_key(jwk)
    with warnings.catch_warnings():
        # joserfc flags the name EdDSA as superseded by RFC 9864's Ed25519; docs/architecture.md names EdDSA.
        warnings.simplefilter("ignore", SecurityWarning)
        obj = jws.deserialize_compact(token.decode(), key, algorithms=["EdDSA"])
    assert obj.protected["alg"] == "EdDSA"
    assert obj.protected["kid"] == jwk["kid"]
    data = obj.payload
    if obj.protected.get("cty") is not None:
        assert obj.protected["cty"] == "zlib"  # application/zlib: the envelope compressed
        data = zlib.decompress(data)
    result: dict[str, Any] = json.loads(data)
    return result


def telemetry(collector: Collector, jwk: dict[str, Any]) -> list[dict[str, Any]]:
    """Every telemetry payload received, verified, its body expanded to `{"readings": […]}`
    (either schema) by the reference decoder, agent.telemetry, with the meta messages received."""
    receiver = Receiver()
    for m in collector.on("meta"):
        receiver.readings([verify(m.payload, jwk)])
    out = []
    for m in collector.on("telemetry"):
        payload = verify(m.payload, jwk)
        payload["body"] = {"readings": receiver.readings([payload])}
        out.append(payload)
    return out
