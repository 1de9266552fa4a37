"""A hostile SL651 peer's bytes: what the listener's limits are measured and tested against.

Each maker returns `n` bytes that cost a naive decoder the most: frames that claim 4,095 bytes
with a wrong CRC, headers 14 bytes apart whose claimed end lands on a header byte set to ETX,
ASCII headers claiming FFF, start markers only, random bytes. Used by bench/hostile.py and the
tests of the decoder's cost.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from agent.protocols.crc16 import crc16


def claims(n: int) -> bytes:
    """Frames that each claim 4,095 bytes, end character in place, CRC wrong."""
    out = bytearray()
    while len(out) < n:
        frame = bytes.fromhex("7E7E010012345678123432") + b"\x0f\xff\x02" + os.urandom(4095)
        frame += b"\x03"
        out += frame + (crc16(frame) ^ 0x5555).to_bytes(2, "big")
    return bytes(out[:n])


def overlapping_headers(n: int) -> bytes:
    """Headers 14 bytes apart, each claiming 4,095 bytes, whose end lands on a header's 0x03."""
    head = bytes.fromhex("7E7E0100123456") + b"\x03" + bytes.fromhex("1234320FFF02")
    return (head * (n // len(head) + 1))[:n]


def ascii_claims(n: int) -> bytes:
    """ASCII headers (SOH) each claiming FFF bytes."""
    head = b"\x01" + b"0" * 18 + b"0FFF\x02"
    return (head * (n // len(head) + 1))[:n]


def start_markers(n: int) -> bytes:
    return b"\x7e" * n


KINDS: dict[str, Callable[[int], bytes]] = {
    "4095-byte claims, bad CRC": claims,
    "overlapping headers (end on ETX)": overlapping_headers,
    "random bytes": os.urandom,
    "start markers only (7E)": start_markers,
    "ASCII headers claiming FFF": ascii_claims,
}
