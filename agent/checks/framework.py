"""The check framework: what a check is, what it returns, and the runner that keeps results.

A check is an id, a family, an interval, a timeout and a probe: a function of the agent's
snapshot (`AgentView`) and the time that returns an `Outcome`. The runner turns outcomes into
`CheckResult`s and keeps, per check, `since`: when its status last changed. Rules:
- a probe that raises, or gives nothing within its timeout, is `unknown` with the reason; the
  runner itself never raises for a probe (cancellation aside);
- blocking probes (filesystem, subprocess) run each in its own daemon thread, never on the event
  loop nor in the loop's default executor (which the outbox needs); a blocking probe still
  hanging from an earlier run is not started again, so a hung mount costs one thread, not one
  per interval, and a daemon thread never holds up the process's exit.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent.model import format_timestamp, parse_timestamp

if TYPE_CHECKING:
    from agent.checks.view import AgentView

FAMILIES = ("system", "software", "network", "terminals", "data", "security")
Scalar = float | int | bool | str | None


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    UNKNOWN = "unknown"

    @property
    def severity(self) -> int:
        """Order for "worst of": ok < unknown < warn < fail."""
        return _SEVERITY[self]


SLICE = 0.005  # seconds of a round's work in a row before the event loop gets a turn
# How long that turn lasts at least. The TCP engine polls in a thread of its own, and a thread
# waiting for the interpreter's lock gets it only every 5 ms (the switch interval) while the
# loop computes: a round of K=2000's 6,000 checks held it ~100 ms and the polls fell that far
# behind. A turn that sleeps leaves the lock free for the engine to catch up.
SLICE_PAUSE = 0.002


class Slices:
    """Cuts a long piece of work on the event loop into slices of `SLICE` seconds with a pause
    of `SLICE_PAUSE` between them: between its steps, `if slices.due(): await slices.pause()`."""

    def __init__(self) -> None:
        self._began = time.perf_counter()

    def due(self) -> bool:
        """This slice has lasted `SLICE`."""
        return time.perf_counter() - self._began >= SLICE

    async def pause(self) -> None:
        await asyncio.sleep(SLICE_PAUSE)
        self._began = time.perf_counter()


_SEVERITY = {Status.OK: 0, Status.UNKNOWN: 1, Status.WARN: 2, Status.FAIL: 3}


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe status; ok for none."""
    return max(statuses, key=lambda s: s.severity, default=Status.OK)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a probe found. `threshold` is the limit that was compared (a number or a text)."""

    status: Status
    value: Scalar = None
    unit: str = ""
    threshold: Scalar = None
    message: str = ""


def unknown(message: str) -> Outcome:
    return Outcome(Status.UNKNOWN, message=message)


def level(
    value: float,
    *,
    warn: float | None,
    fail: float | None,
    higher_is_worse: bool,
    unit: str = "",
    describe: Callable[[float], str] | None = None,
    what: str = "",
) -> Outcome:
    """Compare a figure to warn/fail limits (either may be None: that level is off)."""

    def beyond(limit: float | None) -> bool:
        if limit is None:
            return False
        return value > limit if higher_is_worse else value < limit

    suffix = f" {unit}" if unit[:1].isalpha() else unit
    shown = describe(value) if describe else f"{value:g}{suffix}"
    word = "above" if higher_is_worse else "below"
    if beyond(fail):
        return Outcome(Status.FAIL, value, unit, fail, f"{what}{shown}, {word} {fail:g}{suffix}")
    if beyond(warn):
        return Outcome(Status.WARN, value, unit, warn, f"{what}{shown}, {word} {warn:g}{suffix}")
    limit = warn if warn is not None else fail
    return Outcome(Status.OK, value, unit, limit, f"{what}{shown}")


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's current result (the JSON shape is documented in agent/checks/HEALTH.md)."""

    id: str
    family: str
    status: Status
    value: Scalar
    unit: str
    threshold: Scalar
    message: str
    since: datetime  # when the status last changed
    checked_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "family": self.family,
            "status": self.status.value,
            "value": self.value,
            "unit": self.unit,
            "threshold": self.threshold,
            "message": self.message,
            "since": format_timestamp(self.since),
            "checked_at": format_timestamp(self.checked_at),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckResult:
        """The inverse of `to_dict` (the CLI reads results from the control socket)."""

        return cls(
            id=data["id"],
            family=data["family"],
            status=Status(data["status"]),
            value=data.get("value"),
            unit=data.get("unit", ""),
            threshold=data.get("threshold"),
            message=data.get("message", ""),
            since=parse_timestamp(data["since"]),
            checked_at=parse_timestamp(data["checked_at"]),
        )


