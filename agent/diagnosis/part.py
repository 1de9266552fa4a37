"""The gateway's diagnosis part: requests on `…/diag/req`, answers on `…/diag/resp`.

An async context manager the daemon enters after the update part, only with an uplink. It
registers `diag/req` on the uplink's router; each request runs in its own task, at most
`CONCURRENT` at a time (the router's bounded queue holds the rest), so an action never holds
up polling, forwarding or another request. Per request:

1. `RequestChecker.check` (signature, target, time, replay, role, consent; in a worker thread:
   it reads files). A refusal is audited and answered with its reason; a message without an
   id to answer to is only logged and counted.
2. The action runs with its time limit; its result must be JSON and at most
   `max_answer_bytes`.
3. Consent is checked again: a window that closed meanwhile turns the answer into a refusal
   ("consent expired").
4. The audit line is written and fsynced, then put upstream as an event, and only then the
   answer goes through the writer (`kind "diag"`): in one message, or in numbered chunks of at
   most `chunk_bytes` of the result's JSON text.

Everything it needs of the agent comes in as `ActionContext` and callables (the writer's put,
the router's register): it imports no uplink, protocol or daemon.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, Self

import structlog

from agent.diagnosis.actions import ACTIONS
from agent.diagnosis.audit import AuditLog
from agent.diagnosis.consent import ConsentStore
from agent.diagnosis.registry import REQUESTER, ActionContext, ActionError
from agent.diagnosis.replay import ReplayCache
from agent.diagnosis.request import DiagRequest, Refused, RequestChecker
from agent.diagnosis.settings import DiagnosisConfig
from agent.logs import log_task_crash
from agent.storage.layout import StateLayout

log = structlog.get_logger(__name__)

CONCURRENT = 4  # requests handled at a time; the router's queue (32) holds the next ones
TOPIC = "diag/req"  # under the gateway's prefix


class Inbound(Protocol):
    """What the part reads of a message that came down (the router's `InboundMessage`)."""

    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> bytes: ...


Put = Callable[[dict[str, Any]], Awaitable[object]]  # completes once the message is stored
Subscribe = Callable[..., object]  # the router's register(filter, handler, timeout=...)


class DiagnosisPart:
    """Checks, audits, runs and answers diagnosis requests; an async context manager."""

    def __init__(
        self,
        settings: DiagnosisConfig,
        layout: StateLayout,
        gateway_id: str,
        *,
        context: ActionContext,
        answer: Put,
        report: Put,
        subscribe: Subscribe,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.layout = layout
        self.gateway_id = gateway_id
        self.context = context
        self.consent = ConsentStore(layout)
        self.audit = AuditLog(layout.audit_log)
        self.counts: Counter[str] = Counter()  # accepted, refused, failed, unparsed
        self.checker: RequestChecker | None = None
        self._answer = answer
        self._report = report
        self._subscribe = subscribe
        self._now = now
        self._replay: ReplayCache | None = None
        self._slots = asyncio.Semaphore(CONCURRENT)
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        settings = self.settings
        try:
            self._replay = await asyncio.to_thread(
                ReplayCache,
                self.layout.diagnosis_replay,
                limit=settings.replay_cache,
                tolerance=float(settings.clock_tolerance),
                now=self._now,
            )
        except Exception as exc:  # noqa: BLE001 -- diagnosis must not keep the agent from running
            log.error("diagnosis unavailable: cannot open the replay cache", error=str(exc))
            return self
        if self._replay.set_aside is not None:
            log.warning(
                "diagnosis replay cache was damaged: set aside", kept=str(self._replay.set_aside)
            )
        self.checker = await asyncio.to_thread(
            RequestChecker, settings, self.gateway_id, self._replay, self.consent, self._now
        )
        # Long enough for a request to wait for a slot and run: the router's per-call limit.
        timeout = float(settings.action_timeout) * 2 + 60
        self._subscribe(TOPIC, self.on_request, timeout=timeout)
        log.info(
            "diagnosis listening",
            engineers=len(self.checker.keys),
            consent=settings.consent,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._replay is not None:
            await asyncio.to_thread(self._replay.close)
            self._replay = None

    # -- one request ---------------------------------------------------------------------------

    async def on_request(self, message: Inbound) -> None:
        """The router's handler: waits for a free slot, then handles the request in a task."""
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(message.payload), name="diagnosis request")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        task.add_done_callback(log_task_crash)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _handle(self, token: bytes) -> None:
        checker = self.checker
        assert checker is not None
        try:
            request = await asyncio.to_thread(checker.check, token)
        except Refused as refused:
            await self._refused(refused)
            return
        self.counts["accepted"] += 1
        REQUESTER.set(request.engineer)
        log.info(
            "diagnosis request accepted",
            id=request.id,
            engineer=request.engineer,
            action=request.action,
        )
        outcome, reason, text = await self._run(request)
        if outcome == "ok" and not checker.consent_open(request):
            outcome, reason, text = "refused", "consent expired", None
        self.counts[outcome] += 1
        await self._audit(request.id, request.engineer, request.kid, request, outcome, reason)
        await self._send(request.id, outcome, reason, text)

    async def _run(self, request: DiagRequest) -> tuple[str, str | None, str | None]:
        """("ok", None, result JSON) or ("failed", reason, None)."""
        spec = ACTIONS[request.action]
        limit = spec.timeout if spec.timeout is not None else float(self.settings.action_timeout)
        try:
            async with asyncio.timeout(limit):
                result = await spec.run(self.context, request.args)
        except TimeoutError:
            return "failed", f"timed out after {limit:g} s", None
        except ActionError as exc:
            return "failed", str(exc), None
        except Exception as exc:  # noqa: BLE001 -- an action's bug fails its answer only
            log.warning(
                "diagnosis action failed",
                action=request.action,
                error=f"{type(exc).__name__}: {exc}",
            )
            return "failed", f"{type(exc).__name__}: {exc}", None
        try:
            text = json.dumps(result, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            return "failed", f"the result is not JSON ({exc})", None
        if len(text) > self.settings.max_answer_bytes:
            return (
                "failed",
                f"the answer is {len(text)} bytes, over max_answer_bytes "
                f"({self.settings.max_answer_bytes})",
                None,
            )
        return "ok", None, text

    async def _refused(self, refused: Refused) -> None:
        request = refused.request
        if refused.request_id is None:
            self.counts["unparsed"] += 1
            log.warning("diagnosis request ignored: nothing to answer to", reason=refused.reason)
            return
        self.counts["refused"] += 1
        log.warning("diagnosis request refused", id=refused.request_id, reason=refused.reason)
        engineer = request.engineer if request is not None else None
        await self._audit(
            refused.request_id, engineer, refused.kid, request, "refused", refused.reason
        )
        await self._send(refused.request_id, "refused", refused.reason, None)

    # -- audit and answers ---------------------------------------------------------------------

    async def _audit(
        self,
        request_id: str,
        engineer: str | None,
        kid: str | None,
        request: DiagRequest | None,
        outcome: str,
        reason: str | None,
    ) -> None:
        entry = {
            "id": request_id,
            "engineer": engineer,
            "kid": kid,
            "action": request.action if request is not None else None,
            "args": dict(request.args) if request is not None else None,
            "outcome": outcome,
            "reason": reason,
        }
        line = await asyncio.to_thread(self.audit.append, entry)
        await self._store(self._report({"type": "audit", **line}), "audit event", request_id)

    async def _send(
        self, request_id: str, status: str, reason: str | None, text: str | None
    ) -> None:
        """The answer, in one message or in chunks of the result's JSON text."""
        size = self.settings.chunk_bytes
        if text is None or len(text) <= size:
            result = json.loads(text) if text is not None else None
            body = {
                "id": request_id,
                "status": status,
                "reason": reason,
                "result": result,
                "chunk": None,
            }
            await self._store(self._answer(body), "answer", request_id)
            return
        slices = [text[i : i + size] for i in range(0, len(text), size)]
        for n, piece in enumerate(slices, start=1):
            body = {
                "id": request_id,
                "status": status,
                "reason": None,
                "result": piece,
                "chunk": {"n": n, "of": len(slices)},
            }
            await self._store(self._answer(body), "answer chunk", request_id)

    @staticmethod
    async def _store(put: Awaitable[object], what: str, request_id: str) -> None:
        try:
            await put
        except Exception as exc:  # noqa: BLE001 -- NotStored and the like: logged, not raised
            log.error(f"diagnosis {what} not stored", id=request_id, error=str(exc))
