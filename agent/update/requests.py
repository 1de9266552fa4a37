"""The agent's side of an update request: pre-check, fetch, ask root.

The adapter between the unprivileged part (`agent/update/part.py`) and verification
(`agent/update/trust.py`): the part calls it in a worker thread, and what verification needs (the
gateway's target, the agent's own metadata folder, the trusted root) is gathered here once. (A
trial's commit is the state machine's own `agent.update.apply.commit`.)

- `precheck_bundle(path, …)` → `Verdict`: the bundle's own checks first (size, a tar with a
  `bundle.json`: check `bundle`), then the full TUF verification with the agent's metadata
  (`state_dir/update/metadata/`); root verifies everything again with its own.
- `prepare_online(version, …)`: verify and fetch the announced release from
  `update.repository_url`, then write the request; raises `Rejected`.
- `request_bundle(…)` / `request_repository(…)`: move a bundle into `pending/` and write
  `pending/request.json` (`{"bundle": name}` or `{"repository": true, "version": v}`), which
  starts root's `edge-agent update apply --pending`; `request_rollback(…)` asks it for a
  rollback (`{"rollback": true, "reason": r}`, remote diagnosis' `update-rollback`).

`agent.update.trust` is imported when first needed: the agent starts without loading
python-tuf.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.storage.atomic import PRIVATE_DIR_MODE, ensure_dir, move_durably, write_atomic
from agent.storage.layout import StateLayout
from agent.update.layout import InstallLayout
from agent.update.settings import UpdateConfig

if TYPE_CHECKING:
    from agent.update.trust import Target

MAX_LABEL_BYTES = 64 * 1024  # bundle.json is a label of a few lines


class Rejected(Exception):
    """A release or bundle refused: `check` names the check, `reason` says why in one line."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(f"{check}: {reason}")
        self.check = check
        self.reason = reason


@dataclass(frozen=True)
class Verdict:
    """The pre-check of one bundle: accepted, or the check that refused it and why."""

    ok: bool
    check: str | None
    reason: str
    version: str | None = None  # the release it holds (its label until verified)


# -- the gateway as verification sees it ---------------------------------------------------


def _target(settings: UpdateConfig, refused: Iterable[str], automatic: bool) -> Target:
    from agent import __version__
    from agent.update.trust import Target

    return Target.here(settings.channel, __version__, refused, automatic=automatic)


# -- bundles -------------------------------------------------------------------------------


