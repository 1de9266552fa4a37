"""Durations as people write them in config files: ``500ms``, ``5s``, ``2m``, ``1h``, ``1d``.

Sans-IO helpers shared by config validation and the command line, and the `Duration` field
types every config model uses.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")  # "-3d": said negative


def parse_duration(text: str | int | float) -> float:
    """Seconds for a duration string; bare numbers are seconds. Raises ValueError with a hint."""
    if isinstance(text, bool):  # as YAML writes it
        raise ValueError(f"expected a duration like 500ms, 5s, 2m, 1h; got {str(text).lower()}")
    if isinstance(text, int | float):
        seconds = float(text)
    elif not isinstance(text, str):  # a list or a mapping where a duration belongs
        kind = "a list" if isinstance(text, list | tuple) else "a mapping"
        raise ValueError(f"expected a duration like 500ms, 5s, 2m, 1h; got {kind}")
    else:
        match = _PATTERN.match(text)
        if match is None:
            raise ValueError(f"expected a duration like 500ms, 5s, 2m, 1h; got {text!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative; got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact unit form of a duration (``0.5`` -> ``500ms``)."""
    for unit in ("d", "h", "m", "s"):
        factor = _UNITS[unit]
        if seconds >= factor and (seconds / factor).is_integer():
            return f"{int(seconds / factor)}{unit}"
    return f"{round(seconds * 1000, 3):g}ms"


def approximate_duration(seconds: float) -> str:
    """A duration for people at a glance, in its two largest units: ``45s``, ``2m05s``,
    ``1h02m``, ``3d04h``."""
    whole = int(max(0.0, seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _validate(value: Any) -> float:
    return parse_duration(value)


# Config field types: a duration as written in YAML, validated to seconds.
Duration = Annotated[float, BeforeValidator(_validate)]
PositiveDuration = Annotated[float, BeforeValidator(_validate), Field(gt=0)]
