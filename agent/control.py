"""The local control socket: a Unix socket the CLI talks to, never a network port.

Protocol (version 1): one JSON object per line each way. A request is
`{"v": 1, "cmd": "status", "args": {...}}`; the answer `{"v": 1, "ok": true, "result": ...}` or
`{"v": 1, "ok": false, "error": "one line"}`. Commands are the operations of agent/operations.py:
status, checks (args: run), terminals, outbox (args: limit), poll (args: terminal), reload,
query and sl651-query (args: terminal, elements), history-flush (writes the buffered history
now; result `{"path": "<absolute path of history.db>"}`, which `edge-agent report` then reads),
update-baseline (what a release on trial must match: terminals answering, uplink, failing checks),
support-bundle (args: since, seconds of logs; result `{"gateway", "bytes", "base64"}`, the
support bundle's .tar.gz).
The socket is mode 0660, owned by the agent's user and the configured group, so only local
users in that group can use it. Requests are bounded in size and time; nothing is ever
unpickled or executed.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from agent.operations import OperationError

log = structlog.get_logger(__name__)

VERSION = 1
MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT = 30.0  # above checks.timeout: `check` runs every check now through here
SOCKET_MODE = 0o660

Handler = Callable[[Mapping[str, Any]], Awaitable[Any]]


class ControlError(Exception):
    """A request the agent cannot answer; the message goes back to the client as is."""


class NotRunning(Exception):
    """No agent answers on the socket (not started, or stopped)."""


class ControlServer:
    """Serves the handlers on a Unix socket; `start()` binds, `stop()` removes the socket."""

    def __init__(self, path: Path, handlers: Mapping[str, Handler], group: str | None = None):
        self.path = path
        self.handlers = dict(handlers)
        self.group = group
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()  # left by an agent that did not stop cleanly
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, SOCKET_MODE)  # noqa: PTH101 -- on the path the server bound
        if self.group is not None:
            os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT * 6):
                        line = await reader.readline()
                except (TimeoutError, ValueError):  # idle, or a line over the stream limit
                    break
                if not line:
                    break
                answer = await self._answer(line)
                writer.write(json.dumps(answer, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        if len(line) > MAX_REQUEST:
            return {"v": VERSION, "ok": False, "error": "request too large"}
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise TypeError("a request is a JSON object")
            version, cmd = request.get("v", VERSION), request.get("cmd")
            args = request.get("args") or {}
            if version != VERSION:
                raise ControlError(
                    f"protocol version {version} not supported (this agent: {VERSION})"
                )
            handler = self.handlers.get(str(cmd))
            if handler is None:
                known = ", ".join(sorted(self.handlers))
                raise ControlError(f"unknown command {cmd!r} (known: {known})")
            if not isinstance(args, dict):
                raise ControlError("args must be a JSON object")
            async with asyncio.timeout(REQUEST_TIMEOUT):
                result = await handler(args)
        except (ValueError, TypeError) as exc:
            return {"v": VERSION, "ok": False, "error": f"bad request: {exc}"}
        except (ControlError, OperationError) as exc:
            return {"v": VERSION, "ok": False, "error": str(exc)}
        except TimeoutError:
            return {"v": VERSION, "ok": False, "error": f"no answer within {REQUEST_TIMEOUT:g}s"}
        return {"v": VERSION, "ok": True, "result": result}


async def request(path: Path, cmd: str, args: Mapping[str, Any] | None = None) -> Any:
    """Ask the running agent; raises NotRunning, or ControlError with the agent's reason."""
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=16 * 1024 * 1024)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise NotRunning(str(path)) from exc
    except PermissionError as exc:
        raise ControlError(
            f"no permission to use {path}: run as the agent's user or a member of its group"
        ) from exc
    try:
        payload = {"v": VERSION, "cmd": cmd, "args": dict(args or {})}
        writer.write(json.dumps(payload).encode() + b"\n")
        await writer.drain()
        async with asyncio.timeout(REQUEST_TIMEOUT + 5):
            line = await reader.readline()
    except (ConnectionError, TimeoutError) as exc:
        raise ControlError(f"the agent did not answer on {path}: {exc}") from exc
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    if not line:
        raise ControlError(f"the agent closed {path} without an answer")
    answer = json.loads(line)
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error", "unknown error")))
    return answer.get("result")