def bundle_label(path: Path, max_bytes: int) -> dict[str, Any]:
    """The bundle's own checks: within `max_bytes`, a tar holding a regular `bundle.json` (a
    JSON object). Its content is a label, never trusted. Raises Rejected (check `bundle`)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise Rejected("bundle", f"cannot read {path.name}: {exc.strerror}") from None
    if size > max_bytes:
        raise Rejected("bundle", f"{size} bytes, over update.max_bundle_bytes ({max_bytes})")
    try:
        with tarfile.open(path, mode="r:") as tar:
            member = tar.getmember("bundle.json")
            if not member.isreg() or member.size > MAX_LABEL_BYTES:
                raise Rejected("bundle", "bundle.json is not a small regular file")
            stream = tar.extractfile(member)
            assert stream is not None  # a regular member
            label = json.loads(stream.read())
    except KeyError:
        raise Rejected("bundle", "no bundle.json: not an update bundle") from None
    except (tarfile.TarError, EOFError):
        raise Rejected("bundle", "not an update bundle (not an uncompressed tar)") from None
    except ValueError as exc:
        raise Rejected("bundle", f"bundle.json is not JSON: {exc}") from None
    except OSError as exc:
        raise Rejected("bundle", f"cannot read {path.name}: {exc.strerror or exc}") from None
    if not isinstance(label, dict):
        raise Rejected("bundle", "bundle.json is not a JSON object")
    return label


def precheck_bundle(
    path: Path, settings: UpdateConfig, layout: StateLayout, refused: Iterable[str] = ()
) -> Verdict:
    """Everything the agent can check of a bundle before it asks root to apply it."""
    try:
        label = bundle_label(path, settings.max_bundle_bytes)
    except Rejected as exc:
        return Verdict(False, exc.check, exc.reason)
    version = label.get("version") if isinstance(label.get("version"), str) else None
    from agent.update.trust import UpdateRejected, bundle_source, verify

    # Checked in a folder of its own, then forgotten: root checks it again before applying it.
    ensure_dir(layout.update_dir)
    with tempfile.TemporaryDirectory(dir=layout.update_dir) as work:
        try:
            verified = verify(
                bundle_source(path, settings.max_bundle_bytes),
                trust_dir=_metadata_dir(layout),
                trusted_root=settings.root_to_trust(InstallLayout().trust_dir),
                # A bundle in the inbox is an automatic source: a version rolled back here is
                # refused (`update apply FILE` by hand can still take it).
                target=_target(settings, refused, automatic=True),
                wheel_cache=Path(work) / "wheels",
                work_dir=Path(work),
                also_in=[InstallLayout().wheel_cache, InstallLayout().wheelhouse],
            )
        except UpdateRejected as exc:
            return Verdict(False, exc.check, exc.reason, version)
    return Verdict(True, None, "verified", verified.release.version)


# -- online ----------------------------------------------------------------------------------


def prepare_online(
    version: str, settings: UpdateConfig, layout: StateLayout, refused: Iterable[str] = ()
) -> str:
    """Verify and fetch an announced release, then ask root to apply it; its version.

    Raises Rejected when verification refuses it (or no repository is configured), OSError when
    the repository cannot be reached.
    """
    if settings.repository_url is None:
        raise Rejected("repository", "update.repository_url is not set")
    # The wheels it lacks are fetched once, into update/downloads/: root takes them from there
    # (checking each again) instead of fetching them a second time over a metered link.
    from agent.update.trust import UpdateRejected, repository_source, verify

    ensure_dir(layout.update_downloads)
    with tempfile.TemporaryDirectory(dir=layout.update_dir) as work:
        try:
            verified = verify(
                repository_source(settings.repository_url),
                trust_dir=_metadata_dir(layout),
                trusted_root=settings.root_to_trust(InstallLayout().trust_dir),
                target=_target(settings, refused, automatic=True),
                wheel_cache=layout.update_downloads,
                work_dir=Path(work),
                version=version,
                also_in=[InstallLayout().wheel_cache, InstallLayout().wheelhouse],
            )
        except UpdateRejected as exc:
            raise Rejected(exc.check, exc.reason) from None
    taken = verified.release.version
    request_repository(layout, taken)
    return taken


def _metadata_dir(layout: StateLayout) -> Path:
    ensure_dir(layout.update_metadata)
    return layout.update_metadata


# -- the request to root ---------------------------------------------------------------------


def request_waiting(layout: StateLayout) -> bool:
    """Whether a request waits for root (`pending/request.json` exists)."""
    return layout.update_request.exists()


def pending_request(layout: StateLayout) -> dict[str, Any] | None:
    """The request waiting for root, if any (an unreadable one counts as waiting)."""
    try:
        data = json.loads(layout.update_request.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def request_repository(layout: StateLayout, version: str) -> None:
    _write_request(layout, {"repository": True, "version": version})


def request_rollback(layout: StateLayout, reason: str) -> None:
    """Ask root to roll back to the previous release (the remote `update-rollback` action)."""
    _write_request(layout, {"rollback": True, "reason": reason})


def request_bundle(layout: StateLayout, bundle: Path) -> Path:
    """Move `bundle` into `pending/` (the same name), then ask root to apply it; the new path."""
    ensure_dir(layout.update_pending)
    target = layout.update_pending / bundle.name
    move_durably(bundle, target)
    _write_request(layout, {"bundle": bundle.name})
    return target


def reject_bundle(bundle: Path, inbox: Path) -> Path:
    """Move a refused bundle to `<inbox>/rejected/` (a new name if one is there); the new path."""
    folder = inbox / "rejected"
    ensure_dir(folder, PRIVATE_DIR_MODE, tighten=False)
    target = folder / bundle.name
    n = 1
    while target.exists():
        target = folder / f"{bundle.name}.{n}"
        n += 1
    move_durably(bundle, target)
    return target


def _write_request(layout: StateLayout, body: dict[str, Any]) -> None:
    ensure_dir(layout.update_pending)
    write_atomic(layout.update_request, json.dumps(body, sort_keys=True).encode() + b"\n")
