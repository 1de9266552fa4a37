"""The agent as a real process for the tests: its config, its logs (JSON lines), its readings."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import time
from pathlib import Path
from typing import Any

import yaml


def short_socket_path(config: Path) -> str:
    """A control socket path for this config file, short enough for AF_UNIX (108 bytes)."""
    digest = hashlib.sha1(str(config).encode(), usedforsecurity=False).hexdigest()[:12]
    return f"/tmp/ea-{digest}/control.sock"


def write_config(path: Path, state: Path, terminals: list[dict[str, Any]], **extra: Any) -> None:
    data = {
        # a Unix socket path must stay under 108 bytes: pytest's tmp_path may not
        "control": {"socket": short_socket_path(path)},
        "gateway": {"id": "gw-test"},
        "state_dir": str(state),
        "log": {"level": "info", "format": "json"},
        "jsonl": {"enabled": True},  # the tests compare what arrives with the local copy
        "terminals": terminals,
        **extra,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data))
    tmp.replace(path)  # as an editor or config management tool would: whole file at once


class Agent:
    def __init__(self, process: asyncio.subprocess.Process, state: Path) -> None:
        self.process = process
        self.state = state
        self.log_lines: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read_logs())

    async def _read_logs(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            try:
                self.log_lines.append(json.loads(line))
            except json.JSONDecodeError:
                self.log_lines.append({"event": "<not json>", "line": line.decode()})

    def readings(self) -> list[dict[str, Any]]:
        path = self.state / "readings.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    async def wait_for(self, what: str, predicate: Any, timeout: float = 6.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; log: {self.log_lines}")
            await asyncio.sleep(0.05)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.log_lines if e.get("event") == name]

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), 10)
        await self._reader
        return code
