"""A real mosquitto for the tests: own config, free loopback port, killable to make an outage."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """`start()` launches mosquitto with `extra` config lines; `kill()` is a hard outage."""

    def __init__(self, workdir: Path, port: int | None = None, extra: str = "") -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise RuntimeError("mosquitto is not installed: run 'make test' (it installs it)")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        listener = (
            ""
            if "listener" in self.extra
            else (f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
        )
        # As root, mosquitto would drop to its own user and could not read the test's files.
        user = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"{user}persistence false\nlog_dest stderr\nlog_type error\n{listener}{self.extra}\n"
        )
        log = (self.workdir / "mosquitto.log").open("ab")
        self.process = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"mosquitto exited: {(self.workdir / 'mosquitto.log').read_text()}"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError("mosquitto did not start listening") from None
                time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def tls_listener(port: int, ca: Path, cert: Path, key: Path) -> str:
    """mosquitto config lines: a TLS listener on loopback that wants a client certificate from
    `ca` and takes its CN as the username."""
    return (
        f"listener {port} 127.0.0.1\n"
        f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
        "require_certificate true\nuse_identity_as_username true\n"
    )


def persistent(workdir: Path) -> Mosquitto:
    """A mosquitto that saves its sessions every second: a persistent subscriber (the tests'
    collector) gets what was published while it reconnected, across a kill of the broker."""
    return Mosquitto(
        workdir,
        extra=f"persistence true\npersistence_location {workdir}/\n"
        "autosave_interval 1\nmax_queued_messages 0\nmax_inflight_messages 0\n",
    )
