"""The MQTT session upstream: publishes the outbox, acknowledges only what the broker acknowledged.

One reconnect loop (capped exponential backoff with jitter) around one aiomqtt session (MQTT 5,
QoS 1). The session announces `…/state` = `online` (retained; the last will says `offline`)
without waiting for its PUBACK, and keeps up to `inflight` outbox messages awaiting theirs. A
message leaves the outbox only after its PUBACK arrived with a success reason code; one the broker
refuses (an ACL, say) stays in the outbox, is retried later, and the refusal is reported. Failures
are logged once per distinct reason, in words, never as a traceback per retry, and never reach
acquisition: the outbox takes readings whatever the uplink does.

A broker that stops acknowledging: after `publish_timeout` without any PUBACK while messages
wait, the session is renewed after a backoff that doubles with each such session in a row (reset
by the first PUBACK), and every message published before without a PUBACK is sent again with the
DUP flag — once per session, never in a tight loop. A PUBACK whose outbox `ack` fails (the disk
is full) is kept in memory: that message is never published again, and the `ack` is retried in
the background with a backoff; it never ends the session.

Messages that come down: each session subscribes at QoS 1 to every filter registered on
`Uplink.router` (agent.uplink.router) and hands what it receives to the router, which runs the
handlers in their own tasks. The publish pump, the subscriber and the receive loop run side by
side as named tasks: a failure of any ends the session (and the loop reconnects); a handler's
never does.
Every connection starts clean (`clean_start`): the subscriptions are made anew on each connect,
so the broker sends the retained message of each registered topic every time; a non-retained
message sent while the gateway was away is not kept for it.

Rules: aiomqtt, paho and ssl errors are translated here into `UplinkError` reasons; the session
is an async context manager (`async with Uplink(...)` runs the loop as a named task, leaving it
says `offline` within 2 s and disconnects); the caller's cancellation is never swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import random
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiomqtt
import structlog
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.config import UplinkConfig
from agent.outbox import AsyncOutbox, Message, OutboxError
from agent.uplink.router import InboundCounters, InboundRouter

log = structlog.get_logger(__name__)

# The topic suffix of each message kind (docs/architecture.md, MQTT topics); health and meta
# (the point lists telemetry refers to, docs/telemetry.md) are retained.
TOPICS = {
    "telemetry": "telemetry",
    "health": "health",
    "event": "events",
    "diag": "diag/resp",
    "meta": "meta",
}
RETAINED_KINDS = frozenset({"health", "meta"})
REPEAT_SAME_ERROR_AFTER = 600.0  # a persisting failure is logged again this often
REFUSED_RETRY_AFTER = 30.0  # a message the broker refused is offered again after this
# On the way out, a connected session gets this long to publish what waits before `offline`.
DRAIN_ON_STOP = 1.5
PING_TOPIC = "diag/ping"  # `Uplink.ping`: an empty QoS-1 publish, timed to its PUBACK
PING_TIMEOUT = 10.0
# paho's window beside the outbox's `inflight`: the `…/state` message and a ping.
EXTRA_INFLIGHT = 2
ACK_RETRY_MIN, ACK_RETRY_MAX = 1.0, 60.0  # a failed outbox `ack` is retried after this, doubling
ACK_LOG_EVERY = 60.0  # a failing outbox `ack` is logged at most this often
REMEMBER_SENT = 10  # x `inflight`: re-send marks kept for messages that left the window


class UplinkError(Exception):
    """The session failed; `reason` says why in words an operator can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class UplinkState:
    """What status and health reports show of the uplink."""

    broker: str | None
    connected: bool = False
    connected_since: float | None = None  # wall clock
    disconnected_since: float | None = None
    connects: int = 0
    published: int = 0
    refused: int = 0
    resent: int = 0  # publishes marked DUP: sent before without a PUBACK
    ack_timeouts: int = 0  # sessions renewed for want of a PUBACK (`publish_timeout`)
    inflight: int = 0  # publishes awaiting their PUBACK now
    # Wall clock since when a PUBACK is awaited and none came (the oldest unacknowledged wait;
    # a reconnect does not reset it); None when nothing waits.
    unacked_since: float | None = None
    acks_unsaved: int = 0  # acknowledged by the broker, not yet removed from the outbox
    ack_error: str | None = None  # why the outbox `ack` fails, while it does (None: it works)
    last_ack_at: float | None = None
    last_error: str | None = None
    connected_seconds: float = 0.0  # total, for the connected-time ratio
    started_at: float = field(default_factory=time.time)
    inbound: InboundCounters = field(default_factory=InboundCounters)  # the router's counters


