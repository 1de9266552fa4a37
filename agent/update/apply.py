"""Root's side of signed updates: the crash-safe installer state machine (docs/updates.md).

`Installer.apply` takes a release through verify → stage → switch → restart → trial, the
record (`agent.update.state`) written before and after each step; `rollback` puts the previous
release back and refuses the bad one; `commit` ends a trial; `resume` (called first by every
`update` command and by the pre-start hook) finishes or undoes what a killed run left:

| killed in | resume |
|---|---|
| verify, stage | half builds removed, state back to what it was, outcome `rejected` "interrupted in <step>" |
| switch | the links made again from the record (`current` may already be the new release) |
| restart | restarted again (from a hook: this start is the restart); the trial goes on |

Invariant, at every instant: `current` points at a complete release (its marker is there) that
was committed or is on trial. A failure in verify or stage leaves `current`, `previous` and the
release folders as they were.

The verify step is a callable (`Verifier`) handed a fresh, root-only work folder; it returns the
verified release and a folder holding exactly its wheels (`agent.update.trust.verify` on a
gateway; the tests hand wheelhouses over directly). `commit(store, version)` is what the
agent's gate calls: it needs neither root nor the install layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

from agent.storage.atomic import write_atomic
from agent.update import installer
from agent.update.installer import InstallError
from agent.update.layout import InstallLayout
from agent.update.state import (
    BOOT_ID_FILE,
    UNDER_WAY,
    UpdateStore,
    add_outcome,
    boot_id,
    ends_at,
    now_iso,
)

SERVICE = "edge-agent.service"
SYSTEMD_RUNNING = Path("/run/systemd/system")
BASELINE_TIMEOUT = 5.0
RESTART_TIMEOUT = 300.0
WORK_DIR = ".update-work"


class ReleaseLike(Protocol):
    @property
    def version(self) -> str: ...

    @property
    def manifest(self) -> bytes: ...


class VerifiedLike(Protocol):
    """What the verify step returns (`agent.update.trust.Verified` is one)."""

    @property
    def release(self) -> ReleaseLike: ...

    @property
    def wheelhouse(self) -> Path: ...


Verifier = Callable[[Path], VerifiedLike]
"""Verify a release; given an empty root-only work folder to put the verified wheels in."""
Restart = Callable[[], None]


class ApplyError(Exception):
    """A step failed or was refused: `check` names it (a trust check, "stage", "busy", …)."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(f"{check}: {reason}")
        self.check = check
        self.reason = reason


def systemd_restart() -> None:
    """`systemctl restart --no-block edge-agent.service` where systemd runs; nothing elsewhere.

    Queued, not waited for: whether the new release starts, and keeps running, is the trial's
    to judge (the start counter, the watchdog, the gate), not a reason to call the apply failed.
    The unit's start limit is reset first (`reset-failed`): starts of the release before must
    not use up the starts the pre-start hook counts, or a crash loop would hit the start limit
    ("unit failed") before the hook could name it.
    """
    if not SYSTEMD_RUNNING.is_dir():
        return
    _systemctl("reset-failed", SERVICE)
    _systemctl("restart", "--no-block", SERVICE)


