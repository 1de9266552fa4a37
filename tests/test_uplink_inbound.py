"""Messages that come down, against a real mosquitto: the router, its limits, and the session."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from structlog.testing import capture_logs

from agent.outbox import Outbox, Priority
from agent.signing import DeviceKey, init_key
from agent.uplink import InboundMessage, InboundRouter, RouterError
from tests.broker import Mosquitto
from tests.collector import Collector
from tests.test_uplink import PREFIX, uplink_for, wait_until

UPDATE_TOPIC = "edge/update/stable"  # {fleet_prefix}/update/{channel}: outside the gateway prefix


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
    # Persistence on, so that a restart keeps the retained messages (as a real broker does).
    store = tmp_path / "broker-store"
    store.mkdir()
    mosquitto = Mosquitto(
        tmp_path / "broker", extra=f"persistence true\npersistence_location {store}/\n"
    )
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


async def publish(port: int, topic: str, payload: bytes, retain: bool = False) -> None:
    """Publish as someone else would (the fleet's server, an operator's diag tool)."""
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="test-sender", protocol=aiomqtt.ProtocolVersion.V5
    ) as sender:
        await sender.publish(topic, payload, qos=1, retain=retain)


class Recorder:
    """A handler that keeps what it got; `fail_on` payloads make it raise."""

    def __init__(self, fail_on: frozenset[bytes] = frozenset()) -> None:
        self.got: list[InboundMessage] = []
        self.fail_on = fail_on

    async def __call__(self, message: InboundMessage) -> None:
        self.got.append(message)
        if message.payload in self.fail_on:
            raise ValueError(f"cannot handle {message.payload!r}")

    @property
    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.got]


async def test_a_retained_message_reaches_its_handler_on_connect_and_again_after_a_restart(
    outbox: Outbox, broker: Mosquitto
) -> None:
    # The announcement is there before the gateway connects, as a fleet server leaves it.
    await publish(broker.port, UPDATE_TOPIC, b'{"version": "2.0"}', retain=True)
    updates = Recorder()
    uplink = uplink_for(outbox, broker=broker.url)
    assert uplink.router.register("edge/update/+", updates, absolute=True) == "edge/update/+"
    async with uplink:
        await wait_until("the announcement", lambda: len(updates.got) >= 1)
        broker.stop()  # a broker restart: every session is gone, the retained message stays
        await wait_until("the outage", lambda: not uplink.state.connected)
        broker.start()
        await wait_until("a reconnect", lambda: uplink.state.connects >= 2)
        await wait_until("the announcement again", lambda: len(updates.got) >= 2)
    assert [(m.topic, m.payload, m.retain) for m in updates.got] == [
        (UPDATE_TOPIC, b'{"version": "2.0"}', True)
    ] * 2
    assert updates.got[1].received_at > updates.got[0].received_at
    assert uplink.state.inbound.received == 2


async def test_an_oversized_message_is_refused_with_one_log_line_and_never_handled(
    outbox: Outbox, broker: Mosquitto
) -> None:
    requests = Recorder()
    uplink = uplink_for(outbox, broker=broker.url, max_inbound_bytes=1000)
    assert uplink.router.register("diag/req", requests) == f"{PREFIX}/diag/req"
    with capture_logs() as logs:
        async with uplink:
            await wait_until("connected", lambda: uplink.state.connected)
            await asyncio.sleep(0.2)  # the subscription is made right after connecting
            await publish(broker.port, f"{PREFIX}/diag/req", b"x" * 1001)
            await publish(broker.port, f"{PREFIX}/diag/req", b"x" * 1000)  # at the limit: fine
            await wait_until("the small request", lambda: len(requests.got) >= 1)
            await asyncio.sleep(0.2)
    assert [len(p) for p in requests.payloads] == [1000]
    refusals = [e for e in logs if e["event"] == "inbound message refused: too large"]
    assert refusals == [
        {
            "event": "inbound message refused: too large",
            "log_level": "warning",
            "topic": f"{PREFIX}/diag/req",
            "size": 1001,
            "limit": 1000,
        }
    ]
    assert uplink.state.inbound.refused_oversize == 1
    assert uplink.state.inbound.received == 2


async def test_a_handler_that_raises_is_logged_and_the_session_goes_on(
    outbox: Outbox, broker: Mosquitto
) -> None:
    requests = Recorder(fail_on=frozenset({b"bad"}))
    uplink = uplink_for(outbox, broker=broker.url)
    uplink.router.register("diag/#", requests)
    with capture_logs() as logs:
        async with Collector(broker.port, f"{PREFIX}/events") as collector, uplink:
            await wait_until("connected", lambda: uplink.state.connected)
            await asyncio.sleep(0.2)
            await publish(broker.port, f"{PREFIX}/diag/req", b"bad")
            await wait_until("the failure", lambda: uplink.state.inbound.handler_errors == 1)
            await publish(broker.port, f"{PREFIX}/diag/req", b"good")
            await wait_until("the next request", lambda: len(requests.got) == 2)
            await uplink.outbox.put("event", {"after": "the failure"}, Priority.EVENT)
            await collector.wait_for("the event", lambda: collector.on("events"))
            assert uplink.state.connects == 1  # the same session all along
            assert uplink.state.connected
    assert requests.payloads == [b"bad", b"good"]
    [failure] = [e for e in logs if e["event"] == "inbound handler failed"]
    assert failure["topic"] == f"{PREFIX}/diag/req"
    assert failure["error"] == "ValueError: cannot handle b'bad'"


async def test_a_slow_handler_holds_up_neither_publishing_nor_other_handlers(
    outbox: Outbox, broker: Mosquitto
) -> None:
    release = asyncio.Event()
    started: list[bytes] = []

    async def slow(message: InboundMessage) -> None:
        started.append(message.payload)
        await release.wait()

    updates = Recorder()
    uplink = uplink_for(outbox, broker=broker.url)
    uplink.router.register("diag/req", slow, queue_size=1)
    uplink.router.register(UPDATE_TOPIC, updates, absolute=True)
    with capture_logs() as logs:
        async with uplink:
            await wait_until("connected", lambda: uplink.state.connected)
            await asyncio.sleep(0.2)
            for n in range(3):  # one runs, one waits in the queue, the third finds it full
                await publish(broker.port, f"{PREFIX}/diag/req", b"%d" % n)
            await wait_until("the slow handler", lambda: started == [b"0"])
            await wait_until("a drop", lambda: uplink.state.inbound.dropped == 1)
            # While it is stuck: other topics are handled, and the outbox drains.
            await publish(broker.port, UPDATE_TOPIC, b"v3")
            await uplink.outbox.put_many(
                [("telemetry", {"n": i}, Priority.TELEMETRY) for i in range(20)]
            )
            await wait_until("drained", lambda: outbox.stats().messages == 0, timeout=5)
            await wait_until("the update", lambda: updates.payloads == [b"v3"], timeout=5)
            assert started == [b"0"]
            release.set()
            await wait_until("the queued one", lambda: started == [b"0", b"1"])
    assert uplink.state.published == 20
    [drop] = [e for e in logs if e["event"] == "inbound message dropped: handler busy"]
    assert drop["topic"] == f"{PREFIX}/diag/req"


async def test_a_handler_past_its_timeout_is_stopped_and_logged(
    outbox: Outbox, broker: Mosquitto
) -> None:
    handled: list[bytes] = []

    async def stuck(message: InboundMessage) -> None:
        if message.payload == b"stuck":
            await asyncio.sleep(3600)
        handled.append(message.payload)

    uplink = uplink_for(outbox, broker=broker.url)
    uplink.router.register("diag/req", stuck, timeout=0.3)
    with capture_logs() as logs:
        async with uplink:
            await wait_until("connected", lambda: uplink.state.connected)
            await asyncio.sleep(0.2)
            await publish(broker.port, f"{PREFIX}/diag/req", b"stuck")
            await publish(broker.port, f"{PREFIX}/diag/req", b"next")
            await wait_until("the next one", lambda: handled == [b"next"])
    assert uplink.state.inbound.handler_errors == 1
    [timeout] = [e for e in logs if e["event"] == "inbound handler timed out"]
    assert timeout["topic"] == f"{PREFIX}/diag/req"
    assert timeout["timeout"] == 0.3


async def test_a_message_on_no_registered_topic_is_ignored(outbox: Outbox) -> None:
    router = InboundRouter(PREFIX, max_bytes=100)
    requests = Recorder()
    router.register("diag/req", requests)
    async with router:
        router.deliver(f"{PREFIX}/diag/resp", b"{}")
        router.deliver(f"{PREFIX}/diag/req", b"{}")
        await wait_until("the request", lambda: requests.got)
    assert [m.topic for m in requests.got] == [f"{PREFIX}/diag/req"]
    assert router.counters.unmatched == 1


def test_an_invalid_filter_is_refused_at_registration() -> None:
    router = InboundRouter(PREFIX)
    with pytest.raises(RouterError, match="invalid topic filter"):
        router.register("diag/#/req", Recorder())
    assert router.filters() == []


async def test_leaving_says_offline_and_the_callers_cancellation_goes_through(
    outbox: Outbox, broker: Mosquitto
) -> None:
    uplink = uplink_for(outbox, broker=broker.url)
    entered = asyncio.Event()

    async def part() -> None:
        async with uplink:
            entered.set()
            await asyncio.sleep(3600)

    async with Collector(broker.port, f"{PREFIX}/state") as collector:
        task = asyncio.create_task(part())
        await entered.wait()
        await wait_until("connected", lambda: uplink.state.connected)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        assert not uplink.state.connected  # left: the session was over before `async with` was
        await collector.wait_for("offline", lambda: len(collector.messages) >= 2)
    assert [m.payload for m in collector.messages] == [b"online", b"offline"]


async def test_a_cancellation_that_comes_while_leaving_is_not_swallowed(
    outbox: Outbox, broker: Mosquitto
) -> None:
    uplink = uplink_for(outbox, broker=broker.url)
    done = asyncio.Event()

    async def part() -> None:
        async with uplink:
            await done.wait()

    task = asyncio.create_task(part())
    await wait_until("connected", lambda: uplink.state.connected)
    assert broker.process is not None
    broker.process.send_signal(signal.SIGSTOP)  # the `offline` publish now waits (2 s at most)
    try:
        done.set()  # the body ends normally: the uplink is being left ...
        await wait_until("leaving", lambda: uplink._task is None)
        task.cancel()  # ... when the caller is cancelled
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
    finally:
        broker.process.send_signal(signal.SIGCONT)


async def test_a_filter_registered_while_connected_is_subscribed_without_a_reconnect(
    outbox: Outbox, broker: Mosquitto
) -> None:
    requests = Recorder()
    async with uplink_for(outbox, broker=broker.url) as uplink:
        await wait_until("connected", lambda: uplink.state.connected)
        uplink.router.register("diag/req", requests)
        await asyncio.sleep(0.3)  # the session subscribes on its own
        await publish(broker.port, f"{PREFIX}/diag/req", b"late")
        await wait_until("the request", lambda: requests.payloads == [b"late"])
        assert uplink.state.connects == 1
