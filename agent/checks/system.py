"""System checks: the gateway itself (disk, inodes, memory, load, temperature, clock).

Each probe reads the kernel's own figures (statvfs, /proc, /sys) and blocks briefly, so they
are marked blocking and run off the event loop. `SystemPaths` is the seam to point them at
another root (tests build a small /proc and /sys tree in a temp dir). A figure the system does
not have (no thermal zone) is not checked at all; one that cannot be read is unknown.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import statistics
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agent.check_settings import ChecksConfig
from agent.checks.framework import Check, Outcome, Probe, Status, level, unknown
from agent.checks.view import AgentView
from agent.durations import approximate_duration
from agent.timesync import clock_synchronised

FAMILY = "system"
# Less free than this on state_dir's file system is a full disk, said in those words.
DISK_FULL_BYTES = 1024 * 1024
COMMAND_TIMEOUT = 3.0
# adjtimex(2) return value when the kernel clock is not synchronised (STA_UNSYNC).
# Thermal zone types that measure the CPU/SoC, preferred over the others (battery, wifi...).
_CPU_ZONES = ("cpu", "soc", "x86_pkg", "core", "arm")


@dataclass(frozen=True, slots=True)
class SystemPaths:
    proc: Path = Path("/proc")
    sys: Path = Path("/sys")
    run: Path = Path("/run")
    etc: Path = Path("/etc")
    use_commands: bool = True  # ask chronyc / timedatectl / the kernel about time sync

    @property
    def thermal(self) -> Path:
        return self.sys / "class" / "thermal"

    def thermal_zones(self) -> list[Path]:
        try:
            return sorted(p for p in self.thermal.glob("thermal_zone*") if (p / "temp").exists())
        except OSError:
            return []


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def existing(path: Path) -> Path:
    """The path, or its nearest existing parent (statvfs needs something that exists)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def checks(settings: ChecksConfig, paths: SystemPaths | None = None) -> list[Check]:
    paths = paths or SystemPaths()
    s = settings.system

    def make(check_id: str, probe: Probe) -> Check:
        return Check(check_id, FAMILY, probe, s.interval, settings.timeout, blocking=True)

    out = [
        make("system.disk", lambda v, now: disk(v, settings)),
        make("system.inodes", lambda v, now: inodes(v, settings)),
        make("system.memory", lambda v, now: memory(settings, paths)),
        make("system.load", lambda v, now: load(settings, paths)),
        make("system.fs_writable", lambda v, now: writable(v, settings)),
        make("system.clock_sync", lambda v, now: clock_sync(paths)),
        make("system.clock", lambda v, now: clock(v, now, settings)),
    ]
    if paths.thermal_zones():
        out.append(make("system.cpu_temp", lambda v, now: cpu_temp(settings, paths)))
    return out


def disk(view: AgentView, settings: ChecksConfig) -> Outcome:
    d = settings.system.disk
    where = existing(view.state_dir)
    st = os.statvfs(where)
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    if total == 0:
        return unknown(f"{where}: the filesystem reports no size")
    percent = round(100.0 * free / total, 2)
    text = f"{human_bytes(free)} free of {human_bytes(total)} ({percent:g}%) at {where}"
    if free < DISK_FULL_BYTES:
        return Outcome(
            Status.FAIL,
            percent,
            "%",
            d.fail_free_percent,
            f"disk full: {text}; readings are not stored (counted as lost) until there is room",
        )
    if d.fail_free_bytes is not None and free < d.fail_free_bytes:
        return Outcome(
            Status.FAIL,
            percent,
            "%",
            d.fail_free_percent,
            f"{text}: below the minimum of {human_bytes(d.fail_free_bytes)}",
        )
    return level(
        percent,
        warn=d.warn_free_percent,
        fail=d.fail_free_percent,
        higher_is_worse=False,
        unit="%",
        describe=lambda _: text,
    )


def inodes(view: AgentView, settings: ChecksConfig) -> Outcome:
    s = settings.system.inodes
    where = existing(view.state_dir)
    st = os.statvfs(where)
    if st.f_files == 0:  # btrfs and some others have no fixed inode table
        return Outcome(Status.OK, None, "%", None, f"{where}: the filesystem has no inode limit")
    percent = round(100.0 * st.f_favail / st.f_files, 2)
    return level(
        percent,
        warn=s.warn_free_percent,
        fail=s.fail_free_percent,
        higher_is_worse=False,
        unit="%",
        describe=lambda p: f"{st.f_favail} inodes free of {st.f_files} ({p:g}%) at {where}",
    )