def topic_for(prefix: str, kind: str) -> str:
    return f"{prefix}/{TOPICS.get(kind, kind)}"


def describe_failure(
    exc: BaseException, config: UplinkConfig, socket_error: str | None = None
) -> str:
    """Turn aiomqtt/paho/ssl errors into one line that says what to check.

    `socket_error` is what paho logged about its socket during the attempt, if anything.
    """
    where = f"{config.host}:{config.port}"
    if isinstance(exc, MqttConnectError):
        rc = str(exc.rc) if exc.rc is not None else str(exc)
        hint = {
            "Not authorized": "check the username/password or client certificate, and the ACL",
            "Bad user name or password": "check uplink.username and uplink.password",
            "Client identifier not valid": "check uplink.client_id",
        }.get(rc, "see the broker's log")
        return f"broker {where} refused the connection: {rc} ({hint})"
    text = f"{exc} {socket_error or ''}".strip()
    if "CERTIFICATE_VERIFY_FAILED" in text:
        detail = text.split("certificate verify failed:", 1)[-1].strip(" ()_")
        return (
            f"TLS: the certificate of broker {where} is not trusted ({detail}); check uplink.tls.ca"
        )
    if "alert certificate expired" in text or "certificate has expired" in text:
        return f"TLS: broker {where} rejected our client certificate: it has expired"
    if "alert" in text and ("certificate" in text or "handshake" in text):
        return f"TLS: broker {where} rejected the handshake ({text}); check uplink.tls.cert/key"
    if "Connection refused" in text:
        return f"cannot reach broker {where}: connection refused"
    if "timed out" in text:
        return f"no answer from broker {where} within {config.connect_timeout:g}s"
    if "Name or service not known" in text or "getaddrinfo" in text:
        return f"cannot resolve broker host {config.host!r}"
    return f"broker {where}: {text or type(exc).__name__}"


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSL socket that closes itself when its handshake fails.

    paho-mqtt drops the socket of a failed TLS handshake without closing it; every retry against
    a broker with the wrong certificate would leave a descriptor to the garbage collector.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(config: UplinkConfig) -> ssl.SSLContext | None:
    if not config.tls_enabled:
        return None
    tls = config.tls
    context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    context.sslsocket_class = _ClosingSSLSocket
    if tls.cert is not None and tls.key is not None:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    return context


class _SocketErrors(logging.Handler):
    """Keeps the last error paho logs about its socket (a TLS alert arrives only that way).

    With TLS 1.3 a broker that rejects our client certificate says so in an alert after the
    handshake; paho logs it and aiomqtt then only reports a timeout. The alert is the real cause.
    aiomqtt also warns about every publish beyond ten in flight: the window is ours on purpose,
    so only errors are kept, and none reach the process's log.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: str | None = None
        self.logger = logging.Logger("edge_agent.mqtt", logging.ERROR)  # not in the global tree
        self.logger.addHandler(self)
        self.logger.propagate = False

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()

    def take(self) -> str | None:
        last, self.last = self.last, None
        return last


def _client(
    config: UplinkConfig, client_id: str, socket_errors: _SocketErrors, **options: Any
) -> aiomqtt.Client:
    """An MQTT 5 client with the config's address, credentials, TLS and timeouts."""
    return aiomqtt.Client(
        config.host,
        config.port,
        identifier=client_id,
        username=config.username,
        password=config.password,
        protocol=aiomqtt.ProtocolVersion.V5,
        keepalive=int(config.keepalive),
        timeout=config.connect_timeout,
        tls_context=tls_context(config),
        # A clean session each time: the subscriptions are made anew on every connect, and so
        # the broker sends each registered topic's retained message again (see the docstring).
        clean_start=True,
        logger=socket_errors.logger,
        **options,
    )


