"""The support bundle: one .tar.gz that tells a support engineer how this gateway is doing.

Members (fixed names, each 0644, secrets redacted by agent/diagnosis/redact.py):

| member | what |
|---|---|
| `README.txt` | what this is, when and by whom it was made, what is missing and why |
| `version.json` | agent version, OS (/etc/os-release), Python, kernel (uname) |
| `config.yaml` | the running config, redacted |
| `status.json` | `edge-agent status --json` (running agent only) |
| `checks.json` | the latest check results (running agent only) |
| `logs.jsonl` | the log ring's events since then, oldest first (running agent only; capped) |
| `outbox.json` | the outbox's figures (running agent only) |
| `update.json` | the update record's summary (`agent.update.state.UpdateStore.summary`) |
| `audit-tail.jsonl` | the last `AUDIT_LINES` lines of the diagnosis audit log, if there is one |

`build` makes it from what it is given: the running agent's `ActionContext` (the action
`support-bundle`, the control socket's operation `support-bundle`), or `OfflineSource` when the
agent does not run (`edge-agent support-bundle`), which has no status, checks, logs or outbox:
README.txt then says so. A part that cannot be read becomes `{"error": …}` in its member and a
line in README.txt; the rest of the bundle is still made.
"""

from __future__ import annotations

import asyncio
import io
import json
import platform
import tarfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from agent import __version__
from agent.diagnosis.redact import redact_config, redact_text, redact_value
from agent.model import format_timestamp
from agent.storage.layout import StateLayout
from agent.update.state import StateError, UpdateStore

if TYPE_CHECKING:
    from agent.config import Config
    from agent.operations import Operations

LOG_EVENTS = 5000  # events in logs.jsonl at most (the ring holds no more)
LOG_BYTES = 4 * 1024 * 1024  # and at most this much of their text: the newest are kept
AUDIT_LINES = 200
AUDIT_BYTES = 1024 * 1024  # the tail read of audit.log at most
MEMBER_MODE = 0o644
OS_RELEASE = Path("/etc/os-release")
AGENT_MEMBERS = ("status.json", "checks.json", "logs.jsonl", "outbox.json")
MEMBERS = (
    "README.txt", "version.json", "config.yaml", *AGENT_MEMBERS, "update.json", "audit-tail.jsonl",
)  # fmt: skip

LogSource = Callable[[str, float | None, int], list[dict[str, Any]]]


class BundleSource(Protocol):
    """What a bundle is made from: an `ActionContext` is one; `OfflineSource` another."""

    @property
    def operations(self) -> Operations | None: ...

    @property
    def config(self) -> Config: ...

    def recent_logs(self, level: str, since: float | None, limit: int) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class AgentSource:
    """The running agent as the control socket's operation sees it (the daemon's parts are
    reached through `operations`; the logs from the log ring)."""

    operations: Operations
    config: Config
    logs: LogSource

    def recent_logs(self, level: str, since: float | None, limit: int) -> list[dict[str, Any]]:
        return self.logs(level, since, limit)


@dataclass(frozen=True)
class OfflineSource:
    """The agent does not run: only the config file and what is on disk."""

    config: Config
    operations: None = None

    def recent_logs(self, level: str, since: float | None, limit: int) -> list[dict[str, Any]]:
        return []


# -- the members -------------------------------------------------------------------------------


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n").encode()


def os_release(path: Path = OS_RELEASE) -> dict[str, str]:
    """The fields of /etc/os-release (empty when there is none)."""
    fields: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() and not name.startswith("#"):
            fields[name.strip()] = value.strip().strip("\"'")
    return fields


def version_info() -> dict[str, Any]:
    """The agent's version and what it runs on."""
    uname = platform.uname()
    osr = os_release()
    return {
        "agent": __version__,
        "os": {
            k: osr[k] for k in ("PRETTY_NAME", "ID", "VERSION_ID", "VERSION_CODENAME") if k in osr
        },
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
        },
        "kernel": {
            "system": uname.system,
            "release": uname.release,
            "version": uname.version,
            "machine": uname.machine,
        },
    }


def logs_jsonl(events: list[dict[str, Any]], max_bytes: int = LOG_BYTES) -> tuple[bytes, int]:
    """The events as JSON lines, oldest first; the newest that fit in `max_bytes`. Also the
    number of events left out."""
    lines: list[bytes] = []
    total = 0
    for event in reversed(events):
        line = json.dumps(event, ensure_ascii=False, default=str).encode() + b"\n"
        if total + len(line) > max_bytes:
            break
        lines.append(line)
        total += len(line)
    lines.reverse()
    return b"".join(lines), len(events) - len(lines)


