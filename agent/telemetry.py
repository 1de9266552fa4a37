"""Telemetry bodies on the wire (docs/telemetry.md): the point metadata, schema 1 and 2, decoding.

Schema 2 (the default) groups a message's readings by terminal and poll time: one base time
per body, and per terminal a list of polls ``[offset_ms, [v0, v1, …]]`` whose values follow the
order of the terminal's point list in the signed, retained meta message the body names by its
`id`; readings not good are flagged beside their poll (``[index, quality, error]``), and a
reading the meta does not describe (a point not configured, a station not configured) is carried
whole in ``extra``. Schema 1 is one JSON object per reading (``{"readings": […]}``), kept for
receivers that need it. Sans-IO: values in, text out, and back (`expand`); no clock, no files.

The writer encodes readings once, per poll, into `Piece`s (so a poll is not re-encoded when it
is cut into a body), and joins pieces into bodies of at most `batch` readings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from agent.losses import LossLedger
from agent.model import PollReadings, Quality, Reading, format_timestamp
from agent.signing import EncodedJSON, read_envelope
from agent.sinks import records

META_ID_HEX = 16  # the meta's id: this many hex digits of SHA-256

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_GOOD = Quality.GOOD
_ABSENT: Any = object()  # a point not in this poll (yet)

# (point name, unit, source) of one configured point, in the terminal's order.
PointMeta = tuple[str, str, str]


def epoch_ms(at: datetime) -> int:
    """Milliseconds since the epoch, truncated as RFC 3339 timestamps here are (naive: UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - _EPOCH) // _MS


def ms_timestamp(ms: int) -> str:
    """The RFC 3339 UTC form of epoch milliseconds, as `format_timestamp` writes readings."""
    return format_timestamp(_EPOCH + timedelta(milliseconds=ms))


