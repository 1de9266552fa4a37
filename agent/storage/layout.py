"""Where everything the agent keeps lives: one frozen `StateLayout` names every file and folder.

Rule: no module builds a path under state_dir by hand; it asks `config.layout` (or
`StateLayout(state_dir)` where only the folder is known). Modes are those the agent creates:
files 0600, its folders 0700, state_dir itself 0750 (as the package lays it out).

| attribute | path | mode | what it holds |
|---|---|---|---|
| `state_dir` | ``<state_dir>/`` | 0750 | everything below |
| `outbox_db` | ``outbox.db`` (+ ``-wal``, ``-shm``) | 0600 | signed messages waiting for the broker |
| `outbox_seq` | ``outbox.db.seq`` | 0600 | the reserved seq ceiling (JSON) |
| `outbox_lock` | ``outbox.db.lock`` | 0600 | flock: one process owns the outbox |
| `history_db` | ``history.db`` (+ ``-wal``, ``-shm``) | 0600 | hourly statistics, events |
| `readings_jsonl` | ``readings.jsonl`` (+ ``.1``) | 0600 | local copy of readings (if enabled) |
| `keys_dir` | ``keys/`` | 0700 | the device identity |
| `device_key` | ``keys/device-ed25519.pem`` | 0600 | Ed25519 private key (PKCS#8 PEM) |
| `state_subdir` | ``state/`` | 0700 | small JSON state files |
| `restarts` | ``state/restarts.json`` | 0600 | first start and recent starts |
| `alarms` | ``state/alarms.json`` | 0600 | alarms raised and not yet cleared |
| `health` | ``state/health.json`` | 0600 | the last health report |
| `update_dir` | ``update/`` | 0700 | signed updates (docs/updates.md) |
| `update_state` | ``update/state.json`` | 0600 | the update state machine (agent.update.state) |
| `update_lock` | ``update/lock`` | 0600 | flock: one writer of the update state at a time |
| `update_active` | ``update/active`` | 0600 | exists while an update is under way: the good version (the unit hooks read it) |
| `update_starts` | ``update/starts`` | 0600 | one line per start on trial: the boot id (pre-start hook) |
| `update_inbox` | ``update/inbox/`` | 0700 | drop a bundle here to apply it (default of `update.inbox`) |
| `update_pending` | ``update/pending/`` | 0700 | a bundle the agent asks root to apply (`request.json`) |
| `update_request` | ``update/pending/request.json`` | 0600 | the agent's request: `{"bundle": name}`, `{"repository": true, "version": v}` or `{"rollback": true, "reason": r}` |
| `update_media` | ``update/media.json`` | 0600 | digests of removable-media bundles already taken |
| `update_metadata` | ``update/metadata/`` | 0700 | the agent's own TUF metadata (for `update check`) |
| `update_downloads` | ``update/downloads/`` | 0700 | wheels the agent fetched for a pending update |
| `diagnosis_dir` | ``diagnosis/`` | 0700 | remote diagnosis (docs/diagnosis.md) |
| `diagnosis_consent` | ``diagnosis/consent.json`` | 0600 | the site owner's consent window |
| `diagnosis_replay` | ``diagnosis/replay.db`` (+ ``-wal``, ``-shm``) | 0600 | request ids seen |
| `audit_log` | ``audit.log`` | 0600 | the diagnosis audit trail, hash-chained |
| `runtime_dir` | ``/run/edge-agent/`` | 0750 | runtime only (systemd RuntimeDirectory) |
| `control_socket` | ``<runtime_dir>/control.sock`` | 0660 | `edge-agent status` and friends |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = Path("/var/lib/edge-agent")
DEFAULT_RUNTIME_DIR = Path("/run/edge-agent")
KEYS_DIR = "keys"
PRIVATE_KEY_FILE = "device-ed25519.pem"
STATE_SUBDIR = "state"


@dataclass(frozen=True, slots=True)
class StateLayout:
    """Every file and folder under `state_dir`, and the runtime folder (see the module table).

    `control_socket` is None unless given: the config names it, and its folder is then the
    runtime folder.
    """

    state_dir: Path = DEFAULT_STATE_DIR
    runtime_dir: Path = DEFAULT_RUNTIME_DIR
    control_socket: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        object.__setattr__(self, "runtime_dir", Path(self.runtime_dir))

    # -- databases ---------------------------------------------------------------------------

    @property
    def outbox_db(self) -> Path:
        return self.state_dir / "outbox.db"

    @property
    def outbox_seq(self) -> Path:
        return self.outbox_db.with_name("outbox.db.seq")

    @property
    def outbox_lock(self) -> Path:
        return self.outbox_db.with_name("outbox.db.lock")

    @property
    def history_db(self) -> Path:
        return self.state_dir / "history.db"

    @property
    def readings_jsonl(self) -> Path:
        """The default place of the JSON-lines copy (`jsonl.path` may name another)."""
        return self.state_dir / "readings.jsonl"

    # -- identity ----------------------------------------------------------------------------

    @property
    def keys_dir(self) -> Path:
        return self.state_dir / KEYS_DIR

    @property
    def device_key(self) -> Path:
        return self.keys_dir / PRIVATE_KEY_FILE

    # -- small state files -------------------------------------------------------------------

    @property
    def state_subdir(self) -> Path:
        return self.state_dir / STATE_SUBDIR

    @property
    def restarts(self) -> Path:
        return self.state_subdir / "restarts.json"

    @property
    def alarms(self) -> Path:
        return self.state_subdir / "alarms.json"

    @property
    def health(self) -> Path:
        return self.state_subdir / "health.json"

    # -- coming with their issues ------------------------------------------------------------

    @property
    def update_dir(self) -> Path:
        return self.state_dir / "update"

    @property
    def update_state(self) -> Path:
        return self.update_dir / "state.json"

    @property
    def update_lock(self) -> Path:
        return self.update_dir / "lock"

    @property
    def update_active(self) -> Path:
        return self.update_dir / "active"

    @property
    def update_starts(self) -> Path:
        return self.update_dir / "starts"

    @property
    def update_inbox(self) -> Path:
        return self.update_dir / "inbox"

    @property
    def update_pending(self) -> Path:
        return self.update_dir / "pending"

    @property
    def update_request(self) -> Path:
        return self.update_pending / "request.json"

    @property
    def update_media(self) -> Path:
        return self.update_dir / "media.json"

    @property
    def update_metadata(self) -> Path:
        return self.update_dir / "metadata"

    @property
    def update_downloads(self) -> Path:
        return self.update_dir / "downloads"

    @property
    def diagnosis_dir(self) -> Path:
        return self.state_dir / "diagnosis"

    @property
    def diagnosis_consent(self) -> Path:
        return self.diagnosis_dir / "consent.json"

    @property
    def diagnosis_replay(self) -> Path:
        return self.diagnosis_dir / "replay.db"

    @property
    def audit_log(self) -> Path:
        return self.state_dir / "audit.log"
