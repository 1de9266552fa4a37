"""Software checks: what runs (agent, Python, OS), whether its config is valid, how it behaves
(restarts in the last 24 h, error events in its own log).
"""

from __future__ import annotations

import hashlib
import platform
import sys
import threading
from datetime import datetime, timedelta

from agent.check_settings import ChecksConfig
from agent.checks.framework import Check, Outcome, Probe, Status, level, unknown
from agent.checks.system import SystemPaths
from agent.checks.view import AgentView
from agent.config import NO_RESTART_SECTIONS, Config, ConfigError, load_config, parse_config_bytes
from agent.durations import format_duration

FAMILY = "software"


def checks(settings: ChecksConfig, paths: SystemPaths | None = None) -> list[Check]:
    paths = paths or SystemPaths()
    s = settings.software
    config_check = ConfigFileCheck()

    def make(
        check_id: str, probe: Probe, blocking: bool = False, needs_agent: bool = False
    ) -> Check:
        return Check(check_id, FAMILY, probe, s.interval, settings.timeout, blocking, needs_agent)

    return [
        make("software.version", lambda v, now: version(v)),
        make("software.python", lambda v, now: python()),
        make("software.os", lambda v, now: os_release(paths), blocking=True),
        make("software.config", lambda v, now: config_check(v), blocking=True),
        make("software.restarts", lambda v, now: restarts(v, now, settings)),
        make("software.log_errors", lambda v, now: log_errors(v, settings), needs_agent=True),
    ]


def version(view: AgentView) -> Outcome:
    return Outcome(Status.OK, view.version, message=f"edge-agent {view.version}")


def python() -> Outcome:
    v = platform.python_version()
    ok = sys.version_info >= (3, 11)
    return Outcome(
        Status.OK if ok else Status.FAIL,
        v,
        threshold="3.11",
        message=f"{platform.python_implementation()} {v}",
    )


def os_release(paths: SystemPaths) -> Outcome:
    fields: dict[str, str] = {}
    for candidate in (paths.etc / "os-release", paths.etc.parent / "usr/lib/os-release"):
        try:
            text = candidate.read_text(encoding="utf-8")
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fields[key.strip()] = value.strip().strip("\"'")
        break
    kernel = platform.release()
    name = fields.get("PRETTY_NAME") or " ".join(
        x for x in (fields.get("NAME"), fields.get("VERSION_ID")) if x
    )
    if not name:
        return Outcome(Status.UNKNOWN, None, message=f"no os-release; Linux kernel {kernel}")
    return Outcome(Status.OK, name, message=f"{name}, kernel {kernel}")


class ConfigFileCheck:
    """`software.config`, parsing the file only when it or the running config has changed.

    Parsing a large site's config costs CPU and, for a moment, tens of MB (a YAML document and
    its validated models; the allocator keeps much of it), so an unchanged file (same bytes,
    same running config) gives the previous outcome again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # rounds run in worker threads
        self._last: tuple[bytes, Config, Outcome] | None = None

    def __call__(self, view: AgentView) -> Outcome:
        path = view.config_path
        if path is None:
            return config_valid(view)
        try:
            data = path.read_bytes()
        except OSError:
            return config_valid(view)  # says why, as the loader does
        digest = hashlib.sha256(data).digest()
        if digest == view.config_digest:
            # The very content the running config was parsed from: valid, and no different.
            return Outcome(Status.OK, 0, threshold=0, message=f"{path} is valid")
        with self._lock:
            last = self._last
        if last is not None and last[0] == digest and last[1] is view.config:
            return last[2]
        outcome = config_valid(view, data)
        with self._lock:
            self._last = (digest, view.config, outcome)
        return outcome


def config_valid(view: AgentView, data: bytes | None = None) -> Outcome:
    """Validate the config file as it is on disk now (the running config may be older);
    `data` is the file's content if already read."""
    path = view.config_path
    if path is None:
        return unknown("no config file: the running config was not loaded from a file")
    try:
        on_disk = load_config(path) if data is None else parse_config_bytes(data, path)
    except ConfigError as exc:
        n = len(exc.errors)
        first = exc.errors[0] if exc.errors else "invalid"
        more = f" (and {n - 1} more)" if n > 1 else ""
        return Outcome(Status.FAIL, n, threshold=0, message=f"{path}: {first}{more}")
    changed = [
        key
        for key in type(on_disk).model_fields
        if key not in NO_RESTART_SECTIONS
        and getattr(on_disk, key) != getattr(view.config, key, None)
    ]
    if changed:
        return Outcome(
            Status.WARN,
            0,
            threshold=0,
            message=f"{path} is valid but differs from the running config in "
            f"{', '.join(changed)}: a restart applies it",
        )
    return Outcome(Status.OK, 0, threshold=0, message=f"{path} is valid")


def restarts(view: AgentView, now: datetime, settings: ChecksConfig) -> Outcome:
    s = settings.software.restarts_24h
    recent = [t for t in view.restarts if t > now - timedelta(days=1)]
    return level(
        len(recent),
        warn=s.warn,
        fail=s.fail,
        higher_is_worse=True,
        describe=lambda n: f"{n:g} restarts in the last 24 h",
    )


def log_errors(view: AgentView, settings: ChecksConfig) -> Outcome:
    s = settings.software
    logs = view.logs
    if logs is None:
        return unknown("the agent's log events are not counted (no LogCounter installed)")
    window = format_duration(logs.window)
    latest = f"; latest: {logs.latest_error!r}" if logs.recent_errors and logs.latest_error else ""
    return level(
        logs.recent_errors,
        warn=s.log_errors.warn,
        fail=s.log_errors.fail,
        higher_is_worse=True,
        describe=lambda n: (
            f"{n:g} errors and {logs.recent_warnings} warnings logged in the last {window}{latest}"
        ),
    )
