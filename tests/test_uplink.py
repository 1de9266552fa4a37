"""The MQTT uplink against a real mosquitto: acknowledged delivery, TLS, ACLs, clear errors."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from agent.config import UplinkConfig
from agent.credentials import resolve_uplink
from agent.outbox import AsyncOutbox, Outbox, Priority
from agent.signing import DeviceKey, init_key
from agent.uplink import Uplink, describe_failure
from agent.uplink.session import _resend, marking_dup
from tests.broker import Mosquitto, free_port, tls_listener
from tests.certs import TestCA
from tests.collector import Collector, verify

PREFIX = "edge/gw-test"


@pytest.fixture
def key(tmp_path: Path) -> DeviceKey:
    return init_key(tmp_path / "state")


@pytest.fixture
def outbox(tmp_path: Path, key: DeviceKey) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db", key, "gw-test", synchronous="normal")
    box.open()
    yield box
    box.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(
        tmp_path / "broker", extra="autosave_interval 1\nmax_queued_messages 100000\n"
    )
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


@contextlib.asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[Uplink]:
    """The uplink as the daemon runs it (`async with`); the child process below calls `run()`."""
    async with uplink:
        yield uplink


def uplink_for(outbox: Outbox, **config: Any) -> Uplink:
    settings = UplinkConfig.model_validate(
        {"backoff_min": "100ms", "backoff_max": "500ms", **config}
    )
    return Uplink(settings, AsyncOutbox(outbox), PREFIX, "edge-agent-gw-test")


async def wait_until(what: str, predicate: Any, timeout: float = 15) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_messages_leave_the_outbox_only_when_acknowledged_and_arrive_signed(
    outbox: Outbox, broker: Mosquitto, key: DeviceKey
) -> None:
    outbox.put_many(
        [("telemetry", {"readings": [{"n": i}]}, Priority.TELEMETRY) for i in range(50)]
    )
    outbox.put("health", {"ok": True}, Priority.HEALTH)
    outbox.put("event", {"alarm": "door"}, Priority.EVENT)
    async with (
        Collector(broker.port, f"{PREFIX}/#") as collector,
        running(uplink_for(outbox, broker=broker.url)) as uplink,
    ):
        await wait_until("drained", lambda: outbox.stats().messages == 0)
        await collector.wait_for("all", lambda: len(collector.messages) >= 53)
        assert uplink.state.connected
        assert uplink.state.published == 52
    jwk = key.public_info()["jwk"]
    telemetry = [verify(m.payload, jwk) for m in collector.on("telemetry")]
    assert [p["body"]["readings"][0]["n"] for p in telemetry] == list(range(50))
    seqs = sorted(
        verify(m.payload, jwk)["seq"] for m in collector.messages if "/state" not in m.topic
    )
    assert seqs == list(range(1, 53))
    [event] = collector.on("events")
    assert verify(event.payload, jwk)["body"] == {"alarm": "door"}
    # online when it connected, offline when it left (a clean disconnect sends no will)
    assert [m.payload for m in collector.on("state")] == [b"online", b"offline"]
    # Priorities: the event and the health report went before any telemetry.
    topics = [m.topic.rsplit("/", 1)[1] for m in collector.messages if "/state" not in m.topic]
    assert topics[:2] == ["events", "health"]


async def test_health_is_retained_and_state_says_offline_when_the_agent_leaves(
    outbox: Outbox, broker: Mosquitto
) -> None:
    outbox.put("health", {"ok": True}, Priority.HEALTH)
    async with running(uplink_for(outbox, broker=broker.url)):
        await wait_until("drained", lambda: outbox.stats().messages == 0)
    # A subscriber that comes later gets the retained health report and the retained state.
    async with Collector(broker.port, f"{PREFIX}/#", client_id="late") as late:
        await late.wait_for("retained", lambda: len(late.messages) >= 2)
    assert {m.topic.rsplit("/", 1)[1]: m.payload for m in late.messages if m.retain}.keys() == {
        "health",
        "state",
    }
    assert late.on("state")[0].payload == b"offline"


async def test_the_last_will_says_offline_when_the_connection_dies(
    tmp_path: Path, outbox: Outbox, broker: Mosquitto
) -> None:
    # The agent's side of the connection vanishes without a DISCONNECT: run it in a child
    # process and kill it.
    import sys

    from tests.conftest import ROOT

    script = (
        "import asyncio, sys\n"
        "from agent.config import UplinkConfig\n"
        "from agent.outbox import AsyncOutbox, Outbox\n"
        "from agent.signing import load_key\n"
        "from agent.uplink import Uplink\n"
        "from pathlib import Path\n"
        "async def main():\n"
        f"    box = Outbox(Path({str(tmp_path / 'child.db')!r}), load_key(Path({str(tmp_path / 'state')!r})), 'gw-test')\n"
        "    box.open()\n"
        f"    up = Uplink(UplinkConfig(broker={broker.url!r}, keepalive=1), AsyncOutbox(box), {PREFIX!r}, 'child')\n"
        "    await up.run()\n"
        "asyncio.run(main())\n"
    )
    async with Collector(broker.port, f"{PREFIX}/state") as collector:
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", script, cwd=ROOT)
        try:
            await collector.wait_for(
                "online", lambda: any(m.payload == b"online" for m in collector.messages)
            )
        finally:
            child.kill()
            await child.wait()
        await collector.wait_for("will", lambda: collector.messages[-1].payload == b"offline")


async def test_an_unreachable_broker_gives_one_clear_reason(outbox: Outbox) -> None:
    outbox.put("event", {"x": 1}, Priority.EVENT)
    async with running(uplink_for(outbox, broker=f"mqtt://127.0.0.1:{free_port()}")) as uplink:
        await wait_until("an error", lambda: uplink.state.last_error is not None)
    assert uplink.state.last_error is not None
    assert "connection refused" in uplink.state.last_error
    assert outbox.stats().events == 1  # nothing leaves without a PUBACK


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = TestCA(tmp_path / "pki")
    other = TestCA(tmp_path / "other", name="someone-else")
    server_cert, server_key = ca.issue("localhost", server=True)
    client_cert, client_key = ca.issue("gw-test")
    old_cert, old_key = ca.issue("gw-old", expired=True)
    return {
        "ca": ca.cert_path,
        "other_ca": other.cert_path,
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
        "expired_cert": old_cert,
        "expired_key": old_key,
    }


@pytest.fixture
def tls_broker(tmp_path: Path, pki: dict[str, Path]) -> Iterator[Mosquitto]:
    acl = tmp_path / "acl"
    # The gateway may write its state, health and telemetry, not events: a denied topic.
    allowed = "".join(f"topic write {PREFIX}/{t}\n" for t in ("state", "health", "telemetry"))
    acl.write_text(f"user gw-test\n{allowed}\npattern read $SYS/#\n")
    port, plain = free_port(), free_port()
    mosquitto = Mosquitto(
        tmp_path / "tls-broker",
        port=port,
        extra=(
            "per_listener_settings true\n"
            + tls_listener(port, pki["ca"], pki["server_cert"], pki["server_key"])
            + f"acl_file {acl}\n"
            # a plain listener for the test's own subscriber
            f"listener {plain} 127.0.0.1\nallow_anonymous true\n"
        ),
    )
    mosquitto.start()
    mosquitto.plain_port = plain  # type: ignore[attr-defined]
    yield mosquitto
    mosquitto.stop()


def tls_uplink(outbox: Outbox, broker: Mosquitto, pki: dict[str, Path], **tls: Any) -> Uplink:
    settings = {"ca": pki["ca"], "cert": pki["client_cert"], "key": pki["client_key"], **tls}
    return uplink_for(outbox, broker=f"mqtts://127.0.0.1:{broker.port}", tls=settings)


async def test_tls_with_a_client_certificate_and_an_acl_delivers(
    outbox: Outbox, tls_broker: Mosquitto, pki: dict[str, Path]
) -> None:
    outbox.put("health", {"over": "tls"}, Priority.HEALTH)
    async with Collector(tls_broker.plain_port, f"{PREFIX}/#") as collector:  # type: ignore[attr-defined]
        async with running(tls_uplink(outbox, tls_broker, pki)) as uplink:
            await wait_until("drained", lambda: outbox.stats().messages == 0)
            assert uplink.state.last_error is None
        await collector.wait_for("health", lambda: collector.on("health"))


async def test_a_client_key_from_a_systemd_credential_delivers_over_mutual_tls(
    outbox: Outbox,
    tls_broker: Mosquitto,
    pki: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The config names the certificate only; the key is the file systemd hands over."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    shutil.copy(pki["client_key"], creds / "edge-agent_tls-key")  # the unit's folder credential
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = UplinkConfig.model_validate(
        {
            "broker": f"mqtts://127.0.0.1:{tls_broker.port}",
            "tls": {"ca": pki["ca"], "cert": pki["client_cert"]},
            "backoff_min": "100ms",
            "backoff_max": "500ms",
        }
    )
    resolved = resolve_uplink(settings)
    assert resolved.tls.key == creds / "edge-agent_tls-key"
    outbox.put("health", {"key": "from a credential"}, Priority.HEALTH)
    uplink = Uplink(resolved, AsyncOutbox(outbox), PREFIX, "edge-agent-gw-test")
    async with Collector(tls_broker.plain_port, f"{PREFIX}/#") as collector:  # type: ignore[attr-defined]
        async with running(uplink):
            await wait_until("drained", lambda: outbox.stats().messages == 0)
            assert uplink.state.last_error is None
        await collector.wait_for("health", lambda: collector.on("health"))


async def test_a_broker_certificate_from_another_ca_is_not_trusted(
    outbox: Outbox, tls_broker: Mosquitto, pki: dict[str, Path]
) -> None:
    async with running(tls_uplink(outbox, tls_broker, pki, ca=pki["other_ca"])) as uplink:
        await wait_until("an error", lambda: uplink.state.last_error is not None)
    assert uplink.state.last_error is not None
    assert uplink.state.last_error.startswith(
        f"TLS: the certificate of broker 127.0.0.1:{tls_broker.port} is not trusted"
    )
    assert "check uplink.tls.ca" in uplink.state.last_error


async def test_an_expired_client_certificate_is_named_as_the_cause(
    outbox: Outbox, tls_broker: Mosquitto, pki: dict[str, Path]
) -> None:
    uplink = tls_uplink(outbox, tls_broker, pki, cert=pki["expired_cert"], key=pki["expired_key"])
    uplink.config = uplink.config.model_copy(update={"connect_timeout": 2.0})
    async with running(uplink):
        # On a loaded machine the broker's alert may miss the first attempt's connect timeout.
        await wait_until("the cause", lambda: "expired" in (uplink.state.last_error or ""))
    assert uplink.state.last_error == (
        f"TLS: broker 127.0.0.1:{tls_broker.port} rejected our client certificate: it has expired"
    )


async def test_a_publish_the_acl_denies_stays_in_the_outbox_and_is_reported(
    outbox: Outbox, tls_broker: Mosquitto, pki: dict[str, Path]
) -> None:
    """Only the refused message stays; the session goes on and delivers what is allowed."""
    outbox.put("event", {"x": 1}, Priority.EVENT)  # events/ is denied by the ACL
    outbox.put("health", {"ok": True}, Priority.HEALTH)
    async with (
        Collector(tls_broker.plain_port, f"{PREFIX}/#") as collector,  # type: ignore[attr-defined]
        running(tls_uplink(outbox, tls_broker, pki)) as uplink,
    ):
        await wait_until("a refusal", lambda: uplink.state.refused >= 1)
        await collector.wait_for("health", lambda: collector.on("health"))
        assert uplink.state.connected
    assert uplink.state.last_error == (
        f"broker refused a publish on {PREFIX}/events: Not authorized (check the ACL)"
    )
    assert outbox.stats().events == 1
    assert outbox.stats().health == 0
    assert [m.payload for m in collector.on("state")][:1] == [b"online"]


def test_connection_refused_by_the_broker_is_explained() -> None:
    from aiomqtt.exceptions import MqttConnectError
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    config = UplinkConfig(broker="mqtt://broker.example:1883")
    rc = ReasonCode(PacketTypes.CONNACK, "Bad user name or password")
    assert describe_failure(MqttConnectError(rc), config) == (
        "broker broker.example:1883 refused the connection: Bad user name or password "
        "(check uplink.username and uplink.password)"
    )


def test_paho_still_sends_a_publish_through_send_publish_with_dup_sixth() -> None:
    """`marking_dup` (the DUP flag on re-sends) wraps paho's private `_send_publish`: this fails
    when a paho upgrade changes what it wraps (tests/faults/test_broker.py sees DUP on the wire)."""
    parameters = list(inspect.signature(paho.Client._send_publish).parameters)
    assert parameters[:7] == ["self", "mid", "topic", "payload", "qos", "retain", "dup"]
    assert "self._send_publish(" in inspect.getsource(paho.Client.publish)
    sent: list[tuple[Any, ...]] = []
    send = marking_dup(lambda *args, **kwargs: sent.append(args))
    send(7, b"t", b"p", 1, False, False, None, None)
    assert sent[-1][5] is False
    context = contextvars.copy_context()
    context.run(lambda: (_resend.set(True), send(8, b"t", b"p", 1, False, False, None, None)))
    assert sent[-1][:6] == (8, b"t", b"p", 1, False, True)
