"""Signed updates under the real service manager: the .deb in a booted Debian 12 container.

Real releases built from this project (its wheels, and the package's own dependency wheels),
signed by a vendor repository made with `edge-agent release`, applied on a gateway whose
systemd runs the real unit: `Restart=`, the watchdog, `ExecStartPre=+` / `ExecStopPost=+`
hooks, the path unit that hands the agent's request to root. In file order, each leaving the
gateway on a committed release:

1. 0.2.0 dropped into the inbox: the agent checks it and asks; root (edge-agent-update.path →
   edge-agent-update.service) applies it; the agent's gate commits it.
2. 0.3.0 exits at start: the start counter rolls it back ("crash loop").
3. 0.4.0 starts but cannot decode its terminal: the gate fails, the agent exits 4, the next
   start rolls it back ("gate: …").
4. 0.5.0 hangs after READY=1: the watchdog kills it, the next start rolls it back.

A power cut (a new boot id) cannot be made here: a container shares the host's kernel and its
boot id; tests/test_update_hooks.py covers it. Needs what tests/test_container.py needs.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sim.modbus_device import RegisterMap, SimulatedModbusDevice
from tests.broker import free_port
from tests.conftest import PYTHON
from tests.container import UNIT, Container, figure
from tests.releases import Fault, agent_wheelhouse, cannot_decode

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(1200)]

CONFIG = "/etc/edge-agent/config.yaml"
TRUSTED_ROOT = "/etc/edge-agent/trusted-root.json"
INBOX = "/var/lib/edge-agent/update/inbox"
DROPINS = "/etc/systemd/system/edge-agent.service.d"
PROBATION = 45  # seconds: the first round of checks and a few polls fit in it

# Faults, as text edits of a copy of the sources: (file, anchor, replacement).
EXITS_AT_START: Fault = (
    "agent/cli.py",
    "def cmd_run(args: argparse.Namespace) -> int:\n",
    "def cmd_run(args: argparse.Namespace) -> int:\n"
    '    raise SystemExit("this release exits at start (a test fault)")\n',
)
CANNOT_DECODE: Fault = cannot_decode("cannot decode (a test fault)")
HANGS_AFTER_READY: Fault = (
    "agent/daemon.py",
    "            self.started.set()\n",
    "            self.started.set()\n"
    '            __import__("time").sleep(1e6)  # a test fault: hangs after READY=1\n',
)


def release_cli(*args: str | Path) -> str:
    done = subprocess.run(
        [PYTHON, "-m", "agent", "release", *map(str, args)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


class ModbusSite:
    """A simulated Modbus TCP terminal on the host's loopback, served from a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.device = SimulatedModbusDevice({1: RegisterMap()})
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(
            self.device.serve_tcp("127.0.0.1", free_port()), self.loop
        ).result(30)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.device.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()  # its self-pipe is a socket pair: closed here, not by the collector