class Meta:
    """The point metadata telemetry bodies refer to: per terminal its protocol and points.

    `body` is the meta message's body, `{"id", "terminals"}`, encoded with sorted keys and no
    spaces; `id` is the first 16 hex digits of SHA-256 of the `terminals` member so encoded.
    Terminals without a configured point list (a station decides what it sends) have none.
    """

    __slots__ = ("body", "id", "index")

    def __init__(self, terminals: Mapping[str, tuple[str, Sequence[PointMeta]]]) -> None:
        described = {
            name: {"protocol": protocol, "points": [list(p) for p in points]}
            for name, (protocol, points) in terminals.items()
        }
        text = json.dumps(described, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        self.id = hashlib.sha256(text.encode()).hexdigest()[:META_ID_HEX]
        self.body = EncodedJSON(f'{{"id":"{self.id}","terminals":{text}}}')
        # terminal -> point -> (index, unit, source): what the encoder looks up per reading.
        self.index: dict[str, dict[str, tuple[int, str, str]]] = {
            name: {p[0]: (i, p[1], p[2]) for i, p in enumerate(points)}
            for name, (_, points) in terminals.items()
            if points
        }

    @classmethod
    def of(cls, terminals: Iterable[Any]) -> Meta:
        """From config terminals (`TerminalModel`: `name`, `protocol`, `points_meta`)."""
        return cls({t.name: (t.protocol, t.points_meta or ()) for t in terminals})


@dataclass(slots=True)
class Piece:
    """Readings encoded once, waiting to be joined into a body.

    Schema 1: `text` holds array items (whole reading objects). Schema 2: one poll (one
    terminal, one time): `text` its values part (empty if every reading is an extra),
    `extras` each extra's encoded (terminal, point) and (value, unit, quality, source, error).
    """

    count: int
    text: str
    terminal: str | None = None  # schema 2
    ms: int = 0
    extras: list[tuple[str, str]] = field(default_factory=list)

    def lose(self, ledger: LossLedger, reason: str) -> int:
        """Count its readings in `ledger` (per terminal, with their time); how many."""
        if self.terminal is None:
            return ledger.add_encoded([self.text], reason)
        ledger.add(self.terminal, ms_timestamp(self.ms), reason, self.count)
        return self.count


class BodyEncoder(Protocol):
    """How the writer turns readings into telemetry bodies (one per schema)."""

    meta: Meta

    def groups(self, readings: Sequence[Reading], batch: int) -> list[Sequence[Reading]]:
        """`readings` cut into what is encoded as one piece (at most `batch` each)."""
        ...

    def encode(self, group: Sequence[Reading]) -> Piece:
        """One group as a piece; ValueError/TypeError if a value is not JSON (NaN)."""
        ...

    def body(self, pieces: Sequence[Piece]) -> EncodedJSON:
        """The body of one telemetry message of these pieces."""
        ...


class Schema1:
    """`{"readings": [{terminal, point, value, unit, quality, observed_at, source, error}, …]}`."""

    def __init__(self, meta: Meta | None = None) -> None:
        self.meta = meta or Meta({})

    def groups(self, readings: Sequence[Reading], batch: int) -> list[Sequence[Reading]]:
        return [readings[i : i + batch] for i in range(0, len(readings), batch)]

    def encode(self, group: Sequence[Reading]) -> Piece:
        return Piece(len(group), _encode(records(group))[1:-1])

    def body(self, pieces: Sequence[Piece]) -> EncodedJSON:
        return EncodedJSON('{"readings":[' + ",".join(p.text for p in pieces) + "]}")


class Schema2:
    """Readings grouped by terminal and poll time against the meta (module docstring)."""

    def __init__(self, meta: Meta | None = None) -> None:
        self.meta = meta or Meta({})
        # terminal -> (layout, meta id, meta index of each value, width): how the values of
        # its `PollReadings` map onto the meta's point list, worked out once per layout.
        self._slots: dict[str, tuple[Any, str, list[int] | None, int]] = {}

    def groups(self, readings: Sequence[Reading], batch: int) -> list[Sequence[Reading]]:
        """Runs of readings of one terminal and one time (a poll), at most `batch` each."""
        if isinstance(readings, PollReadings) and readings.values and len(readings) <= batch:
            return [readings]  # one poll: one group, as it is (its values in bulk)
        out: list[Sequence[Reading]] = []
        start, n = 0, len(readings)
        while start < n:
            first = readings[start]
            terminal, at = first.terminal, first.observed_at
            end = start + 1
            limit = min(n, start + batch)
            while end < limit:
                r = readings[end]
                if r.terminal != terminal or (r.observed_at is not at and r.observed_at != at):
                    break
                end += 1
            out.append(readings[start:end])
            start = end
        return out

    def _slots_of(self, terminal: str, layout: Any) -> tuple[list[int] | None, int] | None:
        """Where each value of a poll of `layout` goes in the meta's point list (None for
        each in its own place), and the width of the values list; None if the meta does not
        describe every point of the layout exactly (the readings are then encoded one by one)."""
        known = self._slots.get(terminal)
        if known is not None and known[0] is layout and known[1] == self.meta.id:
            return None if known[3] < 0 else (known[2], known[3])
        points = self.meta.index.get(terminal)
        indices: list[int] = []
        for name, unit, source in layout:
            slot = points.get(name) if points is not None else None
            if slot is None or slot[1] != unit or slot[2] != source or slot[0] in indices:
                indices = []
                break
            indices.append(slot[0])
        width = max(indices) + 1 if indices else -1
        mapping = None if indices == list(range(len(indices))) else indices
        self._slots[terminal] = (layout, self.meta.id, mapping, width)
        return None if width < 0 else (mapping, width)

    def encode(self, group: Sequence[Reading]) -> Piece:
        if isinstance(group, PollReadings) and group.values and group.layout:
            assert group.observed_at is not None
            slots = self._slots_of(group.terminal, group.layout)
            if slots is not None:  # one poll, all good, all described: its values in bulk
                mapping, width = slots
                shown: list[Any] = group.values
                if mapping is not None:
                    shown = [None] * width
                    for index, value in zip(mapping, group.values, strict=True):
                        shown[index] = value
                ms = epoch_ms(group.observed_at)
                return Piece(len(group), _encode(shown), group.terminal, ms)
        first = group[0]
        piece = Piece(len(group), "", first.terminal, epoch_ms(first.observed_at))
        points = self.meta.index.get(first.terminal)
        extras: Sequence[Reading] = group
        if points is not None:
            extras = []
            values: list[Any] = [_ABSENT] * len(points)
            flags: list[list[Any]] = []
            width = 0
            for r in group:
                slot = points.get(r.point)
                if (
                    slot is None
                    or values[slot[0]] is not _ABSENT  # twice in one poll
                    or r.unit != slot[1]
                    or r.source != slot[2]
                    or (r.quality is _GOOD and (r.value is None or r.error is not None))
                ):
                    extras.append(r)  # the meta does not describe it: carried whole
                    continue
                index = slot[0]
                values[index] = r.value
                if r.quality is not _GOOD:
                    flags.append([index, r.quality.value, r.error])
                if index >= width:
                    width = index + 1
            if width:
                shown = [None if v is _ABSENT else v for v in values[:width]]
                text = _encode(shown)
                piece.text = f"{text},{_encode(flags)}" if flags else text
        for r in extras:
            head = _encode([r.terminal, r.point])[1:-1]
            tail = _encode([r.value, r.unit, r.quality.value, r.source, r.error])[1:-1]
            piece.extras.append((head, tail))
        return piece

    def body(self, pieces: Sequence[Piece]) -> EncodedJSON:
        t0 = pieces[0].ms if pieces else 0
        polls: dict[str, list[str]] = {}
        extras: list[str] = []
        for p in pieces:
            dt = p.ms - t0
            if p.text:
                assert p.terminal is not None
                polls.setdefault(p.terminal, []).append(f"[{dt},{p.text}]")
            for head, tail in p.extras:
                extras.append(f"[{head},{dt},{tail}]")
        joined = ",".join(f"{_encode(name)}:[{','.join(items)}]" for name, items in polls.items())
        text = f'{{"schema":2,"meta":"{self.meta.id}","t0":{t0},"polls":{{{joined}}}'
        if extras:
            text += ',"extra":[' + ",".join(extras) + "]"
        return EncodedJSON(text + "}")


ENCODERS: dict[int, Callable[[Meta | None], BodyEncoder]] = {1: Schema1, 2: Schema2}


# -- decoding (the reference decoder: docs/telemetry.md) -----------------------------------


class UnknownMeta(LookupError):
    """A schema 2 body names a meta message that was not seen (keep every meta by its id)."""


def expand(body: Mapping[str, Any], metas: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A telemetry body (either schema) as readings in their JSON shape (`Reading.to_dict`).

    `metas` holds the bodies of meta messages by their `id`; UnknownMeta if the body needs one
    not there. Order: every poll of each terminal, then the extras.
    """
    if body.get("schema") != 2:
        return [dict(r) for r in body["readings"]]
    t0 = body["t0"]
    out: list[dict[str, Any]] = []
    polls = body.get("polls") or {}
    if polls:
        meta = metas.get(body["meta"])
        if meta is None:
            raise UnknownMeta(body["meta"])
        for terminal, entries in polls.items():
            points = meta["terminals"][terminal]["points"]
            for entry in entries:
                when = ms_timestamp(t0 + entry[0])
                flagged = {f[0]: f for f in entry[2]} if len(entry) > 2 else {}
                for i, value in enumerate(entry[1]):
                    flag = flagged.get(i)
                    if value is None and flag is None:
                        continue  # not in this poll
                    name, unit, source = points[i]
                    out.append(
                        {
                            "terminal": terminal,
                            "point": name,
                            "value": value,
                            "unit": unit,
                            "quality": flag[1] if flag else "good",
                            "observed_at": when,
                            "source": source,
                            "error": flag[2] if flag else None,
                        }
                    )
    for terminal, point, dt, value, unit, quality, source, error in body.get("extra") or ():
        out.append(
            {
                "terminal": terminal,
                "point": point,
                "value": value,
                "unit": unit,
                "quality": quality,
                "observed_at": ms_timestamp(t0 + dt),
                "source": source,
                "error": error,
            }
        )
    return out


def count_readings(body: Any) -> int | None:
    """How many readings a telemetry body carries (either schema; no meta needed), or None
    for something that is not a telemetry body."""
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("readings"), list):
        return len(body["readings"])
    if body.get("schema") != 2:
        return None
    n = len(body.get("extra") or ())
    for entries in (body.get("polls") or {}).values():
        for entry in entries:
            flagged = {f[0] for f in entry[2]} if len(entry) > 2 else set()
            n += sum(v is not None or i in flagged for i, v in enumerate(entry[1]))
    return n


def open_token(token: str | bytes) -> dict[str, Any]:
    """The envelope of a compact JWS, decompressed if its header says so — NOT verified (for
    a copy the agent itself stored: its outbox, benchmarks); receivers verify (docs)."""
    return read_envelope(token.decode() if isinstance(token, bytes) else token)[1]


class Receiver:
    """Expands telemetry as a receiver would: keeps every meta body by id (tests, benches)."""

    def __init__(self) -> None:
        self.metas: dict[str, dict[str, Any]] = {}

    def readings(self, envelopes: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Every reading of the telemetry among `envelopes`, in their order (the metas among
        them are taken first: a receiver that keeps them has them, whenever they came)."""
        envelopes = list(envelopes)
        for envelope in envelopes:
            if envelope["kind"] == "meta":
                self.metas[envelope["body"]["id"]] = envelope["body"]
        out: list[dict[str, Any]] = []
        for envelope in envelopes:
            if envelope["kind"] == "telemetry":
                out.extend(expand(envelope["body"], self.metas))
        return out