async def try_session(config: UplinkConfig, client_id: str) -> float:
    """Open an MQTT session as the agent would (address, credentials, TLS) and leave it at
    once with a clean disconnect: what `edge-agent check` tries with no agent running. Returns
    the seconds the broker took to accept; raises UplinkError with the reason in words."""
    socket_errors = _SocketErrors()
    started = time.monotonic()
    try:
        async with _client(config, client_id, socket_errors):
            took = time.monotonic() - started
    except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
        raise UplinkError(describe_failure(exc, config, socket_errors.take())) from exc
    return took


async def _first_failure(*parts: tuple[Coroutine[Any, Any, None], str]) -> None:
    """Run the parts of a session as named tasks until one of them fails; raise its error.

    A TaskGroup would wrap the error in an ExceptionGroup; the reconnect loop wants the error
    itself to describe it. The others are cancelled and awaited. Cancelling this cancels them all.
    """
    tasks = [asyncio.create_task(coroutine, name=name) for coroutine, name in parts]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        # Let them wind down. A cancellation of ours that ended the first wait is already on its
        # way out (this is `finally`); one more would interrupt this wait and go out instead.
        await asyncio.wait(tasks)
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
    raise UplinkError("the session ended by itself")


_last_mid: contextvars.ContextVar[int] = contextvars.ContextVar("last_mid")
_resend: contextvars.ContextVar[bool] = contextvars.ContextVar("resend", default=False)


def marking_dup(send_publish: Callable[..., Any]) -> Callable[..., Any]:
    """paho's `_send_publish`, with the DUP flag set for publishes made as re-sends.

    paho's public `publish` has no DUP argument: paho sets DUP itself only when it re-sends the
    in-flight messages of a session it keeps across a reconnect. Ours starts clean each time (see
    the module docstring) and the agent re-sends from the outbox, so it marks DUP here, for a
    publish made in a task that set `_resend`. The positional signature of paho 2.2's
    `Client._send_publish(mid, topic, payload, qos, retain, dup, info, properties)` is asserted by
    tests/test_uplink.py, and DUP on the wire by tests/faults/test_broker.py.
    """

    def send(
        mid: int,
        topic: bytes,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        dup: bool = False,
        *rest: Any,
        **kwargs: Any,
    ) -> Any:
        return send_publish(mid, topic, payload, qos, retain, dup or _resend.get(), *rest, **kwargs)

    return send


