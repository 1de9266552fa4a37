"""Signed updates end to end: the vendor's `edge-agent release`, a gateway's `edge-agent update`.

Nothing stands in: wheelhouses built from this project (tests/releases.py), a TUF repository
made, signed and bundled with the `release` CLI, gateways seeded with `edge-agent install` into
a temp prefix (real venvs), `update …` run by the installed release itself
(`<prefix>/usr/bin/edge-agent`, as root runs it), agents as real processes, a real mosquitto,
the repository served by `python -m http.server` on loopback, the unit's real hook scripts.
The releases and bundles are made once for the module.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent import __version__
from agent.cli import main
from agent.control import NotRunning, request
from agent.model import parse_timestamp
from agent.sim.modbus_device import SimulatedModbusDevice
from agent.storage.layout import StateLayout
from agent.update.installer import release_of, scan_wheelhouse
from agent.update.layout import InstallLayout
from agent.update.state import UpdateStore
from tests import update_repo
from tests.agentproc import Agent, short_socket_path, write_config
from tests.broker import Mosquitto, free_port
from tests.conftest import PYTHON, ROOT, tcp_terminal

pytestmark = pytest.mark.slow

OLD, NEW = "0.1.0", "0.2.0"  # the gateway runs OLD (this project's version); NEW is the update
POINTS = [{"name": "level", "address": 0, "type": "float32", "unit": "m"}]
UNITS = ROOT / "systemd"


# -- the vendor: one repository, its releases and bundles -------------------------------------------


@dataclass(frozen=True)
class Vendor:
    repo: Path
    old: Path  # the OLD wheelhouse gateways are installed from
    bundles: dict[str, Path]

    @property
    def root(self) -> Path:
        """The root metadata a gateway is shipped with (update.trusted_root)."""
        return self.repo / "metadata" / "1.root.json"

    def manifest(self, version: str, channel: str = "stable") -> dict[str, Any]:
        (path,) = (self.repo / "targets/releases" / channel).glob(f"*/{version}.json")
        data: dict[str, Any] = json.loads(path.read_bytes())
        return data


def release(*argv: str | Path) -> None:
    assert main(["release", *(str(a) for a in argv)]) == 0, argv


def tamper(bundle: Path, out: Path, member: str) -> None:
    """A copy of `bundle` with bytes in the middle of `member` changed (its length kept)."""
    shutil.copyfile(bundle, out)
    with tarfile.open(out) as tar:
        info = tar.getmember(member)
    with out.open("r+b") as stream:
        stream.seek(info.offset_data + info.size // 2)
        data = stream.read(16)
        stream.seek(info.offset_data + info.size // 2)
        stream.write(bytes(b ^ 0xFF for b in data))


@pytest.fixture(scope="module")
def vendor(
    wheelhouse: Path, make_wheelhouse: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Vendor:
    assert scan_wheelhouse(wheelhouse).version == OLD == __version__, (
        "these tests update this project's version, 0.1.0, to 0.2.0: change OLD and NEW"
    )
    tmp = tmp_path_factory.mktemp("vendor")
    repo, out = tmp / "repo", tmp / "bundles"
    release("init", repo)
    release("add", repo, "--wheelhouse", wheelhouse)
    new = make_wheelhouse(NEW)
    release("add", repo, "--wheelhouse", new, "--version", NEW)
    release("add", repo, "--wheelhouse", new, "--channel", "beta")
    # Small synthetic releases (tests/update_repo.py) for what is refused before any wheel.
    older = update_repo.make_wheelhouse(tmp / "wh-older", "0.0.9", deps={})
    release("add", repo, "--wheelhouse", older)
    arm = update_repo.make_wheelhouse(
        tmp / "wh-arm64", "0.3.0", deps={"armlib": "1.0"}, tags="cp311-cp311-manylinux_2_17_aarch64"
    )
    release("add", repo, "--wheelhouse", arm)
    bundles = {
        "full": out / "full.bundle",
        "delta": out / "delta.bundle",
        "beta": out / "beta.bundle",
        "downgrade": out / "older.bundle",
        "wrong-platform": out / "arm64.bundle",
    }
    release("bundle", repo, "--version", NEW, "--out", bundles["full"])
    release("bundle", repo, "--version", NEW, "--out", bundles["delta"], "--delta-from", OLD)
    release("bundle", repo, "--version", NEW, "--channel", "beta", "--out", bundles["beta"])
    release("bundle", repo, "--version", "0.0.9", "--out", bundles["downgrade"])
    release("bundle", repo, "--version", "0.3.0", "--out", bundles["wrong-platform"])

    # An expired timestamp: a copy of the repository whose timestamp was signed (with its own
    # key, a version up) to end yesterday, bundled as the vendor's tools bundle it.
    frozen = tmp / "frozen"
    shutil.copytree(repo, frozen)
    shutil.copytree(tmp / "repo-keys", tmp / "frozen-keys")

    def expire(signed: Any) -> None:
        signed.version += 1
        signed.expires = update_repo.past(1)

    update_repo.resign(frozen, "timestamp", expire)
    bundles["expired"] = out / "expired.bundle"
    release("bundle", frozen, "--version", NEW, "--out", bundles["expired"])

    agent_wheel = f"edge_agent-{NEW}-py3-none-any.whl"
    bundles["tampered"] = out / "tampered.bundle"
    # The agent wheel: a dependency's would be taken from the gateway's wheel cache instead.
    tamper(bundles["full"], bundles["tampered"], f"targets/wheels/{agent_wheel}")
    bundles["truncated"] = out / "truncated.bundle"
    data = bundles["full"].read_bytes()
    bundles["truncated"].write_bytes(data[: len(data) // 2])
    return Vendor(repo, wheelhouse, bundles)


# -- a gateway: a temp prefix with OLD installed by the package's installer -------------------------


@dataclass
class Gateway:
    root: Path  # the installation's prefix
    state: Path
    config: Path

    @property
    def layout(self) -> InstallLayout:
        return InstallLayout(self.root)

    @property
    def store(self) -> UpdateStore:
        return UpdateStore(StateLayout(self.state))

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "HOME": str(self.root), **extra}

    def update(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        """`edge-agent update …` as root runs it: /usr/bin/edge-agent, the installed release."""
        argv = [str(self.layout.bin_link), "update", *args]
        argv += ["--config", str(config or self.config), "--prefix", str(self.root)]
        return subprocess.run(
            argv, capture_output=True, text=True, env=self.env(), timeout=300, check=False
        )

    def links(self) -> tuple[str | None, str | None]:
        return release_of(self.layout, self.layout.current), release_of(
            self.layout, self.layout.previous
        )


def install_gateway(
    tmp: Path, vendor: Vendor, terminals: list[dict[str, Any]] | None = None, **extra: Any
) -> Gateway:
    """OLD installed with `edge-agent install` (what the .deb's postinst runs) under tmp/root;
    its config in the prefix's /etc/edge-agent/config.yaml, trusting the vendor's root."""
    root, state = tmp / "root", tmp / "state"
    done = subprocess.run(
        [PYTHON, "-m", "agent", "install", "--wheelhouse", str(vendor.old), "--prefix", str(root)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    layout = InstallLayout(root)
    layout.config.parent.mkdir(parents=True)
    update = {"trusted_root": str(vendor.root), **extra.pop("update", {})}
    write_config(layout.config, state, terminals or [], update=update, **extra)
    return Gateway(root, state, layout.config)


def tree(root: Path) -> dict[str, str]:
    """Every path under `root`: a link's target, a file's identity (inode, size, mtime), the
    bytes of the trusted metadata and of the wheel cache."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                seen[rel] = f"-> {path.readlink()}"
            elif stat.S_ISDIR(st.st_mode):
                seen[rel] = "dir"  # its mtime moves with the work folder that comes and goes
            elif rel.startswith(("opt/edge-agent/trust/", "opt/edge-agent/wheels/")):
                seen[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                seen[rel] = f"{st.st_ino} {st.st_size} {st.st_mtime_ns}"
    return seen


def timings_of(outcome: dict[str, Any]) -> set[str]:
    return {k for k, v in outcome["timings"].items() if isinstance(v, float | int) and v >= 0}


# -- 1. a real signed bundle through the real CLI ---------------------------------------------------


def test_a_signed_bundle_is_applied_put_on_trial_and_committed(
    tmp_path: Path, vendor: Vendor
) -> None:
    gw = install_gateway(tmp_path, vendor)
    done = gw.update("apply", str(vendor.bundles["full"]))
    assert done.returncode == 0, done.stderr
    assert f"edge-agent {NEW} installed, on trial" in done.stdout

    record = gw.store.read()
    assert (record["state"], record["current"], record["previous"]) == ("trial", NEW, OLD)
    assert gw.links() == (NEW, OLD)
    (installed,) = record["outcomes"]
    assert (installed["outcome"], installed["version"]) == ("installed", NEW)
    assert installed["reason"] == f"from bundle:{vendor.bundles['full']}"
    assert timings_of(installed) == {"verify", "stage", "switch"}
    version = subprocess.run(
        [str(gw.layout.bin_link), "--version"],
        capture_output=True,
        text=True,
        env=gw.env(),
        check=False,
    )
    assert version.stdout.strip() == f"edge-agent {NEW}"
    # Root's trust moved on to the bundle's metadata; the new wheels joined the cache.
    assert (gw.layout.trust_dir / "timestamp.json").read_bytes() == (
        vendor.repo / "metadata/timestamp.json"
    ).read_bytes()
    assert (gw.layout.wheel_cache / f"edge_agent-{NEW}-py3-none-any.whl").is_file()
    assert json.loads(gw.layout.release_manifest(NEW).read_bytes()) == vendor.manifest(NEW)

    status = gw.update("status", "--json")
    assert json.loads(status.stdout)["state"] == "trial"
    done = gw.update("commit")  # now the new release's own CLI
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"committed {NEW}"
    record = gw.store.read()
    assert (record["state"], record["current"], record["previous"]) == ("committed", NEW, OLD)
    assert record["outcomes"][-1]["outcome"] == "committed"
    assert not gw.store.layout.update_active.exists()


def test_a_delta_bundle_takes_the_unchanged_wheels_from_the_gateways_cache(
    tmp_path: Path, vendor: Vendor
) -> None:
    gw = install_gateway(tmp_path, vendor)
    delta, full = vendor.bundles["delta"], vendor.bundles["full"]
    with tarfile.open(delta) as tar:
        carried = [n for n in tar.getnames() if n.startswith("targets/wheels/")]
    assert carried == [f"targets/wheels/edge_agent-{NEW}-py3-none-any.whl"]
    assert delta.stat().st_size * 10 < full.stat().st_size
    # `edge-agent install` left OLD's wheels in the cache: the ones the delta leaves out.
    cached = sorted(p.name for p in gw.layout.wheel_cache.iterdir())
    assert cached == sorted(vendor.manifest(OLD)["wheels"])

    done = gw.update("apply", str(delta))
    assert done.returncode == 0, done.stderr
    record = gw.store.read()
    assert (record["state"], record["current"], record["previous"]) == ("trial", NEW, OLD)
    installed = gw.layout.release(NEW) / ".installed"
    assert installed.is_file()
    assert sorted(p.name for p in gw.layout.wheel_cache.iterdir()) == sorted(
        set(vendor.manifest(OLD)["wheels"]) | set(vendor.manifest(NEW)["wheels"])
    )


# -- 2. bad bundles: each rejected, the check named, nothing changed ---------------------------------


@pytest.fixture(scope="module")
def bad_gateway(vendor: Vendor, tmp_path_factory: pytest.TempPathFactory) -> tuple[Gateway, Path]:
    """One gateway for every bad bundle (none may change it), and a config of the same gateway
    with update.max_bundle_bytes at its minimum."""
    tmp = tmp_path_factory.mktemp("bad-gateway")
    gw = install_gateway(tmp, vendor)
    # As the package ships it: the vendor's root in root's trust folder, nothing newer yet.
    gw.layout.trust_dir.mkdir(parents=True)
    shutil.copyfile(vendor.root, gw.layout.trust_dir / "root.json")
    small = tmp / "small.yaml"
    write_config(
        small,
        gw.state,
        [],
        update={"trusted_root": str(vendor.root), "max_bundle_bytes": 1024 * 1024},
    )
    return gw, small


@pytest.mark.parametrize(
    ("bad", "check", "says"),
    [
        ("tampered", "hash", f"wheels/edge_agent-{NEW}-py3-none-any.whl: does not match"),
        ("truncated", "bundle", "truncated"),
        ("oversized", "bundle", "more than update.max_bundle_bytes (1048576)"),
        ("expired", "expired", "timestamp.json: expired"),
        ("downgrade", "downgrade", f"0.0.9 is older than the running {OLD}"),
        ("wrong-platform", "wrong-software", "is for arm64"),
    ],
)
def test_a_bad_bundle_is_rejected_naming_the_check_and_nothing_changes(
    bad_gateway: tuple[Gateway, Path], vendor: Vendor, bad: str, check: str, says: str
) -> None:
    gw, small = bad_gateway
    bundle = vendor.bundles["full" if bad == "oversized" else bad]
    config = small if bad == "oversized" else None
    before = tree(gw.root)
    outcomes = len(gw.store.read()["outcomes"])

    done = gw.update("apply", str(bundle), config=config)
    assert done.returncode == 1, done.stdout
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"edge-agent update: {check}: "), line
    assert says in line, line

    assert tree(gw.root) == before
    assert gw.links() == (OLD, None)
    record = gw.store.read()
    assert (record["state"], record["step"], record["target"]) == ("idle", None, None)
    assert len(record["outcomes"]) == outcomes + 1
    rejected = record["outcomes"][-1]
    assert (rejected["outcome"], rejected["check"]) == ("rejected", check)
    assert says in rejected["reason"]
    assert not gw.store.layout.update_active.exists()


# -- agents, the broker, the repository on loopback --------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path / "broker").start()
    yield mosquitto
    mosquitto.stop()


@dataclass
class Served:
    url: str
    log: Path

    def wheel_gets(self) -> list[str]:
        """The wheels fetched so far, one entry per GET (http.server logs each request)."""
        return re.findall(r'"GET /targets/wheels/([^ ]+) HTTP', self.log.read_text())


@pytest.fixture
def repository(vendor: Vendor, tmp_path: Path) -> Iterator[Served]:
    """`python -m http.server` serving the vendor's REPO folder on loopback."""
    port = free_port()
    log = tmp_path / "http.log"
    with log.open("wb") as stream:
        server = subprocess.Popen(
            [PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1",
             "--directory", str(vendor.repo)],
            stdout=stream, stderr=stream,
        )  # fmt: skip
    try:
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert server.poll() is None, log.read_text()
                time.sleep(0.05)
        yield Served(f"http://127.0.0.1:{port}/", log)
    finally:
        server.terminate()
        server.wait(10)


async def until(what: str, predicate: Callable[[], bool], timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def ask(sock: Path, cmd: str, timeout: float = 15) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await request(sock, cmd)
        except NotRunning:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


# -- 3. a fleet announcement: fetched by the agent, applied by root ------------------------------------


async def test_an_announcement_is_fetched_by_the_agent_and_applied_by_root_without_a_second_download(
    tmp_path: Path,
    vendor: Vendor,
    broker: Mosquitto,
    repository: Served,
    agent_factory: Any,
) -> None:
    fleet = "edge/fleet-e2e"
    uplink = {"broker": broker.url, "backoff_min": "200ms", "backoff_max": "1s"}
    update = {"repository_url": repository.url, "fleet_prefix": fleet, "channel": "stable"}
    gw = await asyncio.to_thread(install_gateway, tmp_path, vendor, uplink=uplink, update=update)
    # Another gateway on the same fleet topic, outside the rollout.
    other_state = tmp_path / "other-state"
    other_config = tmp_path / "other.yaml"
    write_config(
        other_config,
        other_state,
        [],
        gateway={"id": "gw-other"},
        uplink=uplink,
        update={**update, "trusted_root": str(vendor.root), "rollout_percent": 0},
    )

    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        payload = json.dumps({"version": NEW}).encode()
        await client.publish(f"{fleet}/update/stable", payload, qos=1, retain=True)
    agent: Agent = await agent_factory(gw.config)
    other: Agent = await agent_factory(other_config)

    layout = StateLayout(gw.state)
    await agent.wait_for("the request to root", layout.update_request.exists, 60)
    assert json.loads(layout.update_request.read_bytes()) == {"repository": True, "version": NEW}
    wheels = sorted(vendor.manifest(NEW)["wheels"])
    assert sorted(p.name for p in layout.update_downloads.iterdir()) == wheels
    fetched = repository.wheel_gets()
    assert f"edge_agent-{NEW}-py3-none-any.whl" in fetched
    assert len(fetched) == len(set(fetched)) and set(fetched) <= set(wheels)

    await other.wait_for(
        "the other gateway's answer",
        lambda: bool(other.events("update announcement: this gateway is not in the rollout")),
        30,
    )
    others = StateLayout(other_state)
    assert not others.update_request.exists()
    assert not others.update_downloads.exists() or not any(others.update_downloads.iterdir())
    assert UpdateStore(others).read()["outcomes"] == []
    assert await other.stop() == 0

    # What edge-agent-update.path starts: root applies the request, the agent still running
    # (it answers for the baseline).
    done = await asyncio.to_thread(gw.update, "apply", "--pending")
    assert done.returncode == 0, done.stderr
    record = gw.store.read()
    assert (record["state"], record["current"], record["previous"]) == ("trial", NEW, OLD)
    assert record["outcomes"][-1]["reason"] == f"from pending:repository:{NEW}"
    assert record["baseline"] is not None and record["baseline"]["uplink_connected"] is True
    assert not layout.update_request.exists() and not layout.update_downloads.exists()
    # Root took the agent's downloads (each checked again): not one wheel fetched twice.
    assert repository.wheel_gets() == fetched
    assert (gw.layout.wheel_cache / f"edge_agent-{NEW}-py3-none-any.whl").is_file()
    assert await agent.stop() == 0


# -- 4. the inbox of a running agent ------------------------------------------------------------------


def drop(bundle: Path, inbox: Path, name: str) -> None:
    """Copied in under a hidden name (a copy under way), then renamed: as a careful tool does."""
    shutil.copyfile(bundle, inbox / f".{name}")
    (inbox / f".{name}").rename(inbox / name)


async def test_bundles_dropped_in_the_inbox_are_requested_or_rejected(
    tmp_path: Path, vendor: Vendor, agent_factory: Any
) -> None:
    state = tmp_path / "state"
    config = tmp_path / "config.yaml"
    write_config(config, state, [], update={"trusted_root": str(vendor.root)})
    agent: Agent = await agent_factory(config)
    await ask(Path(short_socket_path(config)), "status")
    layout = StateLayout(state)
    inbox = layout.update_inbox

    drop(vendor.bundles["beta"], inbox, "beta.bundle")
    await agent.wait_for("the beta bundle rejected", (inbox / "rejected/beta.bundle").exists, 30)
    store = UpdateStore(layout)
    await agent.wait_for("its outcome", lambda: bool(store.read()["outcomes"]), 10)
    (rejected,) = store.read()["outcomes"]
    assert (rejected["outcome"], rejected["check"]) == ("rejected", "wrong-software")
    assert "is for channel beta, not stable" in rejected["reason"]
    assert not layout.update_request.exists()

    drop(vendor.bundles["full"], inbox, "full.bundle")
    await agent.wait_for("the request", layout.update_request.exists, 30)
    assert json.loads(layout.update_request.read_bytes()) == {"bundle": "full.bundle"}
    pending = layout.update_pending / "full.bundle"
    assert pending.read_bytes() == vendor.bundles["full"].read_bytes()
    assert not (inbox / "full.bundle").exists()
    assert len(store.read()["outcomes"]) == 1  # an accepted bundle is no outcome yet
    assert await agent.stop() == 0


# -- 5. a whole trial: the unit's hooks and the new release's own gate --------------------------------


def hook(gw: Gateway, name: str, **env: str) -> str:
    """The unit's hook script as systemd runs it (as root, for this installation)."""
    done = subprocess.run(
        ["sh", str(UNITS / name)],
        capture_output=True,
        text=True,
        env=gw.env(
            EDGE_AGENT_ROOT=str(gw.root),
            EDGE_AGENT_STATE_DIR=str(gw.state),
            EDGE_AGENT_CONFIG=str(gw.config),
            **env,
        ),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def start_release(gw: Gateway) -> Agent:
    """What ExecStart= runs: /opt/edge-agent/current/bin/edge-agent run."""
    process = await asyncio.create_subprocess_exec(
        str(gw.layout.current / "bin" / "edge-agent"), "run", "--config", str(gw.config),
        env=gw.env(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    return Agent(process, gw.state)


async def test_a_release_on_trial_under_its_unit_passes_its_gate_and_commits(
    tmp_path: Path, vendor: Vendor, device: tuple[SimulatedModbusDevice, int]
) -> None:
    sim, port = device
    sim.units[1].set_number("holding", 0, 2.5, "float32")
    terminals = [tcp_terminal(port, POINTS, period="200ms")]
    # probation: long enough for a loaded machine to start the new release; it commits as
    # soon as its gate is met, not at the end of the window.
    gw = await asyncio.to_thread(
        install_gateway, tmp_path, vendor, terminals, update={"probation": "20s"}
    )
    sock = Path(short_socket_path(gw.config))

    old = await start_release(gw)  # OLD, running as the service before the update
    agents = [old]
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while (await ask(sock, "update-baseline"))["terminals"] != ["plc"]:
            assert loop.time() < deadline, old.log_lines[-5:]
            await asyncio.sleep(0.2)

        done = await asyncio.to_thread(gw.update, "apply", str(vendor.bundles["full"]))
        assert done.returncode == 0, done.stderr
        record = gw.store.read()
        assert record["state"] == "trial" and record["baseline"]["terminals"] == ["plc"]
        assert gw.store.layout.update_active.read_text().strip() == OLD

        # systemctl restart: stop, post-stop, pre-start, start the release `current` names.
        assert await old.stop() == 0
        assert await asyncio.to_thread(hook, gw, "post-stop", SERVICE_RESULT="success") == ""
        said = await asyncio.to_thread(hook, gw, "pre-start")
        assert said.endswith(f"{NEW} on trial: start 1 in this boot"), said
        new = await start_release(gw)
        agents.append(new)
        await new.wait_for("the gate's commit", lambda: gw.store.read()["state"] == "committed", 30)
        record = gw.store.read()
        committed = record["outcomes"][-1]
        assert (committed["outcome"], committed["version"], committed["running"]) == (
            "committed", NEW, NEW,
        )  # fmt: skip
        assert committed["reason"].startswith("gate passed: 1 terminals answered")
        assert datetime.now(UTC) < parse_timestamp(record["trial_ends_at"])  # within the window
        assert not gw.store.layout.update_active.exists()
        status = await ask(sock, "status")
        assert (status["update"]["state"], status["update"]["current"]) == ("committed", NEW)
        assert await new.stop() == 0
        # No update under way any more: the hooks do nothing at all.
        assert await asyncio.to_thread(hook, gw, "post-stop", SERVICE_RESULT="success") == ""
        assert await asyncio.to_thread(hook, gw, "pre-start") == ""
        assert gw.links() == (NEW, OLD)
    finally:
        for agent in agents:
            if agent.process.returncode is None:
                agent.process.send_signal(signal.SIGKILL)
                await agent.process.wait()
