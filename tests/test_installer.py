"""The installer, for real: wheelhouses built from this project, venvs made under a temp prefix.

The wheelhouses are the session fixtures of tests/conftest.py (tests/releases.py: `pip wheel .`,
the pinned dependencies from PyPI or pip's cache; other agent versions from a copy of the
project with its `version` changed). Every install makes a real venv (a few seconds each).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.cli import main
from agent.update.installer import install, scan_wheelhouse
from agent.update.layout import InstallLayout

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


# Exactly what the .deb's postinst runs, with a clean environment.
BOOTSTRAP = (
    'PYTHONPATH="$WH/$(basename $WH/edge_agent-*.whl):$WH/$(basename $WH/installer-*.whl)" '
    'python3 -m agent.update.installer --wheelhouse "$WH" --prefix "$PREFIX"'
)


def _bootstrap(wheelhouse: Path, prefix: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = ["env", "-i", "PATH=/usr/bin:/bin", f"WH={wheelhouse}", f"PREFIX={prefix}"]
    return subprocess.run(
        [*env, "sh", "-c", BOOTSTRAP], capture_output=True, text=True, check=False, cwd=cwd
    )


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under root: inode, mtime and (for links) target."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            st = path.lstat()
            target = path.readlink().as_posix() if path.is_symlink() else ""
            seen[str(path.relative_to(root))] = (st.st_ino, st.st_mtime_ns, target)
    return seen


def _version_of(entry: Path) -> str:
    done = subprocess.run(
        [str(entry), "--version"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    return done.stdout.strip()


def test_bootstrap_as_the_postinst_runs_it(wheelhouse: Path, tmp_path: Path) -> None:
    """PYTHONPATH = the two wheels, the system's python3, a clean environment."""
    prefix = tmp_path / "root"
    agent = next(wheelhouse.glob("edge_agent-*.whl"))
    installer = next(wheelhouse.glob("installer-*.whl"))
    done = _bootstrap(wheelhouse, prefix, tmp_path)
    assert done.returncode == 0, done.stderr
    assert agent.name.startswith("edge_agent-") and installer.exists()
    layout = InstallLayout(prefix)
    version = scan_wheelhouse(wheelhouse).version
    assert layout.current.readlink().as_posix() == f"releases/{version}"
    assert not layout.previous.exists()
    assert layout.marker(version).read_text().startswith("sha256:")
    assert _version_of(layout.bin_link) == f"edge-agent {version}"
    assert layout.bin_link.resolve() == (layout.release(version) / "bin" / "edge-agent").resolve()

    # Every command works from the installed release: the packaged example and the demo.
    entry = str(layout.bin_link)
    example = next(
        layout.release(version).glob("lib/python3*/site-packages/agent/data/config/example.yaml")
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    validate = subprocess.run(
        [entry, "config", "validate", str(example)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert validate.returncode == 0, validate.stderr
    demo = subprocess.run(
        [entry, "demo", "--duration", "3"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert demo.returncode == 0, demo.stderr
    assert "latest readings" in demo.stdout

    # The second run changes nothing, not a single inode or mtime.
    before = _snapshot(prefix)
    again = _bootstrap(wheelhouse, prefix, tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"edge-agent {version} already installed"
    assert _snapshot(prefix) == before


def test_upgrade_keeps_previous_a_broken_release_changes_nothing_keep_n(
    wheelhouse: Path,
    make_wheelhouse: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layout = InstallLayout(tmp_path)
    out = io.StringIO()
    a = install(wheelhouse, layout, keep=2, out=out)
    b = install(make_wheelhouse("9.0.1"), layout, keep=2, out=out)
    assert b == "9.0.1"
    assert layout.current.readlink().as_posix() == "releases/9.0.1"
    assert layout.previous.readlink().as_posix() == f"releases/{a}"
    assert _version_of(layout.bin_link) == "edge-agent 9.0.1"

    # A release whose entry point fails: the self-test refuses it, exit 1 with one line, and
    # nothing changes but the releases folder's mtime (the build came and went).
    broken = make_wheelhouse("9.0.2", entry="agent.cli:no_such_function")
    before = _snapshot(tmp_path)
    assert main(["install", "--wheelhouse", str(broken), "--prefix", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-agent install: error: self-test: edge-agent --version failed")
    after = _snapshot(tmp_path)
    releases = str(layout.releases_dir.relative_to(tmp_path))
    assert after.pop(releases)[0] == before.pop(releases)[0]
    assert after == before
    assert not layout.release("9.0.2").exists()

    # The gateway keeps the wheels of its installed releases (a delta update takes them from
    # there), each the wheelhouse's own bytes, listed in the release's .release.json.
    cached = {p.name: p.read_bytes() for p in layout.wheel_cache.iterdir()}
    assert cached == {p.name: p.read_bytes() for p in wheelhouse.glob("*.whl")} | {
        "edge_agent-9.0.1-py3-none-any.whl": (
            make_wheelhouse("9.0.1") / "edge_agent-9.0.1-py3-none-any.whl"
        ).read_bytes()
    }
    listed = json.loads(layout.release_manifest("9.0.1").read_bytes())
    assert sorted(listed["wheels"]) == sorted(
        p.name for p in make_wheelhouse("9.0.1").glob("*.whl")
    )

    # keep=2: the third good release pushes out the oldest; current and previous stay.
    install(make_wheelhouse("9.0.3"), layout, keep=2, out=out)
    kept = sorted(p.name for p in layout.releases_dir.iterdir() if not p.name.startswith("."))
    assert kept == ["9.0.1", "9.0.3"]
    # ... and the agent wheel only the pruned release had leaves the wheel cache with it.
    agents = sorted(p.name for p in layout.wheel_cache.glob("edge_agent-*"))
    assert agents == ["edge_agent-9.0.1-py3-none-any.whl", "edge_agent-9.0.3-py3-none-any.whl"]
    assert f"removed old release {a}" in out.getvalue()
    assert layout.current.readlink().as_posix() == "releases/9.0.3"
    assert layout.previous.readlink().as_posix() == "releases/9.0.1"


def test_bad_wheelhouses_exit_2(
    wheelhouse: Path,
    make_wheelhouse: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def run(folder: Path) -> str:
        assert (
            main(["install", "--wheelhouse", str(folder), "--prefix", str(tmp_path / "root")]) == 2
        )
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        return err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no edge-agent wheel" in run(empty)
    assert "is not a folder" in run(tmp_path / "nowhere")

    two = tmp_path / "two"
    shutil.copytree(wheelhouse, two)
    shutil.copy2(next(make_wheelhouse("9.0.1").glob("edge_agent-*.whl")), two)
    assert "exactly one version" in run(two)

    lacking = tmp_path / "lacking"
    shutil.copytree(wheelhouse, lacking)
    next(lacking.glob("pydantic_core-*.whl")).unlink()
    next(lacking.glob("cryptography-*.whl")).unlink()
    err = run(lacking)
    assert "no wheel for" in err and "cryptography==" in err and "pydantic-core==" in err
    assert not (tmp_path / "root" / "opt").exists()


def test_the_wheel_holds_the_release_data(wheelhouse: Path) -> None:
    agent = next(wheelhouse.glob("edge_agent-*.whl"))
    with zipfile.ZipFile(agent) as archive:
        names = set(archive.namelist())
    for name in (
        "agent/data/README.md",
        "agent/data/config/example.yaml",
        "agent/data/config/demo.yaml",
        "agent/checks/templates/report.html",
        "agent/checks/templates/report.md",
        "agent/checks/templates/report.css",
        "agent/checks/templates/charts.html",
        "agent/data/systemd/edge-agent.service",
        "agent/data/systemd/edge-agent-rollback.service",
        "agent/data/systemd/edge-agent.sysusers",
        "agent/data/systemd/edge-agent.tmpfiles",
        "agent/data/systemd/pre-start",
        "agent/data/systemd/post-stop",
        "agent/data/systemd/rollback",
    ):
        assert name in names, name


def test_the_installer_imports_only_the_stdlib(wheelhouse: Path) -> None:
    """From the agent wheel alone (no installer, no pydantic): what the postinst relies on.

    `-S`: the system's site-packages (and their .pth hooks) are not ours to count.
    """
    agent = next(wheelhouse.glob("edge_agent-*.whl"))
    probe = (
        "import sys, agent.update.installer as i; "
        "print(sorted({m.split('.')[0] for m in sys.modules} - {*sys.stdlib_module_names, '__main__'}))"
    )
    done = subprocess.run(
        ["env", "-i", "PATH=/usr/bin:/bin", f"PYTHONPATH={agent}", "python3", "-S", "-c", probe],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "['agent']"