class _PubackCodes:
    """Remembers the reason code of each PUBACK (aiomqtt drops it; MQTT 5 needs it), and marks
    re-sends DUP (`marking_dup`).

    aiomqtt's `publish` returns once a PUBACK arrives, whatever its reason code, so a publish the
    broker refused (not authorized for the topic) would look delivered. This wraps the paho client
    inside one aiomqtt session: the message id of each publish is kept in the calling task's
    context, and the PUBACK's reason code by message id.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        paho = client._client  # the one place we reach into aiomqtt
        self.codes: dict[int, ReasonCode] = {}
        publish, on_publish = paho.publish, paho.on_publish
        paho._send_publish = marking_dup(paho._send_publish)  # type: ignore[method-assign]

        def publish_keeping_mid(*args: Any, **kwargs: Any) -> Any:
            info = publish(*args, **kwargs)
            _last_mid.set(info.mid)
            return info

        def on_publish_keeping_code(
            paho_client: Any, userdata: Any, mid: int, reason_code: ReasonCode, properties: Any
        ) -> None:
            self.codes[mid] = reason_code
            on_publish(paho_client, userdata, mid, reason_code, properties)  # type: ignore[misc, call-arg]

        paho.publish = publish_keeping_mid  # type: ignore[method-assign]
        paho.on_publish = on_publish_keeping_code

    def take(self) -> ReasonCode | None:
        return self.codes.pop(_last_mid.get(), None)


class Uplink:
    """Runs the MQTT session until cancelled; publishes whenever the outbox says it changed.

    `async with Uplink(...) as uplink:` runs it as the task `uplink`; `await uplink.run()` is
    the same loop for a caller that owns the task. Register inbound handlers on `uplink.router`
    before or after entering.
    """

    def __init__(
        self,
        config: UplinkConfig,
        outbox: AsyncOutbox,
        topic_prefix: str,
        client_id: str,
        jitter: Callable[[], float] = random.random,
        router: InboundRouter | None = None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.prefix = topic_prefix
        self.client_id = client_id
        if router is None:  # one of our own makes filters relative to `topic_prefix`
            router = InboundRouter(topic_prefix, config.max_inbound_bytes)
        self.router = router
        self.state = UplinkState(broker=config.broker, inbound=self.router.counters)
        self._jitter = jitter
        self._held: dict[int, float] = {}  # refused message id -> monotonic time to retry
        # Published without a PUBACK yet (in flight, or in flight when a session ended): the next
        # publish of these is a re-send, marked DUP. Insertion order: the oldest first.
        self._sent: dict[int, None] = {}
        # PUBACK received, outbox `ack` not yet durable: never published again (`_acknowledge`).
        self._acked: set[int] = set()
        self._to_ack = asyncio.Event()
        self._stalls = 0  # sessions in a row renewed for want of a PUBACK
        self._logged: tuple[str, float] | None = None
        self._socket_errors = _SocketErrors()
        self._task: asyncio.Task[None] | None = None
        # Called at every connection attempt and every turn of the publish loop (the watchdog).
        self.on_progress: Callable[[], None] | None = None
        self._live: tuple[aiomqtt.Client, _PubackCodes] | None = None  # the session, connected

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError("the uplink is already running")
        self._task = asyncio.create_task(self.run(), name="uplink")
        self._task.add_done_callback(self._ended)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        try:
            if self.state.connected and not task.done():
                await self._drain(DRAIN_ON_STOP)
        finally:
            # Even when the drain is cut short (the agent's stop deadline): the session then
            # says `offline` and disconnects on its own, and the end of the loop cancels it.
            if not task.done():
                task.cancel()  # the session says `offline` (2 s at most), then disconnects
        if task.done():
            return  # it ended by itself: its error was logged when it happened (`_ended`)
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller is being cancelled too: that is theirs to see
            # else: the run task ended because we cancelled it, as intended

    async def _drain(self, limit: float) -> None:
        """Give the session up to `limit` seconds to publish what the outbox holds (a graceful
        stop sends the last readings taken, when the broker is there to take them)."""
        deadline = time.monotonic() + limit
        with contextlib.suppress(OutboxError):
            while self.state.connected and time.monotonic() < deadline:
                if (await self.outbox.stats()).messages == 0:
                    return
                await asyncio.sleep(0.05)
        if self._acked:
            log.warning(
                "uplink stopping with acknowledged messages still in the outbox",
                count=len(self._acked),
                error=self.state.ack_error,
            )

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("uplink stopped", error=repr(task.exception()))

    def _beat(self) -> None:
        if self.on_progress is not None:
            self.on_progress()

    async def run(self) -> None:
        async with self.router:
            await _first_failure(
                (self._reconnect(), "uplink session"), (self._acknowledge(), "uplink ack")
            )

    async def _acknowledge(self) -> None:
        """Remove what the broker acknowledged from the outbox; on failure keep it in memory
        (excluded from `pending`, so never published again) and retry with a backoff."""
        failures = 0
        logged_at: float | None = None
        while True:
            await self._to_ack.wait()
            self._to_ack.clear()
            ids = list(self._acked)
            if not ids:
                continue
            try:
                await self.outbox.ack(ids)
            except OutboxError as exc:
                failures += 1
                self.state.ack_error = str(exc)
                self.state.acks_unsaved = len(self._acked)
                now = time.monotonic()
                if logged_at is None or now - logged_at >= ACK_LOG_EVERY:
                    log.warning(
                        "outbox ack failed: delivered messages stay in the outbox until it "
                        "works; they are not sent again",
                        count=len(self._acked),
                        failures=failures,
                        error=str(exc),
                    )
                    logged_at = now
                await asyncio.sleep(min(ACK_RETRY_MAX, ACK_RETRY_MIN * 2 ** (failures - 1)))
                self._to_ack.set()
                continue
            self._acked.difference_update(ids)
            self.state.acks_unsaved = len(self._acked)
            if failures:
                log.info("outbox ack works again", failures=failures)
                failures, logged_at, self.state.ack_error = 0, None, None

    async def _reconnect(self) -> None:
        failures = 0
        while True:
            connects = self.state.connects
            self._beat()
            try:
                await self._session()
            except UplinkError as exc:
                self._failed(exc.reason)
            except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
                self._failed(describe_failure(exc, self.config, self._socket_errors.take()))
            except OutboxError as exc:  # e.g. disk errors: retry after the backoff
                self._failed(f"outbox: {exc}")
            # Back off from the first retry after a session that worked; double after each failure
            # and after each session in a row that got no PUBACK (the broker took the connection).
            failures = 1 if self.state.connects > connects else failures + 1
            failures = max(failures, self._stalls)
            delay = min(self.config.backoff_max, self.config.backoff_min * 2 ** (failures - 1))
            await asyncio.sleep(delay * (0.5 + self._jitter() / 2))

    async def _session(self) -> None:
        state_topic = f"{self.prefix}/state"
        client = _client(
            self.config,
            self.client_id,
            self._socket_errors,
            will=aiomqtt.Will(state_topic, b"offline", qos=1, retain=True),
            max_inflight_messages=self.config.inflight + EXTRA_INFLIGHT,
        )
        codes = _PubackCodes(client)
        async with client:
            self._connected()
            self._live = (client, codes)
            try:
                await _first_failure(
                    (self._pump(client, codes, state_topic), "uplink publish"),
                    (self._subscribe(client), "uplink subscribe"),
                    (self._receive(client), "uplink receive"),
                )
            except asyncio.CancelledError:
                # Stopping: say so before leaving (a clean disconnect does not send the will).
                # A broker that does not acknowledge gets 2 s (TimeoutError: the stop goes on).
                with contextlib.suppress(aiomqtt.MqttError, UplinkError, TimeoutError):
                    async with asyncio.timeout(2):
                        await self._publish(client, codes, state_topic, b"offline", retain=True)
                raise
            finally:
                self._live = None
                self._disconnected()

    async def ping(self, timeout: float = PING_TIMEOUT) -> dict[str, Any]:
        """The broker's round trip now: an empty, non-retained QoS-1 publish on
        `<prefix>/diag/ping`, timed from sending to its PUBACK (remote diagnosis' `ping-upstream`).
        """
        live = self._live
        answer: dict[str, Any] = {"broker": self.config.broker, "connected": live is not None}
        if live is None:
            answer["error"] = self.state.last_error or "not connected"
            return answer
        client, codes = live
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                await self._publish(client, codes, f"{self.prefix}/{PING_TOPIC}", b"")
        except TimeoutError:
            answer["error"] = f"no PUBACK within {timeout:g} s"
        except UplinkError as exc:
            answer["error"] = exc.reason
        except aiomqtt.MqttError as exc:
            answer["error"] = describe_failure(exc, self.config)
        else:
            answer["round_trip_ms"] = round((time.monotonic() - started) * 1000, 2)
        answer["connected_since"] = self.state.connected_since
        return answer

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        """Subscribe to every registered filter now, and to each one registered later."""
        subscribed: set[str] = set()
        while True:
            self.router.changed.clear()
            new = [f for f in self.router.filters() if f not in subscribed]
            if new:
                # no_local: a filter under our own prefix must not bring back what we publish.
                options = SubscribeOptions(qos=1, noLocal=True)
                codes = await client.subscribe([(f, options) for f in new])
                for topic_filter, code in zip(new, codes, strict=True):
                    if isinstance(code, ReasonCode) and code.is_failure:
                        self._failed(
                            f"broker refused the subscription to {topic_filter}: {code} "
                            "(check the ACL)"
                        )
                    else:
                        log.debug("uplink subscribed", topic=topic_filter)
                subscribed.update(new)
            await self.router.changed.wait()

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Hand every message received to the router (which never waits)."""
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes):  # paho gives bytes; the type says more
                payload = str(payload).encode() if payload is not None else b""
            self.router.deliver(message.topic.value, payload, retain=bool(message.retain))

    async def _publish(
        self,
        client: aiomqtt.Client,
        codes: _PubackCodes,
        topic: str,
        payload: str | bytes,
        retain: bool = False,
        resend: bool = False,
    ) -> None:
        """Publish at QoS 1 (DUP if `resend`); returns once the broker acknowledged it with
        success. No timeout of its own: the pump applies `publish_timeout` to the session."""
        token = _resend.set(resend)
        try:
            await client.publish(topic, payload, qos=1, retain=retain, timeout=math.inf)
        finally:
            _resend.reset(token)
        code = codes.take()
        if code is not None and code.is_failure:
            raise UplinkError(f"broker refused a publish on {topic}: {code} (check the ACL)")

    async def _pump(self, client: aiomqtt.Client, codes: _PubackCodes, state_topic: str) -> None:
        """Publish from the outbox, up to `inflight` at once, beside the `online` state message.

        Ends the session (UplinkError) when no PUBACK came for `publish_timeout` while something
        waited for one. A PUBACK puts the message's id in `_acked` for `_acknowledge`.
        """
        online = asyncio.create_task(
            self._publish(client, codes, state_topic, b"online", retain=True),
            name="publish online",
        )
        inflight: dict[asyncio.Task[None], Message | None] = {online: None}  # None: the state
        waiting_since = time.monotonic()  # no PUBACK since (this session), while something waits
        if self.state.unacked_since is None:
            self.state.unacked_since = time.time()
        wakeup = asyncio.create_task(self.outbox.changed.wait())
        read_again = False  # the outbox could not be read: try again in a second
        try:
            while True:
                self._beat()
                ours = [m for m in inflight.values() if m is not None]
                room = self.config.inflight - len(ours)
                read_again = False
                if room > 0:
                    self.outbox.changed.clear()
                    now = time.monotonic()
                    self._held = {i: t for i, t in self._held.items() if t > now}
                    busy = [m.id for m in ours] + list(self._held) + list(self._acked)
                    try:
                        messages = await self.outbox.pending(room, busy)
                    except OutboxError as exc:
                        self._failed(f"outbox: {exc}")
                        messages, read_again = [], True
                    if messages and not inflight:
                        waiting_since = time.monotonic()
                        if self.state.unacked_since is None:
                            self.state.unacked_since = time.time()
                    for message in messages:
                        inflight[self._send(client, codes, message)] = message
                self.state.inflight = len(inflight)
                if wakeup.done():
                    wakeup = asyncio.create_task(self.outbox.changed.wait())
                waiting: set[asyncio.Task[Any]] = set(inflight)
                if sum(m is not None for m in inflight.values()) < self.config.inflight:
                    # With the window full only a PUBACK can make room: new messages must not
                    # wake the loop to find none (that spun at 100 % CPU on a slow link).
                    waiting.add(wakeup)
                timeout = 1.0 if self._held or read_again else self.config.keepalive
                if inflight:
                    deadline = waiting_since + self.config.publish_timeout
                    timeout = max(0.0, min(timeout, deadline - time.monotonic()))
                done, _ = await asyncio.wait(
                    waiting, timeout=timeout, return_when="FIRST_COMPLETED"
                )
                if self._settle(inflight, done):
                    if self._stalls:
                        log.info("uplink acknowledged again", broker=self.config.broker)
                        self._stalls, self._logged = 0, None
                    waiting_since = time.monotonic()
                    self.state.unacked_since = time.time() if inflight else None
                self.state.inflight = len(inflight)
                if inflight and time.monotonic() - waiting_since >= self.config.publish_timeout:
                    self._stalls += 1
                    self.state.ack_timeouts += 1
                    raise UplinkError(
                        f"broker {self.config.host}:{self.config.port} sent no PUBACK for "
                        f"{self.config.publish_timeout:g}s: session renewed, unacknowledged "
                        "messages sent again (DUP)"
                    )
        finally:
            wakeup.cancel()
            for task in inflight:
                task.cancel()
            if inflight:
                # Their end (errors and all: the session is over); ours is not swallowed.
                await asyncio.wait(set(inflight))
                for task in inflight:
                    if not task.cancelled():
                        task.exception()  # retrieved: no "never retrieved" noise
            self.state.inflight = 0
            if not self._sent:
                self.state.unacked_since = None

    def _send(
        self, client: aiomqtt.Client, codes: _PubackCodes, message: Message
    ) -> asyncio.Task[None]:
        """Publish one outbox message as its own task; DUP when it was published before."""
        resend = message.id in self._sent
        if resend:
            self.state.resent += 1
        else:
            self._sent[message.id] = None
            while len(self._sent) > REMEMBER_SENT * self.config.inflight:
                del self._sent[next(iter(self._sent))]  # the oldest: evicted, most likely
        topic = topic_for(self.prefix, message.kind)
        retain = message.kind in RETAINED_KINDS
        return asyncio.create_task(
            self._publish(client, codes, topic, message.payload, retain, resend=resend),
            name=f"publish {message.seq}",
        )

    def _settle(
        self, inflight: dict[asyncio.Task[None], Message | None], done: set[asyncio.Task[Any]]
    ) -> bool:
        """Take the publishes that ended out of `inflight`; True if the broker answered any."""
        answered = False
        acked = []
        for task in done:
            if task not in inflight:
                continue
            message = inflight.pop(task)
            exc = task.exception()
            if exc is not None and not isinstance(exc, UplinkError):
                raise exc
            answered = True
            if message is not None:
                self._sent.pop(message.id, None)
            if exc is None:
                if message is not None:
                    acked.append(message.id)
            else:
                if message is not None:
                    self.state.refused += 1
                    self._held[message.id] = time.monotonic() + REFUSED_RETRY_AFTER
                self._failed(exc.reason)
        if acked:
            self._acked.update(acked)
            self.state.acks_unsaved = len(self._acked)
            self._to_ack.set()
            self.state.published += len(acked)
            self.state.last_ack_at = time.time()
        return answered

    def _connected(self) -> None:
        s = self.state
        s.connected, s.connected_since, s.disconnected_since = True, time.time(), None
        s.connects += 1
        if self._stalls:
            pass  # a session renewed for want of a PUBACK: its warning stands (logged once)
        elif s.last_error is not None:
            log.info("uplink connected again", broker=self.config.broker, after=s.last_error)
            self._logged = None
        else:
            log.info("uplink connected", broker=self.config.broker)
            self._logged = None
        s.last_error = None

    def _disconnected(self) -> None:
        s = self.state
        if s.connected and s.connected_since is not None:
            s.connected_seconds += time.time() - s.connected_since
        s.connected, s.disconnected_since = False, time.time()

    def _failed(self, reason: str) -> None:
        self.state.last_error = reason
        now = time.monotonic()
        if self._logged is None or self._logged[0] != reason:
            log.warning("uplink failed", reason=reason)
            self._logged = (reason, now)
        elif now - self._logged[1] > REPEAT_SAME_ERROR_AFTER:
            log.warning("uplink still failing", reason=reason)
            self._logged = (reason, now)