@pytest.fixture(scope="module")
def bundles(container_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The vendor's side: a repository with four releases, a bundle of each, and its root."""
    work = tmp_path_factory.mktemp("vendor")
    unpacked = work / "deb"
    subprocess.run(["dpkg-deb", "-x", container_deb, unpacked], check=True)
    base = unpacked / "usr/lib/edge-agent/wheelhouse"
    repo = work / "repo"
    release_cli("init", repo)
    made = {"root": repo / "metadata" / "1.root.json"}
    faults = {"0.2.0": None, "0.3.0": EXITS_AT_START, "0.4.0": CANNOT_DECODE,
              "0.5.0": HANGS_AFTER_READY}  # fmt: skip
    for version, fault in faults.items():
        wheelhouse = agent_wheelhouse(base, work / f"build-{version}", version, fault=fault)
        release_cli("add", repo, "--channel", "stable", "--wheelhouse", wheelhouse)
        out = work / f"edge-agent-{version}.bundle"
        release_cli("bundle", repo, "--version", version, "--channel", "stable", "--out", out)
        made[version] = out
    return made


@pytest.fixture(scope="module")
def gateway(
    container_image: Path, container_deb: Path, bundles: dict[str, Path]
) -> Iterator[Container]:
    """The package installed offline and booted; the agent polls a terminal on the host."""
    site = ModbusSite()
    box = Container(container_image)
    try:
        shutil.copy(container_deb, box.root / "root/edge-agent.deb")
        install = box.run("dpkg", "-i", "/root/edge-agent.deb")
        assert install.returncode == 0, install.stdout + install.stderr
        shutil.copy(bundles["root"], box.root / TRUSTED_ROOT.lstrip("/"))
        for version in ("0.2.0", "0.3.0", "0.4.0", "0.5.0"):
            shutil.copy(bundles[version], box.root / "root" / bundles[version].name)
        (box.root / CONFIG.lstrip("/")).write_text(
            "gateway:\n  id: update-test\n"
            f"update:\n  trusted_root: {TRUSTED_ROOT}\n  probation: {PROBATION}s\n"
            "terminals:\n"
            f"  - {{name: plc, protocol: modbus-tcp, host: 127.0.0.1, port: {site.port},"
            " period: 1s, timeout: 500ms, retries: 0,"
            " points: [{name: level, table: holding, address: 0, type: uint16}]}\n"
        )
        dropins = box.root / DROPINS.lstrip("/")
        dropins.mkdir(parents=True)
        # A quick watchdog and quick restarts: the same logic, in seconds instead of minutes.
        (dropins / "test-fast.conf").write_text("[Service]\nWatchdogSec=5s\nRestartSec=1s\n")
        box.boot()
        box.wait("the agent active", lambda: box.show("ActiveState")["ActiveState"] == "active")
        box.wait("the terminal answering", lambda: answering(box), timeout=60)
        yield box
    finally:
        box.close()
        site.close()


def answering(box: Container) -> bool:
    run = box.sh("edge-agent status --json")
    if run.returncode not in (0, 1):
        return False
    terminals = json.loads(run.stdout)["terminals"]
    return any(t["name"] == "plc" and t["state"] == "ok" for t in terminals)


def update_status(box: Container) -> dict[str, object]:
    return json.loads(box.ok("edge-agent update status --json"))


def wait_for_state(box: Container, state: str, timeout: float) -> dict[str, object]:
    seen: dict[str, object] = {}

    def reached() -> bool:
        seen.update(update_status(box))
        return seen["state"] == state

    box.wait(f"update state {state} (last seen: {seen})", reached, timeout=timeout)
    return seen


def current(box: Container) -> str:
    return box.ok("readlink /opt/edge-agent/current").strip()


def last(status: dict[str, object]) -> dict[str, str]:
    value = status["last"]
    assert isinstance(value, dict)
    return value


def apply_and_wait_for_rollback(box: Container, version: str, timeout: float) -> dict[str, str]:
    before = current(box)
    run = box.sh(f"edge-agent update apply /root/edge-agent-{version}.bundle")
    assert run.returncode == 0, run.stdout + run.stderr
    status = wait_for_state(box, "rolled_back", timeout)
    assert current(box) == before
    box.wait("the previous release active", lambda: active(box))
    outcome = last(status)
    assert (outcome["outcome"], outcome["version"]) == ("rolled_back", version)
    return outcome


def active(box: Container) -> bool:
    return box.show("ActiveState")["ActiveState"] == "active"


def test_a_bundle_in_the_inbox_is_applied_by_root_and_committed_by_the_gate(
    gateway: Container,
) -> None:
    box = gateway
    assert current(box) == "releases/0.1.0"
    assert box.show("ActiveState", unit="edge-agent-update.path")["ActiveState"] == "active"
    started = time.monotonic()
    # The agent's own user drops it (as a site engineer in its group would, or a sync job).
    box.ok(
        f"cp /root/edge-agent-0.2.0.bundle {INBOX}/.incoming && chown edge-agent: "
        f"{INBOX}/.incoming && mv {INBOX}/.incoming {INBOX}/edge-agent-0.2.0.bundle"
    )
    status = wait_for_state(box, "trial", timeout=300)
    on_trial = time.monotonic() - started
    assert current(box) == "releases/0.2.0"
    status = wait_for_state(box, "committed", timeout=PROBATION + 60)
    committed = time.monotonic() - started
    assert (status["current"], status["previous"]) == ("0.2.0", "0.1.0")
    assert last(status)["outcome"] == "committed"
    # Root's oneshot, started by the path unit, ran the apply and succeeded; the request is gone.
    applied = box.show(
        "Result", "ExecMainStartTimestampMonotonic", unit="edge-agent-update.service"
    )
    assert applied["Result"] == "success" and applied["ExecMainStartTimestampMonotonic"] != "0"
    assert box.sh("test -e /var/lib/edge-agent/update/pending/request.json").returncode != 0
    assert box.sh(f"test -e {INBOX}/edge-agent-0.2.0.bundle").returncode != 0
    figure(f"inbox -> on trial (root applied it): {on_trial:.0f} s; -> committed {committed:.0f} s")


def test_a_release_that_exits_at_start_is_rolled_back_by_the_start_counter(
    gateway: Container,
) -> None:
    started = time.monotonic()
    outcome = apply_and_wait_for_rollback(gateway, "0.3.0", timeout=300)
    assert outcome["reason"].startswith("crash loop"), outcome
    figure(f"0.3.0 exits at start -> rolled back: {time.monotonic() - started:.0f} s")


def test_a_release_that_fails_its_gate_is_rolled_back(gateway: Container) -> None:
    started = time.monotonic()
    outcome = apply_and_wait_for_rollback(gateway, "0.4.0", timeout=300 + PROBATION)
    assert outcome["reason"].startswith("gate:"), outcome
    assert "plc" in outcome["reason"], outcome
    journal = gateway.ok(f"journalctl -u {UNIT} --no-pager -o cat")
    assert "status=4" in journal
    figure(f"0.4.0 fails its gate -> rolled back: {time.monotonic() - started:.0f} s")


def test_a_release_that_hangs_is_killed_by_the_watchdog_and_rolled_back(
    gateway: Container,
) -> None:
    started = time.monotonic()
    outcome = apply_and_wait_for_rollback(gateway, "0.5.0", timeout=300)
    assert outcome["reason"] == "watchdog killed it", outcome
    journal = gateway.ok(f"journalctl -u {UNIT} --no-pager -o cat")
    assert "Watchdog timeout" in journal
    figure(f"0.5.0 hangs -> watchdog -> rolled back: {time.monotonic() - started:.0f} s")


def test_every_outcome_was_stored_for_upstream_and_rolled_back_versions_stay_refused(
    gateway: Container,
) -> None:
    box = gateway
    record = json.loads(box.ok("cat /var/lib/edge-agent/update/state.json"))
    outcomes = [(o["outcome"], o["version"]) for o in record["outcomes"]]
    for expected in [
        ("installed", "0.2.0"),
        ("committed", "0.2.0"),
        ("rolled_back", "0.3.0"),
        ("rolled_back", "0.4.0"),
        ("rolled_back", "0.5.0"),
    ]:
        assert expected in outcomes, outcomes

    def all_reported() -> bool:
        state = json.loads(box.ok("cat /var/lib/edge-agent/update/state.json"))
        return all(o["reported"] for o in state["outcomes"])

    box.wait("every outcome stored in the outbox", all_reported, timeout=60)
    assert {"0.3.0", "0.4.0", "0.5.0"} <= set(record["refused"])
    # An automatic source (the inbox) does not bring a rolled-back version back.
    box.ok(
        f"cp /root/edge-agent-0.3.0.bundle {INBOX}/.again && chown edge-agent: {INBOX}/.again"
        f" && mv {INBOX}/.again {INBOX}/edge-agent-0.3.0.bundle"
    )

    def refused() -> bool:
        return box.sh(f"test -e {INBOX}/rejected/edge-agent-0.3.0.bundle").returncode == 0

    box.wait("the rolled-back version refused from the inbox", refused, timeout=60)
    assert current(box) == "releases/0.2.0"
    assert update_status(box)["state"] == "rolled_back"  # nothing new happened