def _meminfo(paths: SystemPaths) -> dict[str, int]:
    out = {}
    for line in (paths.proc / "meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            out[name] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return out


def memory(settings: ChecksConfig, paths: SystemPaths) -> Outcome:
    s = settings.system.memory
    info = _meminfo(paths)
    if "MemAvailable" not in info or not info.get("MemTotal"):
        return unknown("the kernel does not report MemAvailable")
    available, total = info["MemAvailable"], info["MemTotal"]
    percent = round(100.0 * available / total, 2)
    return level(
        percent,
        warn=s.warn_free_percent,
        fail=s.fail_free_percent,
        higher_is_worse=False,
        unit="%",
        describe=lambda p: f"{human_bytes(available)} available of {human_bytes(total)} ({p:g}%)",
    )


def load(settings: ChecksConfig, paths: SystemPaths) -> Outcome:
    s = settings.system.load_per_cpu
    fields = (paths.proc / "loadavg").read_text().split()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    per_cpu = round(float(fields[1]) / cpus, 2)
    return level(
        per_cpu,
        warn=s.warn,
        fail=s.fail,
        higher_is_worse=True,
        describe=lambda p: f"5-minute load {fields[1]} on {cpus} CPUs ({p:g} per CPU)",
    )


def cpu_temp(settings: ChecksConfig, paths: SystemPaths) -> Outcome:
    s = settings.system.cpu_temp
    readings: list[tuple[bool, float, str]] = []
    for zone in paths.thermal_zones():
        try:
            millis = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue  # some zones refuse reads while their device sleeps
        kind = ""
        with contextlib.suppress(OSError):
            kind = (zone / "type").read_text().strip()
        is_cpu = any(k in kind.lower() for k in _CPU_ZONES)
        readings.append((is_cpu, millis / 1000.0, kind or zone.name))
    if not readings:
        return unknown("no thermal zone could be read")
    cpu = [r for r in readings if r[0]] or readings
    _, celsius, kind = max(cpu, key=lambda r: r[1])
    return level(
        round(celsius, 1),
        warn=s.warn,
        fail=s.fail,
        higher_is_worse=True,
        unit="°C",
        describe=lambda c: f"{c:g} °C ({kind})",
    )


def writable(view: AgentView, settings: ChecksConfig) -> Outcome:
    state_dir = view.state_dir
    where = existing(state_dir)
    if os.statvfs(where).f_flag & os.ST_RDONLY:
        return Outcome(
            Status.FAIL,
            False,
            message=f"the filesystem of {where} is read-only (a failing SD card is remounted so)",
        )
    if not state_dir.is_dir():
        return Outcome(Status.WARN, None, message=f"state_dir {state_dir} does not exist yet")
    if not settings.system.write_probe:
        return Outcome(Status.OK, True, message=f"{where} is mounted read-write")
    probe = state_dir / f".write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"edge-agent write probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                probe.unlink()
    except OSError as exc:
        why = {
            errno.EROFS: "the filesystem is read-only",
            errno.EIO: "I/O error (the storage may be failing)",
            errno.ENOSPC: "disk full (no space left)",
            errno.EDQUOT: "disk quota exceeded",
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        return Outcome(Status.FAIL, False, message=f"cannot write to {state_dir}: {why}")
    return Outcome(Status.OK, True, message=f"{state_dir} is writable")


def _run(*command: str) -> subprocess.CompletedProcess[str] | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None


def clock_sync(paths: SystemPaths) -> Outcome:
    """Whether a time service keeps the clock synchronised, asking whoever can tell."""
    if (paths.run / "systemd" / "timesync" / "synchronized").exists():
        return Outcome(Status.OK, True, message="synchronised (systemd-timesyncd)")
    if not paths.use_commands:
        return unknown("cannot tell whether the clock is synchronised")
    chrony = _run("chronyc", "-n", "tracking")
    if chrony is not None and chrony.returncode == 0:
        leap = next((ln for ln in chrony.stdout.splitlines() if ln.startswith("Leap status")), "")
        if leap and "Not synchronised" not in leap:
            return Outcome(Status.OK, True, message="synchronised (chrony)")
        return Outcome(Status.WARN, False, message="chrony runs but is not synchronised")
    timedatectl = _run("timedatectl", "show", "-p", "NTPSynchronized", "--value")
    if timedatectl is not None and timedatectl.returncode == 0:
        answer = timedatectl.stdout.strip()
        if answer == "yes":
            return Outcome(Status.OK, True, message="synchronised (timedatectl)")
        if answer == "no":
            return Outcome(Status.WARN, False, message="not synchronised (timedatectl)")
    synchronised = clock_synchronised()
    if synchronised is None:
        return unknown("cannot tell whether the clock is synchronised")
    if not synchronised:
        return Outcome(
            Status.WARN,
            False,
            message="the kernel clock is not synchronised (no time service keeps it)",
        )
    return Outcome(Status.OK, True, message="synchronised (kernel clock status)")


def clock(view: AgentView, now: datetime, settings: ChecksConfig) -> Outcome:
    """A wall clock that is obviously wrong: before the build, or far from the terminals'."""
    c = settings.system.clock
    if now < c.not_before:
        return Outcome(
            Status.FAIL,
            now.isoformat(timespec="seconds"),
            threshold=c.not_before.isoformat(timespec="seconds"),
            message=f"the wall clock says {now:%Y-%m-%d %H:%M}, before this software was built",
        )
    offsets = [tc.offset for tc in view.terminal_clocks.values()]
    if not offsets:
        return Outcome(
            Status.OK, None, "s", None, "after the build date; no terminal clock to compare"
        )
    median = statistics.median(offsets)
    limit = c.max_terminal_offset
    n = len(offsets)
    direction = "ahead of" if median > 0 else "behind"
    text = f"terminals' clocks (median of {n}) are {approximate_duration(abs(median))} {direction} ours"
    status = Status.WARN if abs(median) > limit else Status.OK
    if abs(median) < 1:
        text = f"terminals' clocks (median of {n}) agree with ours"
    return Outcome(status, round(median, 1), "s", limit, text)
