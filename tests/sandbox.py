"""Run a command under an emulation of a unit's seccomp settings, without systemd.

    python tests/sandbox.py systemd/edge-agent.service -- COMMAND [ARG...]

Reads the unit's `SystemCallFilter=` lines (an allow list, then `~` removals and additions, in
order, as systemd reads them; groups expanded by `systemd-analyze syscall-filter`),
`SystemCallErrorNumber=EPERM` and `RestrictAddressFamilies=`, loads the same filter with
libseccomp (through ctypes), turns on `MemoryDenyWriteExecute=` as the kernel's own W^X switch
(prctl PR_SET_MDWE, Linux >= 6.3), and execs the command. `SANDBOX_DROP=name,...` takes
syscalls out of the allow list (a control: the tests show the filter bites).

An emulation for a pre-check, not systemd: namespaces, devices, users and credentials are not
set up here (that is for the container tests). Exit status 97 when this machine cannot do it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

UNSUPPORTED = 97
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def expand(name: str) -> set[str]:
    if not name.startswith("@"):
        return {name}
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True
    ).stdout
    found: set[str] = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if word and not word.startswith("#"):
            found |= expand(word)
    return found


def unit_values(unit: Path, key: str) -> list[str]:
    prefix = f"{key}="
    return [
        line.strip()[len(prefix) :]
        for line in unit.read_text().splitlines()
        if line.strip().startswith(prefix)
    ]


def allowed_syscalls(unit: Path) -> set[str]:
    lines = unit_values(unit, "SystemCallFilter")
    if not lines or lines[0].startswith("~"):
        sys.exit("sandbox: the unit has no allow list (SystemCallFilter= without ~ first)")
    allowed: set[str] = set()
    for line in lines:
        remove = line.startswith("~")
        names = set().union(*(expand(w) for w in line.lstrip("~").split()))
        allowed = allowed - names if remove else allowed | names
    return allowed - set(filter(None, os.environ.get("SANDBOX_DROP", "").split(",")))


class _Cmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


def load(unit: Path) -> int:
    if unit_values(unit, "SystemCallErrorNumber") != ["EPERM"]:
        sys.exit("sandbox: expected SystemCallErrorNumber=EPERM")
    name = ctypes.util.find_library("seccomp")
    if name is None:
        print("sandbox: no libseccomp", file=sys.stderr)
        sys.exit(UNSUPPORTED)
    lib = ctypes.CDLL(name)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_rule_add.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint)
    lib.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_Cmp),
    )  # fmt: skip
    lib.seccomp_load.argtypes = (ctypes.c_void_p,)
    ctx = lib.seccomp_init(0x00050000 | errno.EPERM)  # SCMP_ACT_ERRNO(EPERM)
    count = 0
    for call in sorted(allowed_syscalls(unit) - {"socket"}):
        number = lib.seccomp_syscall_resolve_name(call.encode())
        if number >= 0 and lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, number, 0) == 0:
            count += 1
    families = unit_values(unit, "RestrictAddressFamilies")
    number = lib.seccomp_syscall_resolve_name(b"socket")
    for family in " ".join(families).split():
        cmp = _Cmp(0, SCMP_CMP_EQ, int(getattr(socket, family)), 0)
        if lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, number, 1, ctypes.byref(cmp)) != 0:
            sys.exit(f"sandbox: cannot add socket({family})")
    if "MemoryDenyWriteExecute=yes" in unit.read_text().splitlines():
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            print("sandbox: no PR_SET_MDWE (Linux < 6.3)", file=sys.stderr)
            sys.exit(UNSUPPORTED)
    if lib.seccomp_load(ctx) != 0:
        print("sandbox: seccomp_load failed", file=sys.stderr)
        sys.exit(UNSUPPORTED)
    return count


def main() -> None:
    unit, sep, *command = sys.argv[1:]
    if sep != "--" or not command:
        sys.exit(__doc__)
    count = load(Path(unit))
    print(f"sandbox: {count} syscalls allowed", file=sys.stderr, flush=True)
    os.execvp(command[0], command)  # noqa: S606 -- the command as given, in place of this process


if __name__ == "__main__":
    main()
