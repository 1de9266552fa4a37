"""Where a gateway's installation lives: one frozen `InstallLayout` names every path.

Everything hangs off `prefix` ("/" on a gateway), so tests lay the whole tree under a temp dir.

| attribute | path | what |
|---|---|---|
| `opt_dir` | ``/opt/edge-agent/`` | the releases and the two links |
| `releases_dir` | ``/opt/edge-agent/releases/`` | one folder per version |
| `release(v)` | ``/opt/edge-agent/releases/<v>/`` | a virtual environment with the agent, `bin/edge-agent` |
| `release_manifest(v)` | ``/opt/edge-agent/releases/<v>/.release.json`` | the signed release manifest it was installed from (signed updates), or the list of its wheels (`edge-agent install`) |
| `current` | ``/opt/edge-agent/current`` | symlink → ``releases/<v>`` (what systemd runs) |
| `previous` | ``/opt/edge-agent/previous`` | symlink → the release before (rollback target) |
| `trust_dir` | ``/opt/edge-agent/trust/`` | root's TUF metadata: what `update apply` trusts |
| `wheel_cache` | ``/opt/edge-agent/wheels/`` | the verified wheels of the installed releases |
| `bin_link` | ``/usr/bin/edge-agent`` | symlink → ``/opt/edge-agent/current/bin/edge-agent`` |
| `config` | ``/etc/edge-agent/config.yaml`` | the config (root:edge-agent 0640) |
| `credentials_dir` | ``/etc/edge-agent/credentials/`` | secrets handed over as systemd credentials |
| `state_dir` | ``/var/lib/edge-agent/`` | outbox, history, keys (see `agent.storage.layout`) |
| `runtime_dir` | ``/run/edge-agent/`` | the control socket |
| `wheelhouse` | ``/usr/lib/edge-agent/wheelhouse/`` | the wheels the .deb ships |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

INSTALLED_MARKER = ".installed"
"""Written last into a release folder: the digest of the wheelhouse it was built from."""
RELEASE_MANIFEST = ".release.json"
"""The verified release manifest a signed update installed the release from (from a
wheelhouse: the list of its wheels, so the wheel cache keeps them)."""


@dataclass(frozen=True, slots=True)
class InstallLayout:
    """Every path of an installation, under `prefix` (see the module table)."""

    prefix: Path = Path("/")

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", Path(self.prefix))

    def _at(self, absolute: str) -> Path:
        return self.prefix / absolute.lstrip("/")

    @property
    def opt_dir(self) -> Path:
        return self._at("/opt/edge-agent")

    @property
    def releases_dir(self) -> Path:
        return self.opt_dir / "releases"

    def release(self, version: str) -> Path:
        return self.releases_dir / version

    def marker(self, version: str) -> Path:
        return self.release(version) / INSTALLED_MARKER

    def release_manifest(self, version: str) -> Path:
        return self.release(version) / RELEASE_MANIFEST

    @property
    def current(self) -> Path:
        return self.opt_dir / "current"

    @property
    def previous(self) -> Path:
        return self.opt_dir / "previous"

    @property
    def trust_dir(self) -> Path:
        return self.opt_dir / "trust"

    @property
    def wheel_cache(self) -> Path:
        return self.opt_dir / "wheels"

    @property
    def bin_link(self) -> Path:
        return self._at("/usr/bin/edge-agent")

    @property
    def bin_target(self) -> Path:
        """What `bin_link` points at: the current release's entry point."""
        return self.current / "bin" / "edge-agent"

    @property
    def etc_dir(self) -> Path:
        return self._at("/etc/edge-agent")

    @property
    def config(self) -> Path:
        return self.etc_dir / "config.yaml"

    @property
    def credentials_dir(self) -> Path:
        return self.etc_dir / "credentials"

    @property
    def state_dir(self) -> Path:
        return self._at("/var/lib/edge-agent")

    @property
    def runtime_dir(self) -> Path:
        return self._at("/run/edge-agent")

    @property
    def wheelhouse(self) -> Path:
        return self._at("/usr/lib/edge-agent/wheelhouse")
