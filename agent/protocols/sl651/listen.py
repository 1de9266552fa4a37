"""`edge-agent sl651 listen`: watch what SL651 stations send, without configuring the agent.

A TCP listener (stations connect to it, as to the central station) or a serial port; each link
has its own `StreamDecoder`, and every frame is described as `sl651 decode` describes it
(`describe.describe_frame`), every rejected run of bytes said with its reason. By default
nothing is ever written back: the stations get no confirmation, so they keep what they sent
and send it again to the real central station. With `confirm`, each frame goes to a `Centre`
(the agent's own session rules, one per centre address the stations use, accepting every
station) and what it answers — confirmations, M3 NAKs — is written back at once; nothing is
stored here, so a station that is confirmed deletes a report nobody keeps.

What is heard goes to `on_event` as plain dicts (the JSON lines of `--json`, README):
`listening`, `connected`, `frame` (with `answered`: the hex of what was written back),
`rejected`, `closed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import serial

from agent.model import format_timestamp
from agent.protocols.sl651.config import Sl651Config
from agent.protocols.sl651.describe import describe_frame
from agent.protocols.sl651.frame import Frame
from agent.protocols.sl651.session import Centre
from agent.protocols.sl651.stream import Rejected, StreamDecoder
from agent.protocols.sl651.transport import read_serial

SCHEMA = 1
READ_SIZE = 4096
TICK = 1.0  # the centre's timers (M3 NAKs) run this often while confirming
Event = dict[str, Any]


class Listener:
    """The links and what is done with their frames; `serve_tcp` / `serve_serial` do the IO
    until cancelled."""

    def __init__(self, on_event: Callable[[Event], None], confirm: bool = False) -> None:
        self.on_event = on_event
        self.confirm = confirm
        self._centres: dict[int, Centre] = {}  # by the centre address stations send to
        self._links: dict[str, Callable[[bytes], object]] = {}  # peer -> write

    def _emit(self, kind: str, peer: str | None, **fields: Any) -> None:
        now = format_timestamp(datetime.now(UTC))
        self.on_event({"schema": SCHEMA, "type": kind, "at": now, "peer": peer, **fields})

    def heard(self, peer: str, decoder: StreamDecoder) -> None:
        """Describe (and, confirming, answer) what the decoder has decided."""
        for event in decoder.events():
            if isinstance(event, Rejected):
                self._emit(
                    "rejected",
                    peer,
                    reason=event.reason.value,
                    detail=event.detail,
                    hex=event.data.hex().upper(),
                )
                continue
            answered = self._answer(peer, event) if self.confirm else []
            self._emit(
                "frame",
                peer,
                frame=describe_frame(event),
                answered=[a.hex().upper() for a in answered],
            )

    def _answer(self, peer: str, frame: Frame) -> list[bytes]:
        centre = self._centre(frame.center)
        if centre is None:
            return []
        outcome = centre.receive(peer, frame, datetime.now(UTC))
        self._write(peer, outcome.send)
        return outcome.send

    def _centre(self, address: int) -> Centre | None:
        centre = self._centres.get(address)
        if centre is None:
            try:
                settings = Sl651Config(center=address, accept_unknown=True)
            except ValueError:  # an address no centre can have: nothing to answer as
                return None
            centre = self._centres[address] = Centre(settings, [], lambda: None)
        return centre

    def _write(self, peer: str, frames: list[bytes]) -> None:
        write = self._links.get(peer)
        if write is None:
            return
        for data in frames:
            try:
                write(data)
            except OSError:
                return

    async def _tick(self) -> None:
        """The centres' timers: NAK a missing M3 packet after its silence."""
        while True:
            await asyncio.sleep(TICK)
            now = datetime.now(UTC)
            for centre in self._centres.values():
                for peer in list(self._links):
                    outcome = centre.tick(peer, now)
                    if outcome.send:
                        self._write(peer, outcome.send)
                        self._emit(
                            "answered", peer, answered=[a.hex().upper() for a in outcome.send]
                        )

    def _closed(self, peer: str) -> None:
        self._links.pop(peer, None)
        for centre in self._centres.values():
            centre.link_closed(peer)
        self._emit("closed", peer)

    async def serve_tcp(self, host: str, port: int) -> None:
        """Listen on host:port until cancelled; says where (`listening`) once it does."""

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            address = writer.get_extra_info("peername")
            peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
            self._links[peer] = writer.write
            self._emit("connected", peer)
            decoder = StreamDecoder()
            try:
                while data := await reader.read(READ_SIZE):
                    decoder.feed(data)
                    self.heard(peer, decoder)
            except (ConnectionError, OSError):
                pass
            finally:
                decoder.flush()
                self.heard(peer, decoder)
                self._closed(peer)
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()

        try:
            server = await asyncio.start_server(connected, host or None, port)
        except OSError as exc:
            raise OSError(f"cannot listen on {host}:{port}: {_reason(exc)}") from None
        async with server:
            where = [s.getsockname() for s in server.sockets]
            self._emit("listening", None, tcp=[f"{a[0]}:{a[1]}" for a in where])
            await self._run(server.serve_forever())

    async def serve_serial(self, device: str, baudrate: int) -> None:
        """Read a serial port until cancelled (or it fails: OSError)."""
        try:
            port = serial.Serial(device, baudrate, timeout=0)
        except (serial.SerialException, OSError) as exc:
            raise OSError(f"cannot open {device}: {_reason(exc)}") from None
        decoder = StreamDecoder()

        def received(data: bytes) -> None:
            decoder.feed(data)
            self.heard(device, decoder)

        self._links[device] = port.write
        self._emit("listening", None, serial=device, baudrate=baudrate)
        try:
            error = await self._run(read_serial(port.fileno(), received))
        finally:
            self._closed(device)
            port.close()
        raise OSError(f"{device}: {error}")

    async def _run(self, work: Any) -> Any:
        """`work` with the centres' timers beside it while confirming."""
        ticking = asyncio.create_task(self._tick()) if self.confirm else None
        try:
            return await work
        finally:
            if ticking is not None:
                ticking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticking


def _reason(exc: OSError) -> str:
    """The error in words ("address already in use"), without the wrappers' repetitions."""
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)
