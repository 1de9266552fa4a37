"""The central station's side of SL651 links: what to answer, what to ask, what to report.

Sans-IO: `Centre.receive(link, frame, now)` and `Centre.tick(link, now)` return an `Outcome`
(frames to send on that link, readings, alarm events); the transport owns sockets and serial
ports. The rules are docs/sl651-notes.md §6 (link modes and acknowledgements; NOTES §n below
means its section n):

- 2F keep-alive: never answered; it only says the station is online on this link.
- a self report (30-36) or the last frame of a response ending ETX: confirmed with the uplink's
  serial echoed, the centre clock as send time, and `ack_end` (EOT: the station may go
  offline; ESC: it stays online) — ESC whenever the centre has something to ask it next;
  a frame ending ETB (more follows): confirmed with ACK.
- M3 multi-packet: packets are collected; once all have arrived the joined body is decoded and
  confirmed once (SYN, total, total); a packet missing when the last one arrives, or when the
  link has been quiet for `packet_timeout`, is asked for again with NAK (one packet per NAK).
  What is held is bounded: a transfer announcing more than `m3_max_packets` is refused, one
  older than `m3_max_age` dropped, and beyond `m3_max_bytes` for a station (`m3_max_total_bytes`
  for all) its (the) oldest transfer is dropped; each is counted in `evicted` by reason.
- unknown stations (with `accept_unknown`): at most `max_unknown_per_link` on one link; frames
  of more are refused and counted (`unknown_refused`).
- M4: real-time data (37) is queried every `query_period` while the station is online;
  responses are matched to the request by function and station.
- the station's clock is compared with ours at every report; with `clock_sync`, and only when
  our own clock is synchronised, a station off by more than `CLOCK_TOLERANCE` is set (4A).
- the status word (element 45) becomes named readings, and its alarm bits alarm events when
  they change.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from agent.model import Reading, TerminalStats, format_timestamp
from agent.protocols.sl651 import encode
from agent.protocols.sl651.body import decode_body, decode_packets, frame_serial
from agent.protocols.sl651.config import Sl651Config, Sl651Terminal
from agent.protocols.sl651.elements import STATUS_BITS
from agent.protocols.sl651.frame import Ctrl, Frame, LinkAddress
from agent.protocols.sl651.items import spec_for
from agent.protocols.sl651.message import BodyError, Message, StatusElement
from agent.protocols.sl651.readings import readings_from

CLOCK_TOLERANCE = 300.0  # seconds a station clock may be off before it is set (NOTES §10, 4A)
CLOCK_SET_INTERVAL = 3600.0  # at most one clock set per station per this long
MAX_NAKS = 3  # a station resends a packet at most twice (NOTES §6.1); then the transfer is dropped
RESPONSE_TIMEOUT = 60.0  # a query without an answer this long is given up (and asked again later)
SELF_REPORTS = frozenset({0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36})
KEEPALIVE = 0x2F
QUERY_REALTIME = 0x37
QUERY_ELEMENTS = 0x3A
SET_CLOCK = 0x4A
ALARM_BITS = {b.name: b for b in STATUS_BITS if b.alarm}


@dataclass
class Outcome:
    """What the transport must do after a frame or a tick."""

    send: list[bytes] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Assembly:
    total: int
    started_at: float = 0.0  # monotonic, its first packet
    packets: dict[int, Frame] = field(default_factory=dict)
    bytes: int = 0  # held by its packets (raw and body)
    refused: bool = False  # announced more packets than allowed: its packets are not kept
    last_at: float = 0.0
    nak_sent: int | None = None
    naks: int = 0  # NAKs sent without the packet coming (given up after MAX_NAKS)
    ended: bool = False  # the last packet (ETX) of this transfer has arrived


@dataclass
class StationState:
    """One station as the centre knows it (for status, checks and the sessions)."""

    station: str
    terminal: str
    configured: bool
    stats: TerminalStats = field(default_factory=TerminalStats)
    link: object | None = None  # the link it last spoke on
    last_frame_at: float | None = None  # monotonic
    last_report_at: datetime | None = None
    clock_offset: float | None = None  # seconds the station is ahead of us
    clock_set_at: float | None = None
    last_query_at: float | None = None
    pending: dict[int, float] = field(default_factory=dict)  # function -> monotonic sent
    asked: list[str] = field(default_factory=list)  # elements to ask for (0x3A), when online
    assemblies: dict[int, _Assembly] = field(default_factory=dict)
    m3_bytes: int = 0  # held by its assemblies
    flags: dict[str, bool] = field(default_factory=dict)
    password_warned: bool = False
    frames: int = 0
    rejected: int = 0
    last_error: str | None = None
    query_latency: float | None = None


def parse_offset(text: str) -> timezone:
    sign = -1 if text.startswith("-") else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


class Centre:
    """Every station's state and the rules of the exchange; one per agent, shared by links."""

    def __init__(
        self,
        config: Sl651Config,
        terminals: Sequence[Sl651Terminal],
        clock_synchronised: Callable[[], bool | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.tz = parse_offset(config.utc_offset)
        self.terminals: dict[str, Sl651Terminal] = {}
        self.stations: dict[str, StationState] = {}
        self._on_link: dict[object, set[str]] = {}  # link -> stations last heard on it
        self.configure(terminals)
        self._synchronised = clock_synchronised
        self._clock = clock
        self.refused = 0  # frames from unconfigured stations, refused by config
        self.unknown_refused = 0  # frames of unknown stations beyond max_unknown_per_link
        self.evicted: Counter[str] = Counter()  # M3 transfers dropped, by bound
        self.m3_bytes = 0  # held by every station's assemblies

    def configure(self, terminals: Sequence[Sl651Terminal]) -> None:
        """Use these configured stations (at start, and after a reload); others are unknown."""
        self.terminals = {t.station.upper(): t for t in terminals}
        for code, state in list(self.stations.items()):
            terminal = self.terminals.get(code)
            if terminal is None and state.configured:
                self._drop_assemblies(state)
                del self.stations[code]
            elif terminal is not None:
                state.terminal, state.configured = terminal.name, True
        for code, t in self.terminals.items():
            self.stations.setdefault(code, StationState(code, t.name, True))

    # -- inbound ---------------------------------------------------------------------------

    def receive(self, link: object, frame: Frame, now: datetime) -> Outcome:
        """A frame arrived on `link` at wall-clock `now` (aware)."""
        out = Outcome()
        if frame.direction != "up":
            return out  # a centre only listens to stations
        state = self._state(frame.station, link)
        if state is None:
            return out
        mono = self._clock()
        if state.link is not link:
            if state.link is not None:
                self._on_link.get(state.link, set()).discard(state.station)
            self._on_link.setdefault(link, set()).add(state.station)
        state.link, state.last_frame_at, state.frames = link, mono, state.frames + 1
        terminal = self.terminals.get(state.station)
        wrong_password = (
            terminal is not None and frame.password.upper() != terminal.password.upper()
        )
        if wrong_password and not state.password_warned:
            state.password_warned = True
            state.last_error = f"password {frame.password} differs from the configured one"
        if frame.function == KEEPALIVE:
            return out
        if frame.packet is not None:
            return self._packet(state, frame, now, mono)
        try:
            message = decode_body(frame)
        except BodyError as exc:
            state.last_error = f"function 0x{frame.function:02X}: {exc}"
            state.stats.failed_polls += 1
            state.stats.outcomes.append(False)
            # Still confirm a self report: the station would only send the same bytes again.
            if frame.function in SELF_REPORTS and frame.end == Ctrl.ETX:
                out.send.append(self._confirm(state, frame, frame_serial(frame), now))
            return out
        self._use(state, message, now, out)
        if frame.end == Ctrl.ETB:
            out.send.append(self._confirm(state, frame, message.serial, now, end=Ctrl.ACK))
        elif frame.function in SELF_REPORTS or frame.function in state.pending:
            state.pending.pop(frame.function, None)
            out.send.append(self._confirm(state, frame, message.serial, now))
            out.send.extend(self._requests(state, now, mono))
        return out

    def _state(self, station: str, link: object) -> StationState | None:
        code = station.upper()
        state = self.stations.get(code)
        if state is None:
            if not self.config.accept_unknown:
                self.refused += 1
                return None
            here = self._on_link.get(link, ())
            unknown = sum(1 for c in here if (s := self.stations.get(c)) and not s.configured)
            if unknown >= self.config.max_unknown_per_link:
                self.unknown_refused += 1
                return None
            state = self.stations[code] = StationState(code, f"sl651-{code}", False)
        return state

    def _packet(self, state: StationState, frame: Frame, now: datetime, mono: float) -> Outcome:
        out = Outcome()
        assert frame.packet is not None
        total, seq = frame.packet
        if not 1 <= seq <= total:
            state.last_error = f"function 0x{frame.function:02X}: packet {seq} of {total}"
            return out
        assembly = state.assemblies.get(frame.function)
        if assembly is None or assembly.total != total or seq == 1:
            # Packet 1 always starts a transfer: packets of an abandoned one must not complete it.
            if assembly is not None:
                self._drop(state, frame.function)
            assembly = state.assemblies[frame.function] = _Assembly(total, started_at=mono)
            if total > self.config.m3_max_packets:
                assembly.refused = True
                self._evict(state, frame.function, "packets", drop=False)
        assembly.last_at = mono
        if assembly.refused:
            return out
        size = len(frame.raw) + len(frame.body)
        old = assembly.packets.get(seq)
        grown = size - (len(old.raw) + len(old.body) if old is not None else 0)
        assembly.packets[seq] = frame
        assembly.bytes += grown
        state.m3_bytes += grown
        self.m3_bytes += grown
        if not self._within_bounds(state, frame.function):
            return out
        if seq == total or frame.end == Ctrl.ETX:
            assembly.ended = True
        if seq == assembly.nak_sent:
            assembly.nak_sent, assembly.naks = None, 0
        missing = self._missing(assembly)
        if missing or not assembly.ended:
            # The last packet came (or a resent one), and some are still missing: ask for one.
            if missing and assembly.ended and assembly.nak_sent is None:
                out.send.append(self._nak(state, frame.function, assembly, missing[0], now))
            return out
        self._drop(state, frame.function)
        ordered = [assembly.packets[i] for i in range(1, total + 1)]
        try:
            message = decode_packets(ordered)
        except BodyError as exc:
            state.last_error = f"function 0x{frame.function:02X} ({total} packets): {exc}"
            serial = frame_serial(ordered[0])
        else:
            self._use(state, message, now, out)
            serial = message.serial
        end = self._end(state, now, mono)
        out.send.append(
            encode.confirm_packets(
                self._link(state, frame), frame.function, serial or 0, self._local(now), total,
                end=end,
            )
        )  # fmt: skip
        out.send.extend(self._requests(state, now, mono))
        return out

    def _within_bounds(self, state: StationState, function: int) -> bool:
        """Drop transfers until the station's and everyone's bytes are within bounds; whether
        the transfer of `function` is still there."""
        while state.m3_bytes > self.config.m3_max_bytes:
            oldest = min(state.assemblies, key=lambda f: state.assemblies[f].started_at)
            self._evict(state, oldest, "bytes")
        while self.m3_bytes > self.config.m3_max_total_bytes:
            owner, oldest = min(
                ((st, f) for st in self.stations.values() for f in st.assemblies),
                key=lambda pair: pair[0].assemblies[pair[1]].started_at,
            )
            self._evict(owner, oldest, "total_bytes")
        return function in state.assemblies

    def _evict(self, state: StationState, function: int, bound: str, *, drop: bool = True) -> None:
        assembly = state.assemblies[function]
        if drop:
            self._drop(state, function)
        self.evicted[bound] += 1
        state.stats.failed_polls += 1
        state.last_error = (
            f"function 0x{function:02X}: M3 transfer of {assembly.total} packets dropped "
            f"({len(assembly.packets)} held, {assembly.bytes} bytes): over m3 {bound} bound"
        )

    def _drop(self, state: StationState, function: int) -> None:
        assembly = state.assemblies.pop(function)
        state.m3_bytes -= assembly.bytes
        self.m3_bytes -= assembly.bytes

    def _drop_assemblies(self, state: StationState) -> None:
        for function in list(state.assemblies):
            self._drop(state, function)

    @staticmethod
    def _missing(assembly: _Assembly) -> list[int]:
        return [i for i in range(1, assembly.total + 1) if i not in assembly.packets]

    def _nak(
        self, state: StationState, function: int, assembly: _Assembly, seq: int, now: datetime
    ) -> bytes:
        assembly.nak_sent = seq
        assembly.naks += 1
        first = assembly.packets.get(1)
        serial = frame_serial(first) if first is not None else 0
        link = LinkAddress(self.config.center, state.station, self._password(state))
        return encode.nak_packet(link, function, serial or 0, self._local(now), assembly.total, seq)

    def _use(self, state: StationState, message: Message, now: datetime, out: Outcome) -> None:
        """Readings, alarms and clock drift of a decoded message."""
        readings = readings_from(message, state.terminal, now, self.tz)
        out.readings.extend(readings)
        s = state.stats
        s.polls += 1
        s.outcomes.append(True)
        s.last_good_at = now
        s.consecutive_failures = 0
        state.last_report_at = now
        pending_at = state.pending.get(message.function)
        if pending_at is not None:
            state.query_latency = self._clock() - pending_at
            s.record_latency(state.query_latency)
        if message.sent_at is not None:
            station_time = message.sent_at.replace(tzinfo=self.tz)
            state.clock_offset = (station_time - now).total_seconds()
        for element in message.elements:
            if isinstance(element, StatusElement):
                out.events.extend(self._alarms(state, element, now))

    def _alarms(
        self, state: StationState, element: StatusElement, now: datetime
    ) -> list[dict[str, Any]]:
        events = []
        flags = element.flags  # decoded once, not once per bit
        for name, spec in ALARM_BITS.items():
            active = bool(flags.get(name, False))
            before = state.flags.get(name, False)
            state.flags[name] = active
            if active == before:
                continue
            events.append(
                {
                    "type": "station_alarm",
                    "action": "raised" if active else "cleared",
                    "terminal": state.terminal,
                    "station": state.station,
                    "flag": name,
                    "meaning": spec.meaning,
                    "at": format_timestamp(now),
                }
            )
        return events

    # -- outbound --------------------------------------------------------------------------

    def tick(self, link: object, now: datetime) -> Outcome:
        """Timers of the stations on `link`: M3 NAKs after silence, periodic queries."""
        out = Outcome()
        mono = self._clock()
        for code in self._on_link.get(link, ()):
            state = self.stations.get(code)
            if state is None or state.link is not link:
                continue
            self._expire(state, mono)
            for function, assembly in list(state.assemblies.items()):
                if mono - assembly.started_at >= self.config.m3_max_age:
                    if assembly.refused:
                        del state.assemblies[function]  # held nothing; counted when refused
                    else:
                        self._evict(state, function, "age")
                    continue
                if assembly.refused:
                    continue
                missing = self._missing(assembly)
                quiet = mono - assembly.last_at >= self.config.packet_timeout
                if not (missing and quiet):
                    continue
                if assembly.naks >= MAX_NAKS:
                    self._drop(state, function)
                    state.last_error = (
                        f"function 0x{function:02X}: packet {missing[0]} of {assembly.total} "
                        f"never came after {assembly.naks} NAKs; transfer dropped"
                    )
                    state.stats.failed_polls += 1
                    continue
                out.send.append(self._nak(state, function, assembly, missing[0], now))
                assembly.last_at = mono
            if state.last_frame_at is not None and self._online(state, mono):
                out.send.extend(self._requests(state, now, mono))
        return out

    def _expire(self, state: StationState, mono: float) -> None:
        """Queries without an answer for RESPONSE_TIMEOUT are given up (asked again when due)."""
        for function, sent in list(state.pending.items()):
            if mono - sent >= RESPONSE_TIMEOUT:
                del state.pending[function]
                state.stats.failed_polls += 1
                state.stats.outcomes.append(False)
                state.last_error = f"no answer to 0x{function:02X} within {RESPONSE_TIMEOUT:g}s"

    def ask_elements(self, terminal: str, elements: Sequence[str]) -> str:
        """Queue a 0x3A query (specified elements) for a configured station; it goes out at the
        next tick while the station is online, and its answer becomes readings. Raises KeyError
        for an unknown terminal, ValueError (from the encoder's table) for unknown elements."""
        for code, t in self.terminals.items():
            if t.name == terminal:
                for element in elements:
                    spec_for(element)  # an unknown identifier raises EncodeError (a ValueError)
                state = self.stations[code]
                state.asked = list(elements)
                return "waiting for the station" if state.link is None else "sending"
        known = ", ".join(t.name for t in self.terminals.values()) or "none"
        raise KeyError(f"no SL651 terminal named {terminal!r} (known: {known})")

    def link_closed(self, link: object) -> None:
        for code in self._on_link.pop(link, ()):
            state = self.stations.get(code)
            if state is None or state.link is not link:
                continue
            if not state.configured:
                self._drop_assemblies(state)
                del self.stations[code]  # an unknown station leaves no state behind
                continue
            state.link = None
            state.pending.clear()
            self._drop_assemblies(state)  # a transfer does not survive its link

    def _online(self, state: StationState, mono: float) -> bool:
        """Still listening: it spoke within the 10 minutes an ESC keeps it online."""
        return state.last_frame_at is not None and mono - state.last_frame_at < 600.0

    def _wants(self, state: StationState, now: datetime, mono: float) -> list[int]:
        """The functions the centre should send this station now, in order."""
        terminal = self.terminals.get(state.station)
        if terminal is None:
            return []
        wants = []
        if (
            terminal.clock_sync
            and state.clock_offset is not None
            and abs(state.clock_offset) > CLOCK_TOLERANCE
            and SET_CLOCK not in state.pending
            and (state.clock_set_at is None or mono - state.clock_set_at >= CLOCK_SET_INTERVAL)
            and self._synchronised() is True  # last: it asks the kernel
        ):
            wants.append(SET_CLOCK)
        if state.asked and QUERY_ELEMENTS not in state.pending:
            wants.append(QUERY_ELEMENTS)
        if (
            terminal.query_period is not None
            and QUERY_REALTIME not in state.pending
            and (state.last_query_at is None or mono - state.last_query_at >= terminal.query_period)
        ):
            wants.append(QUERY_REALTIME)
        return wants

    def _requests(self, state: StationState, now: datetime, mono: float) -> list[bytes]:
        frames = []
        link = LinkAddress(self.config.center, state.station, self._password(state))
        for function in self._wants(state, now, mono):
            state.pending[function] = mono
            if function == SET_CLOCK:
                state.clock_set_at = mono
                frames.append(encode.set_clock(link, self._local(now)))
            elif function == QUERY_ELEMENTS:
                frames.append(encode.query_elements(link, self._local(now), state.asked))
                state.asked = []
            else:
                state.last_query_at = mono
                frames.append(encode.query_realtime(link, self._local(now)))
        return frames

    def _end(self, state: StationState, now: datetime, mono: float) -> int:
        """ESC when the centre will ask the station something next, else `ack_end`."""
        if self._wants(state, now, mono):
            return Ctrl.ESC
        return Ctrl.ESC if self.config.ack_end == "ESC" else Ctrl.EOT

    def _confirm(
        self,
        state: StationState,
        frame: Frame,
        serial: int | None,
        now: datetime,
        end: int | None = None,
    ) -> bytes:
        if end is None:
            end = self._end(state, now, self._clock())
        return encode.confirm(
            self._link(state, frame), frame.function, serial or 0, self._local(now), end=end,
            encoding=frame.encoding,
        )  # fmt: skip

    def _link(self, state: StationState, frame: Frame) -> LinkAddress:
        return LinkAddress(self.config.center, frame.station, frame.password)

    def _password(self, state: StationState) -> str:
        terminal = self.terminals.get(state.station)
        return terminal.password if terminal is not None else "0000"

    def _local(self, now: datetime) -> datetime:
        """Our clock as the station's wall clock (SL651 times carry no zone)."""
        return now.astimezone(self.tz).replace(tzinfo=None)
