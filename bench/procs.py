"""What the benchmarks share: measuring other processes and cleaning them up.

CPU and memory from /proc (Linux), children that die with the benchmark (PR_SET_PDEATHSIG),
a graceful stop, a line saying which agent code ran, and what an installed agent has that a
source tree may not: the service unit's environment and compiled bytecode (so that an agent
started here measures as the service would).
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICE_UNIT = ROOT / "systemd" / "edge-agent.service"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all its threads), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS  # stat(5) fields 14, 15


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    return sum(cpu_times(pid))


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def service_settings() -> dict[str, str]:
    """The variables the service unit sets (its `Environment=` lines, e.g. MALLOC_ARENA_MAX)."""
    settings: dict[str, str] = {}
    for line in SERVICE_UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            for item in shlex.split(line.removeprefix("Environment=")):
                key, _, value = item.partition("=")
                settings[key] = value
    return settings


def service_environment() -> dict[str, str]:
    """This process's environment with the service unit's settings: an agent started with it
    allocates memory as the service does."""
    return {**os.environ, **service_settings()}


def compile_agent() -> None:
    """The agent's modules compiled to bytecode beside them (`__pycache__/`), as an installed
    release has them (agent/update/installer.py compiles at install): from a source tree that
    has none (PYTHONDONTWRITEBYTECODE), each start compiles every module, and an agent's memory
    carries that (2 MB at idle)."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "agent")],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when the benchmark process dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_farm(
    devices: int,
    registers: int,
    processes: int,
    values_max: int,
    step: int,
    period: float,
    nice: int = 0,
) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    """`devices` simulated Modbus TCP devices (`agent.sim.modbus_farm`) shared out over
    `processes` child processes, and their ports once every child has reported them; the
    children run at niceness `nice` (the agent, started by others, keeps its own)."""

    def child() -> None:
        die_with_parent()
        os.nice(nice)

    sims: list[subprocess.Popen[bytes]] = []
    share = [devices // processes + (i < devices % processes) for i in range(processes)]
    for n in share:
        command = [sys.executable, "-m", "agent.sim.modbus_farm", str(n)]
        command += ["--registers", str(registers), "--values-max", str(values_max)]
        command += ["--step", str(step), "--period", str(period)]
        sims.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                preexec_fn=child,
            )
        )
    ports: list[int] = []
    deadline = time.monotonic() + 120
    for proc in sims:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = proc.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(f"simulator {proc.pid} did not report its ports")
        ports.extend(json.loads(line)["ports"])
    return sims, ports


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 15) -> None:
    """Ask a child to stop; kill it if it has not within `grace` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def describe_tree() -> str:
    """Which agent code ran: the commit, and whether agent/ differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "agent"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return f"{ROOT / 'agent'} (not a git checkout)"
    return f"git {head}" + (
        f" + {len(changed)} changed or new files in agent/" if changed else ", clean"
    )
