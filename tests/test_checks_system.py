"""System checks against real filesystems (temp dirs, small tmpfs mounts) and a small /proc, /sys
and /run tree written in a temp dir."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.check_settings import ChecksConfig
from agent.checks import AgentView, Status, build_checks
from agent.checks.framework import CheckResult, CheckRunner
from agent.checks.system import SystemPaths
from agent.model import TerminalClock
from tests.conftest import make_config

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def settings(**system: object) -> ChecksConfig:
    return ChecksConfig.model_validate({"system": system})


def run(
    state_dir: Path,
    check_id: str,
    s: ChecksConfig | None = None,
    paths: SystemPaths | None = None,
    now: datetime = NOW,
    **view: object,
) -> CheckResult:
    config = make_config([], state_dir=str(state_dir))
    checks = [c for c in build_checks(config, s or ChecksConfig(), paths=paths) if c.id == check_id]
    assert checks, f"no check {check_id}"
    runner = CheckRunner(checks)
    try:
        done = asyncio.run(runner.run_all(AgentView(config, **view), now))  # type: ignore[arg-type]
    finally:
        runner.close()
    [result] = done.results
    return result


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[object]:
    """Mounts a small tmpfs (root only; skipped elsewhere), unmounted at the end."""
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        target = tmp_path / name
        target.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "edge-test", str(target)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], check=False)


def test_free_space_below_a_threshold_set_above_what_the_filesystem_has_fails(
    tmp_path: Path,
) -> None:
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    above = run(tmp_path, "system.disk", settings(disk={"fail_free_bytes": free + 2**40}))
    assert above.status is Status.FAIL
    assert "below the minimum of" in above.message
    relaxed = {"fail_free_bytes": 0, "warn_free_percent": 0, "fail_free_percent": 0}
    assert run(tmp_path, "system.disk", settings(disk=relaxed)).status is Status.OK
    warn = run(tmp_path, "system.disk", settings(disk={**relaxed, "warn_free_percent": 100}))
    assert warn.status is Status.WARN and warn.unit == "%"


def test_a_small_filesystem_that_fills_up_fails_the_disk_check(
    tmpfs: object, tmp_path: Path
) -> None:
    small = tmpfs("small", "size=1m")  # type: ignore[operator]
    percent_only = settings(disk={"fail_free_bytes": None})
    assert run(small, "system.disk", percent_only).status is Status.OK
    (small / "fill").write_bytes(b"\0" * (1024 * 1024 - 8192))
    full = run(small, "system.disk", percent_only)
    assert full.status is Status.FAIL
    assert isinstance(full.value, float) and full.value < 5


def test_a_filesystem_out_of_inodes_fails_the_inode_check(tmpfs: object) -> None:
    few = tmpfs("few", "size=1m,nr_inodes=40")  # type: ignore[operator]
    assert run(few, "system.inodes").status is Status.OK
    for i in range(100):
        try:
            (few / f"f{i}").touch()
        except OSError:
            break
    result = run(few, "system.inodes")
    assert result.status is Status.FAIL
    assert "inodes free of 40" in result.message


def test_a_filesystem_turned_read_only_fails_and_a_writable_one_passes(
    tmpfs: object, tmp_path: Path
) -> None:
    assert run(tmp_path, "system.fs_writable").status is Status.OK
    assert list(tmp_path.iterdir()) == []  # the write probe leaves nothing behind
    read_only = tmpfs("ro", "ro,size=1m")  # type: ignore[operator]
    result = run(read_only, "system.fs_writable")
    assert result.status is Status.FAIL
    assert "read-only" in result.message


def fake_root(
    tmp_path: Path, mem_available_kb: int, load5: float, zones: dict[str, int]
) -> SystemPaths:
    proc, sys, run_, etc = (tmp_path / n for n in ("proc", "sys", "run", "etc"))
    for d in (proc, sys, run_, etc):
        d.mkdir(parents=True)
    (proc / "meminfo").write_text(
        f"MemTotal:        1000000 kB\nMemFree:          10000 kB\nMemAvailable:  {mem_available_kb} kB\n"
    )
    (proc / "loadavg").write_text(f"0.10 {load5:.2f} 0.30 1/100 1234\n")
    for i, (kind, millis) in enumerate(zones.items()):
        zone = sys / "class" / "thermal" / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(f"{millis}\n")
    return SystemPaths(proc, sys, run_, etc, use_commands=False)


def test_memory_load_and_cpu_temperature_are_read_from_proc_and_sys(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    paths = fake_root(
        tmp_path / "root", 40_000, 2.0 * cpus, {"acpitz": 99_000, "cpu-thermal": 80_500}
    )
    memory = run(tmp_path, "system.memory", paths=paths)
    assert (memory.status, memory.value) == (Status.FAIL, 4.0)
    load = run(tmp_path, "system.load", paths=paths)
    assert (load.status, load.value) == (Status.WARN, 2.0)
    temp = run(tmp_path, "system.cpu_temp", paths=paths)  # the CPU zone, not the hotter other one
    assert (temp.status, temp.value, temp.unit) == (Status.WARN, 80.5, "°C")


def test_without_a_thermal_zone_there_is_no_temperature_check(tmp_path: Path) -> None:
    paths = fake_root(tmp_path / "root", 500_000, 0.1, {})
    config = make_config([], state_dir=str(tmp_path))
    ids = {c.id for c in build_checks(config, paths=paths)}
    assert "system.cpu_temp" not in ids and "system.memory" in ids


def test_clock_sync_is_ok_when_timesyncd_says_so_and_unknown_when_nobody_can_tell(
    tmp_path: Path,
) -> None:
    paths = fake_root(tmp_path / "root", 500_000, 0.1, {})
    assert run(tmp_path, "system.clock_sync", paths=paths).status is Status.UNKNOWN
    flag = paths.run / "systemd" / "timesync" / "synchronized"
    flag.parent.mkdir(parents=True)
    flag.touch()
    synced = run(tmp_path, "system.clock_sync", paths=paths)
    assert (synced.status, synced.value) == (Status.OK, True)


def test_clock_sync_on_this_machine_gives_a_definite_answer_or_unknown(tmp_path: Path) -> None:
    result = run(tmp_path, "system.clock_sync")
    assert result.status in (Status.OK, Status.WARN, Status.UNKNOWN)
    assert result.message


def test_a_wall_clock_before_the_build_date_fails(tmp_path: Path) -> None:
    result = run(tmp_path, "system.clock", now=datetime(2000, 1, 1, tzinfo=UTC))
    assert result.status is Status.FAIL
    assert "before this software was built" in result.message


def test_a_wall_clock_far_from_the_terminals_clocks_warns(tmp_path: Path) -> None:
    ahead = {f"rtu{i}": TerminalClock(NOW + timedelta(hours=1, seconds=i), NOW) for i in range(3)}
    far = run(tmp_path, "system.clock", terminal_clocks=ahead)
    assert far.status is Status.WARN
    assert far.value == 3601.0 and far.threshold == 600.0
    assert far.message == "terminals' clocks (median of 3) are 1h00m ahead of ours"
    close = {"rtu": TerminalClock(NOW + timedelta(seconds=20), NOW)}
    assert run(tmp_path, "system.clock", terminal_clocks=close).status is Status.OK
