"""The unprivileged agent's part of signed updates (docs/updates.md): one part in the daemon.

An async context manager the daemon enters after the writer, the uplink and the drivers. It
runs, each in its own task:

- the **reporter**: every outcome in `state.json` not yet reported goes upstream as an event
  (`{"type": "update", "id", "outcome", "version", "running", "reason", "at", "check",
  "timings"}`) through the writer; only once the writer says it is committed to the outbox is
  the outcome marked reported in the record. A crash in between sends it again: at least once,
  the `id` lets receivers drop a repeat. It runs at start, whenever `state.json` changes
  (watchdog) and every `resync` seconds;
- the **trial gate**, when the record has this very version on trial: it waits until the agent
  has started, no check fails that did not in the baseline, every baseline terminal answered
  since this start, and (if the uplink was connected) the broker acknowledged a publish since
  this start; then commits. If the window ends first it records `gate_failed`, and asks the
  daemon to stop with exit status 4 (`EXIT_GATE_FAILED`): the unit's pre-start hook rolls back;
- **announcements** (with an uplink): `{"version": "…"}` on `{fleet_prefix}/update/{channel}`;
  a gateway in the rollout acts inside the maintenance window (remembering an announcement that
  came outside it): verify and fetch, then ask root (`requests.prepare_online`);
- the **inbox** (watchdog) and **removable media** (globs, every `media_interval`): a complete
  file (its size stable for `settle` seconds) is pre-checked; accepted it moves to `pending/`
  and root is asked to apply it; refused it moves to `<inbox>/rejected/` and a `rejected`
  outcome is recorded (and so reported). Media files are copied into the inbox, never moved or
  deleted; their digests are remembered (`update/media.json`).

Everything the part needs of the rest of the agent comes in as callables (the writer's put,
the gate's observation, a stop request, the router's register): it imports no uplink, protocol
or daemon. Blocking work (the record, verification, copies) runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import hashlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, Self

import structlog
from packaging.version import InvalidVersion, Version
from watchdog.events import DirCreatedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from agent import __version__
from agent.logs import log_task_crash
from agent.model import parse_timestamp
from agent.storage.atomic import PRIVATE_DIR_MODE, copy_atomic, ensure_dir, write_atomic
from agent.storage.layout import StateLayout
from agent.storage.watch import changed_paths
from agent.update import requests
from agent.update.apply import commit
from agent.update.gate import Observation, missing
from agent.update.rollout import in_rollout, seconds_until_open
from agent.update.settings import UpdateConfig
from agent.update.state import (
    UNDER_WAY,
    StateError,
    UpdateStore,
    add_outcome,
    summarise,
    unreported,
)

log = structlog.get_logger(__name__)

EXIT_GATE_FAILED = 4  # `edge-agent run`'s status when the trial gate was not met


class Inbound(Protocol):
    """What the part reads of a message that came down (the router's `InboundMessage`)."""

    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> bytes: ...

    @property
    def retain(self) -> bool: ...


Report = Callable[[dict[str, Any]], Awaitable[object]]  # completes once the event is durable
Observe = Callable[[], Awaitable[Observation]]
Subscribe = Callable[[str, Callable[[Inbound], Awaitable[None]]], object]


@dataclass(frozen=True)
class Timing:
    """How often the part looks again (the tests shorten these)."""

    resync: float = 30.0  # re-read state.json and the inbox even without an event
    media_interval: float = 30.0  # look at the removable-media globs
    settle: float = 1.0  # a file's size must stay the same this long before it is taken
    gate_interval: float = 0.5  # how often the gate looks at the agent


def event_of(outcome: Mapping[str, Any]) -> dict[str, Any]:
    """The event body that reports one outcome of the record."""
    body: dict[str, Any] = {"type": "update"}
    for key in ("id", "outcome", "version", "running", "reason", "at", "check", "timings"):
        body[key] = outcome.get(key)
    return body


class UpdatePart:
    """Reporter, trial gate, announcements, inbox and removable media; an async context."""

    def __init__(
        self,
        settings: UpdateConfig,
        layout: StateLayout,
        gateway_id: str,
        *,
        report: Report,
        observe: Observe,
        started: asyncio.Event,
        stop: Callable[[int], None],
        subscribe: Subscribe | None = None,
        version: str = __version__,
        timing: Timing = Timing(),
    ) -> None:
        self.settings = settings
        self.layout = layout
        self.gateway_id = gateway_id
        self.store = UpdateStore(layout)
        self.inbox = settings.inbox or layout.update_inbox
        self.version = version
        self.timing = timing
        # What status, the health report and the metrics show (`UpdateStore.summary`).
        self.summary: dict[str, Any] | None = None
        # Announcements: taken, not in the rollout, malformed (the metrics show them).
        self.announcements: Counter[str] = Counter()
        self.gate_result: str | None = None  # "committed" or what was missing, once decided
        self._report = report
        self._observe = observe
        self._started = started
        self._stop = stop
        self._subscribe = subscribe
        self._state_changed = asyncio.Event()
        self._inbox_changed = asyncio.Event()
        self._announced_changed = asyncio.Event()
        self._announced: str | None = None
        self._acted: set[str] = set()
        self._waiting_logged: set[str] = set()
        self._state_error: str | None = None
        self._observer: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._entered = time.monotonic()

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._entered = time.monotonic()
        await asyncio.to_thread(self._prepare_folders)
        self._watch()
        tasks = {
            "update reporter": self._report_loop(),
            "update gate": self._gate(),
            "update inbox": self._inbox_loop(),
        }
        if self.settings.removable_media:
            tasks["update media"] = self._media_loop()
        if self._subscribe is not None:
            topic = f"{self.settings.fleet_prefix}/update/{self.settings.channel}"
            self._subscribe(topic, self.on_announcement)
            tasks["update announcements"] = self._announcement_loop()
        for name, coroutine in tasks.items():
            task = asyncio.create_task(coroutine, name=name)
            task.add_done_callback(log_task_crash)
            self._tasks.append(task)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks = []
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            await asyncio.to_thread(observer.join, 1)

    def _prepare_folders(self) -> None:
        ensure_dir(self.layout.update_dir)
        ensure_dir(self.inbox, PRIVATE_DIR_MODE, tighten=self.settings.inbox is None)

    def _watch(self) -> None:
        handler = _Changes(self, asyncio.get_running_loop())
        observer = Observer()
        try:
            observer.schedule(handler, str(self.layout.update_dir), recursive=False)
            if self.inbox != self.layout.update_dir:
                observer.schedule(handler, str(self.inbox), recursive=False)
            observer.start()
        except OSError as exc:  # inotify limits: the resync still finds everything
            log.warning(
                "cannot watch the update folders; looking every resync",
                error=str(exc),
                every=self.timing.resync,
            )
        else:
            self._observer = observer

    def state_changed(self) -> None:
        self._state_changed.set()
        self._inbox_changed.set()  # an update that ended may free the way for a waiting bundle

    def inbox_changed(self) -> None:
        self._inbox_changed.set()

    # -- reading the record --------------------------------------------------------------------

    async def _read(self) -> dict[str, Any] | None:
        try:
            record = await asyncio.to_thread(self.store.read)
        except StateError as exc:
            if self._state_error != str(exc):
                log.error("update record unreadable", error=str(exc))
                self._state_error = str(exc)
            self.summary = {"error": str(exc)}
            return None
        self._state_error = None
        self.summary = summarise(record)
        return record

    # -- the reporter --------------------------------------------------------------------------

    async def _report_loop(self) -> None:
        while True:
            self._state_changed.clear()
            await self.report_outcomes()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timing.resync):
                    await self._state_changed.wait()

    async def report_outcomes(self) -> int:
        """Put every unreported outcome through the writer, then mark those stored; how many."""
        record = await self._read()
        if record is None:
            return 0
        waiting = unreported(record)
        if not waiting:
            return 0
        results = await asyncio.gather(
            *(self._report(event_of(o)) for o in waiting), return_exceptions=True
        )
        stored: list[int] = []
        for outcome, result in zip(waiting, results, strict=True):
            if isinstance(result, BaseException):
                log.warning(
                    "update outcome not stored; tried again later",
                    id=outcome.get("id"),
                    error=f"{type(result).__name__}: {result}",
                )
            else:
                stored.append(outcome["id"])
        if stored:
            await asyncio.to_thread(self._mark_reported, stored)
            log.info("update outcomes reported", ids=stored)
        return len(stored)

    def _mark_reported(self, ids: list[int]) -> None:
        with self.store.edit() as record:
            for outcome in record["outcomes"]:
                if outcome.get("id") in ids:
                    outcome["reported"] = True

    # -- the trial gate ------------------------------------------------------------------------

    async def _gate(self) -> None:
        record = await self._read()
        if record is None or record["state"] != "trial":
            return
        if record["current"] != self.version:
            log.warning(
                "an update is on trial but this is not its release; no gate here",
                on_trial=record["current"],
                running=self.version,
            )
            return
        ends_text = record.get("trial_ends_at")
        ends = parse_timestamp(ends_text) if ends_text else None
        left = (
            (ends - datetime.now(UTC)).total_seconds()
            if ends is not None
            else self.settings.probation
        )
        log.info("update on trial: watching the gate", version=self.version, seconds_left=left)
        deadline = asyncio.get_running_loop().time() + max(0.0, left)
        baseline = record.get("baseline")
        wanting = ["the agent did not finish starting"]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._started.wait()
                while True:
                    wanting = missing(baseline, await self._observe())
                    if not wanting:
                        break
                    await asyncio.sleep(self.timing.gate_interval)
        if wanting:
            await self._gate_failed(wanting)
        else:
            await self._commit(baseline)

    async def _commit(self, baseline: Mapping[str, Any] | None) -> None:
        base = baseline or {}
        passed = [f"{len(base.get('terminals') or ())} terminals answered", "checks no worse"]
        if base.get("uplink_connected"):
            passed.append("a publish acknowledged")
        reason = "gate passed: " + ", ".join(passed)
        timings = {"gate": round(time.monotonic() - self._entered, 3)}
        done = await asyncio.to_thread(commit, self.store, self.version, reason, timings)
        if done:
            self.gate_result = "committed"
            log.info("update committed", version=self.version, reason=reason)
        else:
            log.warning("update not committed: the record changed meanwhile", version=self.version)
        self.state_changed()

    async def _gate_failed(self, wanting: list[str]) -> None:
        what = "; ".join(wanting)
        self.gate_result = what

        def record_it() -> bool:
            with self.store.edit() as record:
                if record["state"] != "trial" or record["current"] != self.version:
                    return False
                record["gate_failed"] = what
                return True

        if await asyncio.to_thread(record_it):
            log.error(
                "update gate not met in the probation window; stopping for the rollback",
                version=self.version,
                missing=what,
                exit_status=EXIT_GATE_FAILED,
            )
            self._stop(EXIT_GATE_FAILED)

    # -- announcements -------------------------------------------------------------------------

    async def on_announcement(self, message: Inbound) -> None:
        """The router's handler: a hint that `version` is out; idempotent."""
        try:
            body = json.loads(message.payload)
            version = body["version"] if isinstance(body, dict) else None
            if not isinstance(version, str):
                raise ValueError("no version")
            Version(version)
        except (ValueError, KeyError, InvalidVersion) as exc:
            self.announcements["malformed"] += 1
            log.warning(
                "update announcement ignored: malformed",
                topic=message.topic,
                error=str(exc),
                malformed=self.announcements["malformed"],
            )
            return
        if not in_rollout(self.gateway_id, self.settings.rollout_percent):
            self.announcements["not_in_rollout"] += 1
            log.info(
                "update announcement: this gateway is not in the rollout",
                version=version,
                rollout_percent=self.settings.rollout_percent,
            )
            return
        self.announcements["in_rollout"] += 1
        if version != self._announced:
            log.info("update announced", version=version, window=self.settings.window)
        self._announced = version
        self._announced_changed.set()

    async def _announcement_loop(self) -> None:
        while True:
            self._announced_changed.clear()
            version = self._announced
            if version is not None and version not in self._acted:
                wait = seconds_until_open(self.settings.window, datetime.now().astimezone())
                if wait > 0:
                    # Outside the window: remembered, and taken when it opens.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(min(wait + 1, 3600)):
                            await self._announced_changed.wait()
                    continue
                await self._act(version)
            await self._announced_changed.wait()

    async def _act(self, version: str) -> None:
        if version == self.version:
            self._acted.add(version)
            return
        if self.settings.repository_url is None:
            self._acted.add(version)
            log.warning(
                "announced update not taken: update.repository_url is not set", version=version
            )
            return
        record = await self._read()
        if record is None:
            return
        if version in record["refused"]:
            log.info("announced update refused here: it was rolled back before", version=version)
            self._acted.add(version)
            return
        if record["state"] in UNDER_WAY or await asyncio.to_thread(
            requests.request_waiting, self.layout
        ):
            log.info("announced update waits: an update is under way", version=version)
            return
        self._acted.add(version)  # one attempt per announcement (a retained one comes again)
        try:
            taken = await asyncio.to_thread(
                requests.prepare_online, version, self.settings, self.layout, record["refused"]
            )
        except requests.Rejected as exc:
            await self._record_rejected(version, exc.check, exc.reason)
            return
        except Exception as exc:  # noqa: BLE001 -- a fetch failure: try at the next announcement
            self._acted.discard(version)
            log.warning(
                "announced update not fetched",
                version=version,
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        self.announcements["requested"] += 1
        log.info("announced update fetched; root asked to apply it", version=taken)

    # -- the inbox -----------------------------------------------------------------------------

    async def _inbox_loop(self) -> None:
        while True:
            self._inbox_changed.clear()
            again = await self.scan_inbox()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timing.settle if again else self.timing.resync):
                    await self._inbox_changed.wait()

    async def scan_inbox(self) -> bool:
        """Take every complete file of the inbox; True when some were still being written."""
        first = await asyncio.to_thread(_regular_files, self.inbox)
        if not first:
            return False
        await asyncio.sleep(self.timing.settle)
        second = await asyncio.to_thread(_regular_files, self.inbox)
        growing = False
        for path, stamp in sorted(second.items()):
            if first.get(path) != stamp:
                growing = True
                continue
            try:
                await self._take(path)
            except OSError as exc:  # gone meanwhile, or a full disk: the next scan tries again
                log.warning("cannot take a bundle from the inbox", bundle=path.name, error=str(exc))
        return growing

    async def _take(self, path: Path) -> None:
        record = await self._read()
        if record is None:
            return
        busy = record["state"] in UNDER_WAY or await asyncio.to_thread(
            requests.request_waiting, self.layout
        )
        if busy:
            if path.name not in self._waiting_logged:
                log.info("bundle waits in the inbox: an update is under way", bundle=path.name)
                self._waiting_logged.add(path.name)
            return
        self._waiting_logged.discard(path.name)
        verdict = await asyncio.to_thread(
            requests.precheck_bundle, path, self.settings, self.layout, record["refused"]
        )
        if verdict.ok:
            moved = await asyncio.to_thread(requests.request_bundle, self.layout, path)
            log.info(
                "bundle accepted; root asked to apply it",
                bundle=str(moved),
                version=verdict.version,
            )
            return
        rejected = await asyncio.to_thread(requests.reject_bundle, path, self.inbox)
        log.warning(
            "bundle rejected",
            bundle=path.name,
            moved_to=str(rejected),
            check=verdict.check,
            reason=verdict.reason,
        )
        await self._record_rejected(
            verdict.version, verdict.check, f"{path.name}: {verdict.reason}"
        )

    async def _record_rejected(self, version: str | None, check: str | None, reason: str) -> None:
        def record_it() -> None:
            with self.store.edit() as record:
                add_outcome(record, "rejected", version, reason, running=self.version, check=check)

        await asyncio.to_thread(record_it)
        self.state_changed()

    # -- removable media -----------------------------------------------------------------------

    async def _media_loop(self) -> None:
        taken = await asyncio.to_thread(self._load_media_digests)
        while True:
            await self.scan_media(taken)
            await asyncio.sleep(self.timing.media_interval)

    async def scan_media(self, taken: set[str]) -> int:
        """Copy every new bundle the globs find into the inbox; how many were copied."""
        copied = 0
        for pattern in self.settings.removable_media:
            for name in sorted(await asyncio.to_thread(glob.glob, pattern)):
                path = Path(name)
                try:
                    digest = await asyncio.to_thread(_stable_digest, path, self.timing.settle)
                except OSError as exc:
                    log.warning(
                        "cannot read a bundle on removable media", path=name, error=str(exc)
                    )
                    continue
                if digest is None or digest in taken:
                    continue
                await asyncio.to_thread(_copy_into, path, self.inbox)
                taken.add(digest)
                await asyncio.to_thread(self._save_media_digests, taken)
                log.info("bundle found on removable media", path=name, sha256=digest)
                copied += 1
        if copied:
            self.inbox_changed()
        return copied

    def _load_media_digests(self) -> set[str]:
        try:
            data = json.loads(self.layout.update_media.read_bytes())
        except (OSError, ValueError):
            return set()
        return (
            {d for d in data.get("taken", []) if isinstance(d, str)}
            if isinstance(data, dict)
            else set()
        )

    def _save_media_digests(self, taken: set[str]) -> None:
        write_atomic(self.layout.update_media, json.dumps({"taken": sorted(taken)}).encode())


