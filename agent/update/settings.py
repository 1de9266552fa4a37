"""The `update:` section of the config (docs/updates.md; defaults in config/example.yaml)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator

from agent.config_base import Frozen
from agent.durations import PositiveDuration

DEFAULT_CHANNEL = "stable"
DEFAULT_TRUSTED_ROOT = Path("/usr/share/edge-agent/trusted-root.json")
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


class UpdateConfig(Frozen):
    """Signed updates: where they come from, when they may be applied, how they are judged."""

    # The first root.json this gateway trusts: the vendor's, which the package installs here
    # (scripts/build-deb.sh, TRUSTED_ROOT=). Once root's trust folder holds a root, that one (and
    # the roots it rotates to) is trusted instead. Neither: every update is refused
    # ("no-trusted-root").
    trusted_root: Path | None = DEFAULT_TRUSTED_ROOT
    # URL of the vendor's repository folder (…/metadata/ and …/targets/ below it).
    repository_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    channel: str = Field(default=DEFAULT_CHANNEL, pattern=r"^[a-z0-9][a-z0-9._-]{0,31}$")
    # Time a new release has to pass its gate (started, checks, terminals, uplink) and commit.
    probation: PositiveDuration = 600.0
    # Releases kept in /opt/edge-agent/releases (current and previous among them).
    keep: int = Field(default=3, ge=2, le=20)
    # Folder watched for bundles (default <state_dir>/update/inbox).
    inbox: Path | None = None
    # Glob patterns looked at every 30 s for bundles on a USB stick.
    removable_media: list[str] = Field(default_factory=list)
    # This gateway takes an announced release when sha256(gateway id) mod 100 < this.
    rollout_percent: int = Field(default=100, ge=0, le=100)
    # Local time when announced updates may be applied, "HH:MM-HH:MM" (may wrap midnight).
    window: str | None = None
    # Announcements arrive retained on {fleet_prefix}/update/{channel}.
    fleet_prefix: str = Field(default="edge/fleet", pattern=r"^[^#+\s]+$")
    # A bundle larger than this is refused before it is read.
    max_bundle_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024)

    def root_to_trust(self, trust_dir: Path) -> Path:
        """The root that seeds an empty trust folder: `trusted_root`, else the folder's own."""
        return self.trusted_root or trust_dir / "root.json"

    @field_validator("window")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value is not None and not _WINDOW.match(value):
            raise ValueError(f"window {value!r}: expected HH:MM-HH:MM, e.g. 02:00-05:00")
        return value