Probe = Callable[["AgentView", datetime], "Outcome | Awaitable[Outcome]"]


@dataclass(frozen=True, slots=True)
class Check:
    """One self-check. Blocking probes are plain functions run off the event loop.

    `needs_agent`: it judges what only a running agent has (its polls, its uplink session, its
    log, the readings it saw); `edge-agent check` with no agent running names it instead of
    running it (agent/commissioning.py).
    """

    id: str
    family: str
    probe: Probe = field(compare=False)
    interval: float = 60.0
    timeout: float = 10.0
    blocking: bool = False
    needs_agent: bool = False


def sort_results(results: Iterable[CheckResult]) -> list[CheckResult]:
    """Failing first, then warnings, unknowns, ok; by id within a status."""
    return sorted(results, key=lambda r: (-r.status.severity, r.id))


@dataclass(frozen=True, slots=True)
class Round:
    """One pass of the runner: what was evaluated, and which of those changed status."""

    at: datetime
    results: list[CheckResult]
    changed: list[CheckResult]


def utc_now() -> datetime:
    return datetime.now(UTC)


class CheckRunner:
    """Runs due checks, each on its own interval, and keeps their current results.

    Scheduling uses the monotonic clock (a wall clock stepped by NTP does not stop the checks);
    results are stamped with the wall clock.
    """

    def __init__(
        self,
        checks: Sequence[Check],
        *,
        wall_clock: Callable[[], datetime] = utc_now,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._checks: dict[str, Check] = {}
        self._wall_clock = wall_clock
        self._clock = clock
        self._next: dict[str, float] = {}
        self._results: dict[str, CheckResult] = {}
        self._threads: dict[str, tuple[Future[Outcome], datetime]] = {}
        self.replace(checks)

    @property
    def checks(self) -> list[Check]:
        return list(self._checks.values())

    @property
    def results(self) -> list[CheckResult]:
        """The current result of every check that ran at least once, failing first."""
        return sort_results(self._results.values())

    def replace(self, checks: Sequence[Check]) -> None:
        """Use a new set of checks (after a reload); results and `since` of kept ids stay."""
        # Counted in one pass: with 3 checks a terminal, a quadratic count held the event loop
        # for seconds at the start (and reload) of a site of a few thousand terminals.
        dupes = sorted(i for i, n in Counter(c.id for c in checks).items() if n > 1)
        if dupes:
            raise ValueError(f"check ids must be unique; repeated: {', '.join(dupes)}")
        self._checks = {c.id: c for c in checks}
        now = self._clock()
        self._next = {i: self._next.get(i, now) for i in self._checks}
        self._results = {i: r for i, r in self._results.items() if i in self._checks}

    def next_due_in(self) -> float:
        """Seconds until the next check is due (0 if one is due now; inf without checks)."""
        if not self._next:
            return float("inf")
        return max(0.0, min(self._next.values()) - self._clock())

    async def run_due(self, view: AgentView, now: datetime | None = None) -> Round:
        """Run every check that is due, concurrently; never raises for a check."""
        mono = self._clock()
        due = [c for c in self._checks.values() if self._next.get(c.id, mono) <= mono]
        for c in due:
            self._next[c.id] = mono + c.interval
        return await self._run(due, view, now)

    async def run_all(self, view: AgentView, now: datetime | None = None) -> Round:
        """Run every check now, whatever its schedule (`edge-agent check`)."""
        mono = self._clock()
        for c in self._checks.values():
            self._next[c.id] = mono + c.interval
        return await self._run(list(self._checks.values()), view, now)

    async def run_forever(
        self,
        view: Callable[[], Awaitable[AgentView]],
        on_round: Callable[[Round], Awaitable[None]],
        idle: float = 1.0,
    ) -> None:
        """The daemon's check loop: snapshot, run what is due, hand the round over. Until cancelled.

        `idle` bounds the sleep between rounds so new checks (after `replace`) start soon.
        """
        while True:
            delay = min(self.next_due_in(), idle)
            if delay > 0:
                await asyncio.sleep(delay)
            if self.next_due_in() > 0:
                continue
            done = await self.run_due(await view())
            if done.results:
                await on_round(done)

    def close(self) -> None:
        """Nothing to release today (threads are per run); kept so owners can say they are done."""

    async def _run(self, checks: Sequence[Check], view: AgentView, now: datetime | None) -> Round:
        at = now or self._wall_clock()
        outcomes = await self._outcomes(checks, view, at)
        results, changed = [], []
        slices = Slices()
        for n, (check, outcome) in enumerate(zip(checks, outcomes, strict=True)):
            if n % 256 == 255 and slices.due():
                await slices.pause()
            before = self._results.get(check.id)
            since = before.since if before is not None and before.status is outcome.status else at
            result = CheckResult(
                check.id,
                check.family,
                outcome.status,
                outcome.value,
                outcome.unit,
                outcome.threshold,
                outcome.message,
                since,
                at,
            )
            if check.id in self._checks:  # not replaced away while it ran
                self._results[check.id] = result
            results.append(result)
            if before is None or before.status is not outcome.status:
                changed.append(result)
        return Round(at, results, changed)

    async def _outcomes(
        self, checks: Sequence[Check], view: AgentView, at: datetime
    ) -> list[Outcome]:
        """Every check's outcome. A probe that returns at once (most: they read the view) is
        called right here, no task made for it, and the loop is given a turn (`Slices`) every
        `SLICE` seconds of such calls: a site of thousands of terminals has thousands of
        checks, and a round of them at once held the pollers back by a quarter of a second.
        Blocking probes (threads) and probes that wait (sockets) run concurrently meanwhile."""
        outcomes: list[Outcome | None] = [None] * len(checks)
        waiting: list[tuple[int, asyncio.Future[Outcome], Awaitable[Outcome]]] = []
        slices = Slices()
        try:
            for i, check in enumerate(checks):
                if check.blocking:
                    thread = self._in_thread(check, view, at)
                    waiting.append((i, asyncio.ensure_future(self._awaited(check, thread)), thread))
                    continue
                try:
                    result = check.probe(view, at)
                except Exception as exc:  # noqa: BLE001 -- as in _awaited: reported unknown
                    outcomes[i] = unknown(f"check failed: {type(exc).__name__}: {exc}")
                else:
                    if inspect.isawaitable(result):
                        task = asyncio.ensure_future(self._awaited(check, result))
                        waiting.append((i, task, result))
                    else:
                        outcomes[i] = _checked(result)
                if slices.due():
                    await slices.pause()
            for i, future, _ in waiting:
                outcomes[i] = await future
        except asyncio.CancelledError:  # the agent stops: the probes still waiting stop too
            for _, future, probe in waiting:
                future.cancel()
                # A probe whose task had no turn yet (cancelling this round cancels the task
                # it awaits) never started: closed here, not left to the collector to warn of
                # ("coroutine ... was never awaited").
                if (
                    inspect.iscoroutine(probe)
                    and inspect.getcoroutinestate(probe) == "CORO_CREATED"
                ):
                    probe.close()
            raise
        return [o if o is not None else unknown("no result") for o in outcomes]

    async def _awaited(self, check: Check, result: Awaitable[Outcome]) -> Outcome:
        """The outcome of a probe that waits, within its check's timeout."""
        try:
            async with asyncio.timeout(check.timeout) as deadline:
                outcome = await result
        except TimeoutError as exc:
            if not deadline.expired():  # the probe's own timeout (a socket, a subprocess)
                return unknown(f"check failed: timed out: {exc}".rstrip(": "))
            return unknown(f"no result within {check.timeout:g}s")
        except Exception as exc:  # noqa: BLE001 -- a broken check must not disturb the agent: it is reported unknown with its reason
            return unknown(f"check failed: {type(exc).__name__}: {exc}")
        return _checked(outcome)

    async def _in_thread(self, check: Check, view: AgentView, at: datetime) -> Outcome:
        """A blocking probe's outcome, from a thread of its own (never two at once)."""
        hung = self._threads.get(check.id)
        if hung is not None and not hung[0].done():
            return unknown(f"the previous run, started {format_timestamp(hung[1])}, still hangs")
        future: Future[Outcome] = Future()
        thread = threading.Thread(
            target=_call_in_thread,
            args=(future, check.probe, view, at),
            name=f"check {check.id}",
            daemon=True,
        )
        self._threads[check.id] = (future, at)
        thread.start()
        return await asyncio.wrap_future(future)


def _checked(outcome: object) -> Outcome:
    """What a probe returned, or unknown when it is not an Outcome."""
    if not isinstance(outcome, Outcome):
        return unknown(f"check returned {type(outcome).__name__}, not an Outcome")
    return outcome


def _call_in_thread(future: Future[Outcome], probe: Probe, view: AgentView, at: datetime) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = probe(view, at)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError("a blocking check must be a plain function, not a coroutine")
    except BaseException as exc:  # noqa: BLE001 -- handed over to the awaiting runner
        future.set_exception(exc)
    else:
        future.set_result(result)
