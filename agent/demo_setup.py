"""Where a demo runs: its own state directory and ports, so that runs never share anything.

Each demo gets a fresh directory (`edge-agent-demo-XXXX` in the temporary folder, removed when
it ends) holding its state, control socket, virtual serial lines and the config it runs on — or,
with `keep_state`, the fixed `KEPT_STATE_DIR`, reused from run to run. Its ports (simulated
Modbus TCP devices, the SL651 listener, metrics) are the config's where free, else free ones.
Two demos started at once must not both take a default port found free: the defaults go to
the demo holding `DEFAULTS_LOCK` (an flock); another demo running meanwhile takes free ports
of its own. A chosen port stays bound until every port is chosen, so none is chosen twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.config import Config, load_config, parse_config_bytes
from agent.storage.atomic import write_atomic

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
KEPT_STATE_DIR = Path(tempfile.gettempdir()) / "edge-agent-demo"
DEFAULTS_LOCK = Path(tempfile.gettempdir()) / "edge-agent-demo.lock"


@dataclass(frozen=True)
class Port:
    """A port the demo uses: what listens there (`{port}` in it), the config's, the one taken."""

    what: str
    default: int
    port: int

    def describe(self) -> str:
        moved = f" ({self.default} was taken)" if self.port != self.default else ""
        return self.what.format(port=self.port) + moved


@dataclass
class DemoPlace:
    """The demo's directory, the config it runs on (written there), and its ports."""

    root: Path
    config_path: Path
    config: Config
    ports: list[Port] = field(default_factory=list)
    kept: bool = False

    def remove(self) -> None:
        """Remove the directory (not a kept one)."""
        if not self.kept:
            shutil.rmtree(self.root, ignore_errors=True)


class _PortPicker:
    """Ports bound (not listening) until `release`: the default where it binds, else any."""

    def __init__(self, defaults: bool) -> None:
        self.defaults = defaults
        self._held: list[socket.socket] = []
        self._chosen: dict[tuple[str, int], int] = {}

    def take(self, host: str, default: int) -> int:
        if (host, default) in self._chosen:  # terminals of one device share its port
            return self._chosen[(host, default)]
        sock = (self._bind(host, default) if self.defaults and default else None) or self._bind(
            host, 0
        )
        if sock is None:
            raise OSError(f"no free port on {host}")
        self._held.append(sock)
        port = int(sock.getsockname()[1])
        self._chosen[(host, default)] = port
        return port

    @staticmethod
    def _bind(host: str, port: int) -> socket.socket | None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        # As the servers that will listen there do: a port left in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            return None
        return sock

    def release(self) -> None:
        for sock in self._held:
            sock.close()
        self._held = []


@contextlib.contextmanager
def _defaults_lock(path: Path) -> Iterator[bool]:
    """Whether this demo may use the config's default ports (no other demo holds them)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:  # a lock file of another user's: theirs are the defaults
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another demo runs
        os.close(fd)
        yield False
        return
    try:
        yield True
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def demo_place(
    config_path: Path,
    keep_state: bool = False,
    broker: str | None = None,
    *,
    kept_dir: Path = KEPT_STATE_DIR,
    lock: Path = DEFAULTS_LOCK,
) -> Iterator[DemoPlace]:
    """The place a demo of `config_path` runs in, for as long as the block; then removed
    (unless kept). The config's paths and ports are rewritten to it, and `broker` set as its
    uplink's (ConfigError if the file, or the broker URL, is invalid)."""
    load_config(config_path)  # its own errors, with its own path
    data = yaml.safe_load(config_path.read_bytes())
    if broker is not None:
        uplink = data.get("uplink") if isinstance(data.get("uplink"), dict) else {}
        data["uplink"] = {**uplink, "broker": broker}
    if keep_state:
        root = kept_dir
        root.mkdir(mode=0o700, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    with _defaults_lock(lock) as defaults:
        picker = _PortPicker(defaults)
        try:
            ports = _rewrite(data, root, picker)
            text = yaml.safe_dump(data, sort_keys=False).encode()
            path = root / "demo.yaml"
            write_atomic(path, text)
            place = DemoPlace(root, path, parse_config_bytes(text, path), ports, keep_state)
        except BaseException:
            picker.release()
            if not keep_state:
                shutil.rmtree(root, ignore_errors=True)
            raise
        picker.release()  # the simulators and the agent bind them now
        try:
            yield place
        finally:
            place.remove()


def _rewrite(data: dict[str, Any], root: Path, picker: _PortPicker) -> list[Port]:
    """Point every path of the config into `root` and every port at a free one."""
    data["state_dir"] = str(root / "state")
    data.setdefault("control", {})["socket"] = str(root / "control.sock")
    jsonl = data.get("jsonl")
    if isinstance(jsonl, dict):
        jsonl.pop("path", None)  # the default: in the state directory
    ports: list[Port] = []
    devices: dict[str, str] = {}
    for terminal in data.get("terminals") or []:
        protocol = terminal.get("protocol")
        if protocol == "modbus-tcp" and terminal.get("host") in LOOPBACK:
            default = int(terminal.get("port", 502))
            port = picker.take("127.0.0.1", default)
            terminal["port"] = port
            ports.append(Port(f"Modbus TCP {{port}} ({terminal['name']})", default, port))
        elif protocol == "modbus-rtu":
            device = str(terminal["device"])
            if device not in devices:  # a line of its own in root, one per bus
                name = Path(device).name
                taken = set(devices.values())
                path = str(root / name)
                devices[device] = path if path not in taken else f"{path}-{len(devices)}"
            terminal["device"] = devices[device]
    sl651 = data.get("sl651")
    if isinstance(sl651, dict) and sl651.get("listen"):
        host, _, given = str(sl651["listen"][0]).rpartition(":")
        port = picker.take(host.strip("[]") or "0.0.0.0", int(given))
        sl651["listen"][0] = f"{host}:{port}"
        ports.append(Port(f"SL651 listener {host}:{{port}}", int(given), port))
    metrics = data.get("metrics")
    if isinstance(metrics, dict) and metrics.get("listen"):
        host, _, given = str(metrics["listen"]).rpartition(":")
        port = picker.take(host, int(given))
        metrics["listen"] = f"{host}:{port}"
        ports.append(Port(f"metrics http://{host}:{{port}}/metrics", int(given), port))
    return ports
