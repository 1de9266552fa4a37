"""The stream decoder: bytes in any split → frames, "need more data", or typed rejections.

h11-style and sans-IO: `feed(bytes)` stores, `next_event()` returns the next `Frame`, a
`Rejected`, or `NEED_DATA`. Frames are cut by their length field, never by scanning for
`7E 7E` inside them (pictures carry arbitrary bytes). After a rejection the decoder resumes
one byte after the rejected start marker, so a good frame hidden in a damaged one's claimed
span is still found. Events depend only on the bytes, never on how they were split; the
decoder never raises on input and always makes progress.

Cost: a candidate is a whole header found by a regular expression (a start marker with a start
character where the header puts it), so junk and runs of markers are skipped in C; the length
and the end character are checked before any CRC. Looking inside a rejected candidate's span
is paid from a credit earned by the bytes decided (at most CREDIT_SPANS frames' worth): each
rejection costs REJECT_COST plus the bytes its CRC covered. With the credit spent, the decoder
resynchronises coarsely: it resumes after the rejected candidate's whole claimed span. So a
peer whose frames each claim 4,095 bytes, or whose headers overlap, costs at most about one
CRC over its own bytes, and an honest link with a damaged frame now and then never notices.

Bounds: between calls the decoder holds at most one incomplete frame (< max_frame_bytes) or
one byte of a possible start marker; junk is counted, not kept (a run of junk is reported as
one `bad_start` event, carrying its first 64 bytes, when the next frame candidate starts, at
every max_frame_bytes junk bytes, or on flush()). `feed()` beyond max_buffer_bytes of
undecoded bytes drops the excess and reports `oversize`: drain with next_event() until
NEED_DATA before feeding more.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

from agent.protocols.crc16 import crc16
from agent.protocols.sl651.frame import (
    ASCII_HEADER,
    ASCII_TRAILER,
    END_CHARS,
    HEX_HEADER,
    HEX_START,
    HEX_TRAILER,
    MAX_FRAME,
    Ctrl,
    Frame,
    RejectReason,
    ascii_frame_from,
    hex_frame_from,
    is_hex_text,
)


class _Need(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _Need.NEED_DATA
NeedData = Literal[_Need.NEED_DATA]


@dataclass(frozen=True, slots=True)
class Rejected:
    """Bytes that were not a good frame: why (`reason`), in words (`detail`), and which
    (`data`: the rejected candidate, or the first 64 bytes of a junk run)."""

    reason: RejectReason
    detail: str
    data: bytes


Event = Frame | Rejected | NeedData

JUNK_SAMPLE: Final = 64
REJECT_COST: Final = 256  # a rejected candidate's own cost, in bytes of credit
CREDIT_SPANS: Final = 2  # the credit holds up to this many max_frame_bytes
_HEX_DIGITS: Final = frozenset(b"0123456789ABCDEFabcdef")
_START = frozenset({Ctrl.STX, Ctrl.SYN})
_SOH: Final = 0x01
# Whole headers only (NOTES §3.1, §5): the start character where the header puts it. A HEX
# header is found from its run of markers, then its start character in the 12 bytes after the
# run (a regular expression for the whole header costs 13 steps at every byte of a long run).
_MARKERS: Final = re.compile(rb"\x7e{2,}")
_START_CHAR: Final = re.compile(rb"[\x02\x16]")
_ASCII_HEAD: Final = re.compile(rb"\x01[0-9A-Fa-f]{18}[08][0-9A-Fa-f]{3}[\x02\x16]")
_COARSE: Final = frozenset({RejectReason.BAD_END, RejectReason.BAD_CRC})


class _Skip(enum.Enum):
    SKIP = "skip"  # not a frame start after all: the marker's first byte is junk
    NEED = "need"  # a plausible start, incomplete


class StreamDecoder:
    """One link's receive side. See the module docstring for the contract."""

    def __init__(
        self,
        max_frame_bytes: int = MAX_FRAME,
        max_buffer_bytes: int = 65536,
        *,
        accept_ascii: bool = True,
    ) -> None:
        if max_frame_bytes < HEX_HEADER + HEX_TRAILER:
            raise ValueError(f"max_frame_bytes {max_frame_bytes} is below the smallest frame")
        if max_buffer_bytes < max_frame_bytes:
            raise ValueError("max_buffer_bytes must be at least max_frame_bytes")
        self.max_frame_bytes = max_frame_bytes
        self.max_buffer_bytes = max_buffer_bytes
        self.accept_ascii = accept_ascii
        self._buf = bytearray()
        self._pending: deque[Frame | Rejected] = deque()
        self.reset()

    def reset(self) -> None:
        """Forget everything buffered (a new connection on the same decoder)."""
        self._buf.clear()
        self._pos = 0  # bytes before it are decided
        self._quiet = 0  # bytes before it belong to a reported rejection: not junk
        self._junk = 0
        self._junk_head = bytearray()
        self._pending.clear()
        self._flushing = False
        self._offset = 0  # stream offset of _buf[0]
        self._credit = self._credit_cap = CREDIT_SPANS * self.max_frame_bytes
        self._credit_at = 0  # stream offset up to which the credit was earned
        self.coarse = 0  # rejections after which the decoder skipped the whole claimed span

    @property
    def buffered(self) -> int:
        """Undecided bytes held (an incomplete frame, a partial marker, or unread input)."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes. Never raises; see the module docstring for the bound."""
        self._compact()
        room = self.max_buffer_bytes - len(self._buf)
        if len(data) > room:
            dropped = len(data) - room
            data = bytes(data[:room])
            self._pending.append(
                Rejected(
                    RejectReason.OVERSIZE,
                    f"buffer full: {dropped} bytes dropped (drain next_event() before feeding)",
                    b"",
                )
            )
        self._buf += data

    def flush(self) -> None:
        """No more bytes are coming for now (link closed, or quiet for a timeout): the next
        next_event() calls reject an incomplete frame as `truncated`, report pending junk,
        and decode whatever else is buffered."""
        self._flushing = True

    def next_event(self) -> Event:
        """The next Frame or Rejected, or NEED_DATA when the buffered bytes decide nothing."""
        while not self._pending:
            if self._step():
                if not self._pending:
                    return NEED_DATA
                break
        return self._pending.popleft()

    def events(self) -> list[Frame | Rejected]:
        """Every event the buffered bytes decide, up to NEED_DATA."""
        out: list[Frame | Rejected] = []
        while (event := self.next_event()) is not NEED_DATA:
            out.append(event)
        return out

    # -- internals -------------------------------------------------------------------------

    def _step(self) -> bool:
        """Decide something; True when nothing more can be decided without more bytes."""
        buf, pos, n = self._buf, self._pos, len(self._buf)
        if pos >= n:
            return self._exhausted()
        found = self._find_hex(pos)
        h = n if found < 0 else found
        if self.accept_ascii:
            # An ASCII header holds no 7E: one that starts before `h` also ends before it.
            ascii_head = _ASCII_HEAD.search(buf, pos, h)
            if ascii_head is not None:
                a = ascii_head.start()
                self._junk_range(pos, a)
                return self._settle(a, self._examine_ascii(a))
        if found >= 0:
            self._junk_range(pos, h)
            return self._settle(h, self._examine_hex(h))
        # No whole header: keep what may be the start of one at the end.
        t = self._partial_header(pos, n)
        if t < 0:
            keep = 1 if buf[n - 1] == 0x7E and not self._flushing else 0
            self._junk_range(pos, n - keep)
            self._pos = n - keep
            return self._exhausted() if not keep else self._wait()
        self._junk_range(pos, t)
        return self._settle(t, _Skip.NEED)

    def _find_hex(self, pos: int) -> int:
        """The first whole HEX header at or after `pos`, or -1."""
        buf = self._buf
        while (first := buf.find(HEX_START, pos)) >= 0:
            run = _MARKERS.match(buf, first)
            assert run is not None
            end = run.end()
            # A header at p has its start character at p + 13, its second 7E at p + 1 < end.
            start = _START_CHAR.search(buf, max(end, first + HEX_HEADER - 1), end + 12)
            if start is not None:
                return start.start() - (HEX_HEADER - 1)
            # The next header needs a start character 13 bytes on: skip the runs before it.
            later = _START_CHAR.search(buf, end)
            if later is None:
                return -1
            pos = max(end, later.start() - (HEX_HEADER - 1))
        return -1

    def _partial_header(self, pos: int, n: int) -> int:
        """Where an incomplete header at the end of the buffer may start, or -1."""
        buf = self._buf
        found = buf.find(HEX_START, max(pos, n - HEX_HEADER + 1))
        if self.accept_ascii:
            at = max(pos, n - ASCII_HEADER + 1)
            end = n if found < 0 else found
            while (a := buf.find(_SOH, at, end)) >= 0:
                if all(
                    c in _HEX_DIGITS and (k != 19 or c in b"08")
                    for k, c in enumerate(buf[a + 1 : n], 1)
                ):
                    return a
                at = a + 1
        return found

    def _settle(self, at: int, outcome: Frame | tuple[Rejected, int] | _Skip) -> bool:
        if outcome is _Skip.NEED:
            if not self._flushing:
                self._pos = at
                return self._wait()
            n = len(self._buf)
            outcome = (
                Rejected(
                    RejectReason.TRUNCATED,
                    f"stream ended {n - at} bytes into a frame",
                    bytes(self._buf[at:n]),
                ),
                n - at,
            )
        self._emit_junk()
        if isinstance(outcome, Frame):
            self._pending.append(outcome)
            self._pos = at + len(outcome.raw)
        elif isinstance(outcome, tuple):
            rejected, span = outcome
            self._pending.append(rejected)
            self._quiet = max(self._quiet, at + span)
            self._pos = at + 1 if self._afford(at, rejected, span) else at + span
        return False

    def _afford(self, at: int, rejected: Rejected, span: int) -> bool:
        """Whether to look inside the rejected span (else skip it whole): see the docstring."""
        where = self._offset + at
        credit = min(self._credit_cap, self._credit + where - self._credit_at)
        self._credit_at = where
        credit -= REJECT_COST + (span if rejected.reason is RejectReason.BAD_CRC else 0)
        self._credit = max(credit, -self._credit_cap)
        if credit >= 0 or rejected.reason not in _COARSE:
            return True
        self.coarse += 1
        return False

    def _wait(self) -> bool:
        self._compact()
        return True

    def _exhausted(self) -> bool:
        if self._flushing:
            self._emit_junk()
            self._flushing = False
        self._offset += len(self._buf)
        self._buf.clear()
        self._pos = self._quiet = 0
        return True

    def _compact(self) -> None:
        if self._pos:
            self._offset += self._pos
            del self._buf[: self._pos]
            self._quiet = max(0, self._quiet - self._pos)
            self._pos = 0

    def _junk_range(self, start: int, end: int) -> None:
        start = max(start, self._quiet)
        cap = self.max_frame_bytes
        while start < end:
            take = min(end - start, cap - self._junk)
            room = JUNK_SAMPLE - len(self._junk_head)
            if room > 0:
                self._junk_head += self._buf[start : start + min(take, room)]
            self._junk += take
            start += take
            if self._junk >= cap:
                self._emit_junk()

    def _emit_junk(self) -> None:
        if self._junk:
            self._pending.append(
                Rejected(
                    RejectReason.BAD_START,
                    f"{self._junk} bytes without a frame start",
                    bytes(self._junk_head),
                )
            )
            self._junk = 0
            self._junk_head = bytearray()

    def _reject(
        self, reason: RejectReason, detail: str, at: int, span: int
    ) -> tuple[Rejected, int]:
        return Rejected(reason, detail, bytes(self._buf[at : at + span])), span

    def _examine_hex(self, at: int) -> Frame | tuple[Rejected, int] | _Skip:
        buf = self._buf
        avail = len(buf) - at
        if avail < HEX_HEADER:
            return _Skip.NEED
        start = buf[at + 13]
        if start not in _START:
            return _Skip.SKIP
        word = (buf[at + 11] << 8) | buf[at + 12]
        direction, length = word >> 12, word & 0xFFF
        if direction not in (0, 8):
            return self._reject(
                RejectReason.BAD_LENGTH,
                f"direction+length word {word:04X}: direction nibble {direction:X}",
                at,
                HEX_HEADER,
            )
        if start == Ctrl.SYN and length < 3:
            return self._reject(
                RejectReason.BAD_LENGTH, f"M3 frame with length {length}", at, HEX_HEADER
            )
        total = HEX_HEADER + length + HEX_TRAILER
        if total > self.max_frame_bytes:
            return self._reject(
                RejectReason.OVERSIZE,
                f"length {length} makes a {total}-byte frame (max {self.max_frame_bytes})",
                at,
                HEX_HEADER,
            )
        if avail < total:
            return _Skip.NEED
        end = buf[at + total - 3]
        if end not in END_CHARS:
            return self._reject(
                RejectReason.BAD_END,
                f"0x{end:02X} where the length puts the end char (length {length})",
                at,
                total,
            )
        computed = crc16(buf[at : at + total - 2])
        sent = (buf[at + total - 2] << 8) | buf[at + total - 1]
        if computed != sent:
            return self._reject(
                RejectReason.BAD_CRC,
                f"CRC computed {computed:04X}, frame has {sent:04X}",
                at,
                total,
            )
        return hex_frame_from(buf, at, total, True)

    def _examine_ascii(self, at: int) -> Frame | tuple[Rejected, int] | _Skip:
        buf = self._buf
        avail = len(buf) - at
        for k in range(1, min(avail, ASCII_HEADER - 1)):
            c = buf[at + k]
            if c not in _HEX_DIGITS or (k == 19 and c not in b"08"):
                return _Skip.SKIP
        if avail < ASCII_HEADER:
            return _Skip.NEED
        start = buf[at + 23]
        if start not in _START:
            return _Skip.SKIP
        length = int(buf[at + 20 : at + 23], 16)
        if start == Ctrl.SYN and length < 6:
            return self._reject(
                RejectReason.BAD_LENGTH, f"M3 frame with length {length}", at, ASCII_HEADER
            )
        total = ASCII_HEADER + length + ASCII_TRAILER
        if total > self.max_frame_bytes:
            return self._reject(
                RejectReason.OVERSIZE,
                f"length {length} makes a {total}-byte frame (max {self.max_frame_bytes})",
                at,
                ASCII_HEADER,
            )
        if avail < total:
            return _Skip.NEED
        if start == Ctrl.SYN and not is_hex_text(buf[at + 24 : at + 30]):
            return self._reject(RejectReason.BAD_LENGTH, "M3 packet field is not hex", at, total)
        end = buf[at + total - 5]
        if end not in END_CHARS:
            return self._reject(
                RejectReason.BAD_END,
                f"0x{end:02X} where the length puts the end char (length {length})",
                at,
                total,
            )
        crc_text = buf[at + total - 4 : at + total]
        if not is_hex_text(crc_text):
            return self._reject(RejectReason.BAD_CRC, "CRC is not 4 hex characters", at, total)
        computed, sent = crc16(buf[at : at + total - 4]), int(crc_text, 16)
        if computed != sent:
            return self._reject(
                RejectReason.BAD_CRC,
                f"CRC computed {computed:04X}, frame has {sent:04X}",
                at,
                total,
            )
        return ascii_frame_from(buf, at, total, True)
