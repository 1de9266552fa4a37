"""Messages that come down: the inbound router between the MQTT session and the parts that listen.

A part registers a topic filter and an async handler; the session (agent.uplink.session)
subscribes to every registered filter at QoS 1 on each (re)connect and hands every message it
receives to `InboundRouter.deliver`. Rules:

- Filters may hold the MQTT wildcards `+` and `#`. A filter is relative to the gateway's topic
  prefix (`diag/req` means `edge/<gateway>/diag/req`) unless registered with `absolute=True`
  (`edge/update/stable`, outside the prefix: the fleet's update announcement).
- A payload larger than `max_bytes` (`uplink.max_inbound_bytes`) is refused with one log line
  (topic, size, limit) and reaches no handler.
- Each registration has its own bounded queue and worker task: `deliver` never waits, so neither
  the receive loop nor the publish path can be held up by a handler. A message that finds the
  queue full is dropped, counted and logged (the first of a run of drops, then every 100th).
- Each handler call has a timeout (`DEFAULT_HANDLER_TIMEOUT`, or the registration's own). A
  handler that raises or times out is logged with the topic and the error; the message is dropped,
  the worker and the session go on.
- A message that matches no registered filter is ignored (a debug log line).
- Delivery is at least once (QoS 1) and a message on overlapping filters may come once per
  filter: handlers must be idempotent. A retained message reaches its handler again on every
  (re)connect, with `retain=True`.

The router is an async context manager: entering starts the workers (and a registration made
while it runs starts its own), leaving cancels them. `Uplink.run` enters it; registering is
possible before, so parts can register before the uplink is entered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import aiomqtt
import structlog

log = structlog.get_logger(__name__)

DEFAULT_MAX_INBOUND_BYTES = 256 * 1024
DEFAULT_HANDLER_TIMEOUT = 30.0  # seconds per handler call; long work belongs in the part's task
DEFAULT_QUEUE_SIZE = 32  # messages waiting for one registration's handler
LOG_DROPS_EVERY = 100


class RouterError(Exception):
    """A registration the router cannot take (an invalid topic filter, say)."""


@dataclass(frozen=True)
class InboundMessage:
    """One message from the broker, as a handler gets it."""

    topic: str  # the full topic, prefix included
    payload: bytes
    retain: bool  # True when the broker sent it as a retained message (on subscribing)
    received_at: float  # wall clock


Handler = Callable[[InboundMessage], Awaitable[None]]


@dataclass
class InboundCounters:
    """What status shows of the messages that came down (also `UplinkState.inbound`)."""

    received: int = 0  # every message the session received
    refused_oversize: int = 0  # larger than max_bytes: no handler saw them
    unmatched: int = 0  # on no registered filter
    dropped: int = 0  # a handler's queue was full
    handler_errors: int = 0  # a handler raised or timed out


class _Registration:
    def __init__(
        self, topic_filter: str, handler: Handler, timeout: float, queue_size: int
    ) -> None:
        self.filter = topic_filter
        self.handler = handler
        self.timeout = timeout
        self.queue: asyncio.Queue[InboundMessage] = asyncio.Queue(maxsize=queue_size)
        self.worker: asyncio.Task[None] | None = None
        self.drops_in_a_row = 0

    @property
    def name(self) -> str:
        return getattr(self.handler, "__qualname__", repr(self.handler))


class InboundRouter:
    """Routes received messages to the handlers registered for their topic."""

    def __init__(
        self,
        prefix: str,
        max_bytes: int = DEFAULT_MAX_INBOUND_BYTES,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        timeout: float = DEFAULT_HANDLER_TIMEOUT,
    ) -> None:
        self.prefix = prefix.rstrip("/")
        self.max_bytes = max_bytes
        self.queue_size = queue_size
        self.timeout = timeout
        self.counters = InboundCounters()
        # Set when a registration adds a filter: the session subscribes to it without a reconnect.
        self.changed = asyncio.Event()
        self._registrations: list[_Registration] = []
        self._running = False

    def register(
        self,
        topic_filter: str,
        handler: Handler,
        *,
        absolute: bool = False,
        timeout: float | None = None,
        queue_size: int | None = None,
    ) -> str:
        """Have `handler` called for each message on `topic_filter`; returns the full filter.

        `topic_filter` is relative to the gateway's prefix unless `absolute`. Raises RouterError
        for a filter MQTT would not accept.
        """
        full = topic_filter if absolute else f"{self.prefix}/{topic_filter}"
        try:
            aiomqtt.Wildcard(full)
        except ValueError as exc:
            raise RouterError(f"invalid topic filter {full!r}: {exc}") from None
        registration = _Registration(
            full,
            handler,
            self.timeout if timeout is None else timeout,
            self.queue_size if queue_size is None else queue_size,
        )
        self._registrations.append(registration)
        if self._running:
            self._start(registration)
        self.changed.set()
        return full

    def filters(self) -> list[str]:
        """The full topic filters to subscribe to, each once, in registration order."""
        return list(dict.fromkeys(r.filter for r in self._registrations))

    def deliver(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Queue a received message for its handlers; never waits."""
        self.counters.received += 1
        if len(payload) > self.max_bytes:
            self.counters.refused_oversize += 1
            log.warning(
                "inbound message refused: too large",
                topic=topic,
                size=len(payload),
                limit=self.max_bytes,
            )
            return
        received = aiomqtt.Topic(topic)
        matching = [r for r in self._registrations if received.matches(r.filter)]
        if not matching:
            self.counters.unmatched += 1
            log.debug("inbound message on no registered topic", topic=topic)
            return
        message = InboundMessage(topic, payload, retain, time.time())
        for registration in matching:
            try:
                registration.queue.put_nowait(message)
            except asyncio.QueueFull:
                self.counters.dropped += 1
                registration.drops_in_a_row += 1
                if registration.drops_in_a_row % LOG_DROPS_EVERY == 1:
                    log.warning(
                        "inbound message dropped: handler busy",
                        topic=topic,
                        handler=registration.name,
                        queued=registration.queue.qsize(),
                        dropped=self.counters.dropped,
                    )
            else:
                registration.drops_in_a_row = 0

    async def __aenter__(self) -> Self:
        if self._running:
            raise RuntimeError("the inbound router is already running")
        self._running = True
        for registration in self._registrations:
            self._start(registration)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._running = False
        workers = [r.worker for r in self._registrations if r.worker is not None]
        for registration in self._registrations:
            registration.worker = None
        for worker in workers:
            worker.cancel()
        # The workers end with CancelledError (never anything else); gather collects those
        # without raising, and a cancellation of our caller still reaches it through the await.
        await asyncio.gather(*workers, return_exceptions=True)

    def _start(self, registration: _Registration) -> None:
        registration.worker = asyncio.create_task(
            self._work(registration), name=f"inbound {registration.filter}"
        )

    async def _work(self, registration: _Registration) -> None:
        while True:
            message = await registration.queue.get()
            try:
                async with asyncio.timeout(registration.timeout):
                    await registration.handler(message)
            except TimeoutError:
                self.counters.handler_errors += 1
                log.warning(
                    "inbound handler timed out",
                    topic=message.topic,
                    handler=registration.name,
                    timeout=registration.timeout,
                )
            except Exception as exc:  # noqa: BLE001 -- any bug of a handler ends only its call
                self.counters.handler_errors += 1
                log.warning(
                    "inbound handler failed",
                    topic=message.topic,
                    handler=registration.name,
                    error=f"{type(exc).__name__}: {exc}",
                )
