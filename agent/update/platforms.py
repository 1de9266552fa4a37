"""Which platform and Python a release is for, as the vendor's wheels and the gateway say.

A release is published per Debian architecture (`amd64`, `arm64`, `armhf`, or `any` when every
wheel is pure Python) and per CPython tag (`cp311`, or `py3` when no wheel is tied to one
CPython): the vendor side reads both from the wheelhouse's file names, the gateway from
`platform.machine()` and `sys.version_info` (docs/updates.md, "Trust").
"""

from __future__ import annotations

import platform
import re
import sys
from collections.abc import Iterable

ANY_PLATFORM = "any"
ANY_PYTHON = "py3"

_MACHINES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_MACHINES.update({"armv7l": "armhf", "armv8l": "armhf"})
# The architecture at the end of a wheel's platform tag (manylinux_2_17_x86_64, linux_armv7l).
_WHEEL_ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf"}
_CPYTHON = re.compile(r"^cp3\d+$")


class PlatformError(ValueError):
    """A wheelhouse whose wheels do not name one platform (or one Python): a one-line reason."""


def gateway_platform(machine: str | None = None) -> str:
    """This machine's Debian architecture: x86_64 → amd64, aarch64 → arm64, armv7l → armhf."""
    name = machine if machine is not None else platform.machine()
    return _MACHINES.get(name, name)


def python_tag() -> str:
    """The running interpreter's CPython tag, e.g. "cp311"."""
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def _tags(wheel: str) -> tuple[str, str, str]:
    """(python, abi, platform) tags of a wheel file name."""
    if not wheel.endswith(".whl") or wheel.count("-") < 4:
        raise PlatformError(f"{wheel}: not a wheel file name")
    python, abi, plat = wheel[: -len(".whl")].split("-")[-3:]
    return python, abi, plat


def _arch(wheel: str, plat: str) -> str | None:
    """The Debian architecture of one platform tag (None: pure Python)."""
    if plat == "any":
        return None
    found = set()
    for tag in plat.split("."):  # compressed tag sets: manylinux_2_17_x86_64.manylinux2014_x86_64
        if not tag.startswith(("linux_", "manylinux", "musllinux")):
            raise PlatformError(f"{wheel}: platform tag {tag} is not Linux")
        arch = next((a for suffix, a in _WHEEL_ARCHES.items() if tag.endswith("_" + suffix)), None)
        if arch is None:
            raise PlatformError(f"{wheel}: unknown architecture in platform tag {tag}")
        found.add(arch)
    if len(found) != 1:
        raise PlatformError(f"{wheel}: several architectures in one wheel ({plat})")
    return found.pop()


def wheelhouse_platform(wheel_names: Iterable[str]) -> str:
    """The one Debian architecture of the binary wheels; "any" when every wheel is pure."""
    arches: dict[str, str] = {}
    for name in wheel_names:
        arch = _arch(name, _tags(name)[2])
        if arch is not None:
            arches.setdefault(arch, name)
    if len(arches) > 1:
        mixed = ", ".join(f"{arch} ({name})" for arch, name in sorted(arches.items()))
        raise PlatformError(f"the wheels are for several architectures: {mixed}")
    return next(iter(arches), ANY_PLATFORM)


def wheelhouse_python(wheel_names: Iterable[str]) -> str:
    """The one CPython tag of the wheels built for one CPython ABI ("cp311"); "py3" if none is.

    Pure wheels and stable-ABI (`abi3`) wheels run on any later CPython: they do not decide.
    """
    tags: dict[str, str] = {}
    for name in wheel_names:
        python, abi, _ = _tags(name)
        if _CPYTHON.match(abi):
            tags.setdefault(python if _CPYTHON.match(python) else abi, name)
    if len(tags) > 1:
        mixed = ", ".join(f"{tag} ({name})" for tag, name in sorted(tags.items()))
        raise PlatformError(f"the wheels are for several Pythons: {mixed}")
    return next(iter(tags), ANY_PYTHON)


def python_matches(release_python: str, gateway_python: str) -> bool:
    """A release for `py3` runs on any CPython 3; one for `cp311` only on CPython 3.11."""
    return release_python in (ANY_PYTHON, gateway_python)
