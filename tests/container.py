"""A Debian 12 container booting the real systemd, for the tests that need the service manager.

`Container` copies the cached root (scripts/container-root.sh), runs commands in it unbooted or
boots its systemd (systemd-nspawn) and runs commands inside (nsenter). `image()` and `deb()` are
built once per session (tests/conftest.py: `container_image`, `container_deb`); `why_not()` says
why the container tests are skipped here. `figure()` records a figure for pytest's summary.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

UNIT = "edge-agent.service"


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "the container tests need root (systemd-nspawn, mmdebstrap)"
    for tool, package in (
        ("systemd-nspawn", "systemd-container"),
        ("mmdebstrap", "mmdebstrap"),
        ("nsenter", "util-linux"),
        ("dpkg-deb", "dpkg"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package}; make test does as root)"
    return None


# The figures the tests measure; tests/conftest.py prints them in pytest's summary.
FIGURES: list[str] = []


def figure(text: str) -> None:
    """A figure the issue asks for: in the summary at the end of the run (and here with -s)."""
    FIGURES.append(text)
    print(f"\n[container] {text}", flush=True)


def image() -> Path:
    """The cached bookworm root file system (built on first use); skips when it cannot be."""
    reason = why_not()
    if reason is not None:
        pytest.skip(reason)
    try:
        built = subprocess.run(
            [ROOT / "scripts/container-root.sh"],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.skip("building the bookworm root file system took over 10 minutes")
    if built.returncode != 0:
        pytest.skip(f"cannot build the bookworm root file system: {built.stderr.strip()[-500:]}")
    return Path(built.stdout.strip())


def deb() -> Path:
    """The .deb under test: $EDGE_AGENT_DEB, or built for this machine; skips when it cannot be."""
    given = os.environ.get("EDGE_AGENT_DEB")
    if given:
        path = Path(given)
    else:
        arch = subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
        ).stdout.strip()
        built = subprocess.run(
            [ROOT / "scripts/build-deb.sh", arch],
            capture_output=True, text=True, timeout=600, check=False, cwd=ROOT,
        )  # fmt: skip
        if built.returncode != 0:
            pytest.skip(f"cannot build the .deb: {built.stderr.strip()[-500:]}")
        path = Path(built.stdout.split()[0])
        if not path.is_absolute():
            path = ROOT / path
    listing = subprocess.run(
        ["dpkg-deb", "-c", path], capture_output=True, text=True, check=True
    ).stdout
    if "/usr/lib/edge-agent/wheelhouse/installer-" not in listing:
        pytest.skip(
            "the package's wheelhouse has no installer wheel: its postinst cannot build the "
            "release (python3 -m agent.update.installer) until the installer lands"
        )
    return path


class Container:
    """A copy of the cached root: commands run in it without booting, or in its booted systemd."""

    def __init__(self, image: Path) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="edge-agent-container-", dir="/var/tmp"))
        self.root = self.workdir / "root"
        subprocess.run(["cp", "-a", "--reflink=auto", image, self.root], check=True)
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.init_pid = 0
        subprocess.run(
            ["sh", "-c", "mountpoint -q /run/systemd/nspawn || "
             "{ mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn; }"],
            check=True,
        )  # fmt: skip

    def run(self, *cmd: str, offline: bool = True) -> subprocess.CompletedProcess[str]:
        """A command in the root, not booted; offline: in a network namespace of its own."""
        args = ["systemd-nspawn", "-q", "-D", str(self.root), "--register=no", "--keep-unit"]
        if offline:
            args.append("--private-network")
        return subprocess.run(
            [*args, *cmd], capture_output=True, text=True, timeout=180, check=False
        )

    def boot(self) -> None:
        """Boots its systemd in the background, sharing the host's network; waits for the boot."""
        log = (self.workdir / "console.log").open("ab")
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "-q", "-D", str(self.root), "--register=no", "--keep-unit",
             "-b", "--console=passive"],
            stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 60
        while not self.init_pid:
            self.init_pid = self._container_init()
            if self.init_pid:
                break
            if self.nspawn.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the container did not boot: {self.console()}")
            time.sleep(0.1)
        while True:
            state = self.sh("systemctl is-system-running").stdout.strip()
            if state in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the boot did not finish ({state}): {self.console()}")
            time.sleep(0.2)

    def _container_init(self) -> int:
        """nspawn's child that runs the container's systemd, or 0 while there is none yet.

        nspawn first forks an intermediate child, which starts the container's init and exits:
        taking whichever child comes first once picked that one on a busy machine, and every
        command afterwards entered a process that was gone (the boot "did not finish")."""
        assert self.nspawn is not None
        children = subprocess.run(
            ["pgrep", "-P", str(self.nspawn.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in children:
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm == "systemd":
                return int(pid)
        return 0

    def console(self) -> str:
        return (self.workdir / "console.log").read_text(errors="replace")[-2000:]

    def sh(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A shell command in the booted container (all its namespaces)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "-a", "sh", "-c", script],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def ok(self, script: str, timeout: float = 120) -> str:
        run = self.sh(script, timeout)
        assert run.returncode == 0, f"{script}: {run.returncode}\n{run.stdout}{run.stderr}"
        return run.stdout

    def show(self, *properties: str, unit: str = UNIT) -> dict[str, str]:
        out = self.ok(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in properties))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait(self, what: str, predicate: object, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():  # type: ignore[operator]
            if time.monotonic() > deadline:
                journal = self.sh(f"journalctl -u {UNIT} -n 30 --no-pager -o cat").stdout
                raise AssertionError(f"{what}: not within {timeout} s\n{journal}")
            time.sleep(0.2)

    def close(self) -> None:
        if self.nspawn is not None and self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)
            try:
                self.nspawn.wait(30)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