def _systemctl(*args: str) -> None:
    what = f"systemctl {' '.join(args)}"
    try:
        done = subprocess.run(
            ["systemctl", *args],
            capture_output=True,
            text=True,
            timeout=RESTART_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ApplyError("restart", f"{what}: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr.strip() or f"exit status {done.returncode}").splitlines()[-1]
        raise ApplyError("restart", f"{what}: {detail}")


def ask_baseline(socket: Path | None, timeout: float = BASELINE_TIMEOUT) -> dict[str, Any] | None:
    """The running agent's baseline for the gate (`update-baseline`); None if it does not answer."""
    if socket is None:
        return None
    from agent.control import ControlError, NotRunning, request

    async def ask() -> Any:
        async with asyncio.timeout(timeout):
            return await request(socket, "update-baseline")

    try:
        answer = asyncio.run(ask())
    except (NotRunning, ControlError, TimeoutError, OSError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


def commit(
    store: UpdateStore,
    version: str,
    reason: str = "gate met",
    timings: dict[str, float] | None = None,
) -> bool:
    """End the trial of `version`: state `committed`, outcome `committed`. False (nothing
    changed) unless that version is on trial. The agent's gate calls this, unprivileged."""
    with store.edit() as record:
        if record["state"] != "trial" or record["current"] != version:
            return False
        record.update(state="committed", step=None, gate_failed=None, watchdog=None)
        add_outcome(record, "committed", version, reason, running=version, timings=timings)
        return True


def _check_of(exc: BaseException, step: str) -> tuple[str, str]:
    """(check, reason) of a failed step: a trust check's own names, else the step's."""
    check, reason = getattr(exc, "check", None), getattr(exc, "reason", None)
    if isinstance(check, str) and isinstance(reason, str):
        return check, reason
    if isinstance(exc, InstallError | OSError):
        return step, str(exc)
    if not isinstance(exc, Exception):
        return "interrupted", f"interrupted in {step}"
    return step, f"{type(exc).__name__}: {exc}"


@dataclass
class Installer:
    """Signed updates on one installation (`layout`) and its update record (`store`)."""

    layout: InstallLayout
    store: UpdateStore
    probation: float = 600.0
    keep: int = installer.DEFAULT_KEEP
    restart: Restart = systemd_restart
    control_socket: Path | None = None
    out: TextIO = field(default_factory=lambda: sys.stdout)
    boot_id_file: Path = BOOT_ID_FILE
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    @property
    def work_dir(self) -> Path:
        """Where the verify step puts the verified wheels: root's, never the agent's."""
        return self.layout.opt_dir / WORK_DIR

    # -- apply --------------------------------------------------------------------------------

    def apply(self, verify: Verifier, source: str) -> str:
        """Verify, stage, switch, restart: the version now on trial. Raises ApplyError (the
        outcome `rejected` recorded, nothing changed) when verify or stage fails."""
        self.resume()
        with self._install_lock():
            before = self._begin(source)
            timings: dict[str, float] = {}
            step, version = "verify", None
            try:
                started = time.monotonic()
                installer.remove_tree(self.work_dir)
                self.work_dir.mkdir(mode=0o700, parents=True)
                verified = verify(self.work_dir)
                version = verified.release.version
                timings["verify"] = round(time.monotonic() - started, 3)
                self._set_step("stage", version=version, timings=timings)
                step, started = "stage", time.monotonic()
                self._stage(verified, before)
                baseline = ask_baseline(self.control_socket)
                timings["stage"] = round(time.monotonic() - started, 3)
            except BaseException as exc:
                check, reason = _check_of(exc, step)
                self._undo(check, reason, timings)
                if not isinstance(exc, Exception):
                    raise
                raise ApplyError(check, reason) from exc
            finally:
                installer.remove_tree(self.work_dir)
            started = time.monotonic()
            self._switch(version, before, baseline, timings)
            timings["switch"] = round(time.monotonic() - started, 3)
            self._installed(timings)
            print(f"edge-agent {version} installed, on trial", file=self.out)
            installer.prune(self.layout, self.keep, self.out)
            self._restart_into_trial()
        return version

    def _begin(self, source: str) -> dict[str, Any]:
        """Refuse when an update is under way; record the start; the record as it was."""
        busy = None
        with self.store.edit() as record:
            if record["state"] in UNDER_WAY or record["step"] is not None:
                if record["state"] == "trial":
                    busy = f"{record['current']} is on trial: commit or roll back first"
                else:
                    busy = "an update is under way"
                add_outcome(record, "rejected", None, busy, check="busy")
        if busy is not None:
            raise ApplyError("busy", busy)
        with self.store.edit() as record:
            self._sync_links(record)
            before = {k: record[k] for k in ("state", "current", "previous")}
            record.update(
                state="staging",
                step="verify",
                target={
                    "version": None,
                    "from": record["current"],
                    "source": source,
                    "started_at": now_iso(self.now()),
                    "state_before": record["state"],
                    "timings": {},
                },
            )
            return before

    def _sync_links(self, record: dict[str, Any]) -> None:
        """Outside an update the links are the truth (the .deb's postinst may have switched)."""
        record["current"] = installer.release_of(self.layout, self.layout.current)
        record["previous"] = installer.release_of(self.layout, self.layout.previous)

    def _set_step(self, step: str, **target: Any) -> None:
        with self.store.edit() as record:
            record["step"] = step
            record["target"] = {**(record["target"] or {}), **target}

    def _stage(self, verified: VerifiedLike, before: dict[str, Any]) -> None:
        version = verified.release.version
        house = installer.scan_wheelhouse(verified.wheelhouse)
        if house.version != version:
            raise ApplyError(
                "stage", f"the wheels hold edge-agent {house.version}, the release says {version}"
            )
        if version == before["current"]:
            raise ApplyError("stage", f"{version} is the release running now")
        installer.cache_wheels(self.layout, house)
        marker = self.layout.marker(version)
        if marker.is_file() and marker.read_text(encoding="utf-8").strip() == house.digest:
            print(f"edge-agent {version} is built already (same wheels)", file=self.out)
            if not self.layout.release_manifest(version).exists():
                write_atomic(
                    self.layout.release_manifest(version),
                    verified.release.manifest,
                    mode=installer.RELEASE_FILE_MODE,
                )
            return
        installer.build_and_test(self.layout, house, self.out, manifest=verified.release.manifest)

    def _switch(
        self,
        version: str,
        before: dict[str, Any],
        baseline: dict[str, Any] | None,
        timings: dict[str, float],
    ) -> None:
        """The record first (trial, its window, this boot), then the links from the record."""
        now = self.now()
        with self.store.edit() as record:
            record.update(
                state="trial",
                step="switch",
                trial_ends_at=ends_at(now, self.probation),
                trial_boot_id=boot_id(self.boot_id_file),
                previous=before["current"],
                current=version,
                baseline=baseline,
                gate_failed=None,
                watchdog=None,
            )
            record["target"] = {**record["target"], "timings": dict(timings)}
        installer.point(self.layout, version, before["current"])

    def _installed(self, timings: dict[str, float] | None = None) -> None:
        """After the switch: outcome `installed`, next step restart."""
        with self.store.edit() as record:
            target = record["target"] or {}
            add_outcome(
                record,
                "installed",
                record["current"],
                f"from {target.get('source') or 'unknown source'}",
                timings=timings if timings is not None else target.get("timings"),
            )
            record["step"] = "restart"

    def _restart_into_trial(self) -> None:
        try:
            self.restart()
        finally:
            with self.store.edit() as record:
                if record["state"] == "trial" and record["step"] == "restart":
                    record["step"] = "trial"

    def _undo(self, check: str, reason: str, timings: dict[str, float]) -> None:
        """Verify or stage failed (or was killed): the folders and the record as they were."""
        for line in installer.clean_interrupted(self.layout):
            print(line, file=self.out)
        installer.remove_tree(self.work_dir)
        with self.store.edit() as record:
            target = record["target"] or {}
            state_before = target.get("state_before")
            record.update(
                state=state_before if state_before not in (None, *UNDER_WAY) else "idle",
                step=None,
                target=None,
            )
            add_outcome(
                record,
                "rejected",
                target.get("version"),
                reason,
                check=check,
                timings={**target.get("timings", {}), **timings},
            )

    # -- resume -------------------------------------------------------------------------------

    def resume(self, restart: bool = True) -> str | None:
        """Finish or undo an update a kill interrupted; what was done, None if nothing.

        `restart=False` (the pre-start hook): the start under way is the restart. Nothing is
        done while another `update` holds the install lock: it is not interrupted, it runs.
        """
        if self.store.read()["step"] is None:
            return None
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self._install_lock())
            except ApplyError:
                return None
            return self._resume_locked(restart)
        return None  # pragma: no cover (mypy: ExitStack may swallow)

    def _resume_locked(self, restart: bool) -> str | None:
        record = self.store.read()
        step, state = record["step"], record["state"]
        if step is None:
            return None
        if state == "staging":
            self._undo("interrupted", f"interrupted in {step}", {})
            return f"undid the update interrupted in {step}"
        if step == "switch":
            installer.point(self.layout, record["current"], record["previous"])
            if state != "trial":  # a rollback's switch
                self._set_step_only(None)
                return f"finished the rollback to {record['current']}"
            self._installed()
            step = "restart"
        if step == "restart" and state == "trial":
            if restart:
                self._restart_into_trial()
            else:
                self._set_step_only("trial")
            return f"{record['current']} on trial"
        if state != "trial":
            self._set_step_only(None)
        return None

    def _set_step_only(self, step: str | None) -> None:
        with self.store.edit() as record:
            record["step"] = step

    # -- rollback and commit ------------------------------------------------------------------

    def rollback(self, reason: str, restart: bool = True) -> str:
        """`current` ← `previous`, `previous` removed, the bad version refused; the version
        rolled back. Restarts the service unless `restart` is False (a hook: its start goes on
        with `current`, now the previous release)."""
        with self._install_lock():
            with self.store.edit() as record:
                if record["state"] not in UNDER_WAY and record["step"] is None:
                    self._sync_links(record)
                bad, good = record["current"], record["previous"]
                if bad is None or good is None:
                    raise ApplyError("rollback", "nothing to roll back to: no previous release")
                if record["state"] == "staging":
                    raise ApplyError("busy", "an update is being staged")
                if not installer.is_complete(self.layout, good):
                    raise ApplyError("rollback", f"the previous release {good} is not complete")
                record.update(
                    state="rolled_back",
                    step="switch",
                    current=good,
                    previous=None,
                    target=None,
                    gate_failed=None,
                    watchdog=None,
                )
                if bad not in record["refused"]:
                    record["refused"].append(bad)
                add_outcome(record, "rolled_back", bad, reason, running=good)
            installer.point(self.layout, good, None)
            self._set_step_only(None)
        print(f"rolled back {bad} to {good}: {reason}", file=self.out)
        if restart:
            self.restart()
        return str(bad)

    def commit(self) -> str:
        """End the trial by hand: the version committed. Refused when nothing is on trial."""
        record = self.store.read()
        version = record["current"]
        if (
            record["state"] != "trial"
            or version is None
            or not commit(self.store, version, "by hand")
        ):
            raise ApplyError("commit", f"nothing on trial (state {record['state']})")
        return str(version)

    # -- locks --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _install_lock(self) -> Iterator[None]:
        try:
            lock = installer.install_lock(self.layout)
            lock.__enter__()
        except InstallError as exc:
            raise ApplyError("busy", "another update or install is running") from exc
        try:
            yield
        finally:
            lock.__exit__(None, None, None)
