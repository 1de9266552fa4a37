"""Real releases for the tests: wheelhouses built from this project (`pip wheel`), once each.

`wheelhouse(out)` is this project's wheel and every runtime dependency's (what the .deb ships);
`agent_wheelhouse(...)` the same dependencies with the agent wheel of another version (set by
rewriting `version = "…"` in a copy of pyproject.toml), or with a broken entry point (the
self-test refuses it). tests/conftest.py makes them session fixtures (`wheelhouse`,
`make_wheelhouse`): building a wheel takes seconds, installing one a couple more.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = "agent.cli:main"


def pip_wheel(project: Path, out: Path, *extra: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", str(project), "-w", str(out), *extra],
        check=True,
        capture_output=True,
    )


def copy_project(dest: Path, version: str, entry: str = ENTRY) -> Path:
    """This project's sources at `dest`, its version and entry point as given."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "agent", dest / "agent", symlinks=True, ignore=ignore)
    shutil.copy2(ROOT / "README.md", dest / "README.md")
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    pyproject = pyproject.replace(f'edge-agent = "{ENTRY}"', f'edge-agent = "{entry}"')
    pyproject = re.sub(r'(?m)^version = "[^"]*"$', f'version = "{version}"', pyproject)
    (dest / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    return dest


def wheelhouse(out: Path) -> Path:
    """This project's wheel and every runtime dependency's, in `out`."""
    pip_wheel(ROOT, out)
    return out


# A fault built into a release: (file in the project, the text replaced, its replacement).
Fault = tuple[str, str, str]


def cannot_decode(reason: str) -> Fault:
    """A release whose Modbus poller takes every reply as undecodable: each reading bad, with
    `reason` (the gate's "terminals polled" never passes). Edited where every reply comes in,
    so that it holds whichever way the poll decodes its reads."""
    anchor = "                answer = await self._read_with_retries(read)\n"
    return (
        "agent/protocols/modbus/poller.py",
        anchor,
        anchor + f'                raise ModbusFailure("garbled", {reason!r})\n',
    )


def agent_wheelhouse(
    base: Path, work: Path, version: str, entry: str = ENTRY, fault: Fault | None = None
) -> Path:
    """`base`'s dependency wheels (hard links) and an agent wheel of `version` and `entry`,
    with `fault` edited into its sources (a release that misbehaves on purpose)."""
    project = copy_project(work / "src", version, entry)
    if fault is not None:
        name, anchor, replacement = fault
        source = project / name
        text = source.read_text(encoding="utf-8")
        if text.count(anchor) != 1:
            raise RuntimeError(f"{name}: the text the fault replaces is not there once: {anchor}")
        source.write_text(text.replace(anchor, replacement), encoding="utf-8")
    out = work / "wheelhouse"
    out.mkdir()
    for wheel in base.glob("*.whl"):
        if not wheel.name.startswith("edge_agent-"):
            os.link(wheel, out / wheel.name)
    pip_wheel(project, out, "--no-deps")
    return out


# -- the verify step, handed a wheelhouse (agent/update/trust.py verifies for real) -------------


@dataclass(frozen=True)
class StandInRelease:
    """The fields of `agent.update.trust.Release` the installer uses."""

    version: str
    manifest: bytes


@dataclass(frozen=True)
class StandInVerified:
    """The fields of `agent.update.trust.Verified`: the release and its wheels' folder."""

    release: StandInRelease
    wheelhouse: Path


def manifest(folder: Path, version: str) -> bytes:
    """A release manifest (docs/updates.md) listing the wheels of `folder`."""
    wheels = sorted(p.name for p in folder.glob("*.whl"))
    data = {"schema": 1, "version": version, "channel": "stable", "platform": "amd64",
            "python": "cp311", "downgrade": False, "wheels": wheels}  # fmt: skip
    return json.dumps(data).encode()


def hand_over(folder: Path) -> Callable[[Path], StandInVerified]:
    """A verify step that takes `folder` as verified (its agent wheel names the version)."""
    agent = next(folder.glob("edge_agent-*.whl"))
    version = agent.name.split("-")[1]

    def verify(work_dir: Path) -> StandInVerified:
        assert work_dir.is_dir() and not any(work_dir.iterdir())
        return StandInVerified(StandInRelease(version, manifest(folder, version)), folder)

    return verify


def seed(root: Path, version: str = "0.1.0") -> None:
    """An installation with one complete release (not a real venv) as `current`."""
    release = root / "opt/edge-agent/releases" / version
    (release / "bin").mkdir(parents=True)
    (release / "bin/edge-agent").write_text(f"#!/bin/sh\necho edge-agent {version}\n")
    (release / "bin/edge-agent").chmod(0o755)
    (release / ".installed").write_text("sha256:seed\n")
    (root / "opt/edge-agent/current").symlink_to(f"releases/{version}")
