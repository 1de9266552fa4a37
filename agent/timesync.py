"""Is the gateway's own clock synchronised? Asked of the kernel, as chrony and timesyncd set it.

`adjtimex(2)` reports the kernel's time status: TIME_ERROR (5) or the STA_UNSYNC flag means no
time daemon has disciplined the clock. This works with systemd-timesyncd, chrony and ntpd alike,
and needs no privileges. Returns None where the call is not available (not Linux).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time

TIME_ERROR = 5
STA_UNSYNC = 0x0040


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>: the leading fields, then padding for the rest.
    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("padding", ctypes.c_int * 11),
    )


CACHE_SECONDS = 60.0
_libc: ctypes.CDLL | None = None
_cached: tuple[float, bool | None] | None = None


def _adjtimex() -> bool | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        if name is None:
            return None
        try:
            _libc = ctypes.CDLL(name, use_errno=True)
        except OSError:
            return None
    try:
        adjtimex = _libc.adjtimex
    except AttributeError:
        return None
    timex = _Timex()  # modes = 0: read only
    state = adjtimex(ctypes.byref(timex))
    if state < 0:
        return None
    return bool(state != TIME_ERROR and not timex.status & STA_UNSYNC)


def clock_synchronised() -> bool | None:
    """True when a time daemon keeps the clock in sync, False when not, None when unknown.

    Asked at most once a minute (callers may ask on every frame)."""
    global _cached
    now = time.monotonic()
    if _cached is None or now - _cached[0] >= CACHE_SECONDS:
        _cached = (now, _adjtimex())
    return _cached[1]