def tail_lines(path: Path, count: int = AUDIT_LINES, max_bytes: int = AUDIT_BYTES) -> list[bytes]:
    """The last `count` complete lines of a file (within its last `max_bytes`)."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        start = max(0, size - max_bytes)
        f.seek(start)
        data = f.read()
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # the first may be cut
    return [line for line in lines if line.strip()][-count:]


def audit_tail(path: Path) -> bytes:
    """The audit log's last lines, as they are unless a secret had to go (then re-written)."""
    out: list[bytes] = []
    for raw in tail_lines(path):
        text = raw.decode("utf-8", errors="replace")
        try:
            line = json.loads(text)
        except ValueError:
            out.append(_json_line({"unparsed": redact_text(text)}))
            continue
        redacted = redact_value(line)
        out.append(raw + b"\n" if redacted == line else _json_line(redacted))
    return b"".join(out)


def _json_line(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, default=str).encode() + b"\n"


def default_name(gateway: str, at: float | None = None) -> str:
    """`edge-agent-support-<gateway>-<UTC time>.tar.gz`, the CLI's default file name."""
    stamp = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return f"edge-agent-support-{gateway}-{stamp.strftime('%Y%m%dT%H%M%SZ')}.tar.gz"


def _utc(at: float) -> str:
    return format_timestamp(datetime.fromtimestamp(at, UTC), "seconds")


def _readme(config: Config, running: bool, now: float, since: float, notes: list[str]) -> bytes:
    how = (
        "made by the running agent"
        if running
        else "made by `edge-agent support-bundle` from the files on disk: the agent was not running"
    )
    lines = [
        "edge-agent support bundle",
        "",
        f"gateway:    {config.gateway.id}",
        f"agent:      {__version__}",
        f"made at:    {_utc(now)}",
        f"logs since: {_utc(since)}",
        f"how:        {how}",
        "",
        "Secrets (passwords, tokens, private keys, credentials) are replaced by <redacted>.",
        "",
        "files:",
        "  version.json      agent version, OS, Python, kernel",
        "  config.yaml       the running config, redacted",
        "  status.json       edge-agent status --json",
        "  checks.json       the latest check results",
        "  logs.jsonl        log events since then, oldest first, redacted",
        "  outbox.json       the outbox's figures",
        "  update.json       the update state (edge-agent update status --json)",
        f"  audit-tail.jsonl  the last {AUDIT_LINES} lines of the diagnosis audit log",
    ]
    if not running:
        lines += [
            "",
            "missing because the agent was not running: " + ", ".join(AGENT_MEMBERS),
        ]
    if notes:
        lines += ["", "notes:", *(f"  {note}" for note in notes)]
    return ("\n".join(lines) + "\n").encode()


def archive(members: dict[str, bytes], mtime: float) -> bytes:
    """A .tar.gz of the members, in MEMBERS order, each 0644, owned by root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name in MEMBERS:
            if name not in members:
                continue
            data = members[name]
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), MEMBER_MODE, int(mtime)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# -- the bundle --------------------------------------------------------------------------------


async def build(context: BundleSource, *, since: float, layout: StateLayout) -> bytes:
    """The support bundle (.tar.gz bytes): logs since `since` (a UNIX time), state from
    `layout`, everything else from `context` (an ActionContext, or OfflineSource)."""
    now = time.time()
    config = context.config
    operations = context.operations
    notes: list[str] = []
    members: dict[str, bytes] = {
        "version.json": _json(version_info()),
        "config.yaml": yaml.safe_dump(
            redact_config(config), sort_keys=False, allow_unicode=True
        ).encode(),
    }
    if operations is not None:
        asks: dict[str, Callable[[], Awaitable[Any]]] = {
            "status.json": operations.status,
            "checks.json": lambda: operations.checks(run=False),
            "outbox.json": lambda: operations.outbox(0),
        }
        for name, ask in asks.items():
            try:
                members[name] = _json(redact_value(await ask()))
            except Exception as exc:  # noqa: BLE001 -- one part failing must not lose the rest
                members[name] = _json({"error": redact_text(str(exc) or repr(exc))})
                notes.append(f"{name}: {redact_text(str(exc) or repr(exc))}")
        events = await asyncio.to_thread(context.recent_logs, "debug", since, LOG_EVENTS)
        members["logs.jsonl"], left_out = logs_jsonl(events)
        if left_out:
            notes.append(f"logs.jsonl: the oldest {left_out} events left out (size limit)")
    try:
        members["update.json"] = _json(redact_value(UpdateStore(layout).summary()))
    except (StateError, OSError) as exc:
        members["update.json"] = _json({"error": str(exc)})
        notes.append(f"update.json: {exc}")
    if layout.audit_log.exists():
        try:
            members["audit-tail.jsonl"] = audit_tail(layout.audit_log)
        except OSError as exc:
            notes.append(f"audit-tail.jsonl: cannot read {layout.audit_log}: {exc.strerror}")
    else:
        notes.append(f"audit-tail.jsonl: no audit log yet ({layout.audit_log})")
    members["README.txt"] = _readme(config, operations is not None, now, since, notes)
    return await asyncio.to_thread(archive, members, now)