class _Changes(FileSystemEventHandler):
    """watchdog's thread → the loop: state.json changed, or something arrived in the inbox."""

    def __init__(self, part: UpdatePart, loop: asyncio.AbstractEventLoop) -> None:
        self.part = part
        self.loop = loop
        self.state_file = part.layout.update_state
        self.inbox = part.inbox

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = changed_paths(event, also=(DirCreatedEvent,))  # a folder made in the inbox
        if any(p == self.state_file for p in paths):
            self.loop.call_soon_threadsafe(self.part.state_changed)
        if any(p.parent == self.inbox for p in paths):
            self.loop.call_soon_threadsafe(self.part.inbox_changed)


def _regular_files(folder: Path) -> dict[Path, tuple[int, int]]:
    """The inbox's candidates: regular files not hidden (a copy under way is `.name.part`)."""
    found: dict[Path, tuple[int, int]] = {}
    try:
        entries = list(folder.iterdir())
    except OSError:
        return found
    for path in entries:
        if path.name.startswith("."):
            continue
        try:
            st = path.lstat()
        except OSError:
            continue
        if path.is_file() and not path.is_symlink():
            found[path] = (st.st_size, st.st_mtime_ns)
    return found


def _stable_digest(path: Path, settle: float) -> str | None:
    """sha256 of a regular file whose size and time stay the same over `settle`; else None."""
    if not path.is_file():
        return None
    before = path.stat()
    time.sleep(settle)
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
    after = path.stat()
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        return None
    return digest.hexdigest()


def _copy_into(source: Path, inbox: Path) -> Path:
    """Copy a bundle into the inbox under a hidden name, then rename it into sight."""
    target = inbox / source.name
    n = 1
    while target.exists():
        target = inbox / f"{source.stem}-{n}{source.suffix}"
        n += 1
    copy_atomic(source, target)
    return target
